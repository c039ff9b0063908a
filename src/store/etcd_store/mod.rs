//! The replicated backend: etcd v3 holds the state; every replica keeps all of it in memory.
//!
//! - **Reads** come from a mirror of every key under the prefix, loaded from a snapshot at one
//!   revision and then fed by a watch from that revision (Kubernetes' watch cache; `watch.rs`).
//!   The mirror feeds the in-memory view that decisions read, through the same function sled's
//!   commits use. A watch that finds its revision compacted reloads the snapshot.
//! - **Writes** run the operation against the mirror and commit what it wrote as one etcd
//!   `Txn`, guarded by the `mod_revision` of every key it read (`create_revision == 0` for a
//!   key it found absent). If another writer got there first, the `Txn` fails, its `else`
//!   branch returns the current values of the keys read, and the operation runs again on them.
//!   An operation that writes nothing (it refuses, or finds nothing to change) is answered
//!   only once the same guards hold in etcd, so its answer is never from a stale mirror. Every
//!   commit carries a marker key, so an attempt whose answer was lost is found committed (or
//!   not) before anything runs again: a retry gets the first attempt's result. The writer then
//!   waits for its own revision to arrive through the watch, so a caller reads its own write on
//!   the replica it wrote through.
//! - **The decision log**: a change's records go in its `Txn` as `log/<id>` keys; every
//!   replica's watch appends them to its local segments (skipping records it has), and a
//!   retention task deletes them from etcd after `log_retention`.
//! - **Policy**: the active policy set is the value of `policy/active`; the watch hands every
//!   new value to whoever subscribed.
//! - **Members** (`members.rs`): a client per member; requests go to the one that answered
//!   last and move on when it fails or hangs.
//! - **Currency**: every member is asked for a linearizable read every 200 ms. The view is
//!   *current* once the mirror has reached the revision such a read returned; the time that read
//!   was asked is how old the view may be. Without a quorum for a moment writes are refused at
//!   once; a view older than `max_staleness` answers nothing (fail closed); a decision made more
//!   than a second after the view was last known current first waits for it to catch up (a
//!   replica resumed from a pause answers nothing queued from its old view).

mod backup;
mod currency;
mod members;
mod snapshot;
mod watch;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, Identity,
    KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use super::Shared;
use super::tx::{Tx, TxError, TxResult, decode, decode_counter, view_change};
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;
use members::Members;

/// How to reach etcd and how long a replica may answer from its view without a quorum.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// Every key the PDP writes starts with it.
    pub prefix: String,
    pub user: Option<(String, String)>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How old the view may be (since it was last known to have caught up with a quorum
    /// read) and still answer LIVE re-checks.
    pub max_staleness: Duration,
    /// How long state-change records stay in etcd for replicas to copy into their logs.
    pub log_retention: Duration,
    /// Revisions older than this are compacted.
    pub compact_after: Duration,
    /// Names this replica in enforcement events and its decision log.
    pub replica: String,
}

/// One etcd request's budget: long enough to ride out a leader election (etcd holds a
/// request while it elects), short enough that a caller hears back.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt's budget. A member that hangs keeps its connection open: past this, the
/// attempt is made again through another member, until `REQUEST_TIMEOUT`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The heartbeat's budget per member: it is how an outage is noticed, so it is short.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(800);
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Heartbeats may fail for this long before writes are refused: a paused or killed leader
/// leaves no member answering linearizable reads until the others elect a new one, which on
/// etcd's default 1 s election timeout takes 1–2 s. Writes in that window wait for the
/// election (`REQUEST_TIMEOUT`) rather than being refused.
const QUORUM_GRACE: Duration = Duration::from_millis(3000);
/// A view last known current longer ago than this catches up before it decides.
const FRESH: Duration = Duration::from_millis(1000);
/// A watch this far behind a quorum read is moved to another member.
const WATCH_STALL: Duration = Duration::from_millis(1000);
/// How long a decision waits for a view that is not fresh to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_millis(1000);
/// How long a writer waits for its own commit to reach its view.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(5);
/// Writers racing on one key win one per round trip; the losers back off (with jitter, so
/// they do not collide again in lockstep) and run again, until `REQUEST_TIMEOUT`.
const MAX_ATTEMPTS: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_millis(20);
const SNAPSHOT_PAGE: i64 = 1000;
const MAX_TXN_OPS: usize = 120;
pub const POLICY_KEY: &str = "policy/active";
/// Commit markers: `done/<ms>/<uuid>`, deleted with the decision-log keys.
const MARKER_PREFIX: &str = "done/";
/// A restore into the prefix that has begun and not finished (see `Store::restore`).
const RESTORING_KEY: &str = "restoring";
/// `nudge/<replica>`: written when the view must prove it has caught up (see `nudge`).
const NUDGE_PREFIX: &str = "nudge/";
/// A quorum read the view has not caught up with for this long is followed by a nudge.
const NUDGE_AFTER: Duration = Duration::from_millis(300);

/// The published policy set's bytes and the revision that published it.
pub type PublishedPolicy = Option<(Vec<u8>, i64)>;

#[derive(Default)]
struct Mirror {
    /// Key (without the prefix) → value and the revision that last changed it.
    kv: BTreeMap<String, (Vec<u8>, i64)>,
    revision: i64,
}

struct Health {
    /// When a quorum read (through any member) last succeeded.
    last_quorum: Instant,
    /// When the quorum read that the view last caught up with was asked: the view holds
    /// everything committed before then.
    last_current: Instant,
    /// Quorum reads the view has not caught up with yet: when each was asked, its revision.
    probes: VecDeque<(Instant, i64)>,
    /// Why writes are refused (no quorum), while they are.
    no_quorum: Option<String>,
    /// Why the replica is not serving (no quorum, or a view too old), while it is not.
    problem: Option<String>,
    watch_connected: bool,
    /// When a decision last failed to bring the view up to date: the next ones do not wait.
    catch_up_failed: Option<Instant>,
}

pub struct EtcdBackend {
    members: Members,
    options: EtcdOptions,
    mirror: RwLock<Mirror>,
    /// The mirror's revision, for writers and `min_revision` readers waiting on it.
    revision: tokio::sync::watch::Sender<i64>,
    health: Mutex<Health>,
    /// The published policy set and its revision, as the watch last saw it.
    policy: tokio::sync::watch::Sender<PublishedPolicy>,
    /// The member the watch follows.
    watch_member: AtomicUsize,
    watch_started: Mutex<Instant>,
    /// When this replica last wrote its nudge key.
    nudged: Mutex<Option<Instant>>,
    /// Tells the watch to move to another member.
    watch_stalled: tokio::sync::Notify,
    /// One catch-up at a time; the decisions behind it find the view current.
    catching_up: tokio::sync::Mutex<()>,
}

fn etcd_error(what: &str, e: impl std::fmt::Display) -> PdpError {
    PdpError::Storage(format!("etcd: {what}: {e}"))
}

async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, PdpError> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(etcd_error(what, e)),
        Err(_) => Err(etcd_error(
            what,
            format!("no answer within {} ms", limit.as_millis()),
        )),
    }
}

/// The first key after every key that starts with `prefix` (`\0`, every key, if none is).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The smallest decision id (UUIDv7, lowercase) logged at or after `at`.
fn first_id_at(at: Millis) -> String {
    let ms = at.max(0) as u64;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// The commit marker key for a commit made at `at`, and the smallest at or after `at`.
fn marker_key(at: Millis) -> String {
    format!(
        "{MARKER_PREFIX}{:013}/{}",
        at.max(0),
        uuid::Uuid::now_v7().simple()
    )
}

fn now_ms() -> Millis {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

/// How long a writer that lost its `attempt`-th race waits: doubling from 250 µs up to
/// `MAX_BACKOFF`, times a random factor in [0.5, 1.5).
fn backoff(attempt: usize) -> Duration {
    let base = Duration::from_micros(250)
        .saturating_mul(1 << attempt.min(8))
        .min(MAX_BACKOFF);
    // A UUIDv7's last 62 bits are random.
    let random = (uuid::Uuid::now_v7().as_u128() & 0xffff) as f64 / 65536.0;
    base.mul_f64(0.5 + random)
}

/// One attempt of an operation against the mirror.
struct EtcdTx<'a> {
    backend: &'a EtcdBackend,
    /// Values read from etcd when the previous attempt lost, at `fresher_at`.
    fresher: &'a HashMap<String, Option<(Vec<u8>, i64)>>,
    fresher_at: i64,
    /// Each key read before this attempt wrote it, with the revision that last changed it (0:
    /// absent).
    reads: RefCell<BTreeMap<String, i64>>,
    writes: RefCell<BTreeMap<String, Option<Vec<u8>>>>,
    logged: RefCell<Vec<LogRecord>>,
}

impl Tx for EtcdTx<'_> {
    fn get(&self, key: &str) -> TxResult<Option<Vec<u8>>> {
        if let Some(written) = self.writes.borrow().get(key) {
            return Ok(written.clone());
        }
        let found = {
            let mirror = self
                .backend
                .mirror
                .read()
                .unwrap_or_else(|p| p.into_inner());
            match self.fresher.get(key) {
                Some(fresh) if mirror.revision < self.fresher_at => fresh.clone(),
                _ => mirror.kv.get(key).cloned(),
            }
        };
        self.reads
            .borrow_mut()
            .entry(key.to_owned())
            .or_insert_with(|| found.as_ref().map_or(0, |(_, rev)| *rev));
        Ok(found.map(|(value, _)| value))
    }

    fn put(&self, key: &str, value: Vec<u8>) -> TxResult<()> {
        self.writes.borrow_mut().insert(key.to_owned(), Some(value));
        Ok(())
    }

    fn remove(&self, key: &str) -> TxResult<()> {
        self.writes.borrow_mut().insert(key.to_owned(), None);
        Ok(())
    }

    fn log(&self, record: &LogRecord) -> TxResult<()> {
        self.logged.borrow_mut().push(record.clone());
        Ok(())
    }
}

impl EtcdBackend {
    /// Connects, loads the snapshot into the view and starts the watch, the heartbeats and the
    /// retention task.
    pub async fn open(options: EtcdOptions, shared: Arc<Shared>) -> Result<Arc<Self>, PdpError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(1))
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader refuses at once instead of holding requests.
            .with_require_leader(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if options.ca.is_some() || options.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &options.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| etcd_error(&format!("reading {}", ca.display()), e))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&options.cert, &options.key) {
                let cert = std::fs::read(cert)
                    .map_err(|e| etcd_error(&format!("reading {}", cert.display()), e))?;
                let key = std::fs::read(key)
                    .map_err(|e| etcd_error(&format!("reading {}", key.display()), e))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(tls);
        }
        let members = Members::connect(&options.endpoints, connect, REQUEST_TIMEOUT).await?;
        let (revision, _) = tokio::sync::watch::channel(0);
        let (policy, _) = tokio::sync::watch::channel(None);
        let backend = Arc::new(EtcdBackend {
            members,
            options,
            mirror: RwLock::new(Mirror::default()),
            revision,
            health: Mutex::new(Health {
                last_quorum: Instant::now(),
                last_current: Instant::now(),
                probes: VecDeque::new(),
                no_quorum: None,
                problem: None,
                watch_connected: false,
                catch_up_failed: None,
            }),
            policy,
            watch_member: AtomicUsize::new(0),
            watch_started: Mutex::new(Instant::now()),
            nudged: Mutex::new(None),
            watch_stalled: tokio::sync::Notify::new(),
            catching_up: tokio::sync::Mutex::new(()),
        });
        backend.load_snapshot(&shared).await?;
        tokio::spawn(backend.clone().watch(shared.clone()));
        for member in 0..backend.members.len() {
            tokio::spawn(backend.clone().heartbeat(member));
        }
        tokio::spawn(backend.clone().assess(shared.clone()));
        tokio::spawn(backend.clone().retention());
        Ok(backend)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.options.prefix)
    }

    fn unprefixed<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.options.prefix.as_str())
    }

    fn mirror(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(|p| p.into_inner())
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision the view is at.
    pub fn revision(&self) -> u64 {
        self.mirror().revision.max(0) as u64
    }

    /// One request through the member that answers, moving to another when one fails or
    /// hangs, until `REQUEST_TIMEOUT`. Only for requests that may be made twice.
    async fn request<T, F>(
        &self,
        what: &str,
        mut attempt: impl FnMut(KvClient) -> F,
    ) -> Result<T, PdpError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        loop {
            let member = self.members.pick();
            let asked = Instant::now();
            let outcome = match self.members.client(member).await {
                Ok(client) => within(ATTEMPT_TIMEOUT, what, attempt(client.kv_client())).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(v) => {
                    self.members.answered(member, asked);
                    return Ok(v);
                }
                Err(e) => {
                    self.members.failed(member);
                    if started.elapsed() + ATTEMPT_TIMEOUT > REQUEST_TIMEOUT {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, member = self.members.url(member), "etcd: asking another member");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// One `Txn` attempt through the member that answers. An error does not say whether it
    /// committed.
    async fn send(&self, txn: Txn) -> Result<TxnResponse, PdpError> {
        let member = self.members.pick();
        let asked = Instant::now();
        let client = self.members.client(member).await?;
        let mut kv = client.kv_client();
        match within(ATTEMPT_TIMEOUT, "committing", kv.txn(txn)).await {
            Ok(response) => {
                self.members.answered(member, asked);
                Ok(response)
            }
            Err(e) => {
                self.members.failed(member);
                Err(e)
            }
        }
    }

    /// Waits until the view is at `revision` or later; false if `within` passed first.
    pub async fn wait_for(&self, revision: u64, within: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        let target = revision as i64;
        tokio::time::timeout(within, rx.wait_for(|current| *current >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Deletes decision-log keys older than the retention and compacts old revisions, once a
    /// minute. Every replica runs it; doing it twice is harmless.
    async fn retention(self: Arc<Self>) {
        let mut seen: std::collections::VecDeque<(Instant, i64)> = Default::default();
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticker.tick().await;
            let now = now_ms();
            let cutoff = now - self.options.log_retention.as_millis() as Millis;
            let from = self.key("log/");
            let to = self.key(&format!("log/{}", first_id_at(cutoff)));
            let markers = (
                self.key(MARKER_PREFIX),
                self.key(&format!("{MARKER_PREFIX}{:013}", cutoff.max(0))),
            );
            for (from, to) in [(from, to), markers] {
                let deleted = self
                    .request("deleting old decision-log keys", |mut kv| {
                        let (from, to) = (from.clone(), to.clone());
                        async move {
                            kv.delete(from, Some(DeleteOptions::new().with_range(to)))
                                .await
                        }
                    })
                    .await;
                if let Err(e) = deleted {
                    tracing::warn!(%e, "etcd: decision-log retention failed; will retry");
                }
            }
            seen.push_back((Instant::now(), self.mirror().revision));
            while seen
                .front()
                .is_some_and(|(at, _)| at.elapsed() > self.options.compact_after)
            {
                let Some((_, revision)) = seen.pop_front() else {
                    break;
                };
                match self
                    .request("compacting", |mut kv| async move {
                        kv.compact(revision, Some(CompactionOptions::new())).await
                    })
                    .await
                {
                    Ok(_) => tracing::debug!(revision, "etcd: compacted"),
                    // Another replica compacted further already.
                    Err(e) => tracing::debug!(%e, revision, "etcd: compaction skipped"),
                }
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.mirror().kv.get(key).map(|(value, _)| value.clone())
    }

    pub fn scan(&self, start: &str, end: &str, limit: usize) -> Vec<(String, Vec<u8>)> {
        self.mirror()
            .kv
            .range(start.to_owned()..end.to_owned())
            .take(limit)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// One key as etcd has it now (a linearizable read, not the view): its value and the
    /// revision that last changed it.
    async fn read_key(&self, what: &str, key: &str) -> Result<Option<(Vec<u8>, i64)>, PdpError> {
        let key = self.key(key);
        let found = self
            .request(what, |mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(found
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// Whether the commit that wrote `marker` landed: its revision if it did.
    async fn committed(&self, marker: &str) -> Result<Option<i64>, PdpError> {
        let found = self.read_key("checking a commit", marker).await?;
        Ok(found.map(|(_, revision)| revision))
    }

    /// Runs `f` against the mirror and commits what it wrote as one guarded `Txn`, again on
    /// fresher values while another writer wins; then waits for the commit to reach the view.
    /// An answer that writes nothing (a refusal, nothing to change) is confirmed by the same
    /// guards first. Returns the value and the revision it is true at.
    pub async fn transact<T>(
        &self,
        f: &(dyn Fn(&dyn Tx) -> TxResult<T> + Sync),
    ) -> Result<(T, u64), PdpError> {
        let mut fresher = HashMap::new();
        let mut fresher_at = 0;
        let started = Instant::now();
        // An attempt whose answer was lost: its marker, and the value it committed (if it did).
        let mut uncertain: Option<(String, T)> = None;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 && started.elapsed() > REQUEST_TIMEOUT {
                break;
            }
            if let Some((marker, _)) = &uncertain {
                match self.committed(marker).await {
                    Ok(Some(revision)) => {
                        let Some((_, value)) = uncertain.take() else {
                            break;
                        };
                        tracing::info!(revision, "etcd: a commit whose answer was lost had landed");
                        return Ok((value, self.own_write(revision).await));
                    }
                    // It did not land (and cannot any more: its guards are stale or it was
                    // never received): run the operation again.
                    Ok(None) => uncertain = None,
                    Err(e) => {
                        if started.elapsed() + ATTEMPT_TIMEOUT > REQUEST_TIMEOUT {
                            return Err(PdpError::Storage(format!(
                                "{e} (the change may or may not have been made)"
                            )));
                        }
                        continue;
                    }
                }
            }
            let tx = EtcdTx {
                backend: self,
                fresher: &fresher,
                fresher_at,
                reads: RefCell::default(),
                writes: RefCell::default(),
                logged: RefCell::default(),
            };
            let outcome = match f(&tx) {
                Ok(value) => Ok(value),
                Err(TxError::Abort(e)) => Err(e),
                Err(TxError::Backend) => {
                    return Err(PdpError::Storage("etcd transaction failed".into()));
                }
            };
            let reads = tx.reads.into_inner();
            let writes = tx.writes.into_inner();
            let logged = tx.logged.into_inner();
            let compares: Vec<Compare> = reads
                .iter()
                .map(|(key, revision)| match revision {
                    0 => Compare::create_revision(self.key(key), CompareOp::Equal, 0),
                    r => Compare::mod_revision(self.key(key), CompareOp::Equal, *r),
                })
                .collect();
            let refresh: Vec<TxnOp> = reads
                .keys()
                .map(|key| TxnOp::get(self.key(key), None))
                .collect();
            let writes_nothing = outcome.is_err() || (writes.is_empty() && logged.is_empty());
            let mut outcome = Some(outcome);
            let txn = if writes_nothing {
                if reads.is_empty() {
                    let Some(outcome) = outcome else { break };
                    return outcome.map(|value| (value, self.revision()));
                }
                // Answered from what it read: only if etcd still has exactly that.
                Txn::new().when(compares).or_else(refresh)
            } else {
                // Without a quorum a write would hang until it timed out: refuse it at once.
                if let Some(why) = self.write_refusal() {
                    return Err(PdpError::Storage(why));
                }
                let mut ops: Vec<TxnOp> = writes
                    .into_iter()
                    .map(|(key, value)| match value {
                        Some(value) => TxnOp::put(self.key(&key), value, None),
                        None => TxnOp::delete(self.key(&key), None),
                    })
                    .collect();
                for record in &logged {
                    ops.push(TxnOp::put(
                        self.key(&format!("log/{}", record.id)),
                        super::tx::encode(&record.id, record)?,
                        None,
                    ));
                }
                if ops.len() + 1 > MAX_TXN_OPS {
                    return Err(PdpError::Storage(format!(
                        "etcd: one change would write {} keys; etcd takes at most {MAX_TXN_OPS} \
                         per transaction",
                        ops.len()
                    )));
                }
                let marker = marker_key(now_ms());
                ops.push(TxnOp::put(self.key(&marker), Vec::new(), None));
                if let Some(Ok(value)) = outcome.take() {
                    uncertain = Some((marker, value));
                }
                Txn::new().when(compares).and_then(ops).or_else(refresh)
            };
            let response = match self.send(txn).await {
                Ok(response) => response,
                Err(e) if started.elapsed() + ATTEMPT_TIMEOUT <= REQUEST_TIMEOUT => {
                    tracing::debug!(error = %e, "etcd: no answer to a commit; checking it");
                    continue;
                }
                Err(e) => {
                    return Err(PdpError::Storage(if writes_nothing {
                        e.to_string()
                    } else {
                        format!("{e} (the change may or may not have been made)")
                    }));
                }
            };
            let revision = response.header().map_or(0, |h| h.revision());
            if response.succeeded() {
                if let Some(outcome) = outcome {
                    return outcome.map(|value| (value, revision.max(0) as u64));
                }
                let Some((_, value)) = uncertain.take() else {
                    break;
                };
                return Ok((value, self.own_write(revision).await));
            }
            // Lost to another writer: run again on what it wrote.
            uncertain = None;
            fresher.clear();
            fresher_at = revision;
            for (key, op) in reads.keys().zip(response.op_responses()) {
                if let TxnOpResponse::Get(got) = op {
                    fresher.insert(
                        key.clone(),
                        got.kvs()
                            .first()
                            .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                    );
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
        Err(PdpError::Aborted(format!(
            "too many writers raced on the same records for {} s; try again",
            REQUEST_TIMEOUT.as_secs()
        )))
    }

    /// After this replica's own commit at `revision`: waits for it to reach the view, so the
    /// caller reads its own write here. Returns the revision to answer with.
    async fn own_write(&self, revision: i64) -> u64 {
        let revision = revision.max(0) as u64;
        if !self.wait_for(revision, OWN_WRITE_WAIT).await {
            tracing::warn!(
                revision,
                view = self.revision(),
                "etcd: a committed change has not reached this replica's view yet"
            );
        }
        revision
    }

    /// The published policy set, as the watch delivers it.
    pub fn subscribe_policy(&self) -> tokio::sync::watch::Receiver<PublishedPolicy> {
        self.policy.subscribe()
    }

    /// Publishes a policy set for every replica. With `only_if_absent`, only when none is
    /// published yet (the first replica to start publishes its own). Returns whether it wrote.
    pub async fn publish_policy(
        &self,
        bytes: Vec<u8>,
        only_if_absent: bool,
    ) -> Result<bool, PdpError> {
        let key = self.key(POLICY_KEY);
        let compares = if only_if_absent {
            vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)]
        } else {
            Vec::new()
        };
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![TxnOp::put(key, bytes, None)]);
        let response = self
            .request("publishing the policy set", |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            self.wait_for(revision as u64, OWN_WRITE_WAIT).await;
        }
        Ok(response.succeeded())
    }
}
