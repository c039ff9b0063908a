//! The gRPC transport: tonic services, request validation, proto conversion and the single
//! mapping from `PdpError` to `Status`. No rules live here.

pub mod auth;
pub mod calls;
pub mod convert;

use std::collections::HashSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::LogRecord;
use crate::domain::{Kind, ReviewCommand, Verdict};
use crate::error::PdpError;
use crate::policy::{Phase, ReloadOutcome};
use crate::proto;
use crate::service::{AuthorizeCommand, Enforcement, Origin, Pdp, entry, to_completion};
use convert::{
    MAX_AI_FEATURES, MAX_ID_LEN, MAX_NOTE_LEN, applied_penalty, enum_field, id, optional_id,
    required_text, text,
};

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

/// The merchant a Register request concerns.
fn register_merchant(req: &proto::RegisterRequest) -> String {
    use proto::register_request::Record;
    match &req.record {
        Some(Record::Merchant(m)) => m.id.clone(),
        Some(Record::Anchor(a)) => a.owner_merchant_id.clone(),
        Some(Record::Driver(d)) => d.owner_merchant_id.clone(),
        Some(Record::Room(r)) => r.owner_merchant_id.clone(),
        _ => String::new(),
    }
}

/// The one place errors become gRPC statuses.
pub fn status(error: PdpError) -> Status {
    match &error {
        PdpError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
        PdpError::NotFound(_) => Status::not_found(error.to_string()),
        PdpError::Aborted(_) => Status::aborted(error.to_string()),
        PdpError::FailedPrecondition(_) => Status::failed_precondition(error.to_string()),
        PdpError::PermissionDenied(_) => {
            tracing::warn!(%error, "refused");
            Status::permission_denied(error.to_string())
        }
        PdpError::Storage(_) | PdpError::Corrupt { .. } => {
            tracing::error!(%error, "store failure");
            Status::unavailable(error.to_string())
        }
    }
}

fn ai_features(raw: &[String]) -> Result<Vec<String>, PdpError> {
    if raw.len() > MAX_AI_FEATURES {
        return Err(PdpError::invalid(
            "ai_features",
            format!("{} entries; at most {MAX_AI_FEATURES}", raw.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, feature) in raw.iter().enumerate() {
        let field = format!("ai_features[{i}]");
        let feature = id(&field, feature)?;
        if !seen.insert(feature.clone()) {
            return Err(PdpError::invalid(
                field,
                format!("duplicate feature {feature}"),
            ));
        }
        out.push(feature);
    }
    Ok(out)
}

/// Validates an Authorize request into a command; every error names its field.
pub fn authorize_command(req: &proto::AuthorizeRequest) -> Result<AuthorizeCommand, PdpError> {
    let phase = match enum_field::<proto::Phase>("phase", req.phase)? {
        proto::Phase::Start => Phase::Start,
        proto::Phase::Live => Phase::Live,
        proto::Phase::Unspecified => {
            return Err(PdpError::invalid("phase", "required (UNSPECIFIED given)"));
        }
    };
    let livestream_type =
        convert::livestream_type_from_proto("livestream_type", req.livestream_type)?;
    let drive_mode = convert::drive_mode_from_proto("drive_mode", req.drive_mode)?;
    let command = AuthorizeCommand {
        phase,
        merchant_id: optional_id("merchant_id", &req.merchant_id)?,
        room_id: optional_id("room_id", &req.room_id)?,
        anchor_id: optional_id("anchor_id", &req.anchor_id)?,
        driver_id: optional_id("driver_id", &req.driver_id)?,
        livestream_type,
        drive_mode,
        ai_features: ai_features(&req.ai_features)?,
        session_id: optional_id("session_id", &req.session_id)?,
        gateway_id: optional_id("gateway_id", &req.gateway_id)?.unwrap_or_default(),
        explain: req.explain,
        stream: None,
        idempotency_key: optional_id("idempotency_key", &req.idempotency_key)?,
    };
    match phase {
        Phase::Start => {
            for (field, present) in [
                ("merchant_id", command.merchant_id.is_some()),
                ("room_id", command.room_id.is_some()),
                ("anchor_id", command.anchor_id.is_some()),
                ("driver_id", command.driver_id.is_some()),
                ("livestream_type", command.livestream_type.is_some()),
                ("drive_mode", command.drive_mode.is_some()),
            ] {
                if !present {
                    return Err(PdpError::invalid(field, "required at START"));
                }
            }
            if command.session_id.is_some() {
                return Err(PdpError::invalid(
                    "session_id",
                    "must be empty at START: the PDP opens the session",
                ));
            }
        }
        Phase::Live => {
            if command.session_id.is_none() {
                return Err(PdpError::invalid("session_id", "required at LIVE"));
            }
            if command.idempotency_key.is_some() {
                return Err(PdpError::invalid(
                    "idempotency_key",
                    "only a START opens a session; a LIVE re-check is safe to repeat",
                ));
            }
        }
    }
    Ok(command)
}

/// `anchorpdp.v1.PolicyDecisionPoint`.
pub struct DecisionService {
    pdp: Arc<Pdp>,
    streams: Arc<calls::StreamSlots>,
    /// Turns true when the server shuts down: open event streams end then, or a graceful
    /// shutdown would wait on them forever.
    closing: tokio::sync::watch::Receiver<bool>,
}

impl DecisionService {
    pub fn new(
        pdp: Arc<Pdp>,
        closing: tokio::sync::watch::Receiver<bool>,
        streams: Arc<calls::StreamSlots>,
    ) -> Self {
        DecisionService {
            pdp,
            streams,
            closing,
        }
    }
}

/// Events fetched from the store per read while catching up.
const EVENT_BATCH: usize = 256;

#[tonic::async_trait]
impl proto::policy_decision_point_server::PolicyDecisionPoint for DecisionService {
    type WatchEnforcementsStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::EnforcementEvent, Status>>;

    async fn watch_enforcements(
        &self,
        request: Request<proto::WatchEnforcementsRequest>,
    ) -> Result<Response<Self::WatchEnforcementsStream>, Status> {
        let req = request.into_inner();
        let gateway = optional_id("gateway_id", &req.gateway_id).map_err(status)?;
        let slot = self.streams.take()?;
        let pdp = self.pdp.clone();
        let mut closing = self.closing.clone();
        // Subscribe before the first read, so nothing published in between is missed.
        let mut published = pdp.subscribe_enforcements();
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BATCH);
        tokio::spawn(async move {
            let _slot = slot;
            let mut after = req.after_sequence;
            loop {
                published.borrow_and_update();
                let batch = match pdp.enforcement_events(after, EVENT_BATCH) {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let caught_up = batch.len() < EVENT_BATCH;
                for event in batch {
                    after = event.sequence;
                    if gateway.as_ref().is_some_and(|g| *g != event.gateway_id) {
                        continue;
                    }
                    if tx.send(Ok(convert::event_to_proto(&event))).await.is_err() {
                        return; // the watcher went away
                    }
                }
                if caught_up {
                    tokio::select! {
                        changed = published.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                        () = crate::decision_log::until_true(&mut closing) => {
                            let _ = tx.send(Err(Status::unavailable("server shutting down; resume after the last sequence"))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn authorize(
        &self,
        request: Request<proto::AuthorizeRequest>,
    ) -> Result<Response<proto::AuthorizeResponse>, Status> {
        let origin = grpc_origin(
            &request,
            "anchorpdp.v1.AuthorizeRequest",
            &request.get_ref().gateway_id,
        );
        let command = match authorize_command(request.get_ref()) {
            Ok(command) => command,
            Err(e) => {
                let req = request.get_ref();
                let concerns = (req.merchant_id.clone(), req.session_id.clone());
                return Err(refused(&self.pdp, &origin, "authorize", concerns, status(e)).await);
            }
        };
        self.pdp
            .store()
            .at_least(request.get_ref().min_revision)
            .await
            .map_err(status)?;
        let pdp = self.pdp.clone();
        // The decision and its record happen even if the caller gives up meanwhile.
        let outcome = to_completion(async move { pdp.authorize(&origin, command).await })
            .await
            .map_err(status)?;
        tracing::Span::current().record("decision_id", outcome.decision_id.as_str());
        let decision = &outcome.decision;
        // Per decision: debug only (the decision log is the record; INFO would be a write per
        // request to stderr).
        tracing::debug!(
            decision_id = %outcome.decision_id,
            allowed = decision.allowed,
            rules = %decision.rule_ids().join(","),
            session_id = outcome.session_id.as_deref().unwrap_or(""),
            policy_version = %decision.policy_version,
            "authorize"
        );
        let enforcement = match outcome.enforcement {
            Enforcement::None => proto::Enforcement::None,
            Enforcement::RefuseStart => proto::Enforcement::RefuseStart,
            Enforcement::ShutDown => proto::Enforcement::ShutDown,
        };
        Ok(Response::new(proto::AuthorizeResponse {
            decision: if decision.allowed {
                proto::Decision::Allow
            } else {
                proto::Decision::Deny
            } as i32,
            violations: decision
                .violations
                .iter()
                .map(convert::violation_to_proto)
                .collect(),
            enforcement: enforcement as i32,
            penalty_applied: applied_penalty(outcome.penalty_applied),
            warning_issued: outcome.warning_issued,
            frozen_until: outcome.frozen_until.map(convert::timestamp),
            session_id: outcome.session_id.clone().unwrap_or_default(),
            recheck_after: outcome.recheck_after.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }),
            decision_id: outcome.decision_id.clone(),
            policy_version: decision.policy_version.clone(),
            decided_at: Some(convert::timestamp(outcome.decided_at)),
            // Denies are always explained for the log; the caller gets it only if asked.
            explanation: decision
                .explanation
                .as_ref()
                .filter(|_| request.get_ref().explain)
                .map(convert::explanation_to_proto),
            superseded_session_id: outcome.superseded_session_id.clone().unwrap_or_default(),
            replayed: outcome.replayed,
            store_revision: self.pdp.store().revision(),
        }))
    }

    async fn end_session(
        &self,
        request: Request<proto::EndSessionRequest>,
    ) -> Result<Response<proto::EndSessionResponse>, Status> {
        let audit = {
            let req = request.get_ref();
            Audit::begin(
                &request,
                "EndSession",
                (String::new(), req.session_id.clone()),
            )
        };
        let origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            let session_id = id("session_id", &req.session_id).map_err(status)?;
            let reason = text("reason", &req.reason, MAX_NOTE_LEN).map_err(status)?;
            let pdp = self.pdp.clone();
            let session =
                to_completion(async move { pdp.end_session(&origin, &session_id, &reason).await })
                    .await
                    .map_err(status)?;
            Ok(Response::new(proto::EndSessionResponse {
                session: Some(convert::session_to_proto(&session)),
            }))
        }
        .await;
        audit.end(&self.pdp, result).await
    }

    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let audit = {
            let req = request.get_ref();
            Audit::begin(
                &request,
                "Register",
                (register_merchant(req), String::new()),
            )
        };
        let origin = audit.origin.clone();
        let result = async move {
            let caller = auth::caller(&request);
            let req = request.into_inner();
            let (record_id, body) = convert::record_from_proto(req.record).map_err(status)?;
            if caller.role == auth::Role::Registrar && !body.kind().needs_review() {
                tracing::warn!(%caller, kind = body.kind().name(), "register refused");
                return Err(Status::permission_denied(format!(
                    "{caller} may register anchors, drivers and rooms, not {} records",
                    body.kind().name()
                )));
            }
            let pdp = self.pdp.clone();
            let expected_revision = req.expected_revision;
            let id = record_id.clone();
            // Only registrars are narrowed to merchants; admins file for anyone.
            let scope = match caller.role {
                auth::Role::Registrar => caller.merchants.clone(),
                _ => crate::domain::MerchantScope::All,
            };
            let outcome = to_completion(async move {
                pdp.register(&origin, &id, body, expected_revision, &scope)
                    .await
            })
            .await
            .map_err(status)?;
            tracing::debug!(
                kind = outcome.registration.kind().name(),
                id = %record_id,
                revision = outcome.registration.revision,
                changed = outcome.changed,
                "register"
            );
            Ok(Response::new(proto::RegisterResponse {
                registration: Some(convert::registration_to_proto(&outcome.registration)),
                changed: outcome.changed,
                store_revision: self.pdp.store().revision(),
            }))
        }
        .await;
        audit.end(&self.pdp, result).await
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

/// Where a gRPC request came from, for its decision-log record.
fn grpc_origin<T: prost::Message>(request: &Request<T>, message: &str, gateway_id: &str) -> Origin {
    Origin {
        entry_point: entry::GRPC,
        gateway_id: gateway_id.to_owned(),
        caller: auth::caller(request).to_string(),
        request: convert::request_json(message, request.get_ref()),
    }
}

/// Records a request refused before it changed anything, and returns its status (or
/// UNAVAILABLE if even that cannot be recorded: nothing passes unrecorded).
async fn refused(
    pdp: &Pdp,
    origin: &Origin,
    action: &str,
    concerns: (String, String),
    refusal: Status,
) -> Status {
    let outcome = format!("{:?}: {}", refusal.code(), refusal.message());
    match pdp.log_action(origin, action, concerns, outcome).await {
        Ok(()) => refusal,
        Err(e) => Status::unavailable(format!("the action could not be logged: {e}")),
    }
}

/// An admin action on its way to the decision log: who asked, what, and about whom. What the
/// service does is recorded by the service, with the change; what is refused is recorded here.
struct Audit {
    origin: Origin,
    action: &'static str,
    concerns: (String, String),
}

impl Audit {
    fn begin<T: prost::Message>(
        request: &Request<T>,
        action: &'static str,
        concerns: (String, String),
    ) -> Audit {
        let message = format!("anchorpdp.v1.{action}Request");
        Audit {
            origin: grpc_origin(request, &message, ""),
            action,
            concerns,
        }
    }

    async fn end<T>(
        self,
        pdp: &Pdp,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(response) => Ok(response),
            Err(refusal) => {
                Err(refused(pdp, &self.origin, self.action, self.concerns, refusal).await)
            }
        }
    }
}

const DEFAULT_PAGE_SIZE: u32 = 100;
/// How long a stream past its deadline waits for room to say so.
const STREAM_END_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_PAGE_SIZE: u32 = 1000;

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
        let origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            let command = (|| {
                let kind = convert::kind_from_proto("kind", req.kind)?;
                if !kind.needs_review() {
                    return Err(PdpError::invalid(
                        "kind",
                        format!(
                            "{} records are not reviewed; use ANCHOR, DRIVER or ROOM",
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
        let origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
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
        let origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
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
        let origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
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
        let origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            let merchant_id = id("merchant_id", &req.merchant_id).map_err(status)?;
            let operator = required_text("operator", &req.operator, MAX_ID_LEN).map_err(status)?;
            let reason = text("reason", &req.reason, MAX_NOTE_LEN).map_err(status)?;
            let pdp = self.pdp.clone();
            let (merchant, by) = (merchant_id.clone(), operator.clone());
            let (account, was_frozen) =
                to_completion(
                    async move { pdp.lift_freeze(&origin, &merchant, &by, &reason).await },
                )
                .await
                .map_err(status)?;
            tracing::warn!(merchant_id = %merchant_id, %operator, was_frozen, "freeze lifted");
            let (merchant, _) = self.pdp.get_account(&merchant_id).map_err(status)?;
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
