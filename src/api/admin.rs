//! `anchorpdp.v1.PolicyAdmin`: reviews, reports, freezes, the catalog, reads of records and
//! sessions, the decision log, and policy reloads. Handlers validate, convert and delegate.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{
    self, MAX_ID_LEN, MAX_NOTE_LEN, applied_penalty, enum_field, id, optional_id, required_text,
    text,
};
use super::{Audit, calls, status};
use crate::domain::LogRecord;
use crate::domain::{Kind, ReviewCommand, Verdict};
use crate::error::PdpError;
use crate::policy::ReloadOutcome;
use crate::proto;
use crate::service::{Pdp, to_completion};

/// What a ReadDecisionLog request asks for.
struct LogFilter {
    decision_id: Option<String>,
    after_id: Option<String>,
    merchant_id: Option<String>,
    session_id: Option<String>,
    action: String,
    entry_point: String,
    decision: Option<bool>,
    since: Option<crate::domain::Millis>,
    until: Option<crate::domain::Millis>,
    limit: usize,
}

impl LogFilter {
    fn keep(&self, r: &LogRecord) -> bool {
        self.merchant_id
            .as_ref()
            .is_none_or(|m| *m == r.merchant_id)
            && self.session_id.as_ref().is_none_or(|s| *s == r.session_id)
            && (self.action.is_empty() || self.action == r.action)
            && (self.entry_point.is_empty() || self.entry_point == r.entry_point)
            && self.decision.is_none_or(|d| r.allowed == Some(d))
            && self.since.is_none_or(|t| r.at >= t)
            && self.until.is_none_or(|t| r.at < t)
    }
}

/// `anchorpdp.v1.PolicyAdmin`.
pub struct AdminService {
    pdp: Arc<Pdp>,
    streams: Arc<calls::StreamSlots>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl AdminService {
    /// A session as the admin API shows it: with the last check this replica handled.
    fn session_with_last_check(&self, session: &crate::domain::Session) -> proto::Session {
        proto::Session {
            last_checked_at: self.pdp.last_check(&session.id).map(convert::timestamp),
            ..convert::session_to_proto(session)
        }
    }

    pub fn new(
        pdp: Arc<Pdp>,
        closing: tokio::sync::watch::Receiver<bool>,
        streams: Arc<calls::StreamSlots>,
    ) -> Self {
        AdminService {
            pdp,
            streams,
            closing,
        }
    }
}

const DEFAULT_PAGE_SIZE: u32 = 100;
/// How long a stream past its deadline waits for room to say so.
const STREAM_END_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_PAGE_SIZE: u32 = 1000;
/// Backup bytes per stream message: well under the default 4 MiB gRPC message limit.
const BACKUP_CHUNK: usize = 1 << 20;

#[tonic::async_trait]
impl proto::policy_admin_server::PolicyAdmin for AdminService {
    type ReadDecisionLogStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::DecisionLogRecord, Status>>;

    async fn read_decision_log(
        &self,
        request: Request<proto::ReadDecisionLogRequest>,
    ) -> Result<Response<Self::ReadDecisionLogStream>, Status> {
        let deadline = calls::deadline_of(request.metadata());
        let req = request.into_inner();
        let filter = (|| {
            let decision = match req.decision {
                0 => None,
                raw => match enum_field::<proto::Decision>("decision", raw)? {
                    proto::Decision::Allow => Some(true),
                    proto::Decision::Deny => Some(false),
                    proto::Decision::Unspecified => None,
                },
            };
            let limit = match req.limit {
                0 => 1000,
                n if n > 100_000 => {
                    return Err(PdpError::invalid("limit", format!("{n}; at most 100000")));
                }
                n => n as usize,
            };
            Ok::<_, PdpError>(LogFilter {
                decision_id: optional_id("decision_id", &req.decision_id)?,
                after_id: optional_id("after_id", &req.after_id)?,
                merchant_id: optional_id("merchant_id", &req.merchant_id)?,
                session_id: optional_id("session_id", &req.session_id)?,
                action: text("action", &req.action, MAX_ID_LEN)?,
                entry_point: text("entry_point", &req.entry_point, MAX_ID_LEN)?,
                decision,
                since: req
                    .since
                    .as_ref()
                    .map(|t| convert::millis("since", t))
                    .transpose()?,
                until: req
                    .until
                    .as_ref()
                    .map(|t| convert::millis("until", t))
                    .transpose()?,
                limit,
            })
        })()
        .map_err(status)?;
        let store = self.pdp.store_handle();
        let mut closing = self.closing.clone();
        let slot = self.streams.take()?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(id) = &filter.decision_id {
                let found = store.log_record(id).map(|r| r.filter(|r| filter.keep(r)));
                let _ = match found {
                    Ok(Some(record)) => tx.send(Ok(convert::log_record_to_proto(&record))).await,
                    Ok(None) => Ok(()),
                    Err(e) => tx.send(Err(status(e))).await,
                };
                return;
            }
            // Records are read after this id (the caller's resume cursor at first).
            let mut after: Option<String> = filter.after_id.clone();
            let mut sent = 0;
            // A stream that outlives its deadline ends with where to resume.
            let out_of_time = |cursor: &Option<String>| {
                let cursor = cursor.clone().unwrap_or_default();
                let mut status = Status::deadline_exceeded(format!(
                    "the call's deadline passed; resume with after_id {cursor:?}"
                ));
                if let Ok(value) = cursor.parse() {
                    status.metadata_mut().insert("resume-after-id", value);
                }
                status
            };
            loop {
                if *closing.borrow_and_update() {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    let ended = tx.send(Err(out_of_time(&after)));
                    // A reader that reads nothing more gets no more time either.
                    let _ = tokio::time::timeout(STREAM_END_GRACE, ended).await;
                    return;
                }
                let page = store.read_log(after.as_deref(), |r| filter.keep(r), 256, 4096);
                let (records, last) = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                for record in &records {
                    if sent >= filter.limit {
                        return;
                    }
                    let send = tx.send(Ok(convert::log_record_to_proto(record)));
                    match tokio::time::timeout_at(deadline, send).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return, // the reader went away
                        Err(_) => {
                            let ended = tx.send(Err(out_of_time(&after)));
                            // A reader that reads nothing more gets no more time either.
                            let _ = tokio::time::timeout(STREAM_END_GRACE, ended).await;
                            return;
                        }
                    }
                    after = Some(record.id.clone());
                    sent += 1;
                }
                match last {
                    Some(last) => after = Some(last),
                    None => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn get_decision_log_status(
        &self,
        _request: Request<proto::GetDecisionLogStatusRequest>,
    ) -> Result<Response<proto::GetDecisionLogStatusResponse>, Status> {
        let log = self.pdp.decision_log();
        let (bytes, segments) = self.pdp.store().log_size();
        Ok(Response::new(proto::GetDecisionLogStatusResponse {
            records: self.pdp.store().log_len(),
            bytes,
            segments: u32::try_from(segments).unwrap_or(u32::MAX),
            written: log.written(),
            dropped: log.dropped(),
            queue_capacity: u32::try_from(log.capacity()).unwrap_or(u32::MAX),
            overflow: match log.overflow() {
                crate::decision_log::Overflow::Wait => "wait".into(),
                crate::decision_log::Overflow::Drop => "drop".into(),
            },
        }))
    }

    async fn review_filing(
        &self,
        request: Request<proto::ReviewFilingRequest>,
    ) -> Result<Response<proto::ReviewFilingResponse>, Status> {
        let audit = Audit::begin(&request, "ReviewFiling", (String::new(), String::new()));
        let mut origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            origin.request_id = convert::request_id(&req.request_id).map_err(status)?;
            let command = (|| {
                let kind = convert::kind_from_proto("kind", req.kind)?;
                if !kind.needs_review() {
                    return Err(PdpError::invalid(
                        "kind",
                        format!(
                            "{} records are not reviewed; use ANCHOR, DRIVER, ROOM or CONSENT",
                            kind.name()
                        ),
                    ));
                }
                let verdict = match enum_field::<proto::Verdict>("verdict", req.verdict)? {
                    proto::Verdict::Approve => Verdict::Approve,
                    proto::Verdict::Reject => Verdict::Reject,
                    proto::Verdict::Revoke => Verdict::Revoke,
                    proto::Verdict::Unspecified => {
                        return Err(PdpError::invalid("verdict", "required (UNSPECIFIED given)"));
                    }
                };
                Ok(ReviewCommand {
                    kind,
                    id: id("id", &req.id)?,
                    verdict,
                    reviewer: required_text("reviewer", &req.reviewer, MAX_ID_LEN)?,
                    note: text("note", &req.note, MAX_NOTE_LEN)?,
                    expected_revision: req.expected_revision,
                    approval_expires_at: req
                        .approval_expires_at
                        .as_ref()
                        .map(|ts| convert::millis("approval_expires_at", ts))
                        .transpose()?,
                    seen_image_sha256: req
                        .image_sha256
                        .as_deref()
                        .map(|hash| convert::sha256_hex_field("image_sha256", hash))
                        .transpose()?,
                    image: None,
                })
            })()
            .map_err(status)?;
            let pdp = self.pdp.clone();
            let cmd = command.clone();
            let registration = to_completion(async move { pdp.review(&origin, &cmd).await })
                .await
                .map_err(status)?;
            tracing::info!(
                kind = command.kind.name(),
                id = %command.id,
                verdict = ?command.verdict,
                reviewer = %command.reviewer,
                "review"
            );
            Ok(Response::new(proto::ReviewFilingResponse {
                registration: Some(convert::registration_to_proto(&registration)),
                store_revision: self.pdp.store().revision(),
            }))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    async fn set_provider_listing(
        &self,
        request: Request<proto::SetProviderListingRequest>,
    ) -> Result<Response<proto::SetProviderListingResponse>, Status> {
        let audit = Audit::begin(
            &request,
            "SetProviderListing",
            (String::new(), String::new()),
        );
        let mut origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            origin.request_id = convert::request_id(&req.request_id).map_err(status)?;
            let provider_id = id("provider_id", &req.provider_id).map_err(status)?;
            let operator = required_text("operator", &req.operator, MAX_ID_LEN).map_err(status)?;
            let pdp = self.pdp.clone();
            let (listed, expected_revision) = (req.listed, req.expected_revision);
            let (id, by) = (provider_id.clone(), operator.clone());
            let outcome = to_completion(async move {
                pdp.set_provider_listing(&origin, &id, listed, &by, expected_revision)
                    .await
            })
            .await
            .map_err(status)?;
            tracing::info!(
                provider_id = %provider_id,
                listed = req.listed,
                %operator,
                "provider listing"
            );
            Ok(Response::new(proto::SetProviderListingResponse {
                registration: Some(convert::registration_to_proto(&outcome.registration)),
            }))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    async fn set_ai_feature_filing(
        &self,
        request: Request<proto::SetAiFeatureFilingRequest>,
    ) -> Result<Response<proto::SetAiFeatureFilingResponse>, Status> {
        let audit = Audit::begin(
            &request,
            "SetAiFeatureFiling",
            (String::new(), String::new()),
        );
        let mut origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            origin.request_id = convert::request_id(&req.request_id).map_err(status)?;
            let feature_id = id("feature_id", &req.feature_id).map_err(status)?;
            let filing_number =
                text("filing_number", &req.filing_number, MAX_ID_LEN).map_err(status)?;
            let operator = required_text("operator", &req.operator, MAX_ID_LEN).map_err(status)?;
            let pdp = self.pdp.clone();
            let (passed, expected_revision) =
                (req.security_assessment_passed, req.expected_revision);
            let outcome = to_completion(async move {
                pdp.set_ai_feature_filing(
                    &origin,
                    &feature_id,
                    passed,
                    &filing_number,
                    &operator,
                    expected_revision,
                )
                .await
            })
            .await
            .map_err(status)?;
            Ok(Response::new(proto::SetAiFeatureFilingResponse {
                registration: Some(convert::registration_to_proto(&outcome.registration)),
            }))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    async fn report_violation(
        &self,
        request: Request<proto::ReportViolationRequest>,
    ) -> Result<Response<proto::ReportViolationResponse>, Status> {
        let audit = {
            let req = request.get_ref();
            Audit::begin(
                &request,
                "ReportViolation",
                (String::new(), req.session_id.clone()),
            )
        };
        let mut origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            origin.request_id = convert::request_id(&req.request_id).map_err(status)?;
            let session_id = id("session_id", &req.session_id).map_err(status)?;
            let rule_id = id("rule_id", &req.rule_id).map_err(status)?;
            let inspector =
                required_text("inspector", &req.inspector, MAX_ID_LEN).map_err(status)?;
            let note = text("note", &req.note, MAX_NOTE_LEN).map_err(status)?;
            let pdp = self.pdp.clone();
            let (session, rule, by) = (session_id.clone(), rule_id.clone(), inspector.clone());
            let outcome = to_completion(async move {
                pdp.report_violation(&origin, &session, &rule, &by, &note)
                    .await
            })
            .await
            .map_err(status)?;
            let enforced = &outcome.enforced;
            tracing::warn!(
                session_id = %session_id,
                rule_id = %rule_id,
                %inspector,
                penalty = enforced.penalty_applied.map_or("none", |p| p.name()),
                "violation reported"
            );
            let account = match self.pdp.get_account(&enforced.session.merchant_id) {
                Ok((merchant, _)) => Some(convert::account_to_proto(
                    &merchant,
                    &enforced.account,
                    outcome.now,
                )),
                Err(_) => None,
            };
            Ok(Response::new(proto::ReportViolationResponse {
                session: Some(convert::session_to_proto(&enforced.session)),
                penalty_applied: applied_penalty(enforced.penalty_applied),
                warning_issued: enforced.warning_issued,
                account,
                violation: Some(convert::violation_to_proto(&outcome.violation)),
                store_revision: self.pdp.store().revision(),
            }))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<proto::BackupChunk, Status>>;

    async fn backup(
        &self,
        request: Request<proto::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let audit = Audit::begin(&request, "Backup", (String::new(), String::new()));
        let origin = audit.origin.clone();
        let result = async move {
            let with_log = request.get_ref().with_decision_log;
            let pdp = self.pdp.clone();
            let backup = to_completion(async move { pdp.backup(&origin, with_log).await })
                .await
                .map_err(status)?;
            let revision = backup.header.revision;
            let bytes = tokio::task::spawn_blocking(move || backup.encode())
                .await
                .map_err(|e| Status::internal(format!("encoding the backup: {e}")))?
                .map_err(status)?;
            let slot = self.streams.take()?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                let _slot = slot;
                for chunk in bytes.chunks(BACKUP_CHUNK) {
                    let chunk = proto::BackupChunk {
                        data: chunk.to_vec(),
                        store_revision: revision,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return; // the reader went away
                    }
                }
            });
            Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
                rx,
            )))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    async fn lift_freeze(
        &self,
        request: Request<proto::LiftFreezeRequest>,
    ) -> Result<Response<proto::LiftFreezeResponse>, Status> {
        let audit = {
            let req = request.get_ref();
            Audit::begin(
                &request,
                "LiftFreeze",
                (req.merchant_id.clone(), String::new()),
            )
        };
        let mut origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            origin.request_id = convert::request_id(&req.request_id).map_err(status)?;
            let merchant_id = id("merchant_id", &req.merchant_id).map_err(status)?;
            let operator = required_text("operator", &req.operator, MAX_ID_LEN).map_err(status)?;
            let reason = text("reason", &req.reason, MAX_NOTE_LEN).map_err(status)?;
            let pdp = self.pdp.clone();
            let (merchant, by) = (merchant_id.clone(), operator.clone());
            let (merchant, account, was_frozen) =
                to_completion(
                    async move { pdp.lift_freeze(&origin, &merchant, &by, &reason).await },
                )
                .await
                .map_err(status)?;
            tracing::warn!(merchant_id = %merchant_id, %operator, was_frozen, "freeze lifted");
            Ok(Response::new(proto::LiftFreezeResponse {
                account: Some(convert::account_to_proto(
                    &merchant,
                    &account,
                    self.pdp.now(),
                )),
                was_frozen,
                store_revision: self.pdp.store().revision(),
            }))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    async fn get_registration(
        &self,
        request: Request<proto::GetRegistrationRequest>,
    ) -> Result<Response<proto::GetRegistrationResponse>, Status> {
        let req = request.get_ref();
        let kind = convert::kind_from_proto("kind", req.kind).map_err(status)?;
        let record_id = id("id", &req.id).map_err(status)?;
        let registration = self
            .pdp
            .get_registration(kind, &record_id)
            .map_err(status)?;
        Ok(Response::new(proto::GetRegistrationResponse {
            registration: Some(convert::registration_to_proto(&registration)),
        }))
    }

    async fn list_registrations(
        &self,
        request: Request<proto::ListRegistrationsRequest>,
    ) -> Result<Response<proto::ListRegistrationsResponse>, Status> {
        let req = request.get_ref();
        let kind: Kind = convert::kind_from_proto("kind", req.kind).map_err(status)?;
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(status(PdpError::invalid(
                    "page_size",
                    format!("{n}; at most {MAX_PAGE_SIZE}"),
                )));
            }
            n => n,
        };
        // The token is the last id of the previous page: ids are unique and sorted.
        let after = optional_id("page_token", &req.page_token).map_err(status)?;
        let limit = usize::try_from(page_size).unwrap_or(usize::MAX);
        let mut page = self
            .pdp
            .list_registrations(kind, after.as_deref(), limit + 1)
            .map_err(status)?;
        let next_page_token = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListRegistrationsResponse {
            registrations: page.iter().map(convert::registration_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_account(
        &self,
        request: Request<proto::GetAccountRequest>,
    ) -> Result<Response<proto::GetAccountResponse>, Status> {
        let merchant_id = id("merchant_id", &request.get_ref().merchant_id).map_err(status)?;
        let (merchant, account) = self.pdp.get_account(&merchant_id).map_err(status)?;
        let now = self.pdp.now();
        Ok(Response::new(proto::GetAccountResponse {
            account: Some(convert::account_to_proto(&merchant, &account, now)),
            read_at: Some(convert::timestamp(now)),
        }))
    }

    async fn get_session(
        &self,
        request: Request<proto::GetSessionRequest>,
    ) -> Result<Response<proto::GetSessionResponse>, Status> {
        let session_id = id("session_id", &request.get_ref().session_id).map_err(status)?;
        let session = self.pdp.get_session(&session_id).map_err(status)?;
        Ok(Response::new(proto::GetSessionResponse {
            session: Some(self.session_with_last_check(&session)),
        }))
    }

    async fn list_live_sessions(
        &self,
        request: Request<proto::ListLiveSessionsRequest>,
    ) -> Result<Response<proto::ListLiveSessionsResponse>, Status> {
        let merchant =
            optional_id("merchant_id", &request.get_ref().merchant_id).map_err(status)?;
        let mut sessions = self.pdp.live_sessions().map_err(status)?;
        sessions.retain(|s| merchant.as_ref().is_none_or(|m| *m == s.merchant_id));
        sessions.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(Response::new(proto::ListLiveSessionsResponse {
            sessions: sessions
                .iter()
                .map(|s| self.session_with_last_check(s))
                .collect(),
        }))
    }

    async fn reload_policies(
        &self,
        request: Request<proto::ReloadPoliciesRequest>,
    ) -> Result<Response<proto::ReloadPoliciesResponse>, Status> {
        let audit = Audit::begin(&request, "ReloadPolicies", (String::new(), String::new()));
        let origin = audit.origin.clone();
        let result = async move {
            let operator = required_text("operator", &request.get_ref().operator, MAX_ID_LEN)
                .map_err(status)?;
            let pdp = self.pdp.clone();
            let trigger = format!("rpc:{operator}");
            let may_remove_rules = request.get_ref().allow_removed_rules;
            // Loading parses and validates every file: keep it off the async workers.
            let outcome = tokio::task::spawn_blocking(move || {
                pdp.reload_policies(&trigger, may_remove_rules)
            })
            .await
            .map_err(|e| Status::internal(format!("reload task failed: {e}")))?;
            if matches!(outcome, ReloadOutcome::Reloaded { .. }) {
                self.pdp.publish_policies().await;
            }
            let recorded = match &outcome {
                ReloadOutcome::Reloaded { active, .. } => format!("ok (reloaded {active})"),
                ReloadOutcome::Unchanged { active } => format!("ok (unchanged {active})"),
                ReloadOutcome::Rejected { active, .. } => format!("rejected (kept {active})"),
            };
            self.pdp
                .log_action(
                    &origin,
                    "ReloadPolicies",
                    (String::new(), String::new()),
                    recorded,
                )
                .await
                .map_err(status)?;
            let response = match outcome {
                ReloadOutcome::Reloaded { previous, active } => proto::ReloadPoliciesResponse {
                    result: proto::ReloadResult::Reloaded as i32,
                    active_version: active,
                    previous_version: previous,
                    problems: vec![],
                },
                ReloadOutcome::Unchanged { active } => proto::ReloadPoliciesResponse {
                    result: proto::ReloadResult::Unchanged as i32,
                    previous_version: active.clone(),
                    active_version: active,
                    problems: vec![],
                },
                ReloadOutcome::Rejected { active, error } => proto::ReloadPoliciesResponse {
                    result: proto::ReloadResult::Rejected as i32,
                    previous_version: active.clone(),
                    active_version: active,
                    problems: error
                        .problems
                        .iter()
                        .map(convert::problem_to_proto)
                        .collect(),
                },
            };
            Ok(Response::new(response))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    async fn get_policy_status(
        &self,
        _request: Request<proto::GetPolicyStatusRequest>,
    ) -> Result<Response<proto::GetPolicyStatusResponse>, Status> {
        let handle = self.pdp.policy_handle();
        let status = handle.status();
        let policies = handle.current();
        let mut rules: Vec<_> = policies.rules().collect();
        rules.sort_by_key(|r| r.order);
        Ok(Response::new(proto::GetPolicyStatusResponse {
            active_version: policies.version().to_owned(),
            directory: handle.dir().display().to_string(),
            loaded_at: Some(convert::timestamp(status.loaded_at)),
            rules: rules
                .into_iter()
                .map(|r| proto::Rule {
                    id: r.id.clone(),
                    penalty: convert::penalty_to_proto(r.penalty) as i32,
                    message_en: r.message_en.clone(),
                    message_zh: r.message_zh.clone(),
                })
                .collect(),
            last_attempt_at: status.last_attempt_at.map(convert::timestamp),
            last_trigger: status.last_trigger.clone(),
            last_reload_problems: status
                .last_error
                .as_ref()
                .map(|e| e.problems.iter().map(convert::problem_to_proto).collect())
                .unwrap_or_default(),
            reloads: status.reloads,
            rejected_reloads: status.rejected_reloads,
        }))
    }
}
