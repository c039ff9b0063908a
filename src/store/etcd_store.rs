//! The replicated backend: etcd v3 holds the state; every replica keeps all of it in memory.
//!
//! - **Reads** come from a mirror of every key under the prefix, loaded from a snapshot at one
//!   revision and then fed by a watch from that revision (Kubernetes' watch cache). The mirror
//!   feeds the in-memory view that decisions read, through the same function sled's commits use.
//!   A watch that finds its revision compacted reloads the snapshot.
//! - **Writes** run the operation against the mirror and commit what it wrote as one etcd
//!   `Txn`, guarded by the `mod_revision` of every key it read (`create_revision == 0` for a
//!   key it found absent). If another writer got there first, the `Txn` fails, its `else`
//!   branch returns the current values of the keys read, and the operation runs again on them.
//!   The writer then waits for its own revision to arrive through the watch, so a caller reads
//!   its own write on the replica it wrote through.
//! - **The decision log**: a change's records go in its `Txn` as `log/<id>` keys; every
//!   replica's watch appends them to its local segments (skipping records it has), and a
//!   retention task deletes them from etcd after `log_retention`.
//! - **Policy**: the active policy set is the value of `policy/active`; the watch hands every
//!   new value to whoever subscribed.
//! - **Health**: a heartbeat makes a linearizable read (it needs a quorum) every 200 ms. While
//!   none has succeeded for a moment, writes are refused at once; the view still answers for
//!   `max_staleness` after the last success, then reads fail closed too.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, Identity, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::Shared;
use super::tx::{
    EVENT_COUNTER_KEY, Tx, TxError, TxResult, Writes, decode, decode_counter, view_change,
};
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;

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
    /// How long after the last quorum read LIVE re-checks still answer from the view.
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
/// One attempt's budget. etcd-client balances over every endpoint, and a request it sends to a
/// member that just died can hang instead of failing: past this, the attempt is made again
/// (over another connection) until `REQUEST_TIMEOUT`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// The heartbeat's budget: it is how an outage is noticed, so it is short.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(800);
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Heartbeats may fail for this long before writes are refused: one lost packet is not an
/// outage.
const QUORUM_GRACE: Duration = Duration::from_millis(1000);
/// How long a writer waits for its own commit to reach its view.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(5);
/// Writers racing on one key win one per round trip; the losers back off (with jitter, so
/// they do not collide again in lockstep) and run again, until `REQUEST_TIMEOUT`.
const MAX_ATTEMPTS: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_millis(20);
const SNAPSHOT_PAGE: i64 = 1000;
const MAX_TXN_OPS: usize = 120;
pub const POLICY_KEY: &str = "policy/active";

/// The published policy set's bytes and the revision that published it.
pub type PublishedPolicy = Option<(Vec<u8>, i64)>;

#[derive(Default)]
struct Mirror {
    /// Key (without the prefix) → value and the revision that last changed it.
    kv: BTreeMap<String, (Vec<u8>, i64)>,
    revision: i64,
}

struct Health {
    /// When a quorum read last succeeded with the watch connected.
    last_current: Instant,
    /// Why the replica is not current, while it is not.
    problem: Option<String>,
    watch_connected: bool,
}

pub struct EtcdBackend {
    client: Client,
    options: EtcdOptions,
    mirror: RwLock<Mirror>,
    /// The mirror's revision, for writers and `min_revision` readers waiting on it.
    revision: tokio::sync::watch::Sender<i64>,
    health: Mutex<Health>,
    /// The published policy set and its revision, as the watch last saw it.
    policy: tokio::sync::watch::Sender<PublishedPolicy>,
}

fn etcd_error(what: &str, e: impl std::fmt::Display) -> PdpError {
    PdpError::Storage(format!("etcd: {what}: {e}"))
}

/// An idempotent request, attempted again while attempts fail, until `REQUEST_TIMEOUT`.
async fn timed<T, F>(what: &str, mut attempt: impl FnMut() -> F) -> Result<T, PdpError>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let started = Instant::now();
    loop {
        match within(ATTEMPT_TIMEOUT, what, attempt()).await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() + ATTEMPT_TIMEOUT > REQUEST_TIMEOUT => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "etcd: attempting again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
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

/// The key just past every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
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
    /// Connects, loads the snapshot into the view and starts the watch, the heartbeat and the
    /// retention task.
    pub async fn open(options: EtcdOptions, shared: Arc<Shared>) -> Result<Arc<Self>, PdpError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
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
        let client = tokio::time::timeout(
            REQUEST_TIMEOUT * 2,
            Client::connect(options.endpoints.clone(), Some(connect)),
        )
        .await
        .map_err(|_| {
            etcd_error(
                &format!("connecting to {}", options.endpoints.join(",")),
                "timed out",
            )
        })?
        .map_err(|e| etcd_error(&format!("connecting to {}", options.endpoints.join(",")), e))?;
        let (revision, _) = tokio::sync::watch::channel(0);
        let (policy, _) = tokio::sync::watch::channel(None);
        let backend = Arc::new(EtcdBackend {
            client,
            options,
            mirror: RwLock::new(Mirror::default()),
            revision,
            health: Mutex::new(Health {
                last_current: Instant::now(),
                problem: None,
                watch_connected: false,
            }),
            policy,
        });
        backend.load_snapshot(&shared).await?;
        tokio::spawn(backend.clone().watch(shared.clone()));
        tokio::spawn(backend.clone().heartbeat(shared.clone()));
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

    /// Every key under the prefix, read at one revision, replaces the mirror and the view.
    async fn load_snapshot(&self, shared: &Shared) -> Result<(), PdpError> {
        let kv = self.client.kv_client();
        let end = prefix_end(&self.options.prefix);
        let mut start = self.options.prefix.as_bytes().to_vec();
        let mut at = 0;
        let mut mirror = Mirror::default();
        let mut log_records = Vec::new();
        let mut policy = None;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(SNAPSHOT_PAGE);
            if at > 0 {
                options = options.with_revision(at);
            }
            let page = timed("reading the snapshot", || {
                let (mut kv, start, options) = (kv.clone(), start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await?;
            if at == 0 {
                at = page.header().map_or(0, |h| h.revision());
            }
            for item in page.kvs() {
                let Some(key) = self.unprefixed(item.key()) else {
                    continue;
                };
                if let Some(id) = key.strip_prefix("log/") {
                    log_records.push(decode::<LogRecord>(id, item.value())?);
                } else if key == POLICY_KEY {
                    policy = Some((item.value().to_vec(), item.mod_revision()));
                } else {
                    mirror
                        .kv
                        .insert(key.to_owned(), (item.value().to_vec(), item.mod_revision()));
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        mirror.revision = at;
        let mut registrations = Vec::new();
        let mut accounts = Vec::new();
        let mut live = Vec::new();
        for (key, (value, _)) in &mirror.kv {
            match view_change(key, value)? {
                Some(super::tx::ViewChange::Registration(r)) => registrations.push(r),
                Some(super::tx::ViewChange::Account(a)) => accounts.push(a),
                Some(super::tx::ViewChange::Session(s))
                    if s.state == crate::domain::SessionState::Active =>
                {
                    live.push(s)
                }
                _ => {}
            }
        }
        let last_event = match mirror.kv.get(EVENT_COUNTER_KEY) {
            Some((bytes, _)) => decode_counter(EVENT_COUNTER_KEY, bytes)?,
            None => 0,
        };
        {
            let mut current = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            shared.view.reset(registrations, accounts, live);
            *current = mirror;
        }
        self.revision.send_replace(at);
        shared.events_durable.send_replace(last_event);
        if policy.is_some() {
            self.policy.send_replace(policy);
        }
        self.append_missing(shared, log_records).await;
        tracing::info!(
            revision = at,
            endpoints = %self.options.endpoints.join(","),
            "etcd: view loaded from snapshot"
        );
        Ok(())
    }

    /// Appends to the local decision log the records it does not have yet.
    async fn append_missing(&self, shared: &Shared, records: Vec<LogRecord>) {
        let mut missing = Vec::new();
        for record in records {
            match shared.segments.get(&record.id) {
                Ok(Some(_)) => {}
                _ => missing.push(record),
            }
        }
        if missing.is_empty() {
            return;
        }
        if let Err(e) = shared.segments.append(missing).await {
            let _ = shared.write_failed(e);
        }
    }

    /// Follows every change under the prefix, from the mirror's revision on, for as long as
    /// the process runs; reconnects, and reloads the snapshot when the revision it needs was
    /// compacted away.
    async fn watch(self: Arc<Self>, shared: Arc<Shared>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let from = self.mirror().revision + 1;
            let options = WatchOptions::new()
                .with_range(prefix_end(&self.options.prefix))
                .with_start_revision(from)
                .with_progress_notify();
            let mut client = self.client.watch_client();
            let stream = client
                .watch(self.options.prefix.clone(), Some(options))
                .await;
            let mut stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    self.watch_lost(&format!("cannot watch: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        if response.compact_revision() > 0 {
                            tracing::warn!(
                                compacted = response.compact_revision(),
                                "etcd: the watch's revision was compacted; reloading the snapshot"
                            );
                            if let Err(e) = self.load_snapshot(&shared).await {
                                self.watch_lost(&format!("reloading the snapshot: {e}"));
                            }
                            break;
                        }
                        if response.canceled() {
                            self.watch_lost(&format!(
                                "watch canceled: {}",
                                response.cancel_reason()
                            ));
                            break;
                        }
                        if response.created() {
                            self.health().watch_connected = true;
                            backoff = Duration::from_millis(100);
                        }
                        // A creation's header is etcd's revision now, not how far the watch
                        // has come; a progress notification's is both.
                        let progress = if response.created() {
                            0
                        } else {
                            response.header().map_or(0, |h| h.revision())
                        };
                        self.apply(&shared, response.events(), progress).await;
                    }
                    Ok(None) => {
                        self.watch_lost("the watch stream ended");
                        break;
                    }
                    Err(e) => {
                        self.watch_lost(&format!("the watch failed: {e}"));
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn watch_lost(&self, why: &str) {
        let mut health = self.health();
        if health.watch_connected {
            tracing::warn!(reason = why, "etcd: watch lost; reconnecting");
        }
        health.watch_connected = false;
    }

    /// Applies one watch response: mirror and view in revision order, then the revision, the
    /// events it made durable, the policy it published and the records it logged.
    async fn apply(&self, shared: &Shared, events: &[etcd_client::Event], header: i64) {
        let mut changes: Writes = Vec::new();
        let mut logged = Vec::new();
        let mut policy = None;
        let revision = {
            let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            for event in events {
                let Some(kv) = event.kv() else { continue };
                let Some(key) = self.unprefixed(kv.key()) else {
                    continue;
                };
                mirror.revision = mirror.revision.max(kv.mod_revision());
                let put = event.event_type() == EventType::Put;
                if let Some(id) = key.strip_prefix("log/") {
                    if put {
                        match decode::<LogRecord>(id, kv.value()) {
                            Ok(record) => logged.push(record),
                            Err(e) => tracing::error!(%e, "etcd: undecodable log record"),
                        }
                    }
                } else if key == POLICY_KEY {
                    if put {
                        policy = Some((kv.value().to_vec(), kv.mod_revision()));
                    }
                } else if put {
                    mirror
                        .kv
                        .insert(key.to_owned(), (kv.value().to_vec(), kv.mod_revision()));
                    changes.push((key.to_owned(), Some(kv.value().to_vec())));
                } else {
                    mirror.kv.remove(key);
                    changes.push((key.to_owned(), None));
                }
            }
            if events.is_empty() {
                // A progress notification: nothing under the prefix changed up to `header`.
                mirror.revision = mirror.revision.max(header);
            }
            // Under the mirror's lock, so the view takes changes in the mirror's order.
            shared.apply_to_view(&changes);
            mirror.revision
        };
        self.revision.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
        shared.publish_events(&changes);
        if policy.is_some() {
            self.policy.send_replace(policy);
        }
        self.append_missing(shared, logged).await;
    }

    /// Waits until the view is at `revision` or later; false if `within` passed first.
    pub async fn wait_for(&self, revision: u64, within: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        let target = revision as i64;
        tokio::time::timeout(within, rx.wait_for(|current| *current >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Makes a quorum read every `HEARTBEAT`; notes when the replica is current and when it
    /// stops being so (health, metrics and logs read it).
    async fn heartbeat(self: Arc<Self>, shared: Arc<Shared>) {
        let mut kv = self.client.kv_client();
        let key = self.key(EVENT_COUNTER_KEY);
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let asked = Instant::now();
            let read = within(
                HEARTBEAT_TIMEOUT,
                "quorum read",
                kv.get(key.clone(), Some(GetOptions::new().with_count_only())),
            )
            .await;
            let (became_current, lost) = {
                let mut health = self.health();
                match read {
                    Ok(_) if health.watch_connected => {
                        health.last_current = asked;
                        (health.problem.take(), None)
                    }
                    outcome => {
                        let why = match outcome {
                            Err(e) => e.to_string(),
                            Ok(_) => "etcd: the watch is not connected".to_owned(),
                        };
                        let overdue = health.last_current.elapsed() > QUORUM_GRACE;
                        let first = health.problem.is_none() && overdue;
                        if overdue {
                            health.problem = Some(why.clone());
                        }
                        (None, first.then_some(why))
                    }
                }
            };
            if let Some(why) = lost {
                tracing::error!(
                    reason = %why,
                    max_staleness_ms = self.options.max_staleness.as_millis() as u64,
                    "etcd: no quorum: refusing new broadcasts and writes; LIVE re-checks answer \
                     from the view until it is too stale"
                );
                metrics::gauge!("anchor_pdp_etcd_current").set(0.0);
                let _ = shared.write_failed(PdpError::Storage(format!("no etcd quorum: {why}")));
            }
            if let Some(was) = became_current {
                tracing::info!(was = %was, "etcd: quorum back; the view is current");
                metrics::gauge!("anchor_pdp_etcd_current").set(1.0);
                shared.write_failure.send_replace(None);
            }
            metrics::gauge!("anchor_pdp_etcd_view_age_seconds")
                .set(self.health().last_current.elapsed().as_secs_f64());
        }
    }

    /// Why writes are refused now, if they are.
    pub fn write_refusal(&self) -> Option<String> {
        self.health().problem.clone()
    }

    /// Why the view may not answer now: it has had no quorum for longer than `max_staleness`.
    pub fn read_refusal(&self) -> Option<String> {
        let health = self.health();
        let age = health.last_current.elapsed();
        (health.problem.is_some() && age > self.options.max_staleness).then(|| {
            format!(
                "this replica has had no etcd quorum for {:.1} s (more than the {:.1} s its view \
                 may answer for): failing closed",
                age.as_secs_f64(),
                self.options.max_staleness.as_secs_f64()
            )
        })
    }

    /// Deletes decision-log keys older than the retention and compacts old revisions, once a
    /// minute. Every replica runs it; doing it twice is harmless.
    async fn retention(self: Arc<Self>) {
        let kv = self.client.kv_client();
        let mut seen: std::collections::VecDeque<(Instant, i64)> = Default::default();
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticker.tick().await;
            let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            let cutoff = now - self.options.log_retention.as_millis() as Millis;
            let from = self.key("log/");
            let to = self.key(&format!("log/{}", first_id_at(cutoff)));
            if let Err(e) = timed("deleting old decision-log keys", || {
                let (mut kv, from, to) = (kv.clone(), from.clone(), to.clone());
                async move {
                    kv.delete(from, Some(DeleteOptions::new().with_range(to)))
                        .await
                }
            })
            .await
            {
                tracing::warn!(%e, "etcd: decision-log retention failed; will retry");
            }
            seen.push_back((Instant::now(), self.mirror().revision));
            while seen
                .front()
                .is_some_and(|(at, _)| at.elapsed() > self.options.compact_after)
            {
                let Some((_, revision)) = seen.pop_front() else {
                    break;
                };
                match timed("compacting", || {
                    let mut kv = kv.clone();
                    async move { kv.compact(revision, Some(CompactionOptions::new())).await }
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

    /// Runs `f` against the mirror and commits what it wrote as one guarded `Txn`, again on
    /// fresher values while another writer wins; then waits for the commit to reach the view.
    pub async fn transact<T>(
        &self,
        f: &(dyn Fn(&dyn Tx) -> TxResult<T> + Sync),
    ) -> Result<(T, u64), PdpError> {
        let mut kv = self.client.kv_client();
        let mut fresher = HashMap::new();
        let mut fresher_at = 0;
        let started = Instant::now();
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 && started.elapsed() > REQUEST_TIMEOUT {
                break;
            }
            let tx = EtcdTx {
                backend: self,
                fresher: &fresher,
                fresher_at,
                reads: RefCell::default(),
                writes: RefCell::default(),
                logged: RefCell::default(),
            };
            let value = match f(&tx) {
                Ok(value) => value,
                Err(TxError::Abort(e)) => return Err(e),
                Err(TxError::Backend) => {
                    return Err(PdpError::Storage("etcd transaction failed".into()));
                }
            };
            let writes = tx.writes.into_inner();
            let logged = tx.logged.into_inner();
            if writes.is_empty() && logged.is_empty() {
                return Ok((value, self.revision()));
            }
            // Without a quorum a write would hang until it timed out: refuse it at once. (An
            // operation that writes nothing, such as an unchanged LIVE re-check, goes on.)
            if let Some(why) = self.write_refusal() {
                return Err(PdpError::Storage(why));
            }
            let reads = tx.reads.into_inner();
            let compares: Vec<Compare> = reads
                .iter()
                .map(|(key, revision)| match revision {
                    0 => Compare::create_revision(self.key(key), CompareOp::Equal, 0),
                    r => Compare::mod_revision(self.key(key), CompareOp::Equal, *r),
                })
                .collect();
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
            if ops.len() > MAX_TXN_OPS {
                return Err(PdpError::Storage(format!(
                    "etcd: one change would write {} keys; etcd takes at most {MAX_TXN_OPS} per \
                     transaction",
                    ops.len()
                )));
            }
            let refresh: Vec<TxnOp> = reads
                .keys()
                .map(|key| TxnOp::get(self.key(key), None))
                .collect();
            let txn = Txn::new().when(compares).and_then(ops).or_else(refresh);
            // An attempt that fails or hangs may still have committed. Running the operation
            // again is safe all the same: if it did commit, the guards fail, and the operation
            // runs on what it wrote.
            let response = match within(ATTEMPT_TIMEOUT, "committing", kv.txn(txn)).await {
                Ok(response) => response,
                Err(e) if started.elapsed() + ATTEMPT_TIMEOUT <= REQUEST_TIMEOUT => {
                    tracing::debug!(error = %e, "etcd: committing again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => {
                    return Err(PdpError::Storage(format!(
                        "{e} (the change may or may not have been made)"
                    )));
                }
            };
            let revision = response.header().map_or(0, |h| h.revision());
            if response.succeeded() {
                if !self.wait_for(revision as u64, OWN_WRITE_WAIT).await {
                    tracing::warn!(
                        revision,
                        "etcd: a committed change has not reached this replica's view yet"
                    );
                }
                return Ok((value, revision.max(0) as u64));
            }
            // Lost to another writer: run again on what it wrote.
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
        let kv = self.client.kv_client();
        let key = self.key(POLICY_KEY);
        let compares = if only_if_absent {
            vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)]
        } else {
            Vec::new()
        };
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![TxnOp::put(key, bytes, None)]);
        let response = timed("publishing the policy set", || {
            let (mut kv, txn) = (kv.clone(), txn.clone());
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
