//! `anchorpdp.v1.PolicyDecisionPoint`: START and LIVE decisions, session ends, enforcement
//! events and registrations. Handlers validate, convert and delegate to the service.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, MAX_NOTE_LEN, applied_penalty, id, optional_id, text};
use super::{Audit, auth, authorize_command, calls, grpc_origin, refused, status};
use crate::proto;
use crate::service::{Enforcement, Pdp, to_completion};

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
            warnings: decision
                .warnings
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
        let mut origin = audit.origin.clone();
        let result = async move {
            let req = request.get_ref();
            origin.request_id = convert::request_id(&req.request_id).map_err(status)?;
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
        let mut origin = audit.origin.clone();
        let result = async move {
            let caller = auth::caller(&request);
            let req = request.into_inner();
            origin.request_id = convert::request_id(&req.request_id).map_err(status)?;
            let (record_id, body) = convert::record_from_proto(req.record).map_err(status)?;
            if caller.role == auth::Role::Registrar && !body.kind().needs_review() {
                tracing::warn!(%caller, kind = body.kind().name(), "register refused");
                return Err(Status::permission_denied(format!(
                    "{caller} may register anchors, drivers, rooms and consents, not {} records",
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
