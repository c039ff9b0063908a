//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`), served on the
//! gRPC port, for an Envoy in front of a WHIP (WebRTC) ingest or any HTTP ingest.
//!
//! Trusted, from the route's `context_extensions` (set in Envoy's config):
//!   `gateway` (required) — the gateway id; `phase` — `start` (default), `live` or `end`.
//! Claims, from request headers:
//!   `x-pdp-room` (START), `x-pdp-anchor`, `x-pdp-driver`, `x-pdp-livestream-type`,
//!   `x-pdp-drive-mode`, `x-pdp-ai-features` (comma-separated), `x-pdp-session` (LIVE, END).
//! The merchant is the room's registered owner. Allow: `ok_response` adding `x-pdp-session-id`
//! and `x-pdp-decision-id` to the upstream request (and the session id to the client's
//! response). Deny, or anything that cannot be mapped: `denied_response` 403 with the reasons
//! as JSON.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Request, Response, Status};

use super::{Claims, decision_json, refusal_json};
use crate::api::convert;
use crate::error::PdpError;
use crate::policy::Phase;
use crate::service::{AuthorizeCommand, Pdp};

pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

pub const SESSION_HEADER: &str = "x-pdp-session-id";
pub const DECISION_HEADER: &str = "x-pdp-decision-id";

pub struct EnvoyAuthorization {
    pdp: Arc<Pdp>,
}

impl EnvoyAuthorization {
    pub fn new(pdp: Arc<Pdp>) -> Self {
        EnvoyAuthorization { pdp }
    }
}

enum EnvoyPhase {
    Decide(Phase),
    End,
}

fn header<'a>(headers: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn command(request: &CheckRequest) -> Result<(EnvoyPhase, AuthorizeCommand), PdpError> {
    let empty = HashMap::new();
    let extensions = request
        .attributes
        .as_ref()
        .map_or(&empty, |a| &a.context_extensions);
    let gateway = convert::id(
        "context_extensions.gateway",
        extensions.get("gateway").map_or("", String::as_str),
    )?;
    let phase = match extensions.get("phase").map(String::as_str) {
        None | Some("start") => EnvoyPhase::Decide(Phase::Start),
        Some("live") => EnvoyPhase::Decide(Phase::Live),
        Some("end") => EnvoyPhase::End,
        Some(other) => {
            return Err(PdpError::invalid(
                "context_extensions.phase",
                format!("{other:?}; use start, live or end"),
            ));
        }
    };
    let headers = request.get_client_headers().unwrap_or(&empty);
    let mut claims = Claims::default();
    for (name, key) in [
        ("x-pdp-anchor", "anchor"),
        ("x-pdp-driver", "driver"),
        ("x-pdp-livestream-type", "livestream_type"),
        ("x-pdp-drive-mode", "drive_mode"),
        ("x-pdp-ai-features", "ai_features"),
    ] {
        if let Some(value) = header(headers, name) {
            claims.set(key, value).map_err(|e| match e {
                PdpError::InvalidArgument { reason, .. } => PdpError::invalid(name, reason),
                other => other,
            })?;
        }
    }
    let mut command = AuthorizeCommand {
        phase: Phase::Live,
        merchant_id: None,
        room_id: None,
        anchor_id: None,
        driver_id: None,
        livestream_type: None,
        drive_mode: None,
        ai_features: claims.ai_features.clone(),
        session_id: None,
        gateway_id: gateway,
        explain: false,
        stream: None,
    };
    match phase {
        EnvoyPhase::Decide(Phase::Start) => {
            command.phase = Phase::Start;
            let room = convert::id("x-pdp-room", header(headers, "x-pdp-room").unwrap_or(""))?;
            let (anchor, driver, livestream_type, drive_mode) =
                claims.for_start().map_err(|e| match e {
                    PdpError::InvalidArgument { field, reason } => {
                        PdpError::invalid(format!("x-pdp-{}", field.replace('_', "-")), reason)
                    }
                    other => other,
                })?;
            command.room_id = Some(room);
            command.anchor_id = Some(anchor);
            command.driver_id = Some(driver);
            command.livestream_type = Some(livestream_type);
            command.drive_mode = Some(drive_mode);
        }
        EnvoyPhase::Decide(Phase::Live) | EnvoyPhase::End => {
            command.session_id = Some(convert::id(
                "x-pdp-session",
                header(headers, "x-pdp-session").unwrap_or(""),
            )?);
            command.livestream_type = claims.livestream_type;
            command.drive_mode = claims.drive_mode;
        }
    }
    Ok((phase, command))
}

fn denied(body: serde_json::Value, code: tonic::Code, message: &str) -> CheckResponse {
    let mut http = DeniedHttpResponseBuilder::new();
    http.set_http_status(HttpStatusCode::Forbidden)
        .add_header("content-type", "application/json", None, false)
        .set_body(body.to_string());
    let mut response = CheckResponse::with_status(Status::new(code, message));
    response.set_http_response(http);
    response
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthorization {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let (phase, mut command) = match command(request.get_ref()) {
            Ok(mapped) => mapped,
            Err(error) => {
                tracing::warn!(%error, "ext_authz denied: cannot map the request");
                return Ok(Response::new(denied(
                    refusal_json(&error),
                    tonic::Code::InvalidArgument,
                    &error.to_string(),
                )));
            }
        };
        if let EnvoyPhase::End = phase {
            let session_id = command.session_id.clone().unwrap_or_default();
            return Ok(Response::new(
                match self.pdp.end_session(&session_id, "envoy end").await {
                    Ok(_) => CheckResponse::with_status(Status::ok("session ended")),
                    Err(error) => denied(
                        refusal_json(&error),
                        tonic::Code::NotFound,
                        &error.to_string(),
                    ),
                },
            ));
        }
        if command.phase == Phase::Start {
            let room = command.room_id.clone().unwrap_or_default();
            match self.pdp.room_owner(&room) {
                Ok(Some(owner)) => command.merchant_id = Some(owner),
                Ok(None) => {
                    let error =
                        PdpError::invalid("x-pdp-room", format!("{room} is not a filed room"));
                    return Ok(Response::new(denied(
                        refusal_json(&error),
                        tonic::Code::PermissionDenied,
                        &error.to_string(),
                    )));
                }
                Err(error) => {
                    return Ok(Response::new(denied(
                        refusal_json(&error),
                        tonic::Code::Unavailable,
                        &error.to_string(),
                    )));
                }
            }
        }
        let outcome = match self.pdp.authorize(command).await {
            Ok(outcome) => outcome,
            Err(error) => {
                return Ok(Response::new(denied(
                    refusal_json(&error),
                    tonic::Code::InvalidArgument,
                    &error.to_string(),
                )));
            }
        };
        if !outcome.decision.allowed {
            let rules = outcome.decision.rule_ids().join(",");
            tracing::warn!(%rules, "ext_authz denied");
            return Ok(Response::new(denied(
                decision_json(&outcome),
                tonic::Code::PermissionDenied,
                &format!("denied: {rules}"),
            )));
        }
        let session_id = outcome.session_id.clone().unwrap_or_default();
        let mut ok = OkHttpResponseBuilder::new();
        ok.add_header(SESSION_HEADER, session_id.clone(), None, false)
            .add_header(DECISION_HEADER, outcome.decision_id.clone(), None, false)
            .add_response_header(SESSION_HEADER, session_id, None, false);
        let mut response = CheckResponse::with_status(Status::ok("allowed"));
        response.set_http_response(ok);
        Ok(Response::new(response))
    }
}
