//! The PDP's operations, between transport and store: read the facts, decide, enforce, record
//! every decision and action, and make every acknowledged change durable. Knows neither tonic
//! nor sled.
//!
//! Records: a decision or action that changes state is recorded by the store in the same
//! transaction as the change; one that changes nothing goes through the decision log's queue.
//! Either way the record is durable before the answer leaves.

mod admin;
pub mod image_check;
mod published_policy;
mod record;
mod sweep;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::decision_log::DecisionLog;
use crate::domain::{
    Discovery, DriveMode, EnforcementEvent, Kind, LabelReport, LivestreamType, Millis, Penalty,
    Registration, Session, SessionState, StreamRef, Trigger,
};
use crate::error::PdpError;
use crate::policy::{
    Decision, Observation, Phase, PolicyBundle, PolicyHandle, ReloadOutcome, Violation,
};
use crate::store::{Enforcing, Opened, Store};

pub use admin::ReportOutcome;
pub use record::{Origin, enforcement_name, entry, to_completion};

/// How many times a START (or a LIVE shutdown) decides again when its commit finds the facts
/// changed.
const START_COMMIT_ROUNDS: usize = 8;

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
    /// START only: a retry with the same key (from the same gateway) gets the first answer.
    pub idempotency_key: Option<String>,
    /// The AI-content labels observed; `None` at LIVE keeps the session's latest report.
    pub labels: Option<LabelReport>,
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
            idempotency_key: None,
            labels: None,
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
    /// The room's earlier live session this START closed.
    pub superseded_session_id: Option<String>,
    /// This answers a retried START with the first START's decision.
    pub replayed: bool,
}

/// How a live session is re-checked: the gateway's fresh observations (if any), who asks, and
/// the discovery it belongs to.
struct LiveCheck<'a> {
    livestream_type: Option<LivestreamType>,
    drive_mode: Option<DriveMode>,
    ai_features: &'a [String],
    labels: Option<&'a LabelReport>,
    trigger: Trigger,
    discovered_by: &'a str,
    explain: bool,
    origin: &'a Origin,
    /// The record that caused a PDP re-check; empty for a gateway's own LIVE check. It is also
    /// the discovery the check belongs to (one penalty per merchant for all its sessions); a
    /// gateway's check is a discovery of its own.
    cause_id: &'a str,
}

/// A shutdown decided for a live session, ready to commit (`Pdp::shutdown`).
struct Shutdown {
    base: AuthorizeOutcome,
    discovery: Discovery,
}

pub struct Pdp {
    store: Arc<Store>,
    policies: Arc<PolicyHandle>,
    clock: Arc<dyn Clock>,
    recheck_after: Duration,
    log: Arc<DecisionLog>,
    /// Fault injection for race tests (`ANCHOR_PDP_FAULT_COMMIT_DELAY_MS`): a random pause of
    /// up to this long between a decision and its commit, where a racing write can land.
    /// Unset in production; the guards must hold either way.
    commit_delay: Option<Duration>,
    /// Where anchor images are fetched from, if anywhere: approvals bind to their hash.
    images: Option<Arc<crate::images::ImageSource>>,
}

/// Counts a penalty an enforcement applied.
fn count_penalty(penalty: Option<Penalty>) {
    if let Some(penalty) = penalty {
        metrics::counter!("anchor_pdp_penalties_total", "penalty" => penalty.name()).increment(1);
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
        log: Arc<DecisionLog>,
    ) -> Self {
        let commit_delay = std::env::var("ANCHOR_PDP_FAULT_COMMIT_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        if let Some(delay) = commit_delay {
            tracing::warn!(
                max_ms = delay.as_millis() as u64,
                "fault injection: decisions pause before their commits"
            );
        }
        Pdp {
            store,
            policies,
            clock,
            recheck_after,
            log,
            commit_delay,
            images: None,
        }
    }

    /// Fetches anchor images from `images`: approvals bind to their SHA-256.
    pub fn with_images(mut self, images: Option<Arc<crate::images::ImageSource>>) -> Self {
        self.images = images;
        self
    }

    pub fn images(&self) -> Option<&Arc<crate::images::ImageSource>> {
        self.images.as_ref()
    }

    /// The injected pause between a decision and its commit, if any (see `commit_delay`).
    async fn injected_delay(&self) {
        if let Some(max) = self.commit_delay {
            // A UUIDv7's last bits are random.
            let fraction = (uuid::Uuid::now_v7().as_u128() & 0xffff) as f64 / 65536.0;
            tokio::time::sleep(max.mul_f64(fraction)).await;
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

    /// Validates the policy directory again and swaps it in if valid (and, unless
    /// `may_remove_rules`, if it keeps every active rule).
    pub fn reload_policies(&self, trigger: &str, may_remove_rules: bool) -> ReloadOutcome {
        self.policies.reload(self.now(), trigger, may_remove_rules)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_handle(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub fn decision_log(&self) -> &DecisionLog {
        &self.log
    }

    /// Decides a START or LIVE request and records the decision. Errors are only for malformed
    /// requests and for a decision that could not be recorded; every failure on the way to a
    /// decision is a deny that says why (fail closed).
    pub async fn authorize(
        &self,
        origin: &Origin,
        cmd: AuthorizeCommand,
    ) -> Result<AuthorizeOutcome, PdpError> {
        let now = self.now();
        let started = std::time::Instant::now();
        // One set for the whole decision, even if a reload lands meanwhile.
        let policies = self.policies.current();
        let phase = cmd.phase;
        let outcome = match phase {
            Phase::Start => self.authorize_start(&policies, origin, cmd, now).await,
            Phase::Live => self.authorize_live(&policies, origin, cmd, now).await,
        };
        if let Ok(outcome) = &outcome {
            let decision = if outcome.decision.allowed {
                "allow"
            } else {
                "deny"
            };
            metrics::histogram!(
                "anchor_pdp_authorize_seconds",
                "phase" => phase.policy_name(),
                "decision" => decision
            )
            .record(started.elapsed().as_secs_f64());
            for violation in &outcome.decision.violations {
                metrics::counter!("anchor_pdp_violations_total", "rule" => violation.rule_id.clone())
                    .increment(1);
            }
        }
        outcome
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
            superseded_session_id: None,
            replayed: false,
        }
    }

    /// `outcome`, for a decision about live session `session`.
    fn session_outcome(
        &self,
        decision: Decision,
        enforcement: Enforcement,
        session: &Session,
        now: Millis,
    ) -> AuthorizeOutcome {
        let mut outcome = self.outcome(decision, enforcement, now);
        outcome.session_id = Some(session.id.clone());
        outcome.merchant_id = Some(session.merchant_id.clone());
        outcome
    }

    fn deny(policies: &PolicyBundle, violation: Violation) -> Decision {
        Decision {
            allowed: false,
            violations: vec![violation],
            warnings: Vec::new(),
            policy_version: policies.version().to_owned(),
            explanation: None,
        }
    }

    /// Records a decision that changed nothing, then returns it.
    async fn unchanged(
        &self,
        origin: &Origin,
        cause_id: &str,
        outcome: AuthorizeOutcome,
    ) -> Result<AuthorizeOutcome, PdpError> {
        self.log(self.decision_record(origin, cause_id, &outcome, String::new()))
            .await?;
        Ok(outcome)
    }

    /// Records a deny for a request that could not be decided on (a gateway request that does
    /// not map to one), so that it is on the record like any decision.
    pub async fn refuse(
        &self,
        origin: &Origin,
        phase: Phase,
        violation: Violation,
    ) -> Result<AuthorizeOutcome, PdpError> {
        let policies = self.policies.current();
        let enforcement = match phase {
            Phase::Start => Enforcement::RefuseStart,
            Phase::Live => Enforcement::ShutDown,
        };
        let outcome = self.outcome(Self::deny(&policies, violation), enforcement, self.now());
        self.unchanged(origin, "", outcome).await
    }

    async fn authorize_start(
        &self,
        policies: &PolicyBundle,
        origin: &Origin,
        cmd: AuthorizeCommand,
        now: Millis,
    ) -> Result<AuthorizeOutcome, PdpError> {
        let refuse = |violation: Violation, merchant_id: Option<String>| {
            let mut outcome = self.outcome(
                Self::deny(policies, violation),
                Enforcement::RefuseStart,
                now,
            );
            outcome.merchant_id = merchant_id;
            outcome
        };
        let (
            Some(merchant_id),
            Some(room_id),
            Some(anchor_id),
            Some(driver_id),
            Some(livestream_type),
            Some(drive_mode),
        ) = (
            cmd.merchant_id.clone(),
            cmd.room_id,
            cmd.anchor_id,
            cmd.driver_id,
            cmd.livestream_type,
            cmd.drive_mode,
        )
        else {
            // The transport checks these; a caller of the library that skips it still fails
            // closed.
            let outcome = refuse(
                Violation::pdp_failure("a START request names every id and observation"),
                cmd.merchant_id,
            );
            return self.unchanged(origin, "", outcome).await;
        };
        let view = match self.store.current().await {
            Ok(()) => self.store.facts(
                &merchant_id,
                &room_id,
                &anchor_id,
                &driver_id,
                &cmd.ai_features,
            ),
            Err(e) => Err(e),
        };
        let mut facts = match view {
            Ok(facts) => facts,
            Err(e) => {
                let outcome = refuse(Violation::pdp_failure(&e.to_string()), Some(merchant_id));
                return self.unchanged(origin, "", outcome).await;
            }
        };
        let observation = Observation {
            phase: Phase::Start,
            livestream_type,
            drive_mode,
            ai_features: &cmd.ai_features,
            labels: cmd.labels.as_ref(),
        };
        let mut session = Session {
            id: new_id(),
            state: SessionState::Active,
            merchant_id: merchant_id.clone(),
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
            idempotency_key: cmd.idempotency_key,
            labels: cmd.labels.clone(),
            consent_id: None,
        };
        // Decided on the view, committed only on the same facts: when the commit finds them
        // changed (a freeze, revoke or delisting landed between), it decides again on what it
        // found. Each round means another writer committed meanwhile, so rounds are few.
        for _ in 0..START_COMMIT_ROUNDS {
            let decision = policies.decide_for_the_record(&facts, &observation, now, cmd.explain);
            let frozen_until = facts.account.as_ref().and_then(|a| a.frozen_at(now));
            if !decision.allowed {
                let mut outcome = self.outcome(decision, Enforcement::RefuseStart, now);
                outcome.merchant_id = Some(merchant_id);
                outcome.frozen_until = frozen_until;
                return self.unchanged(origin, "", outcome).await;
            }
            let mut outcome = self.outcome(decision, Enforcement::None, now);
            outcome.merchant_id = Some(merchant_id.clone());
            outcome.session_id = Some(session.id.clone());
            outcome.recheck_after = Some(self.recheck_after);
            let records = |superseded: Option<&Session>| {
                let mut start = outcome.clone();
                start.superseded_session_id = superseded.map(|s| s.id.clone());
                let change = match superseded {
                    Some(old) => format!("session opened; superseded session {}", old.id),
                    None => "session opened".to_owned(),
                };
                let mut records = vec![self.decision_record(origin, "", &start, change)];
                if let Some(old) = superseded {
                    let mut record = self.record(origin, "Supersede", now);
                    record.merchant_id = old.merchant_id.clone();
                    record.session_id = old.id.clone();
                    record.gateway_id = old.gateway_id.clone();
                    record.enforcement = enforcement_name(Enforcement::ShutDown).to_owned();
                    record.cause_id = outcome.decision_id.clone();
                    record.change = old.close_reason.clone();
                    records.push(record);
                }
                records
            };
            // The session relies on the consent its anchor names now, as on the anchor.
            session.consent_id = facts
                .anchor
                .as_ref()
                .and_then(Registration::consent_id)
                .map(str::to_owned);
            self.injected_delay().await;
            let opened = self
                .store
                .open_session(
                    &session,
                    &facts,
                    &outcome.decision_id,
                    policies.version(),
                    &records,
                )
                .await;
            return match opened {
                Ok(Opened::New { superseded }) => {
                    self.store.note_check(&session.id, now);
                    outcome.superseded_session_id = superseded.map(|s| s.id);
                    Ok(outcome)
                }
                Ok(Opened::Replay(first, admitted)) => {
                    self.replay(policies, origin, first, admitted.map(|s| *s), merchant_id)
                        .await
                }
                Ok(Opened::FactsChanged(found)) => {
                    metrics::counter!("anchor_pdp_start_redecided_total").increment(1);
                    facts = *found;
                    continue;
                }
                Err(e) => {
                    let outcome = refuse(
                        Violation::pdp_failure(&format!("the session could not be recorded: {e}")),
                        Some(merchant_id),
                    );
                    self.unchanged(origin, "", outcome).await
                }
            };
        }
        let outcome = refuse(
            Violation::pdp_failure(&format!(
                "the facts of this START changed {START_COMMIT_ROUNDS} times while it was being \
                 committed; retry"
            )),
            Some(merchant_id),
        );
        self.unchanged(origin, "", outcome).await
    }

    /// The answer to a START retried with a used idempotency key: the first START's, while its
    /// session is live; a deny once it has closed (a closed broadcast does not come back).
    async fn replay(
        &self,
        policies: &PolicyBundle,
        origin: &Origin,
        first: crate::domain::IdempotentStart,
        admitted: Option<Session>,
        merchant_id: String,
    ) -> Result<AuthorizeOutcome, PdpError> {
        let now = self.now();
        let session: Result<Option<Session>, PdpError> = Ok(admitted);
        if let Ok(Some(session)) = &session
            && session.state == SessionState::Active
            && session.merchant_id == merchant_id
        {
            let mut outcome = self.outcome(
                Decision {
                    allowed: true,
                    violations: Vec::new(),
                    warnings: Vec::new(),
                    policy_version: first.policy_version,
                    explanation: None,
                },
                Enforcement::None,
                first.at,
            );
            outcome.decision_id = first.decision_id;
            outcome.merchant_id = Some(merchant_id);
            outcome.session_id = Some(session.id.clone());
            outcome.recheck_after = Some(self.recheck_after);
            outcome.replayed = true;
            tracing::info!(decision_id = %outcome.decision_id, session_id = %session.id, "START replayed");
            return Ok(outcome);
        }
        let why = match session {
            Ok(Some(session)) if session.merchant_id != merchant_id => {
                "was admitted for another merchant".to_owned()
            }
            Ok(Some(session)) => format!("has closed ({})", session.close_reason),
            Ok(None) => "is no longer kept".to_owned(),
            Err(e) => format!("cannot be read: {e}"),
        };
        let mut outcome = self.outcome(
            Self::deny(
                policies,
                session_violation(
                    format!(
                        "The START with this idempotency key admitted session {}, which {why}; start a new broadcast with a new key.",
                        first.session_id
                    ),
                    format!(
                        "使用该幂等键的开播已建立会话 {},该会话{why};请用新的幂等键重新开播。",
                        first.session_id
                    ),
                ),
            ),
            Enforcement::RefuseStart,
            now,
        );
        outcome.merchant_id = Some(merchant_id);
        outcome.session_id = Some(first.session_id);
        self.unchanged(origin, "", outcome).await
    }

    async fn authorize_live(
        &self,
        policies: &PolicyBundle,
        origin: &Origin,
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
                outcome.merchant_id = cmd.merchant_id;
                return self.unchanged(origin, "", outcome).await;
            }
            Err(e) => {
                let mut outcome = self.outcome(
                    Self::deny(policies, Violation::pdp_failure(&e.to_string())),
                    Enforcement::ShutDown,
                    now,
                );
                outcome.session_id = Some(session_id);
                outcome.merchant_id = cmd.merchant_id;
                return self.unchanged(origin, "", outcome).await;
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
        self.store.note_check(&session_id, now);
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
                    labels: cmd.labels.as_ref(),
                    trigger: Trigger::LiveCheck,
                    discovered_by: &discovered_by,
                    explain: cmd.explain,
                    origin,
                    cause_id: "",
                },
                now,
            )
            .await?;
        if outcome.penalty_applied.is_some_and(Penalty::freezes) {
            self.propagate_freeze(merchant_id, &outcome.decision_id)
                .await;
        }
        Ok(outcome)
    }

    /// Re-checks a live session and enforces the result: shut down (and the penalty, once per
    /// session and once per discovery) if any rule is broken now. Records the decision with
    /// whatever it changed.
    async fn evaluate_live(
        &self,
        policies: &PolicyBundle,
        session: Session,
        check: LiveCheck<'_>,
        now: Millis,
    ) -> Result<AuthorizeOutcome, PdpError> {
        let session_id = session.id.clone();
        let shut_down = |decision: Decision| {
            self.session_outcome(decision, Enforcement::ShutDown, &session, now)
        };
        if session.state != SessionState::Active {
            let (en, zh) = match session.state {
                SessionState::Ended => ("has ended", "已结束"),
                _ => ("was shut down", "已被关停"),
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
            return self.unchanged(check.origin, check.cause_id, outcome).await;
        }

        let livestream_type = check.livestream_type.unwrap_or(session.livestream_type);
        let drive_mode = check.drive_mode.unwrap_or(session.drive_mode);
        let mut features: BTreeSet<String> = session.ai_features.clone();
        features.extend(check.ai_features.iter().cloned());
        let feature_list: Vec<String> = features.iter().cloned().collect();
        // A check that reports no labels decides on the session's latest report, and leaves it
        // as it is: only a report replaces it (another check may have written a newer one).
        let reported = check.labels.cloned();
        let labels = reported.clone().or_else(|| session.labels.clone());
        let view = match self.store.current().await {
            Ok(()) => self.store.facts(
                &session.merchant_id,
                &session.room_id,
                &session.anchor_id,
                &session.driver_id,
                &feature_list,
            ),
            Err(e) => Err(e),
        };
        let mut facts = match view {
            Ok(facts) => facts,
            Err(e) => {
                let outcome =
                    shut_down(Self::deny(policies, Violation::pdp_failure(&e.to_string())));
                return self.unchanged(check.origin, check.cause_id, outcome).await;
            }
        };
        let observation = Observation {
            phase: Phase::Live,
            livestream_type,
            drive_mode,
            ai_features: &feature_list,
            labels: labels.as_ref(),
        };
        for _ in 0..START_COMMIT_ROUNDS {
            let decision = policies.decide_for_the_record(&facts, &observation, now, check.explain);

            if decision.allowed {
                let mut outcome = self.session_outcome(decision, Enforcement::None, &session, now);
                outcome.recheck_after = Some(self.recheck_after);
                if features == session.ai_features
                    && drive_mode == session.drive_mode
                    && reported
                        .as_ref()
                        .is_none_or(|r| Some(r) == session.labels.as_ref())
                {
                    return self.unchanged(check.origin, check.cause_id, outcome).await;
                }
                let record = |_: &Session| {
                    self.decision_record(
                        check.origin,
                        check.cause_id,
                        &outcome,
                        "session observations updated".to_owned(),
                    )
                };
                let recorded = self
                    .store
                    .update_session(
                        &session_id,
                        |s| {
                            let mut next = s.clone();
                            next.ai_features.extend(features.iter().cloned());
                            next.drive_mode = drive_mode;
                            if let Some(reported) = &reported {
                                next.labels = Some(reported.clone());
                            }
                            Ok(next)
                        },
                        None,
                        &record,
                    )
                    .await
                    .map(|answer| answer.value);
                return match recorded {
                    Ok((_, true)) => Ok(outcome),
                    Ok((_, false)) => self.unchanged(check.origin, check.cause_id, outcome).await,
                    Err(e) => {
                        let outcome = shut_down(Self::deny(
                            policies,
                            Violation::pdp_failure(&format!(
                                "the session's observations could not be recorded: {e}"
                            )),
                        ));
                        self.unchanged(check.origin, check.cause_id, outcome).await
                    }
                };
            }

            let Shutdown { base, discovery } = self.shutdown(
                shut_down(decision),
                &check,
                now,
                drive_mode,
                &features,
                &reported,
            );
            let enforced_outcome =
                |enforced: &crate::domain::Enforced| Self::enforced_outcome(&base, enforced, now);
            let record = |enforced: &crate::domain::Enforced| {
                self.shutdown_record(&check, &base, enforced, now)
            };
            self.injected_delay().await;
            let enforcing = self
                .store
                .enforce_decided(&discovery, &facts, &record)
                .await;
            return match enforcing {
                Ok(Enforcing::Done(done)) => {
                    let (enforced, _event) = *done;
                    count_penalty(enforced.penalty_applied);
                    Ok(enforced_outcome(&enforced))
                }
                Ok(Enforcing::FactsChanged(found)) => {
                    metrics::counter!("anchor_pdp_live_redecided_total").increment(1);
                    facts = *found;
                    continue;
                }
                Err(e) => {
                    let mut outcome = base.clone();
                    outcome
                        .decision
                        .violations
                        .push(Violation::pdp_failure(&format!(
                            "the shutdown and its penalty could not be recorded: {e}"
                        )));
                    self.unchanged(check.origin, check.cause_id, outcome).await
                }
            };
        }
        let outcome = shut_down(Self::deny(
            policies,
            Violation::pdp_failure(&format!(
                "the facts of this session changed {START_COMMIT_ROUNDS} times while its \
                 shutdown was being committed; retry"
            )),
        ));
        self.unchanged(check.origin, check.cause_id, outcome).await
    }

    /// The discovery a LIVE deny applies, with its outcome as far as the decision goes (the
    /// commit adds the penalty and freeze it finds to apply).
    fn shutdown(
        &self,
        base: AuthorizeOutcome,
        check: &LiveCheck<'_>,
        now: Millis,
        drive_mode: DriveMode,
        features: &BTreeSet<String>,
        labels: &Option<LabelReport>,
    ) -> Shutdown {
        let discovery = Discovery {
            id: if check.cause_id.is_empty() {
                base.decision_id.clone()
            } else {
                check.cause_id.to_owned()
            },
            session_id: base.session_id.clone().unwrap_or_default(),
            trigger: check.trigger,
            violations: base.decision.violations.clone(),
            rule_ids: base.decision.rule_ids(),
            penalty: base.decision.penalty(),
            discovered_by: check.discovered_by.to_owned(),
            reason: format!(
                "{} broke {}",
                check.discovered_by,
                base.decision.rule_ids().join(", ")
            ),
            at: now,
            drive_mode: Some(drive_mode),
            ai_features: features.clone(),
            labels: labels.clone(),
        };
        Shutdown { base, discovery }
    }

    fn enforced_outcome(
        base: &AuthorizeOutcome,
        enforced: &crate::domain::Enforced,
        now: Millis,
    ) -> AuthorizeOutcome {
        let mut outcome = base.clone();
        outcome.penalty_applied = enforced.penalty_applied;
        outcome.warning_issued = enforced.warning_issued;
        outcome.frozen_until = enforced.account.frozen_at(now);
        outcome
    }

    /// The record a shutdown commits with.
    fn shutdown_record(
        &self,
        check: &LiveCheck<'_>,
        base: &AuthorizeOutcome,
        enforced: &crate::domain::Enforced,
        now: Millis,
    ) -> crate::domain::LogRecord {
        let change = match enforced.penalty_applied {
            Some(penalty) => format!("session shut down; {} applied", penalty.name()),
            None => "session shut down".to_owned(),
        };
        self.decision_record(
            check.origin,
            check.cause_id,
            &Self::enforced_outcome(base, enforced, now),
            change,
        )
    }

    pub fn get_session(&self, session_id: &str) -> Result<Session, PdpError> {
        self.store
            .get_session(session_id)?
            .ok_or_else(|| PdpError::NotFound(format!("session {session_id} is unknown")))
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
    pub fn get_account(
        &self,
        merchant_id: &str,
    ) -> Result<(Registration, crate::domain::Account), PdpError> {
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

    /// When a gateway last checked live session `session_id` with this process (LIVE, or its
    /// START); `None` if this process has answered none (or it is not live).
    pub fn last_check(&self, session_id: &str) -> Option<Millis> {
        self.store.last_check(session_id)
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
