//! The PDP's operations, between transport and store: read the facts, decide, enforce, and
//! make every acknowledged change durable. Knows neither tonic nor sled.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::domain::{
    Account, Discovery, DriveMode, Enforced, EnforcementEvent, Kind, LivestreamType, Millis,
    Penalty, RecordBody, Registration, ReviewCommand, Session, SessionState, StreamRef, Trigger,
    Verdict, WriteOutcome,
};
use crate::error::PdpError;
use crate::policy::{
    Decision, Observation, Phase, PolicyBundle, PolicyHandle, ReloadOutcome, Violation,
};
use crate::store::Store;

/// The pseudo rule id of a LIVE re-check on a session that is not live.
pub const SESSION_RULE_ID: &str = "SESSION";

/// What the PDP did about a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    None,
    RefuseStart,
    ShutDown,
}

/// An Authorize request after transport validation.
#[derive(Clone, Debug)]
pub struct AuthorizeCommand {
    pub phase: Phase,
    pub merchant_id: Option<String>,
    pub room_id: Option<String>,
    pub anchor_id: Option<String>,
    pub driver_id: Option<String>,
    pub livestream_type: Option<LivestreamType>,
    pub drive_mode: Option<DriveMode>,
    pub ai_features: Vec<String>,
    pub session_id: Option<String>,
    pub gateway_id: String,
    /// Return the facts and policies the decision used.
    pub explain: bool,
    /// Where a gateway hook carries the stream (so it can find the session and be told to
    /// cut it).
    pub stream: Option<StreamRef>,
}

impl AuthorizeCommand {
    /// A LIVE re-check of `session_id` with nothing observed afresh: the session's own
    /// livestream type, drive mode and AI features stand.
    pub fn live(session_id: String, gateway_id: String) -> AuthorizeCommand {
        AuthorizeCommand {
            phase: Phase::Live,
            merchant_id: None,
            room_id: None,
            anchor_id: None,
            driver_id: None,
            livestream_type: None,
            drive_mode: None,
            ai_features: Vec::new(),
            session_id: Some(session_id),
            gateway_id,
            explain: false,
            stream: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthorizeOutcome {
    /// The merchant decided about (from the request at START, the session at LIVE).
    pub merchant_id: Option<String>,
    pub decision: Decision,
    pub enforcement: Enforcement,
    pub penalty_applied: Option<Penalty>,
    pub warning_issued: bool,
    pub frozen_until: Option<Millis>,
    pub session_id: Option<String>,
    pub recheck_after: Option<Duration>,
    pub decision_id: String,
    pub decided_at: Millis,
}

/// How a live session is re-checked: the gateway's fresh observations (if any) and who asks.
struct LiveCheck<'a> {
    livestream_type: Option<LivestreamType>,
    drive_mode: Option<DriveMode>,
    ai_features: &'a [String],
    trigger: Trigger,
    discovered_by: &'a str,
    explain: bool,
}

impl<'a> LiveCheck<'a> {
    fn recheck(discovered_by: &'a str) -> Self {
        LiveCheck {
            livestream_type: None,
            drive_mode: None,
            ai_features: &[],
            trigger: Trigger::Recheck,
            discovered_by,
            explain: false,
        }
    }
}

/// The result of an inspector's violation report.
#[derive(Clone, Debug)]
pub struct ReportOutcome {
    pub enforced: Enforced,
    pub violation: Violation,
    pub now: Millis,
}

pub struct Pdp {
    store: Arc<Store>,
    policies: Arc<PolicyHandle>,
    clock: Arc<dyn Clock>,
    recheck_after: Duration,
}

/// Decides, explaining every deny even when the caller did not ask: the decision log keeps the
/// explanation, and a deny is what a merchant will ask about. Allows are explained only on
/// request, so the common path pays nothing.
fn decide_for_the_record(
    policies: &PolicyBundle,
    facts: &crate::domain::Facts,
    observation: &Observation<'_>,
    now: Millis,
    explain: bool,
) -> Decision {
    let decision = policies.decide_explained(facts, observation, now, explain);
    if decision.allowed || decision.explanation.is_some() {
        decision
    } else {
        policies.decide_explained(facts, observation, now, true)
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn session_violation(en: String, zh: String) -> Violation {
    Violation {
        rule_id: SESSION_RULE_ID.into(),
        message_en: en,
        message_zh: zh,
        penalty: Penalty::None,
    }
}

impl Pdp {
    pub fn new(
        store: Arc<Store>,
        policies: Arc<PolicyHandle>,
        clock: Arc<dyn Clock>,
        recheck_after: Duration,
    ) -> Self {
        Pdp {
            store,
            policies,
            clock,
            recheck_after,
        }
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The policy set in force now.
    pub fn policies(&self) -> Arc<PolicyBundle> {
        self.policies.current()
    }

    pub fn policy_handle(&self) -> &PolicyHandle {
        &self.policies
    }

    /// Validates the policy directory again and swaps it in if valid.
    pub fn reload_policies(&self, trigger: &str) -> ReloadOutcome {
        self.policies.reload(self.now(), trigger)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_handle(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Decides a START or LIVE request. Errors are only for malformed requests; every failure
    /// on the way to a decision is a deny that says why (fail closed).
    pub async fn authorize(&self, cmd: AuthorizeCommand) -> Result<AuthorizeOutcome, PdpError> {
        let now = self.now();
        // One set for the whole decision, even if a reload lands meanwhile.
        let policies = self.policies.current();
        let merchant_id = cmd.merchant_id.clone();
        let mut outcome = match cmd.phase {
            Phase::Start => self.authorize_start(&policies, cmd, now).await,
            Phase::Live => self.authorize_live(&policies, cmd, now).await?,
        };
        if outcome.merchant_id.is_none() {
            outcome.merchant_id = merchant_id;
        }
        Ok(outcome)
    }

    fn outcome(
        &self,
        decision: Decision,
        enforcement: Enforcement,
        now: Millis,
    ) -> AuthorizeOutcome {
        AuthorizeOutcome {
            merchant_id: None,
            decision,
            enforcement,
            penalty_applied: None,
            warning_issued: false,
            frozen_until: None,
            session_id: None,
            recheck_after: None,
            decision_id: new_id(),
            decided_at: now,
        }
    }

    fn deny(policies: &PolicyBundle, violation: Violation) -> Decision {
        Decision {
            allowed: false,
            violations: vec![violation],
            policy_version: policies.version().to_owned(),
            explanation: None,
        }
    }

    async fn authorize_start(
        &self,
        policies: &PolicyBundle,
        cmd: AuthorizeCommand,
        now: Millis,
    ) -> AuthorizeOutcome {
        let (
            Some(merchant_id),
            Some(room_id),
            Some(anchor_id),
            Some(driver_id),
            Some(livestream_type),
            Some(drive_mode),
        ) = (
            cmd.merchant_id,
            cmd.room_id,
            cmd.anchor_id,
            cmd.driver_id,
            cmd.livestream_type,
            cmd.drive_mode,
        )
        else {
            // The transport checks these; a caller of the library that skips it still fails
            // closed.
            return self.outcome(
                Self::deny(
                    policies,
                    Violation::pdp_failure("a START request names every id and observation"),
                ),
                Enforcement::RefuseStart,
                now,
            );
        };
        let facts = match self.store.facts(
            &merchant_id,
            &room_id,
            &anchor_id,
            &driver_id,
            &cmd.ai_features,
        ) {
            Ok(facts) => facts,
            Err(e) => {
                return self.outcome(
                    Self::deny(policies, Violation::pdp_failure(&e.to_string())),
                    Enforcement::RefuseStart,
                    now,
                );
            }
        };
        let observation = Observation {
            phase: Phase::Start,
            livestream_type,
            drive_mode,
            ai_features: &cmd.ai_features,
        };
        let decision = decide_for_the_record(policies, &facts, &observation, now, cmd.explain);
        let frozen_until = facts.account.as_ref().and_then(|a| a.frozen_at(now));
        if !decision.allowed {
            let mut outcome = self.outcome(decision, Enforcement::RefuseStart, now);
            outcome.frozen_until = frozen_until;
            return outcome;
        }
        let session = Session {
            id: new_id(),
            state: SessionState::Active,
            merchant_id,
            room_id,
            anchor_id,
            driver_id,
            livestream_type,
            drive_mode,
            ai_features: cmd.ai_features.iter().cloned().collect(),
            gateway_id: cmd.gateway_id,
            started_at: now,
            closed_at: None,
            close_reason: String::new(),
            penalty_applied: None,
            stream: cmd.stream,
        };
        if let Err(e) = self.store.open_session(&session).await {
            return self.outcome(
                Self::deny(
                    policies,
                    Violation::pdp_failure(&format!("the session could not be recorded: {e}")),
                ),
                Enforcement::RefuseStart,
                now,
            );
        }
        let mut outcome = self.outcome(decision, Enforcement::None, now);
        outcome.session_id = Some(session.id);
        outcome.recheck_after = Some(self.recheck_after);
        outcome
    }

    async fn authorize_live(
        &self,
        policies: &PolicyBundle,
        cmd: AuthorizeCommand,
        now: Millis,
    ) -> Result<AuthorizeOutcome, PdpError> {
        let Some(session_id) = cmd.session_id.clone() else {
            return Err(PdpError::invalid("session_id", "required at LIVE"));
        };
        let session = match self.store.get_session(&session_id) {
            Ok(Some(session)) => session,
            Ok(None) => {
                let mut outcome = self.outcome(
                    Self::deny(
                        policies,
                        session_violation(
                            format!(
                                "Session {session_id} is unknown: a broadcast must be admitted at START."
                            ),
                            format!("直播会话 {session_id} 不存在:直播须先通过开播(START)校验。"),
                        ),
                    ),
                    Enforcement::ShutDown,
                    now,
                );
                outcome.session_id = Some(session_id);
                return Ok(outcome);
            }
            Err(e) => {
                let mut outcome = self.outcome(
                    Self::deny(policies, Violation::pdp_failure(&e.to_string())),
                    Enforcement::ShutDown,
                    now,
                );
                outcome.session_id = Some(session_id);
                return Ok(outcome);
            }
        };
        for (field, given, stored) in [
            ("merchant_id", &cmd.merchant_id, &session.merchant_id),
            ("room_id", &cmd.room_id, &session.room_id),
            ("anchor_id", &cmd.anchor_id, &session.anchor_id),
            ("driver_id", &cmd.driver_id, &session.driver_id),
        ] {
            if let Some(given) = given
                && given != stored
            {
                return Err(PdpError::invalid(
                    field,
                    format!("{given} does not match session {session_id} ({stored})"),
                ));
            }
        }
        let discovered_by = if cmd.gateway_id.is_empty() {
            "pdp:live-check".to_owned()
        } else {
            format!("pdp:live-check via {}", cmd.gateway_id)
        };
        let merchant_id = session.merchant_id.clone();
        let outcome = self
            .evaluate_live(
                policies,
                session,
                LiveCheck {
                    livestream_type: cmd.livestream_type,
                    drive_mode: cmd.drive_mode,
                    ai_features: &cmd.ai_features,
                    trigger: Trigger::LiveCheck,
                    discovered_by: &discovered_by,
                    explain: cmd.explain,
                },
                now,
            )
            .await;
        if outcome.penalty_applied.is_some_and(Penalty::freezes) {
            self.propagate_freeze(merchant_id).await;
        }
        Ok(outcome)
    }

    /// Re-checks a live session and enforces the result: shut down (and the penalty, once per
    /// session) if any rule is broken now.
    async fn evaluate_live(
        &self,
        policies: &PolicyBundle,
        session: Session,
        check: LiveCheck<'_>,
        now: Millis,
    ) -> AuthorizeOutcome {
        let session_id = session.id.clone();
        let merchant_id = session.merchant_id.clone();
        let shut_down = |decision: Decision| {
            let mut outcome = self.outcome(decision, Enforcement::ShutDown, now);
            outcome.session_id = Some(session_id.clone());
            outcome.merchant_id = Some(merchant_id.clone());
            outcome
        };
        if session.state != SessionState::Active {
            let (en, zh) = match session.state {
                SessionState::ShutDown => ("was shut down", "已被关停"),
                _ => ("has ended", "已结束"),
            };
            let mut outcome = shut_down(Self::deny(
                policies,
                session_violation(
                    format!(
                        "Session {session_id} {en} ({}); it cannot go on.",
                        session.close_reason
                    ),
                    format!(
                        "直播会话 {session_id} {zh}({}),不能继续。",
                        session.close_reason
                    ),
                ),
            ));
            outcome.frozen_until = self
                .store
                .get_account(&session.merchant_id)
                .ok()
                .flatten()
                .and_then(|(_, account)| account.frozen_at(now));
            return outcome;
        }

        let livestream_type = check.livestream_type.unwrap_or(session.livestream_type);
        let drive_mode = check.drive_mode.unwrap_or(session.drive_mode);
        let mut features: BTreeSet<String> = session.ai_features.clone();
        features.extend(check.ai_features.iter().cloned());
        let feature_list: Vec<String> = features.iter().cloned().collect();
        let facts = match self.store.facts(
            &session.merchant_id,
            &session.room_id,
            &session.anchor_id,
            &session.driver_id,
            &feature_list,
        ) {
            Ok(facts) => facts,
            Err(e) => {
                return shut_down(Self::deny(policies, Violation::pdp_failure(&e.to_string())));
            }
        };
        let observation = Observation {
            phase: Phase::Live,
            livestream_type,
            drive_mode,
            ai_features: &feature_list,
        };
        let decision = decide_for_the_record(policies, &facts, &observation, now, check.explain);

        if decision.allowed {
            if features != session.ai_features || drive_mode != session.drive_mode {
                let recorded = self
                    .store
                    .update_session(&session_id, |s| {
                        let mut next = s.clone();
                        next.ai_features.extend(features.iter().cloned());
                        next.drive_mode = drive_mode;
                        Ok(next)
                    })
                    .await;
                if let Err(e) = recorded {
                    return shut_down(Self::deny(
                        policies,
                        Violation::pdp_failure(&format!(
                            "the session's observations could not be recorded: {e}"
                        )),
                    ));
                }
            }
            let mut outcome = self.outcome(decision, Enforcement::None, now);
            outcome.session_id = Some(session_id);
            outcome.merchant_id = Some(merchant_id);
            outcome.recheck_after = Some(self.recheck_after);
            return outcome;
        }

        let discovery = Discovery {
            session_id: session_id.clone(),
            trigger: check.trigger,
            violations: decision.violations.clone(),
            rule_ids: decision.rule_ids(),
            penalty: decision.penalty(),
            discovered_by: check.discovered_by.to_owned(),
            reason: format!(
                "{} broke {}",
                check.discovered_by,
                decision.rule_ids().join(", ")
            ),
            at: now,
        };
        match self.store.enforce(&discovery).await {
            Ok((enforced, _event)) => {
                let mut outcome = shut_down(decision);
                outcome.penalty_applied = enforced.penalty_applied;
                outcome.warning_issued = enforced.warning_issued;
                outcome.frozen_until = enforced.account.frozen_at(now);
                outcome
            }
            Err(e) => {
                let mut decision = decision;
                decision.violations.push(Violation::pdp_failure(&format!(
                    "the shutdown and its penalty could not be recorded: {e}"
                )));
                shut_down(decision)
            }
        }
    }

    /// Re-checks the live sessions `relevant` picks, after a change to what they rely on (a
    /// revoked filing, a delisted provider, a withdrawn AI filing, a tier change). Those that
    /// now break a rule are shut down at once, as a LIVE re-check would, and pushed to
    /// enforcement watchers. Returns how many were shut down.
    pub async fn recheck_live_sessions(
        &self,
        relevant: impl Fn(&Session) -> bool,
        cause: &str,
    ) -> usize {
        let (mut shut, frozen) = self
            .recheck_sessions(relevant, &format!("pdp:recheck after {cause}"))
            .await;
        for merchant_id in frozen {
            shut += self.propagate_freeze(merchant_id).await;
        }
        shut
    }

    /// A freeze ends every other live broadcast of the account (E3). Sweeping them can only
    /// freeze this same account again, so one sweep is enough.
    async fn propagate_freeze(&self, merchant_id: String) -> usize {
        let discovered_by = format!("pdp:recheck after freezing {merchant_id}");
        let (shut, _same_account) = self
            .recheck_sessions(|s| s.merchant_id == merchant_id, &discovered_by)
            .await;
        shut
    }

    /// Re-checks (and enforces on) each live session `relevant` picks. Returns how many were
    /// shut down, and the merchants a penalty froze (once each).
    async fn recheck_sessions(
        &self,
        relevant: impl Fn(&Session) -> bool,
        discovered_by: &str,
    ) -> (usize, Vec<String>) {
        let sessions = match self.store.active_sessions() {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::error!(error = %e, discovered_by, "cannot list live sessions to re-check");
                return (0, Vec::new());
            }
        };
        let policies = self.policies.current();
        let mut shut = 0;
        let mut frozen: Vec<String> = Vec::new();
        for session in sessions.into_iter().filter(|s| relevant(s)) {
            let merchant_id = session.merchant_id.clone();
            let outcome = self
                .evaluate_live(
                    &policies,
                    session,
                    LiveCheck::recheck(discovered_by),
                    self.now(),
                )
                .await;
            if outcome.enforcement == Enforcement::ShutDown {
                shut += 1;
            }
            if outcome.penalty_applied.is_some_and(Penalty::freezes)
                && !frozen.contains(&merchant_id)
            {
                frozen.push(merchant_id);
            }
        }
        (shut, frozen)
    }

    /// Ends a session (the publisher stopped). Ending an ended session changes nothing.
    pub async fn end_session(&self, session_id: &str, reason: &str) -> Result<Session, PdpError> {
        let now = self.now();
        self.store
            .update_session(session_id, |s| {
                let mut next = s.clone();
                if s.state != SessionState::Ended {
                    next.state = SessionState::Ended;
                    if s.closed_at.is_none() {
                        next.closed_at = Some(now);
                        next.close_reason = format!("ended: {reason}");
                    }
                }
                Ok(next)
            })
            .await
    }

    pub fn get_session(&self, session_id: &str) -> Result<Session, PdpError> {
        self.store
            .get_session(session_id)?
            .ok_or_else(|| PdpError::NotFound(format!("session {session_id} is unknown")))
    }

    pub async fn register(
        &self,
        id: &str,
        body: RecordBody,
        expected_revision: Option<u64>,
    ) -> Result<WriteOutcome, PdpError> {
        let outcome = self
            .store
            .register(id, body, expected_revision, self.now())
            .await?;
        if outcome.changed && outcome.registration.revision > 1 {
            self.recheck_sessions_using(outcome.registration.kind(), id, "a changed registration")
                .await;
        }
        Ok(outcome)
    }

    pub async fn review(&self, cmd: &ReviewCommand) -> Result<Registration, PdpError> {
        let registration = self.store.review(cmd, self.now()).await?;
        if cmd.verdict == Verdict::Revoke {
            self.recheck_sessions_using(cmd.kind, &cmd.id, "a revoked filing")
                .await;
        }
        Ok(registration)
    }

    /// Re-checks the live sessions that rely on the record `kind`/`id`.
    async fn recheck_sessions_using(&self, kind: Kind, id: &str, cause: &str) -> usize {
        let store = &self.store;
        let shut = self
            .recheck_live_sessions(
                |s| match kind {
                    Kind::Merchant => s.merchant_id == id,
                    Kind::Anchor => s.anchor_id == id,
                    Kind::Driver => s.driver_id == id,
                    Kind::Room => s.room_id == id,
                    Kind::AiFeature => s.ai_features.contains(id),
                    Kind::Provider => matches!(
                        store.get_registration(Kind::Anchor, &s.anchor_id),
                        Ok(Some(Registration { body: RecordBody::Anchor { ref provider_id, .. }, .. }))
                            if provider_id == id
                    ),
                },
                cause,
            )
            .await;
        if shut > 0 {
            tracing::warn!(
                kind = kind.name(),
                id,
                shut,
                cause,
                "live sessions shut down"
            );
        }
        shut
    }

    pub async fn set_provider_listing(
        &self,
        id: &str,
        listed: bool,
        operator: &str,
        expected_revision: Option<u64>,
    ) -> Result<WriteOutcome, PdpError> {
        let outcome = self
            .store
            .set_provider_listing(id, listed, operator, expected_revision, self.now())
            .await?;
        if outcome.changed && !listed {
            self.recheck_sessions_using(Kind::Provider, id, "a delisted provider")
                .await;
        }
        Ok(outcome)
    }

    pub async fn set_ai_feature_filing(
        &self,
        id: &str,
        security_assessment_passed: bool,
        filing_number: &str,
        operator: &str,
        expected_revision: Option<u64>,
    ) -> Result<WriteOutcome, PdpError> {
        let outcome = self
            .store
            .set_ai_feature_filing(
                id,
                security_assessment_passed,
                filing_number,
                operator,
                expected_revision,
                self.now(),
            )
            .await?;
        if outcome.changed {
            self.recheck_sessions_using(Kind::AiFeature, id, "a changed AI-feature filing")
                .await;
        }
        Ok(outcome)
    }

    /// An inspector found `rule_id` broken in a live session: shut it down and apply the rule's
    /// penalty, unless the session was penalized before.
    pub async fn report_violation(
        &self,
        session_id: &str,
        rule_id: &str,
        inspector: &str,
        note: &str,
    ) -> Result<ReportOutcome, PdpError> {
        let policies = self.policies.current();
        let rule = policies.rule(rule_id).ok_or_else(|| {
            PdpError::invalid(
                "rule_id",
                format!(
                    "{rule_id} is not a rule of policy set {}",
                    policies.version()
                ),
            )
        })?;
        let violation = Violation {
            rule_id: rule.id.clone(),
            message_en: rule.message_en.clone(),
            message_zh: rule.message_zh.clone(),
            penalty: rule.penalty,
        };
        let now = self.now();
        let reason = if note.is_empty() {
            format!("violation of {rule_id} reported by {inspector}")
        } else {
            format!("violation of {rule_id} reported by {inspector}: {note}")
        };
        let (enforced, _event) = self
            .store
            .enforce(&Discovery {
                session_id: session_id.to_owned(),
                trigger: Trigger::ViolationReport,
                violations: vec![violation.clone()],
                rule_ids: vec![rule.id.clone()],
                penalty: rule.penalty,
                discovered_by: inspector.to_owned(),
                reason,
                at: now,
            })
            .await?;
        if enforced.penalty_applied.is_some_and(Penalty::freezes) {
            self.propagate_freeze(enforced.session.merchant_id.clone())
                .await;
        }
        Ok(ReportOutcome {
            enforced,
            violation,
            now,
        })
    }

    pub async fn lift_freeze(
        &self,
        merchant_id: &str,
        operator: &str,
        reason: &str,
    ) -> Result<(Account, bool), PdpError> {
        self.store
            .lift_freeze(merchant_id, operator, reason, self.now())
            .await
    }

    pub fn get_registration(&self, kind: Kind, id: &str) -> Result<Registration, PdpError> {
        self.store
            .get_registration(kind, id)?
            .ok_or_else(|| PdpError::NotFound(format!("{} {id} is not registered", kind.name())))
    }

    pub fn list_registrations(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Registration>, PdpError> {
        self.store.list_registrations(kind, after, limit)
    }

    /// The merchant's registration and account.
    pub fn get_account(&self, merchant_id: &str) -> Result<(Registration, Account), PdpError> {
        self.store
            .get_account(merchant_id)?
            .ok_or_else(|| PdpError::NotFound(format!("merchant {merchant_id} is not registered")))
    }

    /// The registered owner of a room: the merchant a gateway's stream key (a room id) speaks
    /// for.
    pub fn room_owner(&self, room_id: &str) -> Result<Option<String>, PdpError> {
        Ok(self
            .store
            .get_registration(Kind::Room, room_id)?
            .and_then(|r| r.body.owner().map(str::to_owned)))
    }

    /// The session a gateway hook refers to.
    pub fn session_for_stream(
        &self,
        stream: &StreamRef,
        gateway_id: &str,
    ) -> Result<Option<Session>, PdpError> {
        self.store.session_by_stream(&stream.lookup_key(gateway_id))
    }

    /// Sessions live now.
    pub fn live_sessions(&self) -> Result<Vec<Session>, PdpError> {
        self.store.active_sessions()
    }

    /// Durable enforcement events after `after`, oldest first.
    pub fn enforcement_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EnforcementEvent>, PdpError> {
        self.store.events_after(after, limit)
    }

    pub fn subscribe_enforcements(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.subscribe_events()
    }
}
