//! The only module that knows sled. It exposes domain operations; each one is a single sled
//! transaction (so nothing is ever half-written) followed by a group-committed flush (so
//! nothing acknowledged is lost).
//!
//! Layout (format 1): one tree, `pdp.v1`, keyed by `<prefix>/<id>`:
//! `reg/<kind>/<id>` registrations, `acct/<merchant>` accounts, `sess/<id>` sessions,
//! `live/<id>` the index of active sessions, `stream/<gateway lookup key>` the session a gateway
//! hook refers to, `evt/<sequence, 20 digits>` enforcement events and `evtseq` their counter.
//! Values are one format byte followed by JSON (`evtseq`: 8 bytes big-endian). The `meta` tree records the format so that a later
//! build can migrate instead of misreading.

mod group_commit;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use crate::domain::{
    self, Account, Discovery, Enforced, EnforcementEvent, Facts, Kind, LogRecord, Millis,
    RecordBody, Registration, ReviewCommand, Session, SessionState, WriteOutcome,
};
use crate::error::PdpError;
use group_commit::GroupCommit;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
const DATA_TREE: &str = "pdp.v1";
const META_TREE: &str = "meta";
const FORMAT_KEY: &str = "format_version";

pub struct Store {
    db: sled::Db,
    data: sled::Tree,
    /// The decision log, keyed by decision id (UUIDv7, so by time).
    log: sled::Tree,
    commit: GroupCommit,
    /// The highest enforcement-event sequence known durable; subscribers read up to it.
    events_durable: tokio::sync::watch::Sender<u64>,
}

const EVENT_COUNTER_KEY: &str = "evtseq";
const LOG_TREE: &str = "log.v1";

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

fn stream_key(lookup: &str) -> String {
    format!("stream/{lookup}")
}

fn event_key(sequence: u64) -> String {
    format!("evt/{sequence:020}")
}

/// Keeps the active-session index and the gateway lookup in step with a session's state.
fn tx_index_session(tx: &TransactionalTree, session: &Session) -> TxResult<()> {
    let live = live_key(&session.id);
    if session.state == SessionState::Active {
        tx.insert(live.as_bytes(), &[]).map_err(tx_unabortable)?;
    } else {
        tx.remove(live.as_bytes()).map_err(tx_unabortable)?;
    }
    if let Some(stream) = &session.stream {
        let key = stream_key(&stream.lookup_key(&session.gateway_id));
        if session.state == SessionState::Ended {
            tx.remove(key.as_bytes()).map_err(tx_unabortable)?;
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

fn from_tx(e: TransactionError<PdpError>) -> PdpError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => storage(e),
    }
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

impl Store {
    /// Opens (or creates) the store in `dir`. Refuses a directory written in a format this
    /// build does not know.
    pub fn open(dir: &Path) -> Result<Store, PdpError> {
        let db = sled::Config::new()
            .path(dir)
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
        let commit = GroupCommit::new(db.clone());
        // Everything already on disk is durable.
        let last_event = match data.get(EVENT_COUNTER_KEY).map_err(storage)? {
            Some(bytes) => bytes
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| PdpError::Corrupt {
                    key: EVENT_COUNTER_KEY.into(),
                    reason: "not 8 bytes".into(),
                })?,
            None => 0,
        };
        let (events_durable, _) = tokio::sync::watch::channel(last_event);
        Ok(Store {
            db,
            data,
            log,
            commit,
            events_durable,
        })
    }

    /// Blocks until everything written so far is on disk. For shutdown.
    pub fn flush_blocking(&self) -> Result<(), PdpError> {
        self.db.flush().map(|_| ()).map_err(storage)
    }

    async fn transact<T>(
        &self,
        f: impl Fn(&TransactionalTree) -> TxResult<T>,
    ) -> Result<T, PdpError> {
        let value = self.data.transaction(f).map_err(from_tx)?;
        self.commit.durable().await?;
        Ok(value)
    }

    fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PdpError> {
        match self.data.get(key.as_bytes()).map_err(storage)? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Files or updates a record; the records it refers to (owner merchant, provider) must
    /// exist.
    pub async fn register(
        &self,
        id: &str,
        body: RecordBody,
        expected_revision: Option<u64>,
        now: Millis,
    ) -> Result<WriteOutcome, PdpError> {
        let key = registration_key(body.kind(), id);
        self.transact(|tx| {
            for (kind, ref_id, field) in body.references() {
                if tx_get::<Registration>(tx, &registration_key(kind, ref_id))?.is_none() {
                    return Err(abort(PdpError::FailedPrecondition(format!(
                        "{field}: {} {ref_id} is not registered",
                        kind.name()
                    ))));
                }
            }
            let current: Option<Registration> = tx_get(tx, &key)?;
            let outcome =
                domain::apply_register(current.as_ref(), id, body.clone(), expected_revision, now)
                    .map_err(abort)?;
            if outcome.changed {
                tx_put(tx, &key, &outcome.registration)?;
            }
            Ok(outcome)
        })
        .await
    }

    pub async fn review(&self, cmd: &ReviewCommand, now: Millis) -> Result<Registration, PdpError> {
        let key = registration_key(cmd.kind, &cmd.id);
        self.transact(|tx| {
            let current: Option<Registration> = tx_get(tx, &key)?;
            let next = domain::apply_review(current.as_ref(), cmd, now).map_err(abort)?;
            tx_put(tx, &key, &next)?;
            Ok(next)
        })
        .await
    }

    /// Read-modify-write of one registration, written only if `apply` changed it.
    async fn update_registration(
        &self,
        kind: Kind,
        id: &str,
        apply: impl Fn(Option<&Registration>) -> Result<WriteOutcome, PdpError>,
    ) -> Result<WriteOutcome, PdpError> {
        let key = registration_key(kind, id);
        self.transact(|tx| {
            let current: Option<Registration> = tx_get(tx, &key)?;
            let outcome = apply(current.as_ref()).map_err(abort)?;
            if outcome.changed {
                tx_put(tx, &key, &outcome.registration)?;
            }
            Ok(outcome)
        })
        .await
    }

    pub async fn set_provider_listing(
        &self,
        id: &str,
        listed: bool,
        operator: &str,
        expected_revision: Option<u64>,
        now: Millis,
    ) -> Result<WriteOutcome, PdpError> {
        self.update_registration(Kind::Provider, id, |current| {
            domain::apply_provider_listing(current, id, listed, operator, expected_revision, now)
        })
        .await
    }

    pub async fn set_ai_feature_filing(
        &self,
        id: &str,
        security_assessment_passed: bool,
        filing_number: &str,
        operator: &str,
        expected_revision: Option<u64>,
        now: Millis,
    ) -> Result<WriteOutcome, PdpError> {
        self.update_registration(Kind::AiFeature, id, |current| {
            domain::apply_ai_feature_filing(
                current,
                id,
                security_assessment_passed,
                filing_number,
                operator,
                expected_revision,
                now,
            )
        })
        .await
    }

    pub fn get_registration(&self, kind: Kind, id: &str) -> Result<Option<Registration>, PdpError> {
        self.read(&registration_key(kind, id))
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
        for item in self.data.range(start.as_bytes()..) {
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
            .read(&account_key(merchant_id))?
            .unwrap_or_else(|| Account::new(merchant_id));
        Ok(Some((merchant, account)))
    }

    /// Clears the freeze. Returns the account and whether it was frozen at `now`.
    pub async fn lift_freeze(
        &self,
        merchant_id: &str,
        operator: &str,
        reason: &str,
        now: Millis,
    ) -> Result<(Account, bool), PdpError> {
        let merchant_key = registration_key(Kind::Merchant, merchant_id);
        let key = account_key(merchant_id);
        self.transact(|tx| {
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
            }
            Ok((account, was_frozen))
        })
        .await
    }

    /// Everything a decision about these ids needs, read as one consistent snapshot.
    pub fn facts(
        &self,
        merchant_id: &str,
        room_id: &str,
        anchor_id: &str,
        driver_id: &str,
        ai_features: &[String],
    ) -> Result<Facts, PdpError> {
        let (merchant, account, room, anchor, provider, driver, features) = self
            .data
            .transaction(|tx| {
                let merchant: Option<Registration> =
                    tx_get(tx, &registration_key(Kind::Merchant, merchant_id))?;
                let account: Option<Account> = tx_get(tx, &account_key(merchant_id))?;
                let room: Option<Registration> =
                    tx_get(tx, &registration_key(Kind::Room, room_id))?;
                let anchor: Option<Registration> =
                    tx_get(tx, &registration_key(Kind::Anchor, anchor_id))?;
                let provider: Option<Registration> = match anchor.as_ref().map(|a| &a.body) {
                    Some(RecordBody::Anchor { provider_id, .. }) => {
                        tx_get(tx, &registration_key(Kind::Provider, provider_id))?
                    }
                    _ => None,
                };
                let driver: Option<Registration> =
                    tx_get(tx, &registration_key(Kind::Driver, driver_id))?;
                let mut features = Vec::with_capacity(ai_features.len());
                for feature in ai_features {
                    let record: Option<Registration> =
                        tx_get(tx, &registration_key(Kind::AiFeature, feature))?;
                    features.push((feature.clone(), record));
                }
                Ok((merchant, account, room, anchor, provider, driver, features))
            })
            .map_err(from_tx)?;
        Ok(Facts {
            merchant_id: merchant_id.to_owned(),
            room_id: room_id.to_owned(),
            anchor_id: anchor_id.to_owned(),
            driver_id: driver_id.to_owned(),
            merchant,
            account,
            room,
            anchor,
            provider,
            driver,
            ai_features: features,
        })
    }

    pub async fn open_session(&self, session: &Session) -> Result<(), PdpError> {
        let key = session_key(&session.id);
        self.transact(|tx| {
            if tx.get(key.as_bytes()).map_err(tx_unabortable)?.is_some() {
                return Err(abort(PdpError::Storage(format!(
                    "session id {} collides with a stored session",
                    session.id
                ))));
            }
            tx_put(tx, &key, session)?;
            tx_index_session(tx, session)
        })
        .await
    }

    pub fn get_session(&self, session_id: &str) -> Result<Option<Session>, PdpError> {
        self.read(&session_key(session_id))
    }

    /// Applies `update` to the stored session atomically; writes only if it changed.
    pub async fn update_session(
        &self,
        session_id: &str,
        update: impl Fn(&Session) -> Result<Session, PdpError>,
    ) -> Result<Session, PdpError> {
        let key = session_key(session_id);
        let (session, changed) = self
            .data
            .transaction(|tx| {
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
                }
                Ok((next, changed))
            })
            .map_err(from_tx)?;
        if changed {
            self.commit.durable().await?;
        }
        Ok(session)
    }

    /// Shuts a session down and applies a live discovery's penalty: session, account and the
    /// enforcement event change together or not at all. Returns the event when the discovery
    /// ended a live session.
    pub async fn enforce(
        &self,
        discovery: &Discovery,
    ) -> Result<(Enforced, Option<EnforcementEvent>), PdpError> {
        let skey = session_key(&discovery.session_id);
        let (enforced, event) = self
            .data
            .transaction(|tx| {
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
                    let event = EnforcementEvent {
                        sequence: tx_next_event_sequence(tx)?,
                        session_id: session.id.clone(),
                        merchant_id: session.merchant_id.clone(),
                        gateway_id: session.gateway_id.clone(),
                        stream: session.stream.clone(),
                        trigger: discovery.trigger,
                        reason: discovery.reason.clone(),
                        violations: discovery.violations.clone(),
                        penalty_applied: enforced.penalty_applied,
                        at: discovery.at,
                    };
                    tx_put(tx, &event_key(event.sequence), &event)?;
                    Some(event)
                } else {
                    None
                };
                Ok((enforced, event))
            })
            .map_err(from_tx)?;
        self.commit.durable().await?;
        if let Some(event) = &event {
            self.events_durable.send_if_modified(|durable| {
                let newer = event.sequence > *durable;
                if newer {
                    *durable = event.sequence;
                }
                newer
            });
        }
        Ok((enforced, event))
    }

    /// Sessions admitted and not yet shut down or ended.
    pub fn active_sessions(&self) -> Result<Vec<Session>, PdpError> {
        let mut sessions = Vec::new();
        for item in self.data.scan_prefix(b"live/") {
            let (key, _) = item.map_err(storage)?;
            let id = String::from_utf8_lossy(&key["live/".len()..]).into_owned();
            if let Some(session) = self.get_session(&id)? {
                sessions.push(session);
            }
        }
        Ok(sessions)
    }

    /// The session a gateway hook refers to by its stream lookup key.
    pub fn session_by_stream(&self, lookup: &str) -> Result<Option<Session>, PdpError> {
        match self
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
        for item in self.data.range(start.as_bytes()..end.as_bytes()) {
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
        self.transact(|tx| {
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
        })
        .await
    }

    /// Appends decision-log records in one batch and waits until they are durable.
    pub async fn append_log(&self, records: &[LogRecord]) -> Result<(), PdpError> {
        let mut batch = sled::Batch::default();
        for record in records {
            batch.insert(record.id.as_bytes(), encode(&record.id, record)?);
        }
        self.log.apply_batch(batch).map_err(storage)?;
        self.commit.durable().await
    }

    /// Decision-log records in id (time) order, starting after `after`, that `keep` accepts;
    /// stops after `limit` matches or `scan_limit` records looked at.
    pub fn read_log(
        &self,
        after: Option<&str>,
        keep: impl Fn(&LogRecord) -> bool,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<LogRecord>, Option<String>), PdpError> {
        let start = after.map_or_else(Vec::new, |a| {
            let mut key = a.as_bytes().to_vec();
            key.push(0);
            key
        });
        let mut out = Vec::new();
        let mut last = None;
        for (scanned, item) in self.log.range(start..).enumerate() {
            if scanned >= scan_limit || out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(storage)?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let record: LogRecord = decode(&key, &value)?;
            last = Some(key);
            if keep(&record) {
                out.push(record);
            }
        }
        Ok((out, last))
    }

    pub fn log_record(&self, id: &str) -> Result<Option<LogRecord>, PdpError> {
        match self.log.get(id.as_bytes()).map_err(storage)? {
            Some(bytes) => decode(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes records older than `older_than`, then the oldest beyond `max_records`.
    /// Returns (deleted, kept).
    pub fn prune_log(
        &self,
        older_than: Millis,
        max_records: usize,
    ) -> Result<(usize, usize), PdpError> {
        let mut deleted = 0;
        for item in self.log.iter() {
            let (key, value) = item.map_err(storage)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let record: LogRecord = decode(&name, &value)?;
            if record.at >= older_than {
                break;
            }
            self.log.remove(&key).map_err(storage)?;
            deleted += 1;
        }
        let mut kept = self.log.len();
        while kept > max_records {
            match self.log.pop_min().map_err(storage)? {
                Some(_) => {
                    deleted += 1;
                    kept -= 1;
                }
                None => break,
            }
        }
        Ok((deleted, kept))
    }

    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Deletes closed sessions (shut down or ended before `older_than`) and enforcement events
    /// from before it. Live sessions are never touched. Returns (sessions, events) deleted.
    pub fn prune_history(&self, older_than: Millis) -> Result<(usize, usize), PdpError> {
        let mut sessions = 0;
        for item in self.data.scan_prefix(b"sess/") {
            let (key, value) = item.map_err(storage)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let session: Session = decode(&name, &value)?;
            let closed_before = session.state != SessionState::Active
                && session.closed_at.is_some_and(|at| at < older_than);
            if !closed_before {
                continue;
            }
            let stream = session
                .stream
                .as_ref()
                .map(|s| stream_key(&s.lookup_key(&session.gateway_id)));
            self.data
                .transaction(|tx| {
                    tx.remove(key.as_ref()).map_err(tx_unabortable)?;
                    tx.remove(live_key(&session.id).as_bytes())
                        .map_err(tx_unabortable)?;
                    // Only if the lookup still points at this session.
                    if let Some(stream) = &stream
                        && tx
                            .get(stream.as_bytes())
                            .map_err(tx_unabortable)?
                            .as_deref()
                            == Some(session.id.as_bytes())
                    {
                        tx.remove(stream.as_bytes()).map_err(tx_unabortable)?;
                    }
                    Ok(())
                })
                .map_err(from_tx)?;
            sessions += 1;
        }
        let mut events = 0;
        for item in self.data.scan_prefix(b"evt/") {
            let (key, value) = item.map_err(storage)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let event: EnforcementEvent = decode(&name, &value)?;
            if event.at >= older_than {
                break;
            }
            self.data.remove(&key).map_err(storage)?;
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
            room_id: "r1".into(),
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
        }
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
                    .open_session(&s)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            let discovery = |session: &str, at| Discovery {
                session_id: session.into(),
                trigger: Trigger::ViolationReport,
                violations: vec![],
                rule_ids: vec!["R3".into()],
                penalty: Penalty::None,
                discovered_by: "test".into(),
                reason: "test".into(),
                at,
            };
            store
                .enforce(&discovery("old-live", 6))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            store
                .enforce(&discovery("live", 60))
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
