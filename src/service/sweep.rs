//! Sweeps: after a change to what live sessions rely on (a revoked filing, a delisted
//! provider, a freeze, ...), every affected live session is re-checked as one discovery. The
//! shutdowns the view shows are decided and committed in batches; the rest (allowed, not live,
//! facts changed meanwhile, a failed batch) are re-checked one at a time, 64 at once, exactly
//! as a gateway's LIVE check would be.

use futures_util::StreamExt;

use super::{AuthorizeOutcome, Enforcement, LiveCheck, Pdp, Shutdown, count_penalty, entry};
use crate::domain::{
    Enforced, Facts, Kind, Millis, Penalty, RecordBody, Registration, Session, SessionState,
    Trigger,
};
use crate::error::PdpError;
use crate::policy::{Decision, Observation, Phase, PolicyBundle};
use crate::service::Origin;
use crate::store::{DecidedShutdown, Enforcing};

/// How many times a sweep tries to bring the view up to date before it lists live sessions.
const SWEEP_SYNC_ATTEMPTS: usize = 6;
/// Sessions a sweep re-checks at once. Each commits on its own facts, as a LIVE re-check
/// would; together they share the group commit's flush instead of each waiting for its own.
const SWEEP_IN_FLIGHT: usize = 64;

/// What a sweep is, as every re-check in it names it.
struct Sweep<'a> {
    entry_point: &'static str,
    discovered_by: &'a str,
    cause: &'a str,
    /// The record of the change: the discovery every shutdown of the sweep belongs to.
    cause_id: &'a str,
}

impl<'a> Sweep<'a> {
    fn origin(&self, session: &Session) -> Origin {
        Origin::pdp(
            self.entry_point,
            &session.gateway_id,
            &session.id,
            self.cause,
            self.cause_id,
        )
    }

    /// A re-check with nothing observed afresh, as part of this sweep.
    fn check<'c>(&'c self, origin: &'c Origin) -> LiveCheck<'c> {
        LiveCheck {
            livestream_type: None,
            drive_mode: None,
            ai_features: &[],
            labels: None,
            trigger: Trigger::Recheck,
            discovered_by: self.discovered_by,
            explain: false,
            origin,
            cause_id: self.cause_id,
        }
    }
}

/// Polls `future` once, so that it starts (a commit joins the writer's batch, which commits
/// on its own thread) while the caller goes on; its output if it finished at once.
async fn started<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

impl Pdp {
    /// Re-checks the live sessions `relevant` picks, after a change (recorded as `cause_id`)
    /// to what they rely on: a revoked filing, a delisted provider, a withdrawn AI filing, a
    /// tier change. Those that now break a rule are shut down at once, as a LIVE re-check would,
    /// and pushed to enforcement watchers; it is one discovery, so each merchant is penalized
    /// at most once for it. Returns how many were shut down.
    pub async fn recheck_live_sessions(
        &self,
        relevant: impl Fn(&Session) -> bool,
        cause: &str,
        cause_id: &str,
    ) -> usize {
        let (mut shut, frozen) = self
            .recheck_sessions(
                relevant,
                &Sweep {
                    entry_point: entry::RECHECK,
                    discovered_by: &format!("pdp:recheck after {cause}"),
                    cause,
                    cause_id,
                },
            )
            .await;
        for merchant_id in frozen {
            shut += self.propagate_freeze(merchant_id, cause_id).await;
        }
        shut
    }

    /// A freeze ends every other live broadcast of the account (E3). Sweeping them can only
    /// freeze this same account again, so one sweep is enough. `cause_id` is the discovery
    /// that froze it.
    pub(super) async fn propagate_freeze(&self, merchant_id: String, cause_id: &str) -> usize {
        let discovered_by = format!("pdp:recheck after freezing {merchant_id}");
        let cause = format!("freezing {merchant_id}");
        let (shut, _same_account) = self
            .recheck_sessions(
                |s| s.merchant_id == merchant_id,
                &Sweep {
                    entry_point: entry::SWEEP,
                    discovered_by: &discovered_by,
                    cause: &cause,
                    cause_id,
                },
            )
            .await;
        shut
    }

    /// Re-checks (and enforces on) each live session `relevant` picks, as one discovery.
    /// Returns how many were shut down, and the merchants a penalty froze (once each).
    async fn recheck_sessions(
        &self,
        relevant: impl Fn(&Session) -> bool,
        sweep: &Sweep<'_>,
    ) -> (usize, Vec<String>) {
        let discovered_by = sweep.discovered_by;
        // The change that calls for this sweep is committed; a session some replica opened
        // before it must be in the view before the view is listed, or it would run on.
        let mut attempt = 0;
        while let Err(e) = self.store.sync().await {
            attempt += 1;
            if attempt >= SWEEP_SYNC_ATTEMPTS {
                tracing::error!(error = %e, discovered_by, "sweeping a view that may lack sessions opened elsewhere");
                metrics::counter!("anchor_pdp_sweep_unsynced_total").increment(1);
                break;
            }
            tracing::warn!(error = %e, discovered_by, "the view is behind; catching up before the sweep");
        }
        let sessions = match self.store.active_sessions() {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::error!(error = %e, discovered_by, "cannot list live sessions to re-check");
                return (0, Vec::new());
            }
        };
        let policies = self.policies.current();
        let policies = &policies;
        let relevant: Vec<Session> = sessions.into_iter().filter(|s| relevant(s)).collect();
        let (committed, rest) = self.shut_down_in_batches(policies, relevant, sweep).await;
        let mut shut = 0;
        let mut frozen: Vec<String> = Vec::new();
        let mut tally = |merchant_id: String, outcome: &AuthorizeOutcome| {
            if outcome.enforcement == Enforcement::ShutDown {
                shut += 1;
            }
            if outcome.penalty_applied.is_some_and(Penalty::freezes)
                && !frozen.contains(&merchant_id)
            {
                frozen.push(merchant_id);
            }
        };
        for (merchant_id, outcome) in committed {
            tally(merchant_id, &outcome);
        }
        let rechecks = rest.into_iter().map(|session| async move {
            let (merchant_id, session_id) = (session.merchant_id.clone(), session.id.clone());
            let origin = sweep.origin(&session);
            let outcome = self
                .evaluate_live(policies, session, sweep.check(&origin), self.now())
                .await;
            (merchant_id, session_id, outcome)
        });
        let mut outcomes = futures_util::stream::iter(rechecks).buffer_unordered(SWEEP_IN_FLIGHT);
        while let Some((merchant_id, session_id, outcome)) = outcomes.next().await {
            match outcome {
                Ok(outcome) => tally(merchant_id, &outcome),
                Err(e) => {
                    tracing::error!(error = %e, %session_id, discovered_by, "re-check not recorded");
                }
            }
        }
        (shut, frozen)
    }

    /// The first pass of a sweep: every live session the view shows breaking a rule is shut
    /// down in batches (`Store::enforce_decided_batch`), each on the facts it was decided on.
    /// Returns what was committed (merchant, outcome) and the sessions left to re-check one at
    /// a time: those allowed, not live, whose facts changed meanwhile, or in a batch that
    /// failed (each then gets its own decision, recorded, and its own commit or deny).
    async fn shut_down_in_batches(
        &self,
        policies: &PolicyBundle,
        sessions: Vec<Session>,
        sweep: &Sweep<'_>,
    ) -> (Vec<(String, AuthorizeOutcome)>, Vec<Session>) {
        if self.store.current().await.is_err() {
            return (Vec::new(), sessions);
        }
        let now = self.now();
        let (mut committed, mut rest) = (Vec::new(), Vec::new());
        // Decided and committed a batch at a time, so the first cuts do not wait for the
        // whole sweep's decisions; a batch is decided while the one before it commits.
        let mut sessions = sessions.into_iter().peekable();
        let mut committing = None;
        while sessions.peek().is_some() {
            let batch: Vec<Session> = sessions
                .by_ref()
                .take(self.store.enforce_batch_limit())
                .collect();
            let prepared = self.decide_shutdowns(policies, batch, now, &mut rest);
            if let Some(previous) = committing.take() {
                let (done, retry) = previous.await;
                committed.extend(done);
                rest.extend(retry);
            }
            let mut commit = Box::pin(self.commit_shutdowns(prepared, now, sweep));
            match started(&mut commit).await {
                Some((done, retry)) => {
                    committed.extend(done);
                    rest.extend(retry);
                }
                None => committing = Some(commit),
            }
        }
        if let Some(last) = committing {
            let (done, retry) = last.await;
            committed.extend(done);
            rest.extend(retry);
        }
        (committed, rest)
    }

    /// The sessions of `batch` that the view shows breaking a rule, with the facts and the
    /// decision; the others go to `rest`.
    fn decide_shutdowns(
        &self,
        policies: &PolicyBundle,
        batch: Vec<Session>,
        now: Millis,
        rest: &mut Vec<Session>,
    ) -> Vec<(Session, Facts, Decision)> {
        let mut prepared = Vec::new();
        for session in batch {
            let features: Vec<String> = session.ai_features.iter().cloned().collect();
            let facts = match session.state {
                SessionState::Active => self.store.facts(
                    &session.merchant_id,
                    &session.room_id,
                    &session.anchor_id,
                    &session.driver_id,
                    &features,
                ),
                _ => Err(PdpError::FailedPrecondition("not live".into())),
            };
            let Ok(facts) = facts else {
                rest.push(session);
                continue;
            };
            let observation = Observation {
                phase: Phase::Live,
                livestream_type: session.livestream_type,
                drive_mode: session.drive_mode,
                ai_features: &features,
                labels: session.labels.as_ref(),
            };
            let decision = policies.decide_for_the_record(&facts, &observation, now, false);
            if decision.allowed {
                rest.push(session);
            } else {
                prepared.push((session, facts, decision));
            }
        }
        prepared
    }

    /// Commits `prepared` as one batch. Returns what committed (merchant, outcome) and the
    /// sessions to re-check one at a time.
    async fn commit_shutdowns(
        &self,
        prepared: Vec<(Session, Facts, Decision)>,
        now: Millis,
        sweep: &Sweep<'_>,
    ) -> (Vec<(String, AuthorizeOutcome)>, Vec<Session>) {
        let (mut committed, mut rest) = (Vec::new(), Vec::new());
        if prepared.is_empty() {
            return (committed, rest);
        }
        let origins: Vec<Origin> = prepared.iter().map(|(s, _, _)| sweep.origin(s)).collect();
        let checks: Vec<LiveCheck<'_>> = origins.iter().map(|o| sweep.check(o)).collect();
        let shutdowns: Vec<Shutdown> = prepared
            .iter()
            .zip(&checks)
            .map(|((session, _, decision), check)| {
                let base =
                    self.session_outcome(decision.clone(), Enforcement::ShutDown, session, now);
                self.shutdown(
                    base,
                    check,
                    now,
                    session.drive_mode,
                    &session.ai_features,
                    &session.labels,
                )
            })
            .collect();
        let records: Vec<_> = shutdowns
            .iter()
            .zip(&checks)
            .map(|(shutdown, check)| {
                move |enforced: &Enforced| {
                    self.shutdown_record(check, &shutdown.base, enforced, now)
                }
            })
            .collect();
        let items: Vec<DecidedShutdown<'_>> = prepared
            .iter()
            .zip(&shutdowns)
            .zip(&records)
            .map(|(((_, facts, _), shutdown), record)| {
                (
                    &shutdown.discovery,
                    facts,
                    record as &(dyn Fn(&Enforced) -> _ + Sync),
                )
            })
            .collect();
        self.injected_delay().await;
        match self.store.enforce_decided_batch(&items).await {
            Ok(answers) => {
                for (((session, _, _), shutdown), answer) in
                    prepared.iter().zip(&shutdowns).zip(answers)
                {
                    match answer {
                        Enforcing::Done(done) => {
                            let (enforced, _event) = *done;
                            count_penalty(enforced.penalty_applied);
                            committed.push((
                                session.merchant_id.clone(),
                                Self::enforced_outcome(&shutdown.base, &enforced, now),
                            ));
                        }
                        Enforcing::FactsChanged(_) => rest.push(session.clone()),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, sessions = prepared.len(), discovered_by = sweep.discovered_by, "a batch of shutdowns failed; each is re-checked on its own");
                rest.extend(prepared.iter().map(|(session, _, _)| session.clone()));
            }
        }
        (committed, rest)
    }

    /// Re-checks the live sessions that rely on the record `kind`/`id`.
    pub(super) async fn recheck_sessions_using(
        &self,
        kind: Kind,
        id: &str,
        cause: &str,
        cause_id: &str,
    ) -> usize {
        let store = &self.store;
        let shut = self
            .recheck_live_sessions(
                |s| match kind {
                    Kind::Merchant => s.merchant_id == id,
                    Kind::Anchor => s.anchor_id == id,
                    Kind::Driver => s.driver_id == id,
                    Kind::Room => s.room_id == id,
                    Kind::AiFeature => s.ai_features.contains(id),
                    // The session's own record, or (for a session a replica of an earlier
                    // version opened, which recorded none) its anchor's current consent.
                    Kind::Consent => {
                        s.consent_id.as_deref() == Some(id)
                            || matches!(
                                store.get_registration(Kind::Anchor, &s.anchor_id),
                                Ok(Some(anchor)) if anchor.consent_id() == Some(id)
                            )
                    }
                    Kind::Provider => matches!(
                        store.get_registration(Kind::Anchor, &s.anchor_id),
                        Ok(Some(Registration { body: RecordBody::Anchor { ref provider_id, .. }, .. }))
                            if provider_id == id
                    ),
                },
                cause,
                cause_id,
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
}
