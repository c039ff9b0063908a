//! The embedded backend: one sled database in the data directory. Operations run one at a time
//! (the one writer, `writer.rs`): each reads the state as the operations before it left it,
//! so what it read is still true when it commits. What they write, with their records for the
//! decision-log outbox, is committed in batches, each one sled transaction that only writes
//! (sled's conflict-checked transactions cost more than the operation itself under 64
//! concurrent callers) followed by one flush and fdatasync: nothing is acknowledged before it
//! is durable.
//!
//! Layout (format 1): one tree, `pdp.v1`, keyed as `tx.rs` names the keys. Values are one
//! format byte followed by JSON (`evtseq`: 8 bytes big-endian; the room and stream indexes:
//! the session id). The `meta` tree records the format so that a later build can migrate
//! instead of misreading.
//!
//! A record that goes with a change is written in the change's transaction to `log.v1` (keyed
//! by decision id), an outbox: once the change is durable the record is appended to the
//! segments, and only then leaves the outbox. Opening the store appends whatever a crash left
//! in the outbox, so a record is never lost and never without its change.
//!
//! sled stops writing for good after an I/O error (a full disk): it keeps the error and
//! returns it from every later write. The store notes the first such failure (health reads it)
//! and `recover` reopens the database once writing works again.
//!
//! Every transaction that logs a record numbers its commit (`last_commit` in `meta`, written in
//! the same transaction) and stamps the number on its records. A record reaches the segments
//! only after its change is durable, so a store whose last commit is older than a record in
//! the segments has lost changes it acknowledged (sled replays its log only up to damage it
//! finds in it); such a store is refused at open, never served.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

mod writer;

use super::Shared;
use super::group_commit::GroupCommit;
use super::segments::SegmentLog;
use super::tx::{
    self, EVENT_COUNTER_KEY, FORMAT_VERSION, Tx, TxResult, decode, decode_counter, room_key,
    session_key,
};
use crate::domain::{Account, Kind, LogRecord, Millis, Registration, Session};
use crate::error::PdpError;
use writer::{DbHandle, Writer};

const DATA_TREE: &str = "pdp.v1";
const META_TREE: &str = "meta";
/// The sled layout, in `meta`. 1 kept the outbox in a tree of its own and the last commit in
/// `meta`; 2 keeps both in the data tree, so a batch commits as one `apply_batch` of one tree
/// (a transaction over three trees cost more CPU than the batch's writes).
const FORMAT_KEY: &str = "format_version";
const LAYOUT: u8 = 2;
const PROBE_KEY: &str = "write_probe";
/// Layout 1's outbox: drained at open, never written.
const LOG_TREE: &str = "log.v1";
/// Keys of the data tree that are not state: backups and state counts leave them out.
const NOT_STATE: &str = "~";
/// The number of the last commit that logged a record (8 bytes, big-endian).
const LAST_COMMIT_KEY: &str = "~last_commit";
/// The outbox: a batch's records, as JSON arrays of at most ~64 KiB each (sled writes larger
/// values to files of their own), keyed `~outbox/<commit number>/<part>`.
const OUTBOX_PREFIX: &str = "~outbox/";
const OUTBOX_PART_BYTES: usize = 64 << 10;
/// Layout 1 kept the last commit number in `meta` under this key.
const LAYOUT_1_LAST_COMMIT_KEY: &str = "last_commit";
/// A restore that has begun and not finished: the backup's header (JSON), in `meta`.
const RESTORING_KEY: &str = "restoring";
/// How many of the newest records with a commit number the open compares with the store.
const RECORDS_CHECKED: usize = 256;

/// sled's page cache (its default is 1 GiB). Decisions and lookups read registrations and
/// accounts from the in-memory view, so the cache serves only sessions, indexes and writes.
const SLED_CACHE_BYTES: u64 = 128 << 20;

/// One open sled database. Replaced as a whole when the store is reopened.
struct Db {
    db: sled::Db,
    data: sled::Tree,
    /// Decision-log records written with a change, until they are in the segments.
    log: sled::Tree,
    /// The format and the last commit number.
    meta: sled::Tree,
    /// The last commit number, as `meta` holds it (read at open; the one writer keeps both).
    last_commit: AtomicU64,
    commit: GroupCommit,
}

pub struct SledBackend {
    dir: PathBuf,
    /// `None` only while the database is being reopened.
    db: DbHandle,
    writer: Arc<Writer>,
}

fn decode_commit(bytes: &[u8]) -> Result<u64, PdpError> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| PdpError::Corrupt {
        key: LAST_COMMIT_KEY.into(),
        reason: format!("{} bytes, not 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn storage(e: impl std::fmt::Display) -> PdpError {
    PdpError::Storage(e.to_string())
}

fn open_sled(dir: &Path) -> Result<sled::Db, sled::Error> {
    // A handle this process just dropped releases sled's directory lock only once sled's
    // background threads have let go of it: a reopen right after (a restore, a reopen after
    // a write failure, a restart in tests) waits a moment for it. Another process holding
    // the lock still gets the error, a second later.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open();
        match opened {
            Err(sled::Error::Io(e)) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// sled wraps the lock's WouldBlock in an error of its own, so its text is what tells.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// sled reads its newest snapshot, then replays its log after it. A snapshot torn by a failed
/// write (a full disk) makes every open fail with "Read corrupted data"; the log still holds
/// every write, so the snapshots are moved aside (kept, for whoever investigates) and sled
/// rebuilds its state from the whole log. If that fails too, or there is no snapshot to set
/// aside, the store is refused with what to do: never opened on data it cannot vouch for.
fn set_corrupt_snapshots_aside(dir: &Path) -> Result<sled::Db, PdpError> {
    let refuse = |what: String| {
        PdpError::Storage(format!(
            "the store in {} is corrupt ({what}); it was not opened. Restore it from a backup \
             into an empty directory (anchor-pdp restore --from FILE --data-dir NEW_DIR)",
            dir.display()
        ))
    };
    let snapshots: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| refuse(format!("cannot list it: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap."))
        })
        .collect();
    if snapshots.is_empty() {
        return Err(refuse(
            "sled reports corrupt data and there is no snapshot to set aside".into(),
        ));
    }
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = dir.join(format!("corrupt-snapshots-{millis}"));
    std::fs::create_dir_all(&aside).map_err(|e| refuse(format!("cannot set it aside: {e}")))?;
    for snapshot in &snapshots {
        if let Some(name) = snapshot.file_name() {
            std::fs::rename(snapshot, aside.join(name))
                .map_err(|e| refuse(format!("cannot set {} aside: {e}", snapshot.display())))?;
        }
    }
    let names: Vec<String> = snapshots
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    match open_sled(dir) {
        Ok(db) => {
            tracing::warn!(
                dir = %dir.display(),
                snapshots = %names.join(","),
                moved_to = %aside.display(),
                "store repaired: sled's snapshot was corrupt; it was set aside and sled \
                 rebuilt its state from its log"
            );
            Ok(db)
        }
        Err(e) => Err(refuse(format!(
            "sled: {e}, also with its snapshots ({}) set aside in {}",
            names.join(","),
            aside.display()
        ))),
    }
}

impl Db {
    fn open(dir: &Path) -> Result<Db, PdpError> {
        let db = match open_sled(dir) {
            Err(sled::Error::Corruption { .. }) => set_corrupt_snapshots_aside(dir)?,
            opened => opened.map_err(|e| match &e {
                // sled locks its directory: another process has it open.
                sled::Error::Io(io) if is_lock_held(io) => PdpError::Storage(format!(
                    "another anchor-pdp is using {} (it holds the data directory's lock): \
                         stop it, or give this one its own --data-dir",
                    dir.display()
                )),
                _ => PdpError::Storage(format!("cannot open {}: {e}", dir.display())),
            })?,
        };
        let meta = db.open_tree(META_TREE).map_err(storage)?;
        let data = db.open_tree(DATA_TREE).map_err(storage)?;
        let log = db.open_tree(LOG_TREE).map_err(storage)?;
        match meta.get(FORMAT_KEY).map_err(storage)?.as_deref() {
            Some([LAYOUT]) => {}
            Some([1]) => {
                // Layout 1 -> 2: the last commit number moves into the data tree (its outbox
                // tree is drained at open as it always was).
                if let Some(number) = meta.get(LAYOUT_1_LAST_COMMIT_KEY).map_err(storage)? {
                    data.insert(LAST_COMMIT_KEY, number).map_err(storage)?;
                }
                db.flush().map_err(storage)?;
                meta.insert(FORMAT_KEY, &[LAYOUT]).map_err(storage)?;
                meta.remove(LAYOUT_1_LAST_COMMIT_KEY).map_err(storage)?;
                db.flush().map_err(storage)?;
                tracing::info!(dir = %dir.display(), "store migrated from layout 1 to 2");
            }
            Some(v) => {
                return Err(PdpError::Storage(format!(
                    "{} holds store format {v:?}; this build reads formats 1 and {LAYOUT}",
                    dir.display(),
                )));
            }
            None => {
                meta.insert(FORMAT_KEY, &[LAYOUT]).map_err(storage)?;
                db.flush().map_err(storage)?;
            }
        }
        index_rooms(&data)?;
        index_closed_sessions(&data)?;
        let commit = GroupCommit::new(db.clone(), dir)?;
        let last_commit = match data.get(LAST_COMMIT_KEY).map_err(storage)? {
            Some(bytes) => decode_commit(&bytes)?,
            None => 0,
        };
        Ok(Db {
            db,
            data,
            log,
            meta,
            last_commit: AtomicU64::new(last_commit),
            commit,
        })
    }

    fn last_commit(&self) -> u64 {
        self.last_commit.load(Ordering::Acquire)
    }

    /// Refuses a store that lacks a commit the decision log has a record of (see the module
    /// comment). Returns the last commit it holds.
    fn check_against(&self, segments: &SegmentLog, dir: &Path) -> Result<u64, PdpError> {
        let held = self.last_commit();
        let (newest, _) = segments.newest(
            Millis::MIN..=Millis::MAX,
            &[],
            |r| r.commit > 0,
            RECORDS_CHECKED,
            100 * RECORDS_CHECKED,
        )?;
        let Some(ahead) = newest.iter().max_by_key(|r| r.commit) else {
            return Ok(held);
        };
        if ahead.commit <= held {
            tracing::info!(
                last_commit = held,
                newest_logged_commit = ahead.commit,
                "store checked against the decision log: it holds every logged change"
            );
            return Ok(held);
        }
        let lost = newest.iter().filter(|r| r.commit > held).count();
        Err(PdpError::Storage(format!(
            "the store in {} has lost changes it acknowledged: its last commit is {held}, but \
             the decision log holds records of commits up to {} ({lost} of its newest \
             {RECORDS_CHECKED} records are from commits the store lacks; the newest is {} \
             ({}) at {}). It was not opened. Restore it from a backup into an empty \
             directory (anchor-pdp restore --from FILE --data-dir NEW_DIR); the decision log \
             says what changed after the backup",
            dir.display(),
            ahead.commit,
            ahead.id,
            ahead.action,
            std::time::UNIX_EPOCH
                .checked_add(Duration::from_millis(ahead.at.max(0) as u64))
                .map_or_else(
                    || ahead.at.to_string(),
                    |t| humantime::format_rfc3339_millis(t).to_string()
                ),
        )))
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
    fn load_view(&self, shared: &Shared) -> Result<(), PdpError> {
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
        shared.view.reset(registrations, accounts, live);
        Ok(())
    }

    fn last_event(&self) -> Result<u64, PdpError> {
        match self.data.get(EVENT_COUNTER_KEY).map_err(storage)? {
            Some(bytes) => decode_counter(EVENT_COUNTER_KEY, &bytes),
            None => Ok(0),
        }
    }
}

/// Data written before the closed-session index existed: index its closed sessions once, so
/// retention finds them (a marker in the data tree says it is done).
/// Not state: says this sled store's closed-session index is built (see below).
const CLOSED_INDEX_BUILT: &[u8] = b"closed-index-built";

fn index_closed_sessions(data: &sled::Tree) -> Result<(), PdpError> {
    const DONE: &[u8] = CLOSED_INDEX_BUILT;
    if data.get(DONE).map_err(storage)?.is_some() {
        return Ok(());
    }
    for item in data.scan_prefix(b"sess/") {
        let (key, value) = item.map_err(storage)?;
        let session: Session = decode(&String::from_utf8_lossy(&key), &value)?;
        if session.state != crate::domain::SessionState::Active
            && let Some(closed_at) = session.closed_at
        {
            data.insert(tx::closed_key(closed_at, &session.id).as_bytes(), &[])
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
        // At open, before anything else runs: plain writes suffice.
        let consent = session.consent_id.iter().map(|c| (Kind::Consent, c));
        for (kind, filing) in [
            (Kind::Anchor, &session.anchor_id),
            (Kind::Driver, &session.driver_id),
        ]
        .into_iter()
        .chain(consent)
        {
            let key = tx::in_use_key(kind, filing);
            let mut using: std::collections::BTreeSet<String> =
                match data.get(key.as_bytes()).map_err(storage)? {
                    Some(bytes) => decode(&key, &bytes)?,
                    None => Default::default(),
                };
            if using.insert(session.id.clone()) {
                data.insert(key.as_bytes(), tx::encode(&key, &using)?)
                    .map_err(storage)?;
            }
        }
    }
    Ok(())
}

/// Appends what the outbox holds and the segments do not (a crash came between a change and
/// its records' append; or the data was written before the segments existed), then empties it.
fn drain_outbox(db: &Db, segments: &SegmentLog) -> Result<usize, PdpError> {
    let mut held = Vec::new();
    let mut legacy_keys = Vec::new();
    for item in db.log.iter() {
        let (key, value) = item.map_err(storage)?;
        let id = String::from_utf8_lossy(&key).into_owned();
        held.push(decode::<LogRecord>(&id, &value)?);
        legacy_keys.push(key);
    }
    let mut parts = Vec::new();
    for item in db.data.scan_prefix(OUTBOX_PREFIX) {
        let (key, value) = item.map_err(storage)?;
        held.extend(decode::<Vec<LogRecord>>(
            &String::from_utf8_lossy(&key),
            &value,
        )?);
        parts.push(key);
    }
    let mut missing = Vec::new();
    for record in held {
        if segments.get(&record.id)?.is_none() {
            missing.push(record);
        }
    }
    for chunk in missing.chunks(4096) {
        segments.append_blocking(chunk)?;
    }
    let mut batch = sled::Batch::default();
    for key in legacy_keys {
        batch.remove(key);
    }
    db.log.apply_batch(batch).map_err(storage)?;
    let mut batch = sled::Batch::default();
    for key in parts {
        batch.remove(key);
    }
    db.data.apply_batch(batch).map_err(storage)?;
    db.db.flush().map_err(storage)?;
    Ok(missing.len())
}

/// A batch's records as outbox entries: keys and values, each value a JSON array (in the
/// store's record format) of at most ~64 KiB unless one record is larger.
fn outbox_parts(commit: u64, records: &[LogRecord]) -> Result<Vec<(String, Vec<u8>)>, PdpError> {
    const EMPTY: usize = 2;
    let key = |part: usize| format!("{OUTBOX_PREFIX}{commit:020}/{part:04}");
    let mut parts = Vec::new();
    let mut value = vec![FORMAT_VERSION, b'['];
    for record in records {
        let json = serde_json::to_vec(record).map_err(|e| PdpError::Corrupt {
            key: record.id.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        if value.len() > EMPTY && value.len() + json.len() > OUTBOX_PART_BYTES {
            value.push(b']');
            parts.push((key(parts.len()), value));
            value = vec![FORMAT_VERSION, b'['];
        }
        if value.len() > EMPTY {
            value.push(b',');
        }
        value.extend_from_slice(&json);
    }
    if value.len() > EMPTY {
        value.push(b']');
        parts.push((key(parts.len()), value));
    }
    Ok(parts)
}

fn is_state(key: &[u8]) -> bool {
    key != CLOSED_INDEX_BUILT && !key.starts_with(NOT_STATE.as_bytes())
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`, appends what its outbox holds to the decision
    /// log and loads the view. Returns the backend and the last enforcement-event sequence.
    pub fn open(dir: &Path, shared: &Shared) -> Result<(SledBackend, u64), PdpError> {
        let began = std::time::Instant::now();
        let db = Db::open(dir)?;
        let opened = began.elapsed();
        let replayed = drain_outbox(&db, &shared.segments)?;
        db.check_against(&shared.segments, dir)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "decision log: appended records left in the outbox"
            );
        }
        let last_event = db.last_event()?;
        let checked = began.elapsed();
        db.load_view(shared)?;
        // Where a slow start goes: sled reading its log, or decoding the view.
        tracing::info!(
            sled_open_ms = opened.as_millis() as u64,
            outbox_and_check_ms = (checked - opened).as_millis() as u64,
            view_ms = (began.elapsed() - checked).as_millis() as u64,
            registrations = shared.view.registrations_len(),
            "store opened"
        );
        let writer = Arc::new(Writer::default());
        writer.set_revision(db.db.generate_id().map_err(storage)?);
        Ok((
            SledBackend {
                dir: dir.to_owned(),
                db: Arc::new(RwLock::new(Some(Arc::new(db)))),
                writer,
            },
            last_event,
        ))
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

    pub fn revision(&self) -> u64 {
        self.writer.revision()
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PdpError> {
        Ok(self
            .db()?
            .data
            .get(key.as_bytes())
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// Up to `limit` keys and values from `start` (inclusive) to `end` (exclusive).
    pub fn scan(
        &self,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, PdpError> {
        let mut out = Vec::new();
        for item in self.db()?.data.range(start.as_bytes()..end.as_bytes()) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(storage)?;
            out.push((String::from_utf8_lossy(&key).into_owned(), value.to_vec()));
        }
        Ok(out)
    }

    /// Runs `f` as the one writer (see `writer.rs`): it reads what every operation before it
    /// wrote, and returns once its batch is durable, in the view and in the decision log.
    /// Returns the value and the revision.
    pub async fn transact<T>(
        &self,
        shared: &Arc<Shared>,
        f: &(dyn Fn(&dyn Tx) -> TxResult<T> + Sync),
    ) -> Result<(T, u64), PdpError> {
        let db = self.db()?;
        self.writer.transact(&self.db, db, shared, f).await
    }

    /// After a write failure: checks whether writing works again, reopening the database if
    /// sled has stopped writing (it does after any I/O error). Returns `Ok` once a probe write
    /// is durable. Blocking: run it off the async workers.
    pub fn recover(&self, shared: &Shared, now: Millis) -> Result<(), PdpError> {
        let current = self.db.read().ok().and_then(|guard| guard.clone());
        if let Some(db) = &current
            && db.probe(now).is_ok()
            && shared.segments.sync_blocking().is_ok()
        {
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
        shared.segments.sync_blocking()?;
        drain_outbox(&db, &shared.segments)?;
        db.check_against(&shared.segments, &self.dir)?;
        let last_event = db.last_event()?;
        // What was not durable is gone from disk; the view must forget it too.
        db.load_view(shared)?;
        let mut guard = self
            .db
            .write()
            .map_err(|_| PdpError::Storage("the store's handle is poisoned".into()))?;
        *guard = Some(Arc::new(db));
        // What was not durable before the failure is gone; what is on disk now is durable.
        shared.events_durable.send_replace(last_event);
        tracing::info!(dir = %self.dir.display(), "store reopened: writing works again");
        Ok(())
    }

    /// Blocks until everything written so far is on disk. For shutdown.
    pub fn flush_blocking(&self) -> Result<(), PdpError> {
        let db = self.db()?;
        db.db.flush().map_err(storage)?;
        db.commit.sync_blocking()
    }

    /// Puts a record in the outbox as a crash would leave it.
    #[cfg(test)]
    pub fn put_in_outbox(&self, record: &LogRecord) -> Result<(), PdpError> {
        let db = self.db()?;
        let commit = db.last_commit() + 1 + db.data.scan_prefix(OUTBOX_PREFIX).count() as u64;
        for (key, value) in outbox_parts(commit, std::slice::from_ref(record))? {
            db.data.insert(key, value).map_err(storage)?;
        }
        db.db.flush().map_err(storage)?;
        Ok(())
    }

    #[cfg(test)]
    pub fn outbox_len(&self) -> usize {
        let Ok(db) = self.db() else { return 0 };
        let parts: usize = db
            .data
            .scan_prefix(OUTBOX_PREFIX)
            .filter_map(Result::ok)
            .filter_map(|(key, value)| {
                decode::<Vec<LogRecord>>(&String::from_utf8_lossy(&key), &value).ok()
            })
            .map(|records| records.len())
            .sum();
        parts + db.log.len()
    }
}

/// Backups: the state at one revision, and writing a backup's state into an empty store.
impl SledBackend {
    /// Every state key and value, consistent at the revision returned (see `Writer::state`:
    /// writers go on meanwhile). The copy is held in memory; it is handed out once durable
    /// (its newest batch committed), so a backup never holds a write the store could lose.
    pub async fn state(&self) -> Result<(u64, Vec<(String, Vec<u8>)>), PdpError> {
        let db = self.db()?;
        let (entries, at) = self.writer.state(&db.data, is_state).await?;
        let revision = match at {
            writer::Consistent::Once(outcome) => writer::outcome(outcome).await?,
            writer::Consistent::At(revision) => revision,
        };
        db.commit.durable().await?;
        Ok((revision, entries))
    }

    /// How many state keys the store holds.
    pub fn state_len(&self) -> Result<usize, PdpError> {
        let data = &self.db()?.data;
        let marker = data.contains_key(CLOSED_INDEX_BUILT).map_err(storage)?;
        let not_state = data.scan_prefix(NOT_STATE).count();
        Ok(data.len() - usize::from(marker) - not_state)
    }

    /// Writes `entries` into the store and flushes. Blocking. A key already there with the
    /// same value (an earlier attempt of the same restore wrote it) is left; with another
    /// value, the restore is refused. (The entries carry the closed-session index already, as
    /// every store writes it.)
    pub fn put_state(&self, entries: &[(String, Vec<u8>)]) -> Result<(), PdpError> {
        let db = self.db()?;
        for chunk in entries.chunks(1_000) {
            let mut batch = sled::Batch::default();
            for (key, value) in chunk {
                match db.data.get(key.as_bytes()).map_err(storage)? {
                    Some(held) if held.as_ref() == value.as_slice() => {}
                    Some(_) => {
                        return Err(PdpError::FailedPrecondition(format!(
                            "the target store holds {key} with another value: restore writes \
                             only into an empty one"
                        )));
                    }
                    None => batch.insert(key.as_bytes(), value.as_slice()),
                }
            }
            db.data.apply_batch(batch).map_err(storage)?;
            crate::store::fault::restore_written(chunk.len());
        }
        db.db.flush().map_err(storage)?;
        Ok(())
    }

    /// The marker of a restore that has begun and not finished (see `Store::restore`).
    pub fn restore_marker(&self) -> Result<Option<Vec<u8>>, PdpError> {
        let db = self.db()?;
        Ok(db
            .meta
            .get(RESTORING_KEY)
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// Sets (or, with `None`, removes) the restore marker, durably.
    pub fn set_restore_marker(&self, marker: Option<&[u8]>) -> Result<(), PdpError> {
        let db = self.db()?;
        match marker {
            Some(marker) => db.meta.insert(RESTORING_KEY, marker).map(|_| ()),
            None => db.meta.remove(RESTORING_KEY).map(|_| ()),
        }
        .map_err(storage)?;
        db.db.flush().map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn record(id: &str, commit: u64) -> LogRecord {
        LogRecord {
            id: id.into(),
            commit,
            ..crate::store::tests::test_record()
        }
    }

    /// A store written by layout 1 (outbox tree, last commit in `meta`), as a crash left it:
    /// it opens, its outbox reaches the decision log, and its commit number carries on.
    #[tokio::test]
    async fn a_layout_1_store_is_migrated_with_its_outbox_and_commit_number() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = temp.path().join("data");
        {
            let db = sled::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            let meta = db.open_tree(META_TREE).unwrap_or_else(|e| panic!("{e}"));
            meta.insert(FORMAT_KEY, &[1])
                .unwrap_or_else(|e| panic!("{e}"));
            meta.insert(LAYOUT_1_LAST_COMMIT_KEY, &7u64.to_be_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            let log = db.open_tree(LOG_TREE).unwrap_or_else(|e| panic!("{e}"));
            let left = record("left-in-outbox", 7);
            log.insert(
                left.id.as_bytes(),
                tx::encode(&left.id, &left).unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            db.flush().unwrap_or_else(|e| panic!("{e}"));
        }
        let store = Store::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.log_len(), 1, "the outbox record reached the log");
        store
            .transact(&|tx| {
                tx.put("test/key", vec![1])?;
                tx.log(&record("after-migration", 0))
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (records, _) = store
            .read_log(None, |_| true, 10, 10)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut commits: Vec<(String, u64)> =
            records.iter().map(|r| (r.id.clone(), r.commit)).collect();
        commits.sort();
        assert_eq!(
            commits,
            [("after-migration".into(), 8), ("left-in-outbox".into(), 7)]
        );
        drop(store);
        // Reopened as layout 2, with its commit number in the data tree.
        let store = Store::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.log_len(), 2);
        drop(store);
        let db = sled::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let meta = db.open_tree(META_TREE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            meta.get(FORMAT_KEY)
                .unwrap_or_else(|e| panic!("{e}"))
                .as_deref(),
            Some(&[LAYOUT][..])
        );
        let data = db.open_tree(DATA_TREE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            data.get(LAST_COMMIT_KEY)
                .unwrap_or_else(|e| panic!("{e}"))
                .as_deref(),
            Some(&8u64.to_be_bytes()[..])
        );
        assert_eq!(
            data.scan_prefix(OUTBOX_PREFIX).count(),
            0,
            "the outbox is empty"
        );
        // A layout this build does not know is refused, not misread.
        meta.insert(FORMAT_KEY, &[3])
            .unwrap_or_else(|e| panic!("{e}"));
        db.flush().unwrap_or_else(|e| panic!("{e}"));
        drop((meta, data, db));
        let refused = Store::open(&dir).err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(
                |e| e.contains("holds store format [3]; this build reads formats 1 and 2")
            ),
            "{refused:?}"
        );
    }
}
