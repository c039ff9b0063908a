//! The one interface both backends implement: a transaction that reads and writes keys. Every
//! domain operation in `mod.rs` is written once against `Tx`; sled runs it inside a sled
//! transaction, etcd runs it against the replica's mirror and commits it as one `Txn` guarded
//! by the revisions of every key it read. Either way two writers racing give one winner, and
//! the loser runs again on what the winner wrote.

use std::collections::BTreeSet;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::{
    Account, EnforcementEvent, Facts, Kind, LogRecord, Millis, Penalty, RecordBody, Registration,
    Session, SessionState, Trigger, Violation, WriteOutcome,
};
use crate::error::PdpError;

/// Why a transaction attempt stopped.
#[derive(Debug)]
pub enum TxError {
    /// The operation refuses: nothing is written and the caller gets this error.
    Abort(PdpError),
    /// The backend failed or found a conflict; it knows what happened and whether to retry.
    Backend,
}

pub type TxResult<T> = Result<T, TxError>;

impl From<PdpError> for TxError {
    fn from(e: PdpError) -> Self {
        TxError::Abort(e)
    }
}

pub trait Tx {
    fn get(&self, key: &str) -> TxResult<Option<Vec<u8>>>;
    fn put(&self, key: &str, value: Vec<u8>) -> TxResult<()>;
    fn remove(&self, key: &str) -> TxResult<()>;
    /// Writes a decision-log record with this transaction's changes.
    fn log(&self, record: &LogRecord) -> TxResult<()>;
}

/// What a committed transaction changed, in the order it changed it; `None` is a removal.
pub type Writes = Vec<(String, Option<Vec<u8>>)>;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
pub const EVENT_COUNTER_KEY: &str = "evtseq";

pub fn registration_key(kind: Kind, id: &str) -> String {
    format!("reg/{}/{id}", kind.name())
}

pub fn account_key(merchant_id: &str) -> String {
    format!("acct/{merchant_id}")
}

pub fn session_key(session_id: &str) -> String {
    format!("sess/{session_id}")
}

pub fn live_key(session_id: &str) -> String {
    format!("live/{session_id}")
}

/// Closed sessions by when they closed, so retention reads only what has expired.
pub fn closed_key(closed_at: Millis, session_id: &str) -> String {
    format!("closed/{:020}/{session_id}", closed_at.max(0))
}

/// A console sign-in by the hash of its cookie.
pub fn console_key(cookie_hash: &str) -> String {
    format!("console/{cookie_hash}")
}

pub fn room_key(room_id: &str) -> String {
    format!("room/{room_id}")
}

pub fn stream_key(lookup: &str) -> String {
    format!("stream/{lookup}")
}

pub fn in_use_key(kind: Kind, id: &str) -> String {
    format!("inuse/{}/{id}", kind.name())
}

pub fn idempotency_key(gateway_id: &str, key: &str) -> String {
    format!("idem/{gateway_id}/{key}")
}

/// The first answer to a write the caller named `request_id`.
pub fn request_key(caller: &str, request_id: &str) -> String {
    format!("req/{caller}/{request_id}")
}

/// Answers by when they were given, so retention reads only what has expired.
pub fn request_at_key(at: Millis, key: &str) -> String {
    format!("reqat/{:020}/{key}", at.max(0))
}

pub fn event_key(sequence: u64) -> String {
    format!("evt/{sequence:020}")
}

pub fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, PdpError> {
    let mut bytes = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut bytes, value).map_err(|e| PdpError::Corrupt {
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, PdpError> {
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

pub fn decode_counter(key: &str, bytes: &[u8]) -> Result<u64, PdpError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| PdpError::Corrupt {
            key: key.into(),
            reason: "not 8 bytes".into(),
        })
}

pub fn tx_get<T: DeserializeOwned>(tx: &dyn Tx, key: &str) -> TxResult<Option<T>> {
    match tx.get(key)? {
        Some(bytes) => Ok(Some(decode(key, &bytes)?)),
        None => Ok(None),
    }
}

pub fn tx_put<T: Serialize>(tx: &dyn Tx, key: &str, value: &T) -> TxResult<()> {
    tx.put(key, encode(key, value)?)
}

fn tx_get_str(tx: &dyn Tx, key: &str) -> TxResult<Option<String>> {
    Ok(tx
        .get(key)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// Every fact a decision about these ids reads, read through the transaction: the keys it
/// reads are the ones the commit is guarded on (etcd compares each one's revision; sled's one
/// writer sees the latest). The same shape as the view's `facts`, so the two compare equal
/// when nothing changed between the decision and its commit.
pub fn tx_facts(tx: &dyn Tx, decided: &Facts) -> TxResult<Facts> {
    let registration =
        |kind: Kind, id: &str| tx_get::<Registration>(tx, &registration_key(kind, id));
    let anchor = registration(Kind::Anchor, &decided.anchor_id)?;
    let provider = match anchor.as_ref().map(|a| &a.body) {
        Some(RecordBody::Anchor { provider_id, .. }) => registration(Kind::Provider, provider_id)?,
        _ => None,
    };
    let consent = match anchor.as_ref().and_then(Registration::consent_id) {
        Some(consent_id) => registration(Kind::Consent, consent_id)?,
        None => None,
    };
    let mut ai_features = Vec::with_capacity(decided.ai_features.len());
    for (id, _) in &decided.ai_features {
        ai_features.push((id.clone(), registration(Kind::AiFeature, id)?));
    }
    Ok(Facts {
        merchant_id: decided.merchant_id.clone(),
        room_id: decided.room_id.clone(),
        anchor_id: decided.anchor_id.clone(),
        driver_id: decided.driver_id.clone(),
        merchant: registration(Kind::Merchant, &decided.merchant_id)?,
        account: tx_get(tx, &account_key(&decided.merchant_id))?,
        room: registration(Kind::Room, &decided.room_id)?,
        anchor,
        provider,
        consent,
        driver: registration(Kind::Driver, &decided.driver_id)?,
        ai_features,
    })
}

/// Adds or removes `session_id` in the live sessions using a filing.
fn tx_mark_in_use(tx: &dyn Tx, kind: Kind, id: &str, session_id: &str, live: bool) -> TxResult<()> {
    let key = in_use_key(kind, id);
    let mut sessions: BTreeSet<String> = tx_get(tx, &key)?.unwrap_or_default();
    let changed = if live {
        sessions.insert(session_id.to_owned())
    } else {
        sessions.remove(session_id)
    };
    if changed {
        if sessions.is_empty() {
            tx.remove(&key)?;
        } else {
            tx_put(tx, &key, &sessions)?;
        }
    }
    Ok(())
}

/// A live session that relies on the filing `kind`/`id`, if any.
pub fn tx_live_session_using(tx: &dyn Tx, kind: Kind, id: &str) -> TxResult<Option<String>> {
    Ok(match kind {
        Kind::Room => tx_get_str(tx, &room_key(id))?,
        Kind::Anchor | Kind::Driver | Kind::Consent => {
            tx_get::<BTreeSet<String>>(tx, &in_use_key(kind, id))?
                .and_then(|sessions| sessions.into_iter().next())
        }
        _ => None,
    })
}

/// The session id `key` points at (the room and stream indexes).
pub fn tx_pointer(tx: &dyn Tx, key: &str) -> TxResult<Option<String>> {
    tx_get_str(tx, key)
}

/// Removes `key` if it still points at `session_id`.
pub fn tx_remove_if_points_at(tx: &dyn Tx, key: &str, session_id: &str) -> TxResult<()> {
    if tx.get(key)?.as_deref() == Some(session_id.as_bytes()) {
        tx.remove(key)?;
    }
    Ok(())
}

/// Keeps the active-session indexes and the gateway lookup in step with a session's state.
pub fn tx_index_session(tx: &dyn Tx, session: &Session) -> TxResult<()> {
    let live = live_key(&session.id);
    let room = room_key(&session.room_id);
    let active = session.state == SessionState::Active;
    if active {
        tx.put(&live, Vec::new())?;
        tx.put(&room, session.id.as_bytes().to_vec())?;
    } else {
        tx.remove(&live)?;
        tx_remove_if_points_at(tx, &room, &session.id)?;
    }
    tx_mark_in_use(tx, Kind::Anchor, &session.anchor_id, &session.id, active)?;
    tx_mark_in_use(tx, Kind::Driver, &session.driver_id, &session.id, active)?;
    if let Some(consent_id) = &session.consent_id {
        tx_mark_in_use(tx, Kind::Consent, consent_id, &session.id, active)?;
    }
    if !active && let Some(closed_at) = session.closed_at {
        tx.put(&closed_key(closed_at, &session.id), Vec::new())?;
    }
    if let Some(stream) = &session.stream {
        let key = stream_key(&stream.lookup_key(&session.gateway_id));
        if session.state == SessionState::Ended {
            tx_remove_if_points_at(tx, &key, &session.id)?;
        } else {
            tx.put(&key, session.id.as_bytes().to_vec())?;
        }
    }
    Ok(())
}

fn tx_next_event_sequence(tx: &dyn Tx) -> TxResult<u64> {
    let current = match tx.get(EVENT_COUNTER_KEY)? {
        Some(bytes) => decode_counter(EVENT_COUNTER_KEY, &bytes)?,
        None => 0,
    };
    let next = current + 1;
    tx.put(EVENT_COUNTER_KEY, next.to_be_bytes().to_vec())?;
    Ok(next)
}

/// What an enforcement event says, before it has its sequence.
pub struct EventBody<'a> {
    pub trigger: Trigger,
    pub reason: &'a str,
    pub violations: Vec<Violation>,
    pub penalty_applied: Option<Penalty>,
    pub at: Millis,
    /// The replica whose transaction wrote it: the one that tells nginx to drop the stream.
    pub replica: &'a str,
}

/// Writes the event that tells gateways a live session ended.
pub fn tx_event(tx: &dyn Tx, session: &Session, body: EventBody<'_>) -> TxResult<EnforcementEvent> {
    let event = EnforcementEvent {
        sequence: tx_next_event_sequence(tx)?,
        session_id: session.id.clone(),
        merchant_id: session.merchant_id.clone(),
        gateway_id: session.gateway_id.clone(),
        stream: session.stream.clone(),
        trigger: body.trigger,
        reason: body.reason.to_owned(),
        violations: body.violations,
        penalty_applied: body.penalty_applied,
        at: body.at,
        replica: body.replica.to_owned(),
    };
    tx_put(tx, &event_key(event.sequence), &event)?;
    Ok(event)
}

/// Writes a registration `outcome` changed, with its record.
pub fn tx_put_if_changed(
    tx: &dyn Tx,
    key: &str,
    outcome: &WriteOutcome,
    record: &(dyn Fn(&Registration) -> LogRecord + Sync),
) -> TxResult<()> {
    if outcome.changed {
        tx_put(tx, key, &outcome.registration)?;
        tx.log(&record(&outcome.registration))?;
    }
    Ok(())
}

/// A committed change the in-memory view keeps: registrations, accounts and sessions.
pub enum ViewChange {
    Registration(Registration),
    Account(Account),
    Session(Session),
}

/// What a write to `key` means for the view, if anything. Both backends feed the view through
/// this one function: sled from its own commits, etcd from its watch.
pub fn view_change(key: &str, value: &[u8]) -> Result<Option<ViewChange>, PdpError> {
    Ok(if key.starts_with("reg/") {
        Some(ViewChange::Registration(decode(key, value)?))
    } else if key.starts_with("acct/") {
        Some(ViewChange::Account(decode(key, value)?))
    } else if key.starts_with("sess/") {
        Some(ViewChange::Session(decode(key, value)?))
    } else {
        None
    })
}

/// The enforcement-event sequence a write to `key` makes durable, if it is an event.
pub fn event_sequence(key: &str) -> Option<u64> {
    key.strip_prefix("evt/").and_then(|s| s.parse().ok())
}
