//! Changes people make: filings, reviews, listings, AI filings, violation reports, freeze
//! lifts, ended sessions. Each is recorded with the change it makes (in the same store
//! transaction), and each that touches what live sessions rely on re-checks them at once.

use super::{Origin, Pdp};
use crate::domain::{
    Account, Discovery, Enforced, ImageBinding, Kind, MerchantScope, Millis, Penalty, RecordBody,
    Registration, ReviewCommand, Session, SessionState, Trigger, Verdict, WriteOutcome,
};
use crate::error::PdpError;
use crate::policy::Violation;
use crate::store::{Answer, Request};

/// The result of an inspector's violation report.
#[derive(Clone, Debug)]
pub struct ReportOutcome {
    pub enforced: Enforced,
    pub violation: Violation,
    pub now: Millis,
    /// The report's decision-log record.
    pub record_id: String,
}

/// The merchant a registration concerns: itself, or the owner of what it files.
fn registration_merchant(registration: &Registration) -> String {
    match &registration.body {
        RecordBody::Merchant { .. } => registration.id.clone(),
        body => body.owner().unwrap_or_default().to_owned(),
    }
}

fn registration_change(registration: &Registration) -> String {
    format!(
        "{} {} revision {}, {}",
        registration.kind().name(),
        registration.id,
        registration.revision,
        registration.review_status.policy_name()
    )
}

impl Pdp {
    /// A record of an action on `registration`, written with its change.
    fn registration_record(
        &self,
        origin: &Origin,
        action: &str,
        now: Millis,
        id: &str,
        registration: &Registration,
    ) -> crate::domain::LogRecord {
        let mut record = self.record(origin, action, now);
        record.id = id.to_owned();
        record.merchant_id = registration_merchant(registration);
        record.change = registration_change(registration);
        record
    }

    /// The named write `origin` carries, if its caller named it.
    fn request(origin: &Origin, record_id: &str, now: Millis) -> Option<Request> {
        origin
            .request_id
            .as_deref()
            .map(|id| Request::new(&origin.caller, id, record_id, now))
    }

    /// Logs a retry answered with the first attempt's answer. Returns the record id the first
    /// attempt logged its change under (what its re-checks are caused by), or `None` for a
    /// first attempt.
    async fn replayed<T>(
        &self,
        origin: &Origin,
        action: &str,
        now: Millis,
        answer: &Answer<T>,
        merchant_id: String,
    ) -> Result<Option<String>, PdpError> {
        let Some(first) = &answer.replay_of else {
            return Ok(None);
        };
        let mut record = self.record(origin, action, now);
        record.merchant_id = merchant_id;
        record.cause_id = first.clone();
        record.outcome = format!("ok (a retry: the first attempt's answer, record {first})");
        self.log(record).await?;
        Ok(Some(first.clone()))
    }

    /// Logs an action that changed nothing (an identical re-send, say).
    async fn unchanged_action(
        &self,
        origin: &Origin,
        action: &str,
        now: Millis,
        registration: &Registration,
    ) -> Result<(), PdpError> {
        let mut record = self.record(origin, action, now);
        record.merchant_id = registration_merchant(registration);
        record.outcome = "ok (unchanged)".to_owned();
        self.log(record).await
    }

    pub async fn register(
        &self,
        origin: &Origin,
        id: &str,
        body: RecordBody,
        expected_revision: Option<u64>,
        scope: &MerchantScope,
    ) -> Result<WriteOutcome, PdpError> {
        let now = self.now();
        let record_id = super::new_id();
        let record =
            |r: &Registration| self.registration_record(origin, "Register", now, &record_id, r);
        let request = Self::request(origin, &record_id, now);
        let answer = self
            .store
            .register(
                id,
                body,
                expected_revision,
                scope,
                now,
                request.as_ref(),
                &record,
            )
            .await?;
        let merchant = registration_merchant(&answer.value.registration);
        if let Some(first) = self
            .replayed(origin, "Register", now, &answer, merchant)
            .await?
        {
            // Re-checks are idempotent: running them again covers a first attempt that died
            // before its own.
            let outcome = answer.value;
            if outcome.changed && outcome.registration.revision > 1 {
                self.recheck_sessions_using(
                    outcome.registration.kind(),
                    id,
                    "a changed registration",
                    &first,
                )
                .await;
            }
            return Ok(outcome);
        }
        let outcome = answer.value;
        if outcome.changed {
            metrics::counter!(
                "anchor_pdp_registrations_total",
                "kind" => outcome.registration.kind().name()
            )
            .increment(1);
        }
        if !outcome.changed {
            self.unchanged_action(origin, "Register", now, &outcome.registration)
                .await?;
        } else if outcome.registration.revision > 1 {
            self.recheck_sessions_using(
                outcome.registration.kind(),
                id,
                "a changed registration",
                &record_id,
            )
            .await;
        }
        Ok(outcome)
    }

    /// Records a verdict under the authenticated caller (`origin.caller`, as the decision log
    /// names it): the command's `reviewer` is the caller's own words about who decides and is
    /// kept in the note unless it just names the caller.
    pub async fn review(
        &self,
        origin: &Origin,
        cmd: &ReviewCommand,
    ) -> Result<Registration, PdpError> {
        let mut cmd = reviewed_by_caller(origin, cmd);
        let now = self.now();
        let record_id = super::new_id();
        // A retry gets its first answer: no image is fetched for it (that could refuse it).
        let retry = match Self::request(origin, &record_id, now) {
            Some(request) => self.store.has_answered(&request)?,
            None => false,
        };
        if !retry {
            cmd.image = self.image_to_approve(&cmd).await?;
        }
        let cmd = &cmd;
        let record =
            |r: &Registration| self.registration_record(origin, "ReviewFiling", now, &record_id, r);
        let request = Self::request(origin, &record_id, now);
        let answer = self
            .store
            .review(cmd, now, request.as_ref(), &record)
            .await?;
        let merchant = registration_merchant(&answer.value);
        let cause = self
            .replayed(origin, "ReviewFiling", now, &answer, merchant)
            .await?
            .unwrap_or(record_id);
        if cmd.verdict == Verdict::Revoke {
            self.recheck_sessions_using(cmd.kind, &cmd.id, "a revoked filing", &cause)
                .await;
        }
        Ok(answer.value)
    }

    /// The image an approval of an anchor binds to: fetched now, and refused (ABORTED) if the
    /// reviewer saw other bytes. None for other verdicts and kinds, and when no images are
    /// fetched. An approval whose image cannot be fetched is not given (fail closed).
    async fn image_to_approve(
        &self,
        cmd: &ReviewCommand,
    ) -> Result<Option<ImageBinding>, PdpError> {
        if cmd.verdict != Verdict::Approve || cmd.kind != Kind::Anchor {
            return Ok(None);
        }
        let Some(images) = &self.images else {
            return match cmd.seen_image_sha256 {
                Some(_) => Err(PdpError::FailedPrecondition(
                    "image_sha256: this server fetches no images (no --console-image-prefix)"
                        .into(),
                )),
                None => Ok(None),
            };
        };
        let reference = match self.store.get_registration(Kind::Anchor, &cmd.id)? {
            Some(Registration {
                body: RecordBody::Anchor {
                    image_reference, ..
                },
                ..
            }) => image_reference,
            // apply_review answers for a missing filing.
            _ => return Ok(None),
        };
        let image = images.fetch(&reference).await.map_err(|e| {
            PdpError::FailedPrecondition(format!(
                "anchor {}: its image cannot be checked, so it is not approved: {e}",
                cmd.id
            ))
        })?;
        if let Some(seen) = &cmd.seen_image_sha256
            && *seen != image.sha256
        {
            return Err(PdpError::Aborted(format!(
                "anchor {}: the image changed since it was shown (sha256 {seen}, now {})",
                cmd.id, image.sha256
            )));
        }
        Ok(Some(ImageBinding {
            reference,
            sha256: image.sha256.clone(),
        }))
    }

    /// An approved anchor's image at `reference` was fetched and hashed to `seen_sha256`: if
    /// the approval is bound to other bytes, the anchor goes back to review and its live
    /// sessions are re-checked. True if it went back.
    pub async fn image_seen(
        &self,
        id: &str,
        reference: &str,
        seen_sha256: &str,
    ) -> Result<bool, PdpError> {
        let now = self.now();
        let record_id = super::new_id();
        let origin = Origin {
            request_id: None,
            entry_point: "image-check",
            gateway_id: String::new(),
            caller: "anchor-pdp".into(),
            request: serde_json::json!({
                "id": id,
                "image_reference": reference,
                "image_sha256": seen_sha256,
                "note": "the image changed since it was approved",
            }),
        };
        let record = |r: &Registration| {
            self.registration_record(&origin, "ImageChanged", now, &record_id, r)
        };
        let outcome = self
            .store
            .image_changed(id, reference, seen_sha256, now, &record)
            .await?;
        if outcome.changed {
            metrics::counter!("anchor_pdp_images_changed_total").increment(1);
            tracing::warn!(
                anchor = id,
                reference,
                seen_sha256,
                "an approved image changed: back to review"
            );
            self.recheck_sessions_using(Kind::Anchor, id, "a changed anchor image", &record_id)
                .await;
        }
        Ok(outcome.changed)
    }

    pub async fn set_provider_listing(
        &self,
        origin: &Origin,
        id: &str,
        listed: bool,
        operator: &str,
        expected_revision: Option<u64>,
    ) -> Result<WriteOutcome, PdpError> {
        let now = self.now();
        let record_id = super::new_id();
        let record = |r: &Registration| {
            self.registration_record(origin, "SetProviderListing", now, &record_id, r)
        };
        let request = Self::request(origin, &record_id, now);
        let answer = self
            .store
            .set_provider_listing(
                id,
                listed,
                operator,
                expected_revision,
                now,
                request.as_ref(),
                &record,
            )
            .await?;
        let merchant = registration_merchant(&answer.value.registration);
        if let Some(first) = self
            .replayed(origin, "SetProviderListing", now, &answer, merchant)
            .await?
        {
            if answer.value.changed && !listed {
                self.recheck_sessions_using(Kind::Provider, id, "a delisted provider", &first)
                    .await;
            }
            return Ok(answer.value);
        }
        let outcome = answer.value;
        if !outcome.changed {
            self.unchanged_action(origin, "SetProviderListing", now, &outcome.registration)
                .await?;
        } else if !listed {
            self.recheck_sessions_using(Kind::Provider, id, "a delisted provider", &record_id)
                .await;
        }
        Ok(outcome)
    }

    pub async fn set_ai_feature_filing(
        &self,
        origin: &Origin,
        id: &str,
        security_assessment_passed: bool,
        filing_number: &str,
        operator: &str,
        expected_revision: Option<u64>,
    ) -> Result<WriteOutcome, PdpError> {
        let now = self.now();
        let record_id = super::new_id();
        let record = |r: &Registration| {
            self.registration_record(origin, "SetAiFeatureFiling", now, &record_id, r)
        };
        let request = Self::request(origin, &record_id, now);
        let answer = self
            .store
            .set_ai_feature_filing(
                id,
                security_assessment_passed,
                filing_number,
                operator,
                expected_revision,
                now,
                request.as_ref(),
                &record,
            )
            .await?;
        let merchant = registration_merchant(&answer.value.registration);
        if let Some(first) = self
            .replayed(origin, "SetAiFeatureFiling", now, &answer, merchant)
            .await?
        {
            if answer.value.changed {
                self.recheck_sessions_using(
                    Kind::AiFeature,
                    id,
                    "a changed AI-feature filing",
                    &first,
                )
                .await;
            }
            return Ok(answer.value);
        }
        let outcome = answer.value;
        if !outcome.changed {
            self.unchanged_action(origin, "SetAiFeatureFiling", now, &outcome.registration)
                .await?;
        } else {
            self.recheck_sessions_using(
                Kind::AiFeature,
                id,
                "a changed AI-feature filing",
                &record_id,
            )
            .await;
        }
        Ok(outcome)
    }

    /// An inspector found `rule_id` broken in a live session: shut it down and apply the rule's
    /// penalty, unless the session was penalized before. The report is a discovery of its own.
    pub async fn report_violation(
        &self,
        origin: &Origin,
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
        if rule.penalty == Penalty::WarningOnly {
            return Err(PdpError::invalid(
                "rule_id",
                format!(
                    "{rule_id} only warns when found in a live broadcast, so a report cannot shut one down; the gateway's LIVE check carries it as a warning"
                ),
            ));
        }
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
        let record_id = super::new_id();
        let record = |enforced: &Enforced| {
            let mut record = self.record(origin, "ReportViolation", now);
            record.id = record_id.clone();
            record.merchant_id = enforced.session.merchant_id.clone();
            record.session_id = enforced.session.id.clone();
            record.rule_ids = vec![rule.id.clone()];
            record.enforcement = "SHUT_DOWN".to_owned();
            record.policy_version = policies.version().to_owned();
            record.penalty_applied = enforced.penalty_applied;
            record.warning_issued = enforced.warning_issued;
            record.change = match enforced.penalty_applied {
                Some(penalty) => format!("session shut down; {} applied", penalty.name()),
                None => "session shut down".to_owned(),
            };
            record
        };
        let request = Self::request(origin, &record_id, now);
        let answer = self
            .store
            .enforce(
                &Discovery {
                    id: record_id.clone(),
                    session_id: session_id.to_owned(),
                    trigger: Trigger::ViolationReport,
                    violations: vec![violation.clone()],
                    rule_ids: vec![rule.id.clone()],
                    penalty: rule.penalty,
                    discovered_by: inspector.to_owned(),
                    reason,
                    at: now,
                    drive_mode: None,
                    ai_features: Default::default(),
                    labels: None,
                },
                request.as_ref(),
                &record,
            )
            .await?;
        let merchant = answer.value.0.session.merchant_id.clone();
        let first = self
            .replayed(origin, "ReportViolation", now, &answer, merchant)
            .await?;
        let enforced = answer.value.0;
        if first.is_none() {
            super::count_penalty(enforced.penalty_applied);
        }
        let record_id = first.unwrap_or(record_id);
        if enforced.penalty_applied.is_some_and(Penalty::freezes) {
            self.propagate_freeze(enforced.session.merchant_id.clone(), &record_id)
                .await;
        }
        Ok(ReportOutcome {
            enforced,
            violation,
            now,
            record_id,
        })
    }

    pub async fn lift_freeze(
        &self,
        origin: &Origin,
        merchant_id: &str,
        operator: &str,
        reason: &str,
    ) -> Result<(Registration, Account, bool), PdpError> {
        let now = self.now();
        let record = |_: &Account| {
            let mut record = self.record(origin, "LiftFreeze", now);
            record.merchant_id = merchant_id.to_owned();
            record.change = "freeze lifted".to_owned();
            record
        };
        let request = Self::request(origin, &super::new_id(), now);
        let answer = self
            .store
            .lift_freeze(
                merchant_id,
                operator,
                reason,
                now,
                request.as_ref(),
                &record,
            )
            .await?;
        let replayed = self
            .replayed(origin, "LiftFreeze", now, &answer, merchant_id.to_owned())
            .await?
            .is_some();
        let (merchant, account, was_frozen) = answer.value;
        if !was_frozen && !replayed {
            let mut record = self.record(origin, "LiftFreeze", now);
            record.merchant_id = merchant_id.to_owned();
            record.outcome = "ok (was not frozen)".to_owned();
            self.log(record).await?;
        }
        Ok((merchant, account, was_frozen))
    }

    /// Ends a session (the publisher stopped). Ending an ended session changes nothing.
    pub async fn end_session(
        &self,
        origin: &Origin,
        session_id: &str,
        reason: &str,
    ) -> Result<Session, PdpError> {
        let now = self.now();
        let record = |s: &Session| {
            let mut record = self.record(origin, "EndSession", now);
            record.merchant_id = s.merchant_id.clone();
            record.session_id = s.id.clone();
            record.change = format!("session ended: {reason}");
            record
        };
        let request = Self::request(origin, &super::new_id(), now);
        let answer = self
            .store
            .update_session(
                session_id,
                |s| {
                    let mut next = s.clone();
                    if s.state != SessionState::Ended {
                        next.state = SessionState::Ended;
                        if s.closed_at.is_none() {
                            next.closed_at = Some(now);
                            next.close_reason = format!("ended: {reason}");
                        }
                    }
                    Ok(next)
                },
                request.as_ref(),
                &record,
            )
            .await?;
        let merchant = answer.value.0.merchant_id.clone();
        let replayed = self
            .replayed(origin, "EndSession", now, &answer, merchant)
            .await?
            .is_some();
        let (session, changed) = answer.value;
        if !changed && !replayed {
            let mut record = self.record(origin, "EndSession", now);
            record.merchant_id = session.merchant_id.clone();
            record.session_id = session.id.clone();
            record.outcome = "ok (already ended)".to_owned();
            self.log(record).await?;
        }
        Ok(session)
    }

    /// A consistent backup of the store (see `store::backup`), recorded in the decision log
    /// with the revision it is at.
    pub async fn backup(
        &self,
        origin: &Origin,
        with_decision_log: bool,
    ) -> Result<crate::store::Backup, PdpError> {
        let backup = self.store.backup(with_decision_log, self.now()).await?;
        let header = &backup.header;
        self.log_action(
            origin,
            "Backup",
            (String::new(), String::new()),
            format!(
                "backup at revision {}: {} keys, {} decision-log records",
                header.revision, header.keys, header.log_records
            ),
        )
        .await?;
        Ok(backup)
    }
}

/// `cmd` with the authenticated caller as its reviewer, and the typed reviewer text (when it
/// says more than the caller's name) kept in the note.
fn reviewed_by_caller(origin: &Origin, cmd: &ReviewCommand) -> ReviewCommand {
    let typed = cmd.reviewer.trim();
    let names_the_caller = typed.is_empty()
        || origin.caller == typed
        || origin.caller.starts_with(&format!("{typed} ("));
    let note = match (names_the_caller, cmd.note.is_empty()) {
        (true, _) => cmd.note.clone(),
        (false, true) => format!("reviewer: {typed}"),
        (false, false) => format!("{} (reviewer: {typed})", cmd.note),
    };
    ReviewCommand {
        reviewer: origin.caller.clone(),
        note,
        ..cmd.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_recorded_under_its_caller_and_typed_names_become_the_note() {
        let origin = Origin {
            request_id: None,
            entry_point: "grpc",
            gateway_id: String::new(),
            caller: "ops-1 (admin)".into(),
            request: serde_json::Value::Null,
        };
        let cmd = |reviewer: &str, note: &str| ReviewCommand {
            kind: crate::domain::Kind::Anchor,
            id: "a1".into(),
            verdict: crate::domain::Verdict::Approve,
            reviewer: reviewer.into(),
            note: note.into(),
            expected_revision: None,
            approval_expires_at: None,
            seen_image_sha256: None,
            image: None,
        };
        for (reviewer, note, kept) in [
            ("ops-1", "", ""),
            ("ops-1 (admin)", "looks fine", "looks fine"),
            (
                "admin-1 (admin, console)",
                "",
                "reviewer: admin-1 (admin, console)",
            ),
            ("Li Wei", "ok", "ok (reviewer: Li Wei)"),
        ] {
            let recorded = reviewed_by_caller(&origin, &cmd(reviewer, note));
            assert_eq!(
                (recorded.reviewer.as_str(), recorded.note.as_str()),
                ("ops-1 (admin)", kept),
                "{reviewer}"
            );
        }
    }
}
