//! The only module that knows how state is stored. It exposes domain operations, each written
//! once against the `Tx` interface (`tx.rs`) and run by one of two backends:
//!
//! - `sled_store.rs`, the embedded default: one sled database in the data directory;
//! - `etcd_store.rs`, for several replicas over an etcd v3 cluster.
//!
//! Each operation is one transaction: nothing is ever half-written, and two writers racing
//! give one winner. A change that comes with decision-log records writes them in the same
//! transaction: neither exists without the other, whatever happens to the caller. Decisions
//! and lookups read the in-memory view (`view.rs`), which both backends feed with every
//! committed change in commit order.
//!
//! The decision log lives in this process's own append-only segment files (`segments`), under
//! the data directory, whichever backend holds the state.

mod backup;
mod console;
pub use console::{Claimed, claimed_filing};
mod disk;
mod etcd_store;
mod fault;
mod group_commit;
mod group_sync;
mod log;
mod segments;
mod sled_store;
mod tx;
mod view;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{
    self, Account, Discovery, Enforced, EnforcementEvent, Facts, IdempotentStart, Kind, LogRecord,
    MerchantScope, Millis, RecordBody, Registration, ReviewCommand, ReviewStatus, Session,
    SessionState, Trigger, WriteOutcome,
};
use crate::error::PdpError;
pub use backup::{Backup, BackupHeader};
use disk::DiskGuard;
pub use disk::DiskOptions;
use etcd_store::EtcdBackend;
pub use etcd_store::{EtcdOptions, PublishedPolicy};
use segments::SegmentLog;
use sled_store::SledBackend;
pub use tx::FORMAT_VERSION;
use tx::{
    EventBody, Tx, TxResult, Writes, account_key, closed_key, decode, event_key, event_sequence,
    idempotency_key, live_key, registration_key, room_key, session_key, stream_key, tx_event,
    tx_get, tx_index_session, tx_live_session_using, tx_pointer, tx_put, tx_put_if_changed,
    tx_remove_if_points_at,
};
use view::FactsView;

/// The decision log's segment files, under the data directory.
const SEGMENTS_DIR: &str = "decision-log";
/// Default size at which a decision-log segment is sealed and the next begins.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 64 << 20;
/// How long a read asking for a `min_revision` waits for the view to reach it.
pub const MIN_REVISION_WAIT: Duration = Duration::from_secs(2);
/// How long `sync` waits for the view to catch up with the cluster.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// What both backends share: the view they feed, the decision log, and what they tell
/// subscribers.
pub struct Shared {
    /// Registrations, accounts and live sessions in memory: what decisions and lookups read.
    view: FactsView,
    /// The decision log.
    segments: Arc<SegmentLog>,
    /// The highest enforcement-event sequence known durable; subscribers read up to it.
    events_durable: tokio::sync::watch::Sender<u64>,
    /// Why writing fails, until it works again; `None` while writes work.
    write_failure: tokio::sync::watch::Sender<Option<String>>,
    /// Refuses writes before the data directory's disk is full.
    disk: DiskGuard,
}

impl Shared {
    fn new(segments: SegmentLog, disk: DiskGuard) -> Shared {
        Shared {
            view: FactsView::default(),
            segments: Arc::new(segments),
            events_durable: tokio::sync::watch::channel(0).0,
            write_failure: tokio::sync::watch::channel(None).0,
            disk,
        }
    }

    /// Before a write: refused (and health NOT_SERVING) while the disk is below its reserve.
    fn room_to_write(&self) -> Result<(), PdpError> {
        self.disk.check().map_err(|e| self.write_failed(e))
    }

    /// Notes a failed write: health turns NOT_SERVING until writing works again.
    fn write_failed(&self, error: PdpError) -> PdpError {
        self.write_failure.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            tracing::error!(%error, "store write failed: not serving until writing works again");
            *failure = Some(error.to_string());
            true
        });
        error
    }

    /// Feeds the view what a commit wrote, in the order it wrote it.
    fn apply_to_view(&self, writes: &Writes) {
        for (key, value) in writes {
            let Some(value) = value else { continue };
            match tx::view_change(key, value) {
                Ok(Some(tx::ViewChange::Registration(r))) => self.view.put_registration(&r),
                Ok(Some(tx::ViewChange::Account(a))) => self.view.put_account(&a),
                Ok(Some(tx::ViewChange::Session(s))) => self.view.put_session(&s),
                Ok(None) => {}
                Err(e) => tracing::error!(%e, "a committed record does not decode"),
            }
        }
    }

    /// Tells subscribers about the newest enforcement event a durable commit wrote.
    fn publish_events(&self, writes: &Writes) {
        let newest = writes
            .iter()
            .filter(|(_, value)| value.is_some())
            .filter_map(|(key, _)| event_sequence(key))
            .max();
        if let Some(last) = newest {
            self.events_durable.send_if_modified(|durable| {
                let newer = last > *durable;
                if newer {
                    *durable = last;
                }
                newer
            });
        }
    }
}

enum Backend {
    Sled(SledBackend),
    Etcd(Arc<EtcdBackend>),
}

pub struct Store {
    backend: Backend,
    shared: Arc<Shared>,
    /// The highest revision this process has committed or confirmed: answers never carry a
    /// lower one, even while the view has not caught up with the process's own write.
    answered: std::sync::atomic::AtomicU64,
    /// Names this process in the enforcement events it writes.
    replica: String,
}

/// A write the caller named: a retry with the same name gets the first answer.
#[derive(Clone, Debug)]
pub struct Request {
    /// `req/<caller>/<request id>`.
    key: String,
    /// The record this attempt logs its change under.
    record_id: String,
    at: Millis,
}

impl Request {
    pub fn new(caller: &str, request_id: &str, record_id: &str, at: Millis) -> Request {
        Request {
            key: tx::request_key(caller, request_id),
            record_id: record_id.to_owned(),
            at,
        }
    }
}

/// A write's answer as kept for its retries.
#[derive(serde::Serialize, serde::Deserialize)]
struct FirstAnswer<T> {
    record_id: String,
    at: Millis,
    value: T,
}

/// A write's answer, and whether it is the first attempt's, given again.
#[derive(Clone, Debug)]
pub struct Answer<T> {
    pub value: T,
    /// The record id the first attempt logged its change under, when this is a retry.
    pub replay_of: Option<String>,
}

/// One shutdown of `Store::enforce_decided_batch`: the discovery, the facts it was decided on,
/// and the record it commits with.
pub type DecidedShutdown<'a> = (
    &'a Discovery,
    &'a Facts,
    &'a (dyn Fn(&Enforced) -> LogRecord + Sync),
);

/// What `enforce_decided` did.
#[derive(Clone, Debug)]
pub enum Enforcing {
    Done(Box<(Enforced, Option<EnforcementEvent>)>),
    /// Nothing was written: the facts changed between the decision and its commit; these
    /// are the facts the commit found.
    FactsChanged(Box<Facts>),
}

/// What `open_session` did.
#[derive(Clone, Debug)]
pub enum Opened {
    /// The session is open; `superseded` is the room's earlier live session, now closed.
    New { superseded: Option<Box<Session>> },
    /// The idempotency key was used before: nothing was written; this is what it admitted,
    /// and its session as the transaction read it (`None` once it is no longer kept).
    Replay(IdempotentStart, Option<Box<Session>>),
    /// Nothing was written: the facts changed between the decision and its commit (a freeze,
    /// a revoke, a delisting committed meanwhile). These are the facts the commit found; the
    /// caller decides again on them.
    FactsChanged(Box<Facts>),
}

impl Store {
    /// Opens (or creates) the embedded store in `dir`. Refuses a directory written in a format
    /// this build does not know.
    pub fn open(dir: &Path) -> Result<Store, PdpError> {
        Store::open_with(dir, DEFAULT_LOG_SEGMENT_BYTES, DiskOptions::default())
    }

    /// `open`, with decision-log segments sealed at `log_segment_bytes` and this much disk
    /// kept free.
    pub fn open_with(
        dir: &Path,
        log_segment_bytes: u64,
        disk: DiskOptions,
    ) -> Result<Store, PdpError> {
        let shared = Arc::new(Shared::new(
            SegmentLog::open(&dir.join(SEGMENTS_DIR), log_segment_bytes)?,
            DiskGuard::new(dir, disk),
        ));
        let (backend, last_event) = SledBackend::open(dir, &shared)?;
        shared.events_durable.send_replace(last_event);
        Ok(Store {
            backend: Backend::Sled(backend),
            shared,
            answered: Default::default(),
            replica: String::new(),
        })
    }

    /// Opens a replica over etcd; `dir` holds this replica's own decision log.
    pub async fn open_etcd(
        dir: &Path,
        log_segment_bytes: u64,
        disk: DiskOptions,
        options: EtcdOptions,
    ) -> Result<Store, PdpError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| PdpError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let shared = Arc::new(Shared::new(
            SegmentLog::open(&dir.join(SEGMENTS_DIR), log_segment_bytes)?,
            DiskGuard::new(dir, disk),
        ));
        let replica = options.replica.clone();
        let backend = EtcdBackend::open(options, shared.clone()).await?;
        Ok(Store {
            backend: Backend::Etcd(backend),
            shared,
            answered: Default::default(),
            replica,
        })
    }

    /// `sled` or `etcd`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sled(_) => "sled",
            Backend::Etcd(_) => "etcd",
        }
    }

    /// This replica's name (empty on the embedded store).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The store revision every response carries, and a request may ask for at least: the
    /// view's, or this process's last commit if the view has not reached it yet (a write is
    /// never answered with a revision below its own).
    pub fn revision(&self) -> u64 {
        self.view_revision()
            .max(self.answered.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The revision the view is at.
    fn view_revision(&self) -> u64 {
        match &self.backend {
            Backend::Sled(sled) => sled.revision(),
            Backend::Etcd(etcd) => etcd.revision(),
        }
    }

    /// Before a decision: on etcd, a view not known current for a moment (a paused process, a
    /// stalled watch) first catches up with the cluster; an error (so a deny) once it is older
    /// than the maximum staleness.
    pub async fn current(&self) -> Result<(), PdpError> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Etcd(etcd) => etcd.ensure_current().await,
        }
    }

    /// Brings the view up to everything committed before this call, on any replica: what a
    /// sweep that must see every live session reads after. Immediate on sled.
    pub async fn sync(&self) -> Result<(), PdpError> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Etcd(etcd) => etcd.catch_up(SYNC_WAIT).await.map(|_| ()),
        }
    }

    /// Waits (briefly) until the view is at `min_revision`; FAILED_PRECONDITION if it is not
    /// by then. Read-your-writes across replicas.
    pub async fn at_least(&self, min_revision: u64) -> Result<(), PdpError> {
        if min_revision == 0 || self.view_revision() >= min_revision {
            return Ok(());
        }
        let reached = match &self.backend {
            Backend::Sled(_) => false,
            Backend::Etcd(etcd) => etcd.wait_for(min_revision, MIN_REVISION_WAIT).await,
        };
        if reached {
            Ok(())
        } else {
            Err(PdpError::FailedPrecondition(format!(
                "min_revision {min_revision}: this replica's view is at revision {} after \
                 waiting {} ms; retry, or ask another replica",
                self.view_revision(),
                MIN_REVISION_WAIT.as_millis()
            )))
        }
    }

    /// Runs `f` as one transaction of the backend; returns once its changes are durable and
    /// in the view.
    async fn transact<T>(
        &self,
        f: &(dyn Fn(&dyn Tx) -> TxResult<T> + Sync),
    ) -> Result<T, PdpError> {
        self.shared.room_to_write()?;
        let (value, revision) = match &self.backend {
            Backend::Sled(sled) => sled.transact(&self.shared, f).await?,
            Backend::Etcd(etcd) => etcd.transact(f).await?,
        };
        self.answered
            .fetch_max(revision, std::sync::atomic::Ordering::AcqRel);
        Ok(value)
    }

    /// `transact`, for a write the caller may have named: the first attempt keeps its answer
    /// in the same transaction as its change, and a retry gets that answer and changes
    /// nothing.
    /// Whether `request` was answered already (a retry: its first answer is replayed).
    pub fn has_answered(&self, request: &Request) -> Result<bool, PdpError> {
        Ok(self.read_raw(&request.key)?.is_some())
    }

    async fn transact_once<T>(
        &self,
        request: Option<&Request>,
        f: &(dyn Fn(&dyn Tx) -> TxResult<T> + Sync),
    ) -> Result<Answer<T>, PdpError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        self.transact(&|tx| {
            if let Some(request) = request
                && let Some(first) = tx_get::<FirstAnswer<T>>(tx, &request.key)?
            {
                return Ok(Answer {
                    value: first.value,
                    replay_of: Some(first.record_id),
                });
            }
            let value = f(tx)?;
            if let Some(request) = request {
                let first = FirstAnswer {
                    record_id: request.record_id.clone(),
                    at: request.at,
                    value: &value,
                };
                tx_put(tx, &request.key, &first)?;
                tx.put(&tx::request_at_key(request.at, &request.key), Vec::new())?;
            }
            Ok(Answer {
                value,
                replay_of: None,
            })
        })
        .await
    }

    fn read_raw(&self, key: &str) -> Result<Option<Vec<u8>>, PdpError> {
        match &self.backend {
            Backend::Sled(sled) => sled.get(key),
            Backend::Etcd(etcd) => Ok(etcd.get(key)),
        }
    }

    fn read<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PdpError> {
        match self.read_raw(key)? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` keys and values in [`start`, `end`).
    fn scan(
        &self,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, PdpError> {
        match &self.backend {
            Backend::Sled(sled) => sled.scan(start, end, limit),
            Backend::Etcd(etcd) => Ok(etcd.scan(start, end, limit)),
        }
    }

    /// `None` while writes work, else why they fail. Changes when that changes.
    pub fn subscribe_write_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.shared.write_failure.subscribe()
    }

    pub fn write_failure(&self) -> Option<String> {
        self.shared.write_failure.borrow().clone()
    }

    /// After a write failure: checks whether writing works again (on sled, reopening the
    /// database if it has stopped writing; on etcd, whether the replica is current again).
    /// Returns `Ok` once it does; the failure is then cleared. Blocking: run it off the async
    /// workers.
    pub fn recover(&self, now: Millis) -> Result<(), PdpError> {
        // Reopening sled on a full disk is what corrupts it: not before there is room.
        self.shared.disk.check()?;
        match &self.backend {
            Backend::Sled(sled) => sled.recover(&self.shared, now)?,
            Backend::Etcd(etcd) => {
                if let Some(why) = etcd.problem() {
                    return Err(PdpError::Storage(why));
                }
            }
        }
        self.shared.write_failure.send_replace(None);
        Ok(())
    }

    /// Blocks until everything written so far is on disk. For shutdown.
    pub fn flush_blocking(&self) -> Result<(), PdpError> {
        if let Backend::Sled(sled) = &self.backend {
            sled.flush_blocking()?;
        }
        self.shared.segments.sync_blocking()
    }

    /// The published policy set (etcd only): its bytes and revision as the watch delivers
    /// them.
    pub fn subscribe_policy(&self) -> Option<tokio::sync::watch::Receiver<PublishedPolicy>> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Etcd(etcd) => Some(etcd.subscribe_policy()),
        }
    }

    /// Publishes a policy set to every replica (etcd only; a no-op on sled). With
    /// `only_if_absent`, only when none is published yet. Returns whether it wrote.
    pub async fn publish_policy(
        &self,
        bytes: Vec<u8>,
        only_if_absent: bool,
    ) -> Result<bool, PdpError> {
        match &self.backend {
            Backend::Sled(_) => Ok(false),
            Backend::Etcd(etcd) => etcd.publish_policy(bytes, only_if_absent).await,
        }
    }

    /// Whether the view may answer decisions now: on etcd, not after `max_staleness` without
    /// a quorum.
    fn view_answers(&self) -> Result<(), PdpError> {
        match &self.backend {
            Backend::Etcd(etcd) => match etcd.read_refusal() {
                Some(why) => Err(PdpError::Storage(why)),
                None => Ok(()),
            },
            Backend::Sled(_) => Ok(()),
        }
    }

    /// Files or updates a record; the records it refers to (owner merchant, provider) must
    /// exist. When it changes anything, `record` is logged with the change.
    ///
    /// A caller narrowed to some merchants may file only theirs, and cannot move a filing to
    /// another. Nobody can materially change an approved filing a live session relies on: the
    /// change would send it back to review and shut the broadcast down with a penalty.
    #[allow(clippy::too_many_arguments)]
    pub async fn register(
        &self,
        id: &str,
        body: RecordBody,
        expected_revision: Option<u64>,
        scope: &MerchantScope,
        now: Millis,
        request: Option<&Request>,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<Answer<WriteOutcome>, PdpError> {
        let key = registration_key(body.kind(), id);
        self.transact_once(request, &|tx| {
            for (kind, ref_id, field) in body.references() {
                if tx_get::<Registration>(tx, &registration_key(kind, ref_id))?.is_none() {
                    return Err(PdpError::FailedPrecondition(format!(
                        "{field}: {} {ref_id} is not registered",
                        kind.name()
                    ))
                    .into());
                }
            }
            let current: Option<Registration> = tx_get(tx, &key)?;
            scope.check_filing(current.as_ref(), &body)?;
            let outcome =
                domain::apply_register(current.as_ref(), id, body.clone(), expected_revision, now)?;
            let back_to_review = current.as_ref().is_some_and(|c| {
                c.review_status == ReviewStatus::Approved
                    && outcome.registration.review_status == ReviewStatus::PendingReview
            });
            if back_to_review && let Some(session) = tx_live_session_using(tx, body.kind(), id)? {
                return Err(PdpError::FailedPrecondition(format!(
                    "{} {id} is in use by live session {session}: this change would send it \
                     back to review and end the broadcast; change it after the broadcast ends \
                     (an admin may revoke it meanwhile)",
                    body.kind().name()
                ))
                .into());
            }
            tx_put_if_changed(tx, &key, &outcome, record)?;
            Ok(outcome)
        })
        .await
    }

    /// Applies a review verdict and logs `record` with it.
    pub async fn review(
        &self,
        cmd: &ReviewCommand,
        now: Millis,
        request: Option<&Request>,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<Answer<Registration>, PdpError> {
        let key = registration_key(cmd.kind, &cmd.id);
        self.transact_once(request, &|tx| {
            let current: Option<Registration> = tx_get(tx, &key)?;
            let next = domain::apply_review(current.as_ref(), cmd, now)?;
            tx_put(tx, &key, &next)?;
            tx.log(&record(&next))?;
            Ok(next)
        })
        .await
    }

    /// Read-modify-write of one registration, written (with `record`) only if `apply` changed
    /// it.
    async fn update_registration(
        &self,
        kind: Kind,
        id: &str,
        apply: impl Fn(Option<&Registration>) -> Result<WriteOutcome, PdpError> + Sync,
        request: Option<&Request>,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<Answer<WriteOutcome>, PdpError> {
        let key = registration_key(kind, id);
        self.transact_once(request, &|tx| {
            let current: Option<Registration> = tx_get(tx, &key)?;
            let outcome = apply(current.as_ref())?;
            tx_put_if_changed(tx, &key, &outcome, record)?;
            Ok(outcome)
        })
        .await
    }

    /// An approved anchor's image seen with `seen_sha256` at `reference`: back to review if
    /// that is not the image approved (`domain::apply_image_change`), in one guarded write.
    pub async fn image_changed(
        &self,
        id: &str,
        reference: &str,
        seen_sha256: &str,
        now: Millis,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<WriteOutcome, PdpError> {
        let answer = self
            .update_registration(
                Kind::Anchor,
                id,
                |current| domain::apply_image_change(current, id, reference, seen_sha256, now),
                None,
                record,
            )
            .await?;
        Ok(answer.value)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn set_provider_listing(
        &self,
        id: &str,
        listed: bool,
        operator: &str,
        expected_revision: Option<u64>,
        now: Millis,
        request: Option<&Request>,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<Answer<WriteOutcome>, PdpError> {
        self.update_registration(
            Kind::Provider,
            id,
            |current| {
                domain::apply_provider_listing(
                    current,
                    id,
                    listed,
                    operator,
                    expected_revision,
                    now,
                )
            },
            request,
            record,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn set_ai_feature_filing(
        &self,
        id: &str,
        security_assessment_passed: bool,
        filing_number: &str,
        operator: &str,
        expected_revision: Option<u64>,
        now: Millis,
        request: Option<&Request>,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<Answer<WriteOutcome>, PdpError> {
        self.update_registration(
            Kind::AiFeature,
            id,
            |current| {
                domain::apply_ai_feature_filing(
                    current,
                    id,
                    security_assessment_passed,
                    filing_number,
                    operator,
                    expected_revision,
                    now,
                )
            },
            request,
            record,
        )
        .await
    }

    pub fn get_registration(&self, kind: Kind, id: &str) -> Result<Option<Registration>, PdpError> {
        Ok(self.shared.view.registration(kind, id))
    }

    /// Up to `limit` records of `kind` with ids after `after`, in id order.
    /// How many registrations of `kinds` `keep` accepts, and `limit` of them from `offset`,
    /// oldest first, from the in-memory view (no disk, no decoding): what the console's lists
    /// read.
    pub fn registrations_page(
        &self,
        kinds: &[Kind],
        keep: impl Fn(&Registration) -> bool,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<Registration>) {
        self.shared
            .view
            .registrations_page(kinds, keep, offset, limit)
    }

    /// `visit` over references to every registration of `kinds` that `keep` accepts, in the
    /// in-memory view, under one read lock (see `FactsView::visit_registrations`).
    pub fn visit_registrations<R>(
        &self,
        kinds: &[Kind],
        keep: impl Fn(&Registration) -> bool,
        visit: impl FnOnce(Vec<&Registration>) -> R,
    ) -> R {
        self.shared.view.visit_registrations(kinds, keep, visit)
    }

    pub fn list_registrations(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Registration>, PdpError> {
        let prefix = format!("reg/{}/", kind.name());
        let start = match after {
            // The byte after '/'-free ids' last char sorts every longer id sharing the prefix
            // after `after` itself, so a zero byte resumes right past it.
            Some(after) => format!("{prefix}{after}\0"),
            None => prefix.clone(),
        };
        let end = format!("reg/{}0", kind.name());
        self.scan(&start, &end, limit)?
            .into_iter()
            .map(|(key, value)| decode(&key, &value))
            .collect()
    }

    /// The merchant's account; a registered merchant with no penalty yet has a clean one.
    pub fn get_account(
        &self,
        merchant_id: &str,
    ) -> Result<Option<(Registration, Account)>, PdpError> {
        let Some(merchant) = self.get_registration(Kind::Merchant, merchant_id)? else {
            return Ok(None);
        };
        let account = self
            .shared
            .view
            .account(merchant_id)
            .unwrap_or_else(|| Account::new(merchant_id));
        Ok(Some((merchant, account)))
    }

    /// Clears the stored freeze, with `record`, if there is one whose end is not more than
    /// the clock-skew bound in the past (another replica may still be enforcing it). Returns
    /// the merchant and its account as the transaction read and wrote them, and whether it
    /// lifted a freeze.
    pub async fn lift_freeze(
        &self,
        merchant_id: &str,
        operator: &str,
        reason: &str,
        now: Millis,
        request: Option<&Request>,
        record: &(dyn Fn(&Account) -> LogRecord + Sync),
    ) -> Result<Answer<(Registration, Account, bool)>, PdpError> {
        let merchant_key = registration_key(Kind::Merchant, merchant_id);
        let key = account_key(merchant_id);
        self.transact_once(request, &|tx| {
            let Some(merchant) = tx_get::<Registration>(tx, &merchant_key)? else {
                return Err(PdpError::NotFound(format!(
                    "merchant {merchant_id} is not registered"
                ))
                .into());
            };
            let mut account: Account =
                tx_get(tx, &key)?.unwrap_or_else(|| Account::new(merchant_id));
            let was_frozen = account
                .frozen_until
                .is_some_and(|until| until > now - domain::MAX_CLOCK_SKEW_MS);
            if was_frozen {
                account.frozen_until = None;
                account.freeze_lifted = Some(domain::FreezeLift {
                    operator: operator.to_owned(),
                    reason: reason.to_owned(),
                    lifted_at: now,
                });
                tx_put(tx, &key, &account)?;
                tx.log(&record(&account))?;
            }
            Ok((merchant, account, was_frozen))
        })
        .await
    }

    /// Everything a decision about these ids needs, as one consistent snapshot of the
    /// in-memory view: no disk, no decoding, no transaction. On etcd, an error (so a deny)
    /// once the replica has been without a quorum for longer than its view may answer.
    pub fn facts(
        &self,
        merchant_id: &str,
        room_id: &str,
        anchor_id: &str,
        driver_id: &str,
        ai_features: &[String],
    ) -> Result<Facts, PdpError> {
        self.view_answers()?;
        Ok(self
            .shared
            .view
            .facts(merchant_id, room_id, anchor_id, driver_id, ai_features))
    }

    /// Opens an admitted session, with its decision's records, unless its idempotency key
    /// admitted one before (then nothing is written). A room has one live session: an earlier
    /// one still live is closed as superseded in the same transaction, with an enforcement
    /// event so its gateway stops it. `records` gets the superseded session (as closed) and
    /// returns the records to write.
    ///
    /// The commit is guarded on every fact `decided` holds: if any changed since the decision
    /// read it, nothing is written and the caller gets the facts as they are now
    /// (`FactsChanged`). So a START racing a freeze, a revoke or a delisting either commits
    /// before it (and the change's re-check finds the session) or sees it.
    pub async fn open_session(
        &self,
        session: &Session,
        decided: &Facts,
        decision_id: &str,
        policy_version: &str,
        records: &(dyn Fn(Option<&Session>) -> Vec<LogRecord> + Sync),
    ) -> Result<Opened, PdpError> {
        let key = session_key(&session.id);
        let idem = session
            .idempotency_key
            .as_ref()
            .map(|k| idempotency_key(&session.gateway_id, k));
        self.transact(&|tx| {
            if let Some(idem) = &idem
                && let Some(first) = tx_get::<IdempotentStart>(tx, idem)?
            {
                // Read here, not from the view: on a replica whose view has not caught up with
                // the first START yet, the view would call its live session unknown.
                let admitted = tx_get::<Session>(tx, &session_key(&first.session_id))?;
                return Ok(Opened::Replay(first, admitted.map(Box::new)));
            }
            let facts = tx::tx_facts(tx, decided)?;
            if facts != *decided {
                return Ok(Opened::FactsChanged(Box::new(facts)));
            }
            if let Some(stored) = tx_get::<Session>(tx, &key)? {
                // An earlier attempt of this very call committed before its answer was lost.
                if stored.started_at == session.started_at
                    && stored.gateway_id == session.gateway_id
                {
                    return Ok(Opened::New { superseded: None });
                }
                return Err(PdpError::Storage(format!(
                    "session id {} collides with a stored session",
                    session.id
                ))
                .into());
            }
            let mut superseded = None;
            if let Some(old_id) = tx_pointer(tx, &room_key(&session.room_id))? {
                let old_key = session_key(&old_id);
                if let Some(old) = tx_get::<Session>(tx, &old_key)?
                    && old.state == SessionState::Active
                {
                    let mut closed = old.clone();
                    closed.state = SessionState::Ended;
                    closed.closed_at = Some(session.started_at);
                    closed.close_reason = format!(
                        "superseded by session {}: a room has one live broadcast",
                        session.id
                    );
                    tx_put(tx, &old_key, &closed)?;
                    tx_index_session(tx, &closed)?;
                    tx_event(
                        tx,
                        &closed,
                        EventBody {
                            trigger: Trigger::Superseded,
                            reason: &closed.close_reason,
                            violations: Vec::new(),
                            penalty_applied: None,
                            at: session.started_at,
                            replica: &self.replica,
                        },
                    )?;
                    superseded = Some(closed);
                }
            }
            tx_put(tx, &key, session)?;
            tx_index_session(tx, session)?;
            if let Some(idem) = &idem {
                tx_put(
                    tx,
                    idem,
                    &IdempotentStart {
                        session_id: session.id.clone(),
                        decision_id: decision_id.to_owned(),
                        policy_version: policy_version.to_owned(),
                        at: session.started_at,
                    },
                )?;
            }
            for record in records(superseded.as_ref()) {
                tx.log(&record)?;
            }
            Ok(Opened::New {
                superseded: superseded.map(Box::new),
            })
        })
        .await
    }

    /// A live session from the view; a closed one from the store.
    pub fn get_session(&self, session_id: &str) -> Result<Option<Session>, PdpError> {
        if let Some(live) = self.shared.view.live_session(session_id) {
            return Ok(Some(live));
        }
        self.read(&session_key(session_id))
    }

    /// Applies `update` to the stored session atomically; writes it, with `record`, only if it
    /// changed. Returns the session and whether it changed.
    pub async fn update_session(
        &self,
        session_id: &str,
        update: impl Fn(&Session) -> Result<Session, PdpError> + Sync,
        request: Option<&Request>,
        record: &(dyn Fn(&Session) -> LogRecord + Sync),
    ) -> Result<Answer<(Session, bool)>, PdpError> {
        let key = session_key(session_id);
        self.transact_once(request, &|tx| {
            let current: Session = tx_get(tx, &key)?
                .ok_or_else(|| PdpError::NotFound(format!("session {session_id} is unknown")))?;
            let next = update(&current)?;
            let changed = next != current;
            if changed {
                tx_put(tx, &key, &next)?;
                tx_index_session(tx, &next)?;
                tx.log(&record(&next))?;
            }
            Ok((next, changed))
        })
        .await
    }

    /// Shuts a session down and applies a discovery's penalty: session, account, the
    /// enforcement event and the decision's `record` change together or not at all. Returns
    /// the event when the discovery ended a live session. For a discovery that is not a
    /// decision on facts (an inspector's report); a decision's uses `enforce_decided`.
    pub async fn enforce(
        &self,
        discovery: &Discovery,
        request: Option<&Request>,
        record: &(dyn Fn(&Enforced) -> LogRecord + Sync),
    ) -> Result<Answer<(Enforced, Option<EnforcementEvent>)>, PdpError> {
        self.transact_once(request, &|tx| self.tx_enforce(tx, discovery, record))
            .await
    }

    /// `enforce`, for a shutdown a decision on `decided` called for: committed only on those
    /// facts. When they changed meanwhile (a lift, an approval), nothing is written and the
    /// caller gets the facts the commit found, to decide again.
    pub async fn enforce_decided(
        &self,
        discovery: &Discovery,
        decided: &Facts,
        record: &(dyn Fn(&Enforced) -> LogRecord + Sync),
    ) -> Result<Enforcing, PdpError> {
        self.enforce_decided_batch(&[(discovery, decided, record)])
            .await?
            .pop()
            .ok_or_else(|| PdpError::Storage("a shutdown's commit gave no answer".into()))
    }

    /// `enforce_decided` for many sessions in one commit, each checked against the facts it
    /// was decided on as it would be alone (after the ones before it in the batch: a
    /// merchant's second session finds the account the first one's penalty froze, and comes
    /// back `FactsChanged` to be decided again). One answer per item, in order.
    pub async fn enforce_decided_batch(
        &self,
        items: &[DecidedShutdown<'_>],
    ) -> Result<Vec<Enforcing>, PdpError> {
        self.transact(&|tx| {
            let mut answers = Vec::with_capacity(items.len());
            for (discovery, decided, record) in items {
                let facts = tx::tx_facts(tx, decided)?;
                answers.push(if facts != **decided {
                    Enforcing::FactsChanged(Box::new(facts))
                } else {
                    Enforcing::Done(Box::new(self.tx_enforce(tx, discovery, *record)?))
                });
            }
            Ok(answers)
        })
        .await
    }

    /// How many shutdowns one `enforce_decided_batch` may carry: on etcd a `Txn` holds at
    /// most 128 operations (a shutdown compares ~7 facts and writes ~7 keys; one whose anchor
    /// names a consent, one more of each).
    pub fn enforce_batch_limit(&self) -> usize {
        match &self.backend {
            Backend::Sled(_) => 256,
            Backend::Etcd(_) => 4,
        }
    }

    fn tx_enforce(
        &self,
        tx: &dyn Tx,
        discovery: &Discovery,
        record: &(dyn Fn(&Enforced) -> LogRecord + Sync),
    ) -> TxResult<(Enforced, Option<EnforcementEvent>)> {
        let skey = session_key(&discovery.session_id);
        let session: Session = tx_get(tx, &skey)?.ok_or_else(|| {
            PdpError::NotFound(format!("session {} is unknown", discovery.session_id))
        })?;
        let akey = account_key(&session.merchant_id);
        let account: Account =
            tx_get(tx, &akey)?.unwrap_or_else(|| Account::new(&session.merchant_id));
        let enforced = domain::apply_discovery(&session, &account, discovery)?;
        if enforced.session != session {
            tx_put(tx, &skey, &enforced.session)?;
            tx_index_session(tx, &enforced.session)?;
        }
        if enforced.account != account {
            tx_put(tx, &akey, &enforced.account)?;
        }
        let ended_live =
            session.state == SessionState::Active && enforced.session.state != SessionState::Active;
        let event = if ended_live {
            Some(tx_event(
                tx,
                &enforced.session,
                EventBody {
                    trigger: discovery.trigger,
                    reason: &discovery.reason,
                    violations: discovery.violations.clone(),
                    penalty_applied: enforced.penalty_applied,
                    at: discovery.at,
                    replica: &self.replica,
                },
            )?)
        } else {
            None
        };
        tx.log(&record(&enforced))?;
        Ok((enforced, event))
    }

    /// Sessions admitted and not yet shut down or ended.
    pub fn active_sessions(&self) -> Result<Vec<Session>, PdpError> {
        let mut sessions = self.shared.view.live_sessions();
        sessions.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(sessions)
    }

    /// Notes a gateway's check of live session `session_id` at `at` (in memory, this process).
    pub fn note_check(&self, session_id: &str, at: Millis) {
        self.shared.view.note_check(session_id, at);
    }

    /// The latest check (START or LIVE) of a live session this process answered, if any.
    pub fn last_check(&self, session_id: &str) -> Option<Millis> {
        self.shared.view.last_check(session_id)
    }

    /// The session a gateway hook refers to by its stream lookup key.
    pub fn session_by_stream(&self, lookup: &str) -> Result<Option<Session>, PdpError> {
        match self.read_raw(&stream_key(lookup))? {
            Some(id) => self.get_session(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Durable enforcement events after `after`, oldest first, at most `limit`.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EnforcementEvent>, PdpError> {
        let durable = *self.shared.events_durable.borrow();
        if after >= durable {
            return Ok(Vec::new());
        }
        let start = event_key(after.saturating_add(1));
        let end = event_key(durable.saturating_add(1));
        self.scan(&start, &end, limit)?
            .into_iter()
            .map(|(key, value)| decode(&key, &value))
            .collect()
    }

    /// Changes whenever a newer enforcement event is durable; the value is its sequence.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.events_durable.subscribe()
    }

    /// Writes records and accounts as given: for fixtures and restores, where the state is
    /// already decided. Registration goes through `register` instead. Written in transactions
    /// of a few dozen records (etcd bounds a transaction's size).
    pub async fn import(
        &self,
        registrations: &[Registration],
        accounts: &[Account],
    ) -> Result<(), PdpError> {
        const CHUNK: usize = 100;
        for chunk in registrations.chunks(CHUNK) {
            self.transact(&|tx| {
                for registration in chunk {
                    tx_put(
                        tx,
                        &registration_key(registration.kind(), &registration.id),
                        registration,
                    )?;
                }
                Ok(())
            })
            .await?;
        }
        for chunk in accounts.chunks(CHUNK) {
            self.transact(&|tx| {
                for account in chunk {
                    tx_put(tx, &account_key(&account.merchant_id), account)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Deletes closed sessions (shut down or ended before `older_than`), enforcement events and
    /// the first answers kept for retries from before it. Live sessions are never touched. Returns (sessions, events) deleted.
    pub async fn prune_history(&self, older_than: Millis) -> Result<(usize, usize), PdpError> {
        const PAGE: usize = 1000;
        let mut sessions = 0;
        // Oldest first; stops at the first session closed at or after the cutoff.
        let cutoff = closed_key(older_than, "");
        loop {
            let page = self.scan("closed/", &cutoff, PAGE)?;
            let done = page.len() < PAGE;
            for (index_key, _) in page {
                let Some(session_id) = index_key["closed/".len()..].split_once('/').map(|x| x.1)
                else {
                    continue;
                };
                let key = session_key(session_id);
                let removed = self
                    .transact(&|tx| {
                        tx.remove(&index_key)?;
                        // Sessions never go back to live; still, only a closed one is deleted.
                        let Some(session) = tx_get::<Session>(tx, &key)?
                            .filter(|s| s.state != SessionState::Active)
                        else {
                            return Ok(false);
                        };
                        tx.remove(&key)?;
                        tx.remove(&live_key(&session.id))?;
                        tx_remove_if_points_at(tx, &room_key(&session.room_id), &session.id)?;
                        if let Some(stream) = &session.stream {
                            let stream = stream_key(&stream.lookup_key(&session.gateway_id));
                            tx_remove_if_points_at(tx, &stream, &session.id)?;
                        }
                        if let Some(idem) = &session.idempotency_key {
                            let idem = idempotency_key(&session.gateway_id, idem);
                            if tx_get::<IdempotentStart>(tx, &idem)?
                                .is_some_and(|first| first.session_id == session.id)
                            {
                                tx.remove(&idem)?;
                            }
                        }
                        Ok(true)
                    })
                    .await?;
                if removed {
                    sessions += 1;
                }
            }
            if done {
                break;
            }
        }
        // Retries' first answers, oldest first.
        let cutoff = tx::request_at_key(older_than, "");
        loop {
            let page = self.scan("reqat/", &cutoff, PAGE)?;
            let done = page.len() < PAGE;
            for chunk in page.chunks(50) {
                self.transact(&|tx| {
                    for (index_key, _) in chunk {
                        // reqat/<20 digits>/<answer key>
                        if let Some(answer) = index_key.get("reqat/".len() + 21..) {
                            tx.remove(answer)?;
                        }
                        tx.remove(index_key)?;
                    }
                    Ok(())
                })
                .await?;
            }
            if done {
                break;
            }
        }
        let mut events = 0;
        loop {
            let page = self.scan("evt/", "evt0", PAGE)?;
            let mut expired = Vec::new();
            for (key, value) in &page {
                let event: EnforcementEvent = decode(key, value)?;
                if event.at >= older_than {
                    break;
                }
                expired.push(key.clone());
            }
            let more = expired.len() == page.len() && page.len() == PAGE;
            for chunk in expired.chunks(100) {
                self.transact(&|tx| {
                    for key in chunk {
                        tx.remove(key)?;
                    }
                    Ok(())
                })
                .await?;
                events += chunk.len();
            }
            if !more {
                break;
            }
        }
        Ok((sessions, events))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::{DriveMode, LivestreamType, Penalty, Trigger};

    fn session(id: &str, state: SessionState, closed_at: Option<Millis>) -> Session {
        Session {
            id: id.into(),
            state,
            merchant_id: "m1".into(),
            // A room each: a room's new session would supersede its live one.
            room_id: format!("r-{id}"),
            anchor_id: "a1".into(),
            driver_id: "d1".into(),
            livestream_type: LivestreamType::DailyMarketing,
            drive_mode: DriveMode::RealPerson,
            ai_features: BTreeSet::new(),
            gateway_id: "gw".into(),
            started_at: 0,
            closed_at,
            close_reason: String::new(),
            penalty_applied: None,
            stream: None,
            idempotency_key: None,
            labels: None,
            consent_id: None,
        }
    }

    /// A record for store tests (the sled backend's too).
    pub(super) fn test_record() -> LogRecord {
        LogRecord {
            id: uuid::Uuid::now_v7().to_string(),
            at: 0,
            action: "authorize".into(),
            caller: "test".into(),
            entry_point: "test".into(),
            gateway_id: String::new(),
            merchant_id: "m1".into(),
            session_id: String::new(),
            request: serde_json::Value::Null,
            allowed: Some(false),
            rule_ids: vec![],
            warning_rule_ids: vec![],
            enforcement: "SHUT_DOWN".into(),
            policy_version: "v".into(),
            outcome: "ok".into(),
            explanation: None,
            penalty_applied: None,
            warning_issued: false,
            cause_id: String::new(),
            change: String::new(),
            commit: 0,
        }
    }

    #[test]
    fn records_a_crash_left_in_the_outbox_reach_the_log_once_at_open() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = temp.path().join("data");
        let mut left = test_record();
        left.id = uuid::Uuid::now_v7().to_string();
        let mut appended = test_record();
        appended.id = uuid::Uuid::now_v7().to_string();
        {
            let store = Store::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            runtime
                .block_on(store.append_log(vec![appended.clone()]))
                .unwrap_or_else(|e| panic!("{e}"));
            // The state of a crash after a change was durable: one record only in the outbox,
            // one in both (the crash came before the outbox was emptied).
            let Backend::Sled(sled) = &store.backend else {
                panic!("the embedded store is sled")
            };
            for record in [&left, &appended] {
                sled.put_in_outbox(record).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let store = Store::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.log_len(), 2);
        let (records, _) = store
            .read_log(None, |_| true, 10, 10)
            .unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<_> = records.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, [appended.id.clone(), left.id.clone()]);
        let Backend::Sled(sled) = &store.backend else {
            panic!("the embedded store is sled")
        };
        assert_eq!(sled.outbox_len(), 0, "the outbox is emptied");
    }

    /// Operations committed in batches still each read what every operation before them
    /// wrote: 64 callers each adding one to the same counter 40 times lose no increment, and
    /// every increment's record reaches the decision log, also after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_commits_read_every_earlier_write_and_keep_every_record() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = temp.path().join("data");
        let store = Arc::new(Store::open(&dir).unwrap_or_else(|e| panic!("{e}")));
        let (callers, each) = (64u64, 40u64);
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..each {
                    let value = store
                        .transact(&|tx| {
                            let next = match tx.get("test/counter")? {
                                Some(bytes) => tx::decode_counter("test/counter", &bytes)? + 1,
                                None => 1,
                            };
                            tx.put("test/counter", next.to_be_bytes().to_vec())?;
                            let mut record = test_record();
                            record.id = format!("counter-{next:06}");
                            tx.log(&record)?;
                            Ok(next)
                        })
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    seen.push(value);
                }
                seen
            }));
        }
        let mut values = Vec::new();
        for task in tasks {
            values.extend(task.await.unwrap_or_else(|e| panic!("{e}")));
        }
        values.sort_unstable();
        let expected: Vec<u64> = (1..=callers * each).collect();
        assert_eq!(
            values, expected,
            "each caller saw the counter as the one before left it"
        );
        let Backend::Sled(sled) = &store.backend else {
            panic!("the embedded store is sled")
        };
        assert_eq!(sled.outbox_len(), 0, "the outbox is emptied");
        assert_eq!(store.log_len(), callers * each);
        drop(store);
        let store = Store::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let stored = store
            .read_raw("test/counter")
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|bytes| {
                tx::decode_counter("test/counter", &bytes).unwrap_or_else(|e| panic!("{e}"))
            });
        assert_eq!(stored, Some(callers * each));
        assert_eq!(store.log_len(), callers * each);
    }

    #[test]
    fn history_retention_keeps_live_sessions_and_recent_events() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&temp.path().join("data")).unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            for s in [
                session("ended", SessionState::Ended, Some(5)),
                session("live", SessionState::Active, None),
                session("old-live", SessionState::Active, None),
                session("recent", SessionState::Ended, Some(50)),
            ] {
                let facts = store
                    .facts(&s.merchant_id, &s.room_id, &s.anchor_id, &s.driver_id, &[])
                    .unwrap_or_else(|e| panic!("{e}"));
                store
                    .open_session(&s, &facts, "d", "v", &|_| Vec::new())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            let discovery = |session: &str, at| Discovery {
                id: format!("{session}-{at}"),
                session_id: session.into(),
                trigger: Trigger::ViolationReport,
                violations: vec![],
                rule_ids: vec!["R3".into()],
                penalty: Penalty::None,
                discovered_by: "test".into(),
                reason: "test".into(),
                at,
                drive_mode: None,
                ai_features: BTreeSet::new(),
                labels: None,
            };
            store
                .enforce(&discovery("old-live", 6), None, &|_| test_record())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            store
                .enforce(&discovery("live", 60), None, &|_| test_record())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        });
        let (sessions, events) = runtime
            .block_on(store.prune_history(10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((sessions, events), (2, 1));
        for (id, kept) in [
            ("ended", false),
            ("old-live", false),
            ("live", true),
            ("recent", true),
        ] {
            let found = store.get_session(id).ok().flatten().is_some();
            assert_eq!(found, kept, "{id}");
        }
        let events = store.events_after(0, 10).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.iter().map(|e| e.sequence).collect::<Vec<_>>(), [2]);
    }
}
