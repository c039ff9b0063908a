//! What decisions read, in memory: every registration, every account and every live session,
//! loaded when the store
//! opens and updated by each committed write, in commit order. A decision reads no disk and
//! decodes no JSON; this is also the read path a replicated backend will feed from its watch.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use crate::domain::{
    Account, Facts, Kind, Millis, RecordBody, Registration, Session, SessionState,
};

#[derive(Default)]
struct State {
    /// By kind, then id (so a lookup by `&str` allocates nothing).
    registrations: HashMap<Kind, HashMap<String, Registration>>,
    accounts: HashMap<String, Account>,
    /// Sessions not yet shut down or ended, by id.
    live: HashMap<String, Session>,
}

#[derive(Default)]
pub struct FactsView {
    state: RwLock<State>,
    /// Each live session's latest check by a gateway that this process answered (START or
    /// LIVE), `None` while it has answered none (a session another replica admitted, or one
    /// from before a restart). Kept apart from `state` so that a check, which writes here,
    /// never waits for or blocks the decisions reading `state`; and in memory only, because a
    /// LIVE check writes nothing durable (that is what makes it cheap).
    last_checks: Mutex<HashMap<String, Option<Millis>>>,
}

impl FactsView {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while writing leaves whole entries (each insert is one move), so a poisoned
        // lock still holds a usable view.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces everything (at open, and after the store is reopened).
    pub fn reset(
        &self,
        registrations: impl IntoIterator<Item = Registration>,
        accounts: impl IntoIterator<Item = Account>,
        live: impl IntoIterator<Item = Session>,
    ) {
        let mut state = State {
            live: live.into_iter().map(|s| (s.id.clone(), s)).collect(),
            ..State::default()
        };
        for registration in registrations {
            state
                .registrations
                .entry(registration.kind())
                .or_default()
                .insert(registration.id.clone(), registration);
        }
        for account in accounts {
            state.accounts.insert(account.merchant_id.clone(), account);
        }
        {
            let mut checks = self.checks();
            checks.retain(|id, _| state.live.contains_key(id));
            for id in state.live.keys() {
                checks.entry(id.clone()).or_insert(None);
            }
        }
        *self.write() = state;
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Millis>>> {
        self.last_checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes a gateway's check of a live session at `at`. A session that is not live (ended
    /// meanwhile) is not added back.
    pub fn note_check(&self, session_id: &str, at: Millis) {
        if let Some(last) = self.checks().get_mut(session_id) {
            *last = Some(last.map_or(at, |last| last.max(at)));
        }
    }

    /// The latest check of a live session this process answered, if it answered one.
    pub fn last_check(&self, session_id: &str) -> Option<Millis> {
        self.checks().get(session_id).copied().flatten()
    }

    /// How many registrations the view holds.
    pub fn registrations_len(&self) -> usize {
        self.read().registrations.values().map(HashMap::len).sum()
    }

    pub fn put_registration(&self, registration: &Registration) {
        self.write()
            .registrations
            .entry(registration.kind())
            .or_default()
            .insert(registration.id.clone(), registration.clone());
    }

    pub fn put_account(&self, account: &Account) {
        self.write()
            .accounts
            .insert(account.merchant_id.clone(), account.clone());
    }

    /// Keeps a session while it is live and forgets it once it is not.
    pub fn put_session(&self, session: &Session) {
        let mut state = self.write();
        if session.state == SessionState::Active {
            state.live.insert(session.id.clone(), session.clone());
            self.checks().entry(session.id.clone()).or_insert(None);
        } else {
            state.live.remove(&session.id);
            self.checks().remove(&session.id);
        }
    }

    pub fn live_session(&self, session_id: &str) -> Option<Session> {
        self.read().live.get(session_id).cloned()
    }

    pub fn live_sessions(&self) -> Vec<Session> {
        self.read().live.values().cloned().collect()
    }

    pub fn registration(&self, kind: Kind, id: &str) -> Option<Registration> {
        self.read()
            .registrations
            .get(&kind)
            .and_then(|by_id| by_id.get(id))
            .cloned()
    }

    /// Calls `visit` with every registration of `kinds` that `keep` accepts, as references
    /// into the view, under one read lock: for a caller that sorts or searches many and copies
    /// few (a queue page, a filing's neighbours).
    pub fn visit_registrations<R>(
        &self,
        kinds: &[Kind],
        keep: impl Fn(&Registration) -> bool,
        visit: impl FnOnce(Vec<&Registration>) -> R,
    ) -> R {
        let state = self.read();
        let found: Vec<&Registration> = kinds
            .iter()
            .filter_map(|kind| state.registrations.get(kind))
            .flat_map(|by_id| by_id.values())
            .filter(|r| keep(r))
            .collect();
        visit(found)
    }

    /// How many registrations of `kinds` `keep` accepts, and `limit` of them from `offset`,
    /// oldest first. Only the page is copied, so a long list costs a sort of references.
    pub fn registrations_page(
        &self,
        kinds: &[Kind],
        keep: impl Fn(&Registration) -> bool,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<Registration>) {
        self.visit_registrations(kinds, keep, |mut found| {
            found.sort_unstable_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let page = found.iter().skip(offset).take(limit).map(|r| (*r).clone());
            (found.len(), page.collect())
        })
    }

    pub fn account(&self, merchant_id: &str) -> Option<Account> {
        self.read().accounts.get(merchant_id).cloned()
    }

    /// Everything a decision about these ids needs, read under one lock: one consistent
    /// snapshot.
    pub fn facts(
        &self,
        merchant_id: &str,
        room_id: &str,
        anchor_id: &str,
        driver_id: &str,
        ai_features: &[String],
    ) -> Facts {
        let state = self.read();
        let get = |kind: Kind, id: &str| {
            state
                .registrations
                .get(&kind)
                .and_then(|by_id| by_id.get(id))
                .cloned()
        };
        let anchor = get(Kind::Anchor, anchor_id);
        let provider = match anchor.as_ref().map(|a| &a.body) {
            Some(RecordBody::Anchor { provider_id, .. }) => get(Kind::Provider, provider_id),
            _ => None,
        };
        let consent = anchor
            .as_ref()
            .and_then(Registration::consent_id)
            .and_then(|consent_id| get(Kind::Consent, consent_id));
        Facts {
            merchant_id: merchant_id.to_owned(),
            room_id: room_id.to_owned(),
            anchor_id: anchor_id.to_owned(),
            driver_id: driver_id.to_owned(),
            merchant: get(Kind::Merchant, merchant_id),
            account: state.accounts.get(merchant_id).cloned(),
            room: get(Kind::Room, room_id),
            anchor,
            provider,
            consent,
            driver: get(Kind::Driver, driver_id),
            ai_features: ai_features
                .iter()
                .map(|id| (id.clone(), get(Kind::AiFeature, id)))
                .collect(),
        }
    }
}
