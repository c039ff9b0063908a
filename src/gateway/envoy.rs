//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`), served on the
//! gRPC port, for an Envoy in front of a WHIP (WebRTC) ingest or any HTTP ingest.
//!
//! Trusted, from the route's `context_extensions` (set in Envoy's config):
//!   `gateway` (required) — the gateway id; `phase` — `start` (default), `live` or `end`.
//! Claims, from request headers:
//!   `x-pdp-room` (START), `x-pdp-anchor`, `x-pdp-driver`, `x-pdp-livestream-type`,
//!   `x-pdp-drive-mode`, `x-pdp-ai-features` (comma-separated), `x-pdp-session` (LIVE, END);
//!   the AI-content labels (read by the label rule pack): `x-pdp-label-shown` (1/0),
//!   `x-pdp-label-kind` (OVERLAY/INTERFACE), `x-pdp-implicit-label` (1/0),
//!   `x-pdp-implicit-label-provider`. At LIVE, a check with no label header keeps the session's
//!   last report; any label header makes a whole new report (headers left out count as absent).
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

use super::{CLAIM_KEYS, Claims, decision_json, refusal_json, start_command};
use crate::api::convert;
use crate::api::status;
use crate::error::PdpError;
use crate::policy::Phase;
use crate::service::{AuthorizeCommand, Origin, Pdp, entry};

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

/// What a Check asks for.
enum Mapped {
    Decide(Box<AuthorizeCommand>),
    End(String),
}

fn header<'a>(headers: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Claim errors name the header the claim came in.
fn as_header(error: PdpError) -> PdpError {
    match error {
        PdpError::InvalidArgument { field, reason } if CLAIM_KEYS.contains(&field.as_str()) => {
            PdpError::invalid(format!("x-pdp-{}", field.replace('_', "-")), reason)
        }
        other => other,
    }
}

/// One of the route's `context_extensions` (set in Envoy's config, so trusted).
fn extension<'a>(request: &'a CheckRequest, key: &str) -> Option<&'a str> {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.context_extensions.get(key))
        .map(String::as_str)
}

fn map_check(pdp: &Pdp, request: &CheckRequest) -> Result<Mapped, PdpError> {
    let empty = HashMap::new();
    let gateway = convert::id(
        "context_extensions.gateway",
        extension(request, "gateway").unwrap_or(""),
    )?;
    let headers = request.get_client_headers().unwrap_or(&empty);
    let mut claims = Claims::default();
    for (name, key) in [
        ("x-pdp-anchor", "anchor"),
        ("x-pdp-driver", "driver"),
        ("x-pdp-livestream-type", "livestream_type"),
        ("x-pdp-drive-mode", "drive_mode"),
        ("x-pdp-ai-features", "ai_features"),
        ("x-pdp-label-shown", "label_shown"),
        ("x-pdp-label-kind", "label_kind"),
        ("x-pdp-implicit-label", "implicit_label"),
        ("x-pdp-implicit-label-provider", "implicit_label_provider"),
    ] {
        if let Some(value) = header(headers, name) {
            claims.set(key, value).map_err(as_header)?;
        }
    }
    let session = || {
        convert::id(
            "x-pdp-session",
            header(headers, "x-pdp-session").unwrap_or(""),
        )
    };
    match extension(request, "phase") {
        None | Some("start") => {
            let room = convert::id("x-pdp-room", header(headers, "x-pdp-room").unwrap_or(""))?;
            // Envoy keeps x-request-id across its own retries of one request.
            let idempotency_key = convert::optional_id(
                "x-request-id",
                header(headers, "x-request-id").unwrap_or(""),
            )?;
            let mut command =
                start_command(pdp, gateway, room, None, claims, "x-pdp-room").map_err(as_header)?;
            command.idempotency_key = idempotency_key;
            Ok(Mapped::Decide(Box::new(command)))
        }
        Some("live") => {
            let mut command = AuthorizeCommand::live(session()?, gateway);
            command.livestream_type = claims.livestream_type;
            command.drive_mode = claims.drive_mode;
            command.labels = claims.labels().map_err(as_header)?;
            command.ai_features = claims.ai_features;
            Ok(Mapped::Decide(Box::new(command)))
        }
        Some("end") => Ok(Mapped::End(session()?)),
        Some(other) => Err(PdpError::invalid(
            "context_extensions.phase",
            format!("{other:?}; use start, live or end"),
        )),
    }
}

/// What the decision log keeps of a Check: the route's context extensions, the method and
/// path, and the headers the PDP reads.
fn origin(request: &Request<CheckRequest>) -> Origin {
    let empty = HashMap::new();
    let check = request.get_ref();
    let attributes = check.attributes.as_ref();
    let extensions = attributes.map_or(&empty, |a| &a.context_extensions);
    let headers = check.get_client_headers().unwrap_or(&empty);
    let read: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-pdp-") || name.as_str() == "x-request-id")
        .map(|(name, value)| (name.clone(), serde_json::json!(value)))
        .collect();
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    Origin {
        request_id: None,
        entry_point: entry::ENVOY,
        gateway_id: extension(check, "gateway").unwrap_or_default().to_owned(),
        caller: crate::api::auth::caller(request).to_string(),
        request: serde_json::json!({
            "context_extensions": extensions,
            "method": http.map(|h| h.method.clone()).unwrap_or_default(),
            "path": http.map(|h| h.path.clone()).unwrap_or_default(),
            "headers": read,
        }),
    }
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
        let origin = origin(&request);
        let phase = match extension(request.get_ref(), "phase") {
            Some("live") => Phase::Live,
            _ => Phase::Start,
        };
        let command = match map_check(&self.pdp, request.get_ref()) {
            Ok(Mapped::Decide(command)) => *command,
            Ok(Mapped::End(session_id)) => {
                let ended = super::end_session(&self.pdp, origin, session_id, "envoy end").await;
                return Ok(Response::new(match ended {
                    Ok(_) => CheckResponse::with_status(Status::ok("session ended")),
                    Err(error) => denied(
                        refusal_json(&error),
                        status(error.clone()).code(),
                        &error.to_string(),
                    ),
                }));
            }
            Err(error) => {
                tracing::warn!(%error, "ext_authz denied: cannot map the request");
                // Recorded as a GATEWAY deny; Envoy gets the precise code.
                let recorded = self
                    .pdp
                    .refuse(&origin, phase, super::gateway_violation(&error))
                    .await;
                let body = match &recorded {
                    Ok(outcome) => decision_json(outcome),
                    Err(_) => refusal_json(&error),
                };
                return Ok(Response::new(denied(
                    body,
                    status(error.clone()).code(),
                    &error.to_string(),
                )));
            }
        };
        let outcome = match super::decide(&self.pdp, origin, phase, Ok(command)).await {
            Ok(outcome) => outcome,
            Err(error) => {
                return Ok(Response::new(denied(
                    refusal_json(&error),
                    status(error.clone()).code(),
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
