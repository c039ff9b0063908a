//! The only module that knows sled. It exposes domain operations; each one is a single sled
//! transaction (so nothing is ever half-written) followed by a group-committed flush (so
//! nothing acknowledged is lost). A change that comes with a decision-log record writes the
//! record in the same transaction, across the data and log trees: neither exists without the
//! other, whatever happens to the caller.
//!
//! Layout (format 1): one tree, `pdp.v1`, keyed by `<prefix>/<id>`:
//! `reg/<kind>/<id>` registrations, `acct/<merchant>` accounts, `sess/<id>` sessions,
//! `live/<id>` the index of active sessions, `room/<room>` the room's active session,
//! `inuse/<anchor|driver>/<id>` the live sessions using a filing (a JSON list),
//! `stream/<gateway lookup key>` the session a gateway hook refers to, `idem/<gateway>/<key>`
//! the START an idempotency key admitted, `evt/<sequence, 20 digits>` enforcement events and
//! `evtseq` their counter. Values are one format byte followed by JSON (`evtseq`: 8 bytes
//! big-endian). The `meta` tree records the format so that a later build can migrate instead of
//! misreading.
//!
//! The decision log lives in its own append-only segment files (`segments`). A record that goes
//! with a change is written in the change's transaction to `log.v1` (keyed by decision id), an
//! outbox: once the change is durable the record is appended to the segments, and only then
//! leaves the outbox. Opening the store appends whatever a crash left in the outbox, so a
//! record is never lost and never without its change.
//!
//! sled stops writing for good after an I/O error (a full disk): it keeps the error and
//! returns it from every later write. The store notes the first such failure (health reads it)
//! and `recover` reopens the database once writing works again.

mod group_commit;
mod log;
mod segments;
mod view;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use crate::domain::{
    self, Account, Discovery, Enforced, EnforcementEvent, Facts, IdempotentStart, Kind, LogRecord,
    MerchantScope, Millis, RecordBody, Registration, ReviewCommand, ReviewStatus, Session,
    SessionState, Trigger, WriteOutcome,
};
use crate::error::PdpError;
use group_commit::GroupCommit;
use segments::SegmentLog;
use view::FactsView;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
const DATA_TREE: &str = "pdp.v1";
const META_TREE: &str = "meta";
const FORMAT_KEY: &str = "format_version";
const PROBE_KEY: &str = "write_probe";
const EVENT_COUNTER_KEY: &str = "evtseq";
const LOG_TREE: &str = "log.v1";

/// One open sled database. Replaced as a whole when the store is reopened.
struct Db {
    db: sled::Db,
    data: sled::Tree,
    /// Decision-log records written with a change, until they are in the segments.
    log: sled::Tree,
    commit: GroupCommit,
}

pub struct Store {
    dir: PathBuf,
    /// `None` only while the database is being reopened.
    db: RwLock<Option<Arc<Db>>>,
    /// The highest enforcement-event sequence known durable; subscribers read up to it.
    events_durable: tokio::sync::watch::Sender<u64>,
    /// Why writing failed, until it works again; `None` while writes work.
    write_failure: tokio::sync::watch::Sender<Option<String>>,
    /// Registrations and accounts in memory: what decisions and lookups read.
    view: FactsView,
    /// The decision log.
    segments: Arc<SegmentLog>,
    /// Held from a transaction's commit until the view has it, so the view takes changes in
    /// commit order.
    view_order: std::sync::Mutex<()>,
}

/// What `open_session` did.
#[derive(Clone, Debug)]
pub enum Opened {
    /// The session is open; `superseded` is the room's earlier live session, now closed.
    New { superseded: Option<Box<Session>> },
    /// The idempotency key was used before: nothing was written; this is what it admitted.
    Replay(IdempotentStart),
}

type TxResult<T> = Result<T, ConflictableTransactionError<PdpError>>;

fn registration_key(kind: Kind, id: &str) -> String {
    format!("reg/{}/{id}", kind.name())
}

fn account_key(merchant_id: &str) -> String {
    format!("acct/{merchant_id}")
}

fn session_key(session_id: &str) -> String {
    format!("sess/{session_id}")
}

fn live_key(session_id: &str) -> String {
    format!("live/{session_id}")
}

/// Closed sessions by when they closed, so retention reads only what has expired.
fn closed_key(closed_at: Millis, session_id: &str) -> String {
    format!("closed/{:020}/{session_id}", closed_at.max(0))
}

fn room_key(room_id: &str) -> String {
    format!("room/{room_id}")
}

fn stream_key(lookup: &str) -> String {
    format!("stream/{lookup}")
}

fn in_use_key(kind: Kind, id: &str) -> String {
    format!("inuse/{}/{id}", kind.name())
}

/// Adds or removes `session_id` in the live sessions using a filing.
fn tx_mark_in_use(
    tx: &TransactionalTree,
    kind: Kind,
    id: &str,
    session_id: &str,
    live: bool,
) -> TxResult<()> {
    let key = in_use_key(kind, id);
    let mut sessions: BTreeSet<String> = tx_get(tx, &key)?.unwrap_or_default();
    let changed = if live {
        sessions.insert(session_id.to_owned())
    } else {
        sessions.remove(session_id)
    };
    if changed {
        if sessions.is_empty() {
            tx.remove(key.as_bytes()).map_err(tx_unabortable)?;
        } else {
            tx_put(tx, &key, &sessions)?;
        }
    }
    Ok(())
}

/// A live session that relies on the filing `kind`/`id`, if any.
fn tx_live_session_using(tx: &TransactionalTree, kind: Kind, id: &str) -> TxResult<Option<String>> {
    Ok(match kind {
        Kind::Room => tx
            .get(room_key(id).as_bytes())
            .map_err(tx_unabortable)?
            .map(|s| String::from_utf8_lossy(&s).into_owned()),
        Kind::Anchor | Kind::Driver => tx_get::<BTreeSet<String>>(tx, &in_use_key(kind, id))?
            .and_then(|sessions| sessions.into_iter().next()),
        _ => None,
    })
}

fn idempotency_key(gateway_id: &str, key: &str) -> String {
    format!("idem/{gateway_id}/{key}")
}

fn event_key(sequence: u64) -> String {
    format!("evt/{sequence:020}")
}

/// Removes `key` if it still points at `session_id`.
fn tx_remove_if_points_at(tx: &TransactionalTree, key: &str, session_id: &str) -> TxResult<()> {
    if tx.get(key.as_bytes()).map_err(tx_unabortable)?.as_deref() == Some(session_id.as_bytes()) {
        tx.remove(key.as_bytes()).map_err(tx_unabortable)?;
    }
    Ok(())
}

/// Keeps the active-session indexes and the gateway lookup in step with a session's state.
fn tx_index_session(tx: &TransactionalTree, session: &Session) -> TxResult<()> {
    let live = live_key(&session.id);
    let room = room_key(&session.room_id);
    let active = session.state == SessionState::Active;
    if active {
        tx.insert(live.as_bytes(), &[]).map_err(tx_unabortable)?;
        tx.insert(room.as_bytes(), session.id.as_bytes())
            .map_err(tx_unabortable)?;
    } else {
        tx.remove(live.as_bytes()).map_err(tx_unabortable)?;
        tx_remove_if_points_at(tx, &room, &session.id)?;
    }
    tx_mark_in_use(tx, Kind::Anchor, &session.anchor_id, &session.id, active)?;
    tx_mark_in_use(tx, Kind::Driver, &session.driver_id, &session.id, active)?;
    if !active && let Some(closed_at) = session.closed_at {
        tx.insert(closed_key(closed_at, &session.id).as_bytes(), &[])
            .map_err(tx_unabortable)?;
    }
    if let Some(stream) = &session.stream {
        let key = stream_key(&stream.lookup_key(&session.gateway_id));
        if session.state == SessionState::Ended {
            tx_remove_if_points_at(tx, &key, &session.id)?;
        } else {
            tx.insert(key.as_bytes(), session.id.as_bytes())
                .map_err(tx_unabortable)?;
        }
    }
    Ok(())
}

fn tx_next_event_sequence(tx: &TransactionalTree) -> TxResult<u64> {
    let current = match tx.get(EVENT_COUNTER_KEY).map_err(tx_unabortable)? {
        Some(bytes) => {
            let raw: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
                abort(PdpError::Corrupt {
                    key: EVENT_COUNTER_KEY.into(),
                    reason: "not 8 bytes".into(),
                })
            })?;
            u64::from_be_bytes(raw)
        }
        None => 0,
    };
    let next = current + 1;
    tx.insert(EVENT_COUNTER_KEY, &next.to_be_bytes())
        .map_err(tx_unabortable)?;
    Ok(next)
}

/// Writes the event that tells gateways a live session ended.
fn tx_event(
    tx: &TransactionalTree,
    session: &Session,
    trigger: Trigger,
    reason: &str,
    violations: Vec<crate::domain::Violation>,
    penalty_applied: Option<crate::domain::Penalty>,
    at: Millis,
) -> TxResult<EnforcementEvent> {
    let event = EnforcementEvent {
        sequence: tx_next_event_sequence(tx)?,
        session_id: session.id.clone(),
        merchant_id: session.merchant_id.clone(),
        gateway_id: session.gateway_id.clone(),
        stream: session.stream.clone(),
        trigger,
        reason: reason.to_owned(),
        violations,
        penalty_applied,
        at,
    };
    tx_put(tx, &event_key(event.sequence), &event)?;
    Ok(event)
}

thread_local! {
    /// Decision-log records written by the transaction attempt running on this thread: sled
    /// runs a transaction's closure on the caller's thread, and may run it again on conflict,
    /// so each attempt starts empty and the committed attempt's records are what go on.
    static LOGGED: std::cell::RefCell<Vec<LogRecord>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The records the transaction just committed on this thread logged.
fn take_logged() -> Vec<LogRecord> {
    LOGGED.with(|logged| std::mem::take(&mut *logged.borrow_mut()))
}

/// Writes a registration `outcome` changed, with its record.
fn tx_put_if_changed(
    tx: &TransactionalTree,
    log: &TransactionalTree,
    key: &str,
    outcome: &WriteOutcome,
    record: &(dyn Fn(&Registration) -> LogRecord + Sync),
) -> TxResult<()> {
    if outcome.changed {
        tx_put(tx, key, &outcome.registration)?;
        tx_log(log, &record(&outcome.registration))?;
    }
    Ok(())
}

/// The view takes a registration `outcome` changed.
fn view_if_changed(outcome: &WriteOutcome, view: &FactsView) {
    if outcome.changed {
        view.put_registration(&outcome.registration);
    }
}

fn tx_log(log: &TransactionalTree, record: &LogRecord) -> TxResult<()> {
    LOGGED.with(|logged| logged.borrow_mut().push(record.clone()));
    tx_put(log, &record.id, record)
}

/// Runs one attempt of a transaction that may log records.
fn attempt<T>(f: impl FnOnce() -> T) -> T {
    LOGGED.with(|logged| logged.borrow_mut().clear());
    f()
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, PdpError> {
    let mut bytes = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut bytes, value).map_err(|e| PdpError::Corrupt {
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, PdpError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| PdpError::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            })
        }
        Some((other, _)) => Err(PdpError::Corrupt {
            key: key.to_owned(),
            reason: format!("unknown record format {other}"),
        }),
        None => Err(PdpError::Corrupt {
            key: key.to_owned(),
            reason: "empty record".into(),
        }),
    }
}

fn storage(e: impl std::fmt::Display) -> PdpError {
    PdpError::Storage(e.to_string())
}

fn abort(e: PdpError) -> ConflictableTransactionError<PdpError> {
    ConflictableTransactionError::Abort(e)
}

fn tx_unabortable(e: UnabortableTransactionError) -> ConflictableTransactionError<PdpError> {
    e.into()
}

fn tx_get<T: DeserializeOwned>(tx: &TransactionalTree, key: &str) -> TxResult<Option<T>> {
    match tx.get(key.as_bytes()).map_err(tx_unabortable)? {
        Some(bytes) => decode(key, &bytes).map(Some).map_err(abort),
        None => Ok(None),
    }
}

fn tx_put<T: Serialize>(tx: &TransactionalTree, key: &str, value: &T) -> TxResult<()> {
    let bytes = encode(key, value).map_err(abort)?;
    tx.insert(key.as_bytes(), bytes).map_err(tx_unabortable)?;
    Ok(())
}

impl Db {
    fn open(dir: &Path) -> Result<Db, PdpError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| PdpError::Storage(format!("cannot open {}: {e}", dir.display())))?;
        let meta = db.open_tree(META_TREE).map_err(storage)?;
        match meta.get(FORMAT_KEY).map_err(storage)? {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => {
                return Err(PdpError::Storage(format!(
                    "{} holds store format {:?}; this build reads format {FORMAT_VERSION}",
                    dir.display(),
                    v.as_ref()
                )));
            }
            None => {
                meta.insert(FORMAT_KEY, &[FORMAT_VERSION])
                    .map_err(storage)?;
                db.flush().map_err(storage)?;
            }
        }
        let data = db.open_tree(DATA_TREE).map_err(storage)?;
        let log = db.open_tree(LOG_TREE).map_err(storage)?;
        index_rooms(&data)?;
        index_closed_sessions(&data)?;
        let commit = GroupCommit::new(db.clone(), dir)?;
        Ok(Db {
            db,
            data,
            log,
            commit,
        })
    }

    /// Writes and flushes a probe value: does writing work?
    fn probe(&self, now: Millis) -> Result<(), PdpError> {
        let meta = self.db.open_tree(META_TREE).map_err(storage)?;
        meta.insert(PROBE_KEY, &now.to_be_bytes())
            .map_err(storage)?;
        self.db.flush().map_err(storage)?;
        // A full disk can pass sled's flush and fail only when synced.
        self.commit.sync_blocking()
    }

    /// Every registration, account and live session on disk, for the in-memory view.
    fn load_view(&self, view: &FactsView) -> Result<(), PdpError> {
        let mut registrations = Vec::new();
        for item in self.data.scan_prefix(b"reg/") {
            let (key, value) = item.map_err(storage)?;
            registrations.push(decode::<Registration>(
                &String::from_utf8_lossy(&key),
                &value,
            )?);
        }
        let mut accounts = Vec::new();
        for item in self.data.scan_prefix(b"acct/") {
            let (key, value) = item.map_err(storage)?;
            accounts.push(decode::<Account>(&String::from_utf8_lossy(&key), &value)?);
        }
        let mut live = Vec::new();
        for item in self.data.scan_prefix(b"live/") {
            let (key, _) = item.map_err(storage)?;
            let skey = session_key(&String::from_utf8_lossy(&key["live/".len()..]));
            if let Some(bytes) = self.data.get(skey.as_bytes()).map_err(storage)? {
                live.push(decode::<Session>(&skey, &bytes)?);
            }
        }
        view.reset(registrations, accounts, live);
        Ok(())
    }

    fn last_event(&self) -> Result<u64, PdpError> {
        match self.data.get(EVENT_COUNTER_KEY).map_err(storage)? {
            Some(bytes) => bytes
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| PdpError::Corrupt {
                    key: EVENT_COUNTER_KEY.into(),
                    reason: "not 8 bytes".into(),
                }),
            None => Ok(0),
        }
    }
}

/// Data written before the closed-session index existed: index its closed sessions once, so
/// retention finds them (a marker in the data tree says it is done).
fn index_closed_sessions(data: &sled::Tree) -> Result<(), PdpError> {
    const DONE: &[u8] = b"closed-index-built";
    if data.get(DONE).map_err(storage)?.is_some() {
        return Ok(());
    }
    for item in data.scan_prefix(b"sess/") {
        let (key, value) = item.map_err(storage)?;
        let session: Session = decode(&String::from_utf8_lossy(&key), &value)?;
        if session.state != SessionState::Active
            && let Some(closed_at) = session.closed_at
        {
            data.insert(closed_key(closed_at, &session.id).as_bytes(), &[])
                .map_err(storage)?;
        }
    }
    data.insert(DONE, &[]).map_err(storage)?;
    Ok(())
}

/// Data written before these indexes existed has live sessions without them: index them, so
/// that a room's next START finds its live session and a filing in use is known to be.
fn index_rooms(data: &sled::Tree) -> Result<(), PdpError> {
    for item in data.scan_prefix(b"live/") {
        let (key, _) = item.map_err(storage)?;
        let id = String::from_utf8_lossy(&key["live/".len()..]).into_owned();
        let skey = session_key(&id);
        let Some(bytes) = data.get(skey.as_bytes()).map_err(storage)? else {
            continue;
        };
        let session: Session = decode(&skey, &bytes)?;
        let room = room_key(&session.room_id);
        if data.get(room.as_bytes()).map_err(storage)?.is_none() {
            data.insert(room.as_bytes(), session.id.as_bytes())
                .map_err(storage)?;
        }
        data.transaction(|tx| {
            tx_mark_in_use(tx, Kind::Anchor, &session.anchor_id, &session.id, true)?;
            tx_mark_in_use(tx, Kind::Driver, &session.driver_id, &session.id, true)
        })
        .map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => storage(e),
        })?;
    }
    Ok(())
}

/// Appends what the outbox holds and the segments do not (a crash came between a change and
/// its record's append; or the data was written before the segments existed), then empties it.
fn drain_outbox(db: &Db, segments: &SegmentLog) -> Result<usize, PdpError> {
    let mut missing = Vec::new();
    let mut keys = Vec::new();
    for item in db.log.iter() {
        let (key, value) = item.map_err(storage)?;
        let id = String::from_utf8_lossy(&key).into_owned();
        let record: LogRecord = decode(&id, &value)?;
        if segments.get(&id)?.is_none() {
            missing.push(record);
        }
        keys.push(key);
    }
    for chunk in missing.chunks(4096) {
        segments.append_blocking(chunk)?;
    }
    let mut batch = sled::Batch::default();
    for key in keys {
        batch.remove(key);
    }
    db.log.apply_batch(batch).map_err(storage)?;
    db.db.flush().map_err(storage)?;
    Ok(missing.len())
}

/// sled's page cache (its default is 1 GiB). Decisions and lookups read registrations and
/// accounts from the in-memory view, so the cache serves only sessions, indexes and writes.
const SLED_CACHE_BYTES: u64 = 128 << 20;

/// The decision log's segment files, under the data directory.
const SEGMENTS_DIR: &str = "decision-log";
/// Default size at which a decision-log segment is sealed and the next begins.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 64 << 20;

impl Store {
    /// Opens (or creates) the store in `dir`. Refuses a directory written in a format this
    /// build does not know.
    pub fn open(dir: &Path) -> Result<Store, PdpError> {
        Store::open_with(dir, DEFAULT_LOG_SEGMENT_BYTES)
    }

    /// `open`, with decision-log segments sealed at `log_segment_bytes`.
    pub fn open_with(dir: &Path, log_segment_bytes: u64) -> Result<Store, PdpError> {
        let db = Db::open(dir)?;
        let segments = Arc::new(SegmentLog::open(
            &dir.join(SEGMENTS_DIR),
            log_segment_bytes,
        )?);
        let replayed = drain_outbox(&db, &segments)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "decision log: appended records left in the outbox"
            );
        }
        // Everything already on disk is durable.
        let (events_durable, _) = tokio::sync::watch::channel(db.last_event()?);
        let (write_failure, _) = tokio::sync::watch::channel(None);
        let view = FactsView::default();
        db.load_view(&view)?;
        Ok(Store {
            dir: dir.to_owned(),
            db: RwLock::new(Some(Arc::new(db))),
            events_durable,
            write_failure,
            segments,
            view,
            view_order: std::sync::Mutex::new(()),
        })
    }

    fn db(&self) -> Result<Arc<Db>, PdpError> {
        let guard = self
            .db
            .read()
            .map_err(|_| PdpError::Storage("the store's handle is poisoned".into()))?;
        guard.clone().ok_or_else(|| {
            PdpError::Storage("the store is being reopened after a write failure".into())
        })
    }

    /// Notes a failed write: health turns NOT_SERVING until `recover` finds writing works.
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

    fn tx_failed(&self, e: TransactionError<PdpError>) -> PdpError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.write_failed(storage(e)),
        }
    }

    /// `None` while writes work, else why they failed. Changes when that changes.
    pub fn subscribe_write_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.write_failure.subscribe()
    }

    pub fn write_failure(&self) -> Option<String> {
        self.write_failure.borrow().clone()
    }

    /// After a write failure: checks whether writing works again, reopening the database if
    /// sled has stopped writing (it does after any I/O error). Returns `Ok` once a probe write
    /// is durable; the failure is then cleared. Blocking: run it off the async workers.
    pub fn recover(&self, now: Millis) -> Result<(), PdpError> {
        let current = self.db.read().ok().and_then(|guard| guard.clone());
        if let Some(db) = &current
            && db.probe(now).is_ok()
            && self.segments.sync_blocking().is_ok()
        {
            self.write_failure.send_replace(None);
            return Ok(());
        }
        // sled keeps its first I/O error and refuses every later write: only a fresh open
        // clears it. That needs sled's directory lock, so every handle to the old one must go
        // first; calls in flight finish (or fail) within moments.
        let old = {
            let mut guard = self
                .db
                .write()
                .map_err(|_| PdpError::Storage("the store's handle is poisoned".into()))?;
            guard.take()
        };
        drop(current);
        if let Some(old) = old {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(old);
        }
        let db = Db::open(&self.dir)?;
        db.probe(now)?;
        self.segments.sync_blocking()?;
        drain_outbox(&db, &self.segments)?;
        let last_event = db.last_event()?;
        // What was not durable is gone from disk; the view must forget it too.
        db.load_view(&self.view)?;
        let mut guard = self
            .db
            .write()
            .map_err(|_| PdpError::Storage("the store's handle is poisoned".into()))?;
        *guard = Some(Arc::new(db));
        // What was not durable before the failure is gone; what is on disk now is durable.
        self.events_durable.send_replace(last_event);
        self.write_failure.send_replace(None);
        tracing::info!(dir = %self.dir.display(), "store reopened: writing works again");
        Ok(())
    }

    /// Blocks until everything written so far is on disk. For shutdown.
    pub fn flush_blocking(&self) -> Result<(), PdpError> {
        let db = self.db()?;
        db.db.flush().map_err(storage)?;
        db.commit.sync_blocking()?;
        self.segments.sync_blocking()
    }

    /// Held from a transaction's commit until the view has its changes.
    fn in_view_order(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding it leaves nothing half-done: the guard only orders.
        self.view_order
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns once everything `db` holds is durable.
    async fn durable(&self, db: &Db) -> Result<(), PdpError> {
        db.commit.durable().await.map_err(|e| self.write_failed(e))
    }

    /// After the change they went with is durable: appends the records a transaction logged
    /// to the decision log, durably, and takes them out of the outbox. Until then a crash
    /// leaves them in the outbox, which the next open appends.
    async fn append_logged(&self, db: &Db, records: Vec<LogRecord>) -> Result<(), PdpError> {
        if records.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        self.segments
            .append(records)
            .await
            .map_err(|e| self.write_failed(e))?;
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(id.as_bytes());
        }
        // Not flushed on its own: a record left in the outbox is found already appended.
        if let Err(e) = db.log.apply_batch(batch) {
            tracing::warn!(error = %e, "decision log: could not empty the outbox");
        }
        Ok(())
    }

    /// One transaction over the data tree and the decision log, then `to_view` with what it
    /// committed (in commit order), then a durable flush.
    async fn transact<T>(
        &self,
        f: impl Fn(&TransactionalTree, &TransactionalTree) -> TxResult<T>,
        to_view: impl FnOnce(&T, &FactsView),
    ) -> Result<T, PdpError> {
        let db = self.db()?;
        let value = {
            let _in_order = self.in_view_order();
            let value = (&db.data, &db.log)
                .transaction(|(data, log)| attempt(|| f(data, log)))
                .map_err(|e| self.tx_failed(e))?;
            to_view(&value, &self.view);
            value
        };
        let logged = take_logged();
        self.durable(&db).await?;
        self.append_logged(&db, logged).await?;
        Ok(value)
    }

    fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PdpError> {
        match self.db()?.data.get(key.as_bytes()).map_err(storage)? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn publish_events(&self, sequences: impl IntoIterator<Item = u64>) {
        if let Some(last) = sequences.into_iter().max() {
            self.events_durable.send_if_modified(|durable| {
                let newer = last > *durable;
                if newer {
                    *durable = last;
                }
                newer
            });
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
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<WriteOutcome, PdpError> {
        let key = registration_key(body.kind(), id);
        self.transact(
            |tx, log| {
                for (kind, ref_id, field) in body.references() {
                    if tx_get::<Registration>(tx, &registration_key(kind, ref_id))?.is_none() {
                        return Err(abort(PdpError::FailedPrecondition(format!(
                            "{field}: {} {ref_id} is not registered",
                            kind.name()
                        ))));
                    }
                }
                let current: Option<Registration> = tx_get(tx, &key)?;
                scope.check_filing(current.as_ref(), &body).map_err(abort)?;
                let outcome = domain::apply_register(
                    current.as_ref(),
                    id,
                    body.clone(),
                    expected_revision,
                    now,
                )
                .map_err(abort)?;
                let back_to_review = current.as_ref().is_some_and(|c| {
                    c.review_status == ReviewStatus::Approved
                        && outcome.registration.review_status == ReviewStatus::PendingReview
                });
                if back_to_review && let Some(session) = tx_live_session_using(tx, body.kind(), id)?
                {
                    return Err(abort(PdpError::FailedPrecondition(format!(
                        "{} {id} is in use by live session {session}: this change would send it \
                     back to review and end the broadcast; change it after the broadcast ends \
                     (an admin may revoke it meanwhile)",
                        body.kind().name()
                    ))));
                }
                tx_put_if_changed(tx, log, &key, &outcome, record)?;
                Ok(outcome)
            },
            view_if_changed,
        )
        .await
    }

    /// Applies a review verdict and logs `record` with it.
    pub async fn review(
        &self,
        cmd: &ReviewCommand,
        now: Millis,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<Registration, PdpError> {
        let key = registration_key(cmd.kind, &cmd.id);
        self.transact(
            |tx, log| {
                let current: Option<Registration> = tx_get(tx, &key)?;
                let next = domain::apply_review(current.as_ref(), cmd, now).map_err(abort)?;
                tx_put(tx, &key, &next)?;
                tx_log(log, &record(&next))?;
                Ok(next)
            },
            |next, view| view.put_registration(next),
        )
        .await
    }

    /// Read-modify-write of one registration, written (with `record`) only if `apply` changed
    /// it.
    async fn update_registration(
        &self,
        kind: Kind,
        id: &str,
        apply: impl Fn(Option<&Registration>) -> Result<WriteOutcome, PdpError>,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<WriteOutcome, PdpError> {
        let key = registration_key(kind, id);
        self.transact(
            |tx, log| {
                let current: Option<Registration> = tx_get(tx, &key)?;
                let outcome = apply(current.as_ref()).map_err(abort)?;
                tx_put_if_changed(tx, log, &key, &outcome, record)?;
                Ok(outcome)
            },
            view_if_changed,
        )
        .await
    }

    pub async fn set_provider_listing(
        &self,
        id: &str,
        listed: bool,
        operator: &str,
        expected_revision: Option<u64>,
        now: Millis,
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<WriteOutcome, PdpError> {
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
        record: &(dyn Fn(&Registration) -> LogRecord + Sync),
    ) -> Result<WriteOutcome, PdpError> {
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
            record,
        )
        .await
    }

    pub fn get_registration(&self, kind: Kind, id: &str) -> Result<Option<Registration>, PdpError> {
        Ok(self.view.registration(kind, id))
    }

    /// Up to `limit` records of `kind` with ids after `after`, in id order.
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
        let mut out = Vec::new();
        for item in self.db()?.data.range(start.as_bytes()..) {
            let (key, value) = item.map_err(storage)?;
            if !key.starts_with(prefix.as_bytes()) || out.len() >= limit {
                break;
            }
            let key = String::from_utf8_lossy(&key).into_owned();
            out.push(decode(&key, &value)?);
        }
        Ok(out)
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
            .view
            .account(merchant_id)
            .unwrap_or_else(|| Account::new(merchant_id));
        Ok(Some((merchant, account)))
    }

    /// Clears the freeze, with `record` if it was frozen. Returns the account and whether it
    /// was frozen at `now`.
    pub async fn lift_freeze(
        &self,
        merchant_id: &str,
        operator: &str,
        reason: &str,
        now: Millis,
        record: &(dyn Fn(&Account) -> LogRecord + Sync),
    ) -> Result<(Account, bool), PdpError> {
        let merchant_key = registration_key(Kind::Merchant, merchant_id);
        let key = account_key(merchant_id);
        self.transact(
            |tx, log| {
                if tx_get::<Registration>(tx, &merchant_key)?.is_none() {
                    return Err(abort(PdpError::NotFound(format!(
                        "merchant {merchant_id} is not registered"
                    ))));
                }
                let mut account: Account =
                    tx_get(tx, &key)?.unwrap_or_else(|| Account::new(merchant_id));
                let was_frozen = account.frozen_at(now).is_some();
                if was_frozen {
                    account.frozen_until = None;
                    account.freeze_lifted = Some(domain::FreezeLift {
                        operator: operator.to_owned(),
                        reason: reason.to_owned(),
                        lifted_at: now,
                    });
                    tx_put(tx, &key, &account)?;
                    tx_log(log, &record(&account))?;
                }
                Ok((account, was_frozen))
            },
            |(account, was_frozen), view| {
                if *was_frozen {
                    view.put_account(account);
                }
            },
        )
        .await
    }

    /// Everything a decision about these ids needs, as one consistent snapshot of the
    /// in-memory view: no disk, no decoding, no transaction.
    pub fn facts(
        &self,
        merchant_id: &str,
        room_id: &str,
        anchor_id: &str,
        driver_id: &str,
        ai_features: &[String],
    ) -> Result<Facts, PdpError> {
        Ok(self
            .view
            .facts(merchant_id, room_id, anchor_id, driver_id, ai_features))
    }

    /// Opens an admitted session, with its decision's records, unless its idempotency key
    /// admitted one before (then nothing is written). A room has one live session: an earlier
    /// one still live is closed as superseded in the same transaction, with an enforcement
    /// event so its gateway stops it. `records` gets the superseded session (as closed) and
    /// returns the records to write.
    pub async fn open_session(
        &self,
        session: &Session,
        decision_id: &str,
        policy_version: &str,
        records: &(dyn Fn(Option<&Session>) -> Vec<LogRecord> + Sync),
    ) -> Result<Opened, PdpError> {
        let key = session_key(&session.id);
        let idem = session
            .idempotency_key
            .as_ref()
            .map(|k| idempotency_key(&session.gateway_id, k));
        let db = self.db()?;
        let in_order = self.in_view_order();
        let (opened, event) = (&db.data, &db.log)
            .transaction(|(tx, log)| {
                attempt(|| {
                    if let Some(idem) = &idem
                        && let Some(first) = tx_get::<IdempotentStart>(tx, idem)?
                    {
                        return Ok((Opened::Replay(first), None));
                    }
                    if tx.get(key.as_bytes()).map_err(tx_unabortable)?.is_some() {
                        return Err(abort(PdpError::Storage(format!(
                            "session id {} collides with a stored session",
                            session.id
                        ))));
                    }
                    let mut superseded = None;
                    let mut event = None;
                    let room = room_key(&session.room_id);
                    if let Some(old_id) = tx.get(room.as_bytes()).map_err(tx_unabortable)? {
                        let old_key = session_key(&String::from_utf8_lossy(&old_id));
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
                            event = Some(tx_event(
                                tx,
                                &closed,
                                Trigger::Superseded,
                                &closed.close_reason,
                                Vec::new(),
                                None,
                                session.started_at,
                            )?);
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
                        tx_log(log, &record)?;
                    }
                    Ok((
                        Opened::New {
                            superseded: superseded.map(Box::new),
                        },
                        event,
                    ))
                })
            })
            .map_err(|e| self.tx_failed(e))?;
        let logged = take_logged();
        if let Opened::New { superseded } = &opened {
            if let Some(superseded) = superseded {
                self.view.put_session(superseded);
            }
            self.view.put_session(session);
        }
        drop(in_order);
        if matches!(opened, Opened::New { .. }) {
            self.durable(&db).await?;
            self.append_logged(&db, logged).await?;
        }
        self.publish_events(event.map(|e| e.sequence));
        Ok(opened)
    }

    /// A live session from the view; a closed one from disk.
    pub fn get_session(&self, session_id: &str) -> Result<Option<Session>, PdpError> {
        if let Some(live) = self.view.live_session(session_id) {
            return Ok(Some(live));
        }
        self.read(&session_key(session_id))
    }

    /// Applies `update` to the stored session atomically; writes it, with `record`, only if it
    /// changed. Returns the session and whether it changed.
    pub async fn update_session(
        &self,
        session_id: &str,
        update: impl Fn(&Session) -> Result<Session, PdpError>,
        record: &(dyn Fn(&Session) -> LogRecord + Sync),
    ) -> Result<(Session, bool), PdpError> {
        let key = session_key(session_id);
        let db = self.db()?;
        let in_order = self.in_view_order();
        let (session, changed) = (&db.data, &db.log)
            .transaction(|(tx, log)| {
                attempt(|| {
                    let current: Session = tx_get(tx, &key)?.ok_or_else(|| {
                        abort(PdpError::NotFound(format!(
                            "session {session_id} is unknown"
                        )))
                    })?;
                    let next = update(&current).map_err(abort)?;
                    let changed = next != current;
                    if changed {
                        tx_put(tx, &key, &next)?;
                        tx_index_session(tx, &next)?;
                        tx_log(log, &record(&next))?;
                    }
                    Ok((next, changed))
                })
            })
            .map_err(|e| self.tx_failed(e))?;
        let logged = take_logged();
        if changed {
            self.view.put_session(&session);
        }
        drop(in_order);
        if changed {
            self.durable(&db).await?;
            self.append_logged(&db, logged).await?;
        }
        Ok((session, changed))
    }

    /// Shuts a session down and applies a live discovery's penalty: session, account, the
    /// enforcement event and the decision's `record` change together or not at all. Returns
    /// the event when the discovery ended a live session.
    pub async fn enforce(
        &self,
        discovery: &Discovery,
        record: &(dyn Fn(&Enforced) -> LogRecord + Sync),
    ) -> Result<(Enforced, Option<EnforcementEvent>), PdpError> {
        let skey = session_key(&discovery.session_id);
        let db = self.db()?;
        let in_order = self.in_view_order();
        let (enforced, event) = (&db.data, &db.log)
            .transaction(|(tx, log)| {
                attempt(|| {
                    let session: Session = tx_get(tx, &skey)?.ok_or_else(|| {
                        abort(PdpError::NotFound(format!(
                            "session {} is unknown",
                            discovery.session_id
                        )))
                    })?;
                    let akey = account_key(&session.merchant_id);
                    let account: Account =
                        tx_get(tx, &akey)?.unwrap_or_else(|| Account::new(&session.merchant_id));
                    let enforced =
                        domain::apply_discovery(&session, &account, discovery).map_err(abort)?;
                    if enforced.session != session {
                        tx_put(tx, &skey, &enforced.session)?;
                        tx_index_session(tx, &enforced.session)?;
                    }
                    if enforced.account != account {
                        tx_put(tx, &akey, &enforced.account)?;
                    }
                    let ended_live = session.state == SessionState::Active
                        && enforced.session.state != SessionState::Active;
                    let event = if ended_live {
                        Some(tx_event(
                            tx,
                            &enforced.session,
                            discovery.trigger,
                            &discovery.reason,
                            discovery.violations.clone(),
                            enforced.penalty_applied,
                            discovery.at,
                        )?)
                    } else {
                        None
                    };
                    tx_log(log, &record(&enforced))?;
                    Ok((enforced, event))
                })
            })
            .map_err(|e| self.tx_failed(e))?;
        let logged = take_logged();
        self.view.put_account(&enforced.account);
        self.view.put_session(&enforced.session);
        drop(in_order);
        self.durable(&db).await?;
        self.append_logged(&db, logged).await?;
        self.publish_events(event.as_ref().map(|e| e.sequence));
        Ok((enforced, event))
    }

    /// Sessions admitted and not yet shut down or ended.
    pub fn active_sessions(&self) -> Result<Vec<Session>, PdpError> {
        let mut sessions = self.view.live_sessions();
        sessions.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(sessions)
    }

    /// The session a gateway hook refers to by its stream lookup key.
    pub fn session_by_stream(&self, lookup: &str) -> Result<Option<Session>, PdpError> {
        match self
            .db()?
            .data
            .get(stream_key(lookup).as_bytes())
            .map_err(storage)?
        {
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
        let durable = *self.events_durable.borrow();
        let mut events = Vec::new();
        if after >= durable {
            return Ok(events);
        }
        let start = event_key(after.saturating_add(1));
        let end = event_key(durable.saturating_add(1));
        for item in self.db()?.data.range(start.as_bytes()..end.as_bytes()) {
            let (key, value) = item.map_err(storage)?;
            let key = String::from_utf8_lossy(&key).into_owned();
            events.push(decode(&key, &value)?);
            if events.len() >= limit {
                break;
            }
        }
        Ok(events)
    }

    /// Changes whenever a newer enforcement event is durable; the value is its sequence.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events_durable.subscribe()
    }

    /// Writes records and accounts as given, in one transaction: for fixtures and restores,
    /// where the state is already decided. Registration goes through `register` instead.
    pub async fn import(
        &self,
        registrations: &[Registration],
        accounts: &[Account],
    ) -> Result<(), PdpError> {
        self.transact(
            |tx, _log| {
                for registration in registrations {
                    tx_put(
                        tx,
                        &registration_key(registration.kind(), &registration.id),
                        registration,
                    )?;
                }
                for account in accounts {
                    tx_put(tx, &account_key(&account.merchant_id), account)?;
                }
                Ok(())
            },
            |(), view| {
                for registration in registrations {
                    view.put_registration(registration);
                }
                for account in accounts {
                    view.put_account(account);
                }
            },
        )
        .await
    }

    /// Deletes closed sessions (shut down or ended before `older_than`) and enforcement events
    /// from before it. Live sessions are never touched. Returns (sessions, events) deleted.
    pub fn prune_history(&self, older_than: Millis) -> Result<(usize, usize), PdpError> {
        let db = self.db()?;
        let mut sessions = 0;
        // Oldest first; stops at the first session closed at or after the cutoff.
        for item in db.data.scan_prefix(b"closed/") {
            let (index_key, _) = item.map_err(storage)?;
            let name = String::from_utf8_lossy(&index_key).into_owned();
            let mut parts = name["closed/".len()..].splitn(2, '/');
            let (Some(at), Some(session_id)) = (parts.next(), parts.next()) else {
                continue;
            };
            let closed_at: Millis = at.parse().map_err(|_| PdpError::Corrupt {
                key: name.clone(),
                reason: "bad close time".into(),
            })?;
            if closed_at >= older_than {
                break;
            }
            let key = session_key(session_id);
            let session: Option<Session> = match db.data.get(key.as_bytes()).map_err(storage)? {
                Some(bytes) => Some(decode(&key, &bytes)?),
                None => None,
            };
            // A session reopened since cannot be: sessions never go back to live. Still, only
            // a closed one is deleted.
            let session = session.filter(|s| s.state != SessionState::Active);
            let stream = session.as_ref().and_then(|s| {
                s.stream
                    .as_ref()
                    .map(|stream| stream_key(&stream.lookup_key(&s.gateway_id)))
            });
            let idem = session.as_ref().and_then(|s| {
                s.idempotency_key
                    .as_ref()
                    .map(|k| idempotency_key(&s.gateway_id, k))
            });
            db.data
                .transaction(|tx| {
                    tx.remove(index_key.as_ref()).map_err(tx_unabortable)?;
                    let Some(session) = &session else {
                        return Ok(());
                    };
                    tx.remove(key.as_bytes()).map_err(tx_unabortable)?;
                    tx.remove(live_key(&session.id).as_bytes())
                        .map_err(tx_unabortable)?;
                    tx_remove_if_points_at(tx, &room_key(&session.room_id), &session.id)?;
                    if let Some(stream) = &stream {
                        tx_remove_if_points_at(tx, stream, &session.id)?;
                    }
                    if let Some(idem) = &idem
                        && tx_get::<IdempotentStart>(tx, idem)?
                            .is_some_and(|first| first.session_id == session.id)
                    {
                        tx.remove(idem.as_bytes()).map_err(tx_unabortable)?;
                    }
                    Ok(())
                })
                .map_err(|e| self.tx_failed(e))?;
            if session.is_some() {
                sessions += 1;
            }
        }
        let mut events = 0;
        for item in db.data.scan_prefix(b"evt/") {
            let (key, value) = item.map_err(storage)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let event: EnforcementEvent = decode(&name, &value)?;
            if event.at >= older_than {
                break;
            }
            db.data
                .remove(&key)
                .map_err(|e| self.write_failed(storage(e)))?;
            events += 1;
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
        }
    }

    fn test_record() -> LogRecord {
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
            enforcement: "SHUT_DOWN".into(),
            policy_version: "v".into(),
            outcome: "ok".into(),
            explanation: None,
            penalty_applied: None,
            warning_issued: false,
            cause_id: String::new(),
            change: String::new(),
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
            let db = store.db().unwrap_or_else(|e| panic!("{e}"));
            for record in [&left, &appended] {
                let bytes = encode(&record.id, record).unwrap_or_else(|e| panic!("{e}"));
                db.log
                    .insert(record.id.as_bytes(), bytes)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            db.db.flush().unwrap_or_else(|e| panic!("{e}"));
        }
        let store = Store::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.log_len(), 2);
        let (records, _) = store
            .read_log(None, |_| true, 10, 10)
            .unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<_> = records.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, [appended.id.clone(), left.id.clone()]);
        let db = store.db().unwrap_or_else(|e| panic!("{e}"));
        assert!(db.log.is_empty(), "the outbox is emptied");
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
                store
                    .open_session(&s, "d", "v", &|_| Vec::new())
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
            };
            store
                .enforce(&discovery("old-live", 6), &|_| test_record())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            store
                .enforce(&discovery("live", 60), &|_| test_record())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        });
        let (sessions, events) = store.prune_history(10).unwrap_or_else(|e| panic!("{e}"));
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
