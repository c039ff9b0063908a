//! Streaming gateways' native ways of asking: nginx-rtmp, SRS, MediaMTX and OvenMediaEngine
//! HTTP hooks (an HTTP listener of its own, off unless configured), Envoy's ext_authz gRPC check (on the gRPC port), and
//! pushing cuts to nginx-rtmp's control endpoint. Each maps the gateway's request to an
//! Authorize and its answer back; anything it cannot map denies.
//!
//! Identity: the stream key is the livestream room id, and the merchant is that room's
//! registered owner. The anchor, driver, livestream type, drive mode and AI features are the
//! publisher's claims (publish-URL arguments, or headers for Envoy), which the decision checks
//! against the store like any Authorize.

pub mod envoy;
pub mod mediamtx;
pub mod nginx;
pub mod nginx_control;
pub mod ome;
pub mod secrets;
pub mod srs;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::convert;
use crate::domain::{DriveMode, LabelKind, LabelReport, LivestreamType, Penalty, StreamRef};
use crate::error::PdpError;
use crate::policy::{Phase, Violation};
use crate::service::{AuthorizeCommand, AuthorizeOutcome, Origin, Pdp, to_completion};

/// The publisher's claims, as publish-URL arguments (nginx-rtmp, SRS `param`). The label
/// observations (`label_*`, `implicit_label*`) are decided on only by a policy set that reads
/// them (the label rule pack).
pub const CLAIM_KEYS: [&str; 9] = [
    "anchor",
    "driver",
    "livestream_type",
    "drive_mode",
    "ai_features",
    "label_shown",
    "label_kind",
    "implicit_label",
    "implicit_label_provider",
];

/// What a publisher claims about its broadcast.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    pub anchor: Option<String>,
    pub driver: Option<String>,
    pub livestream_type: Option<LivestreamType>,
    pub drive_mode: Option<DriveMode>,
    pub ai_features: Vec<String>,
    /// Set when any label observation is given; each one given at most once.
    pub labels: Option<LabelReport>,
    labels_given: Vec<&'static str>,
}

/// `1`/`true` or `0`/`false`.
fn flag(key: &str, value: &str) -> Result<bool, PdpError> {
    match value {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(PdpError::invalid(
            key,
            format!("{other:?} is not 1, true, 0 or false"),
        )),
    }
}

impl Claims {
    /// Sets one label observation; a second one of the same name is ambiguous.
    fn set_label(&mut self, key: &'static str, value: &str) -> Result<(), PdpError> {
        if self.labels_given.contains(&key) {
            return Err(PdpError::invalid(key, "given more than once"));
        }
        let labels = self.labels.get_or_insert_with(LabelReport::default);
        match key {
            "label_shown" => labels.label_shown = flag(key, value)?,
            "label_kind" => {
                labels.label_kind = LabelKind::from_policy_name(value)
                    .filter(|kind| *kind != LabelKind::None)
                    .ok_or_else(|| {
                        PdpError::invalid(key, format!("{value:?} is not OVERLAY or INTERFACE"))
                    })?
            }
            "implicit_label" => labels.implicit_label = flag(key, value)?,
            _ => labels.implicit_label_provider = convert::id(key, value)?,
        }
        self.labels_given.push(key);
        Ok(())
    }

    /// The label observations, if any was given, checked as a whole.
    pub fn labels(&self) -> Result<Option<LabelReport>, PdpError> {
        if let Some(labels) = &self.labels
            && !labels.implicit_label
            && !labels.implicit_label_provider.is_empty()
        {
            return Err(PdpError::invalid(
                "implicit_label_provider",
                "names a provider, but implicit_label is not 1: report the implicit label it belongs to",
            ));
        }
        Ok(self.labels.clone())
    }

    /// Sets one claim from its argument; a claim given twice is ambiguous and refused.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PdpError> {
        let twice = || PdpError::invalid(key, "given more than once");
        match key {
            "anchor" => {
                if self.anchor.replace(convert::id(key, value)?).is_some() {
                    return Err(twice());
                }
            }
            "driver" => {
                if self.driver.replace(convert::id(key, value)?).is_some() {
                    return Err(twice());
                }
            }
            "livestream_type" => {
                let parsed = LivestreamType::from_policy_name(value)
                    .ok_or_else(|| PdpError::invalid(key, format!("unknown value {value:?}")))?;
                if self.livestream_type.replace(parsed).is_some() {
                    return Err(twice());
                }
            }
            "drive_mode" => {
                let parsed = DriveMode::from_policy_name(value)
                    .ok_or_else(|| PdpError::invalid(key, format!("unknown value {value:?}")))?;
                if self.drive_mode.replace(parsed).is_some() {
                    return Err(twice());
                }
            }
            "ai_features" => {
                if !self.ai_features.is_empty() {
                    return Err(twice());
                }
                for feature in value.split(',').filter(|f| !f.is_empty()) {
                    let feature = convert::id(key, feature)?;
                    if self.ai_features.contains(&feature) {
                        return Err(PdpError::invalid(
                            key,
                            format!("duplicate feature {feature}"),
                        ));
                    }
                    self.ai_features.push(feature);
                }
                if self.ai_features.len() > convert::MAX_AI_FEATURES {
                    return Err(PdpError::invalid(key, "too many features"));
                }
            }
            "label_shown" => self.set_label("label_shown", value)?,
            "label_kind" => self.set_label("label_kind", value)?,
            "implicit_label" => self.set_label("implicit_label", value)?,
            "implicit_label_provider" => self.set_label("implicit_label_provider", value)?,
            other => {
                return Err(PdpError::invalid(
                    other,
                    format!(
                        "unknown argument; the publisher may set {}",
                        CLAIM_KEYS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The claims a START needs, or the first one missing.
    pub fn for_start(&self) -> Result<(String, String, LivestreamType, DriveMode), PdpError> {
        let missing = |key: &str| PdpError::invalid(key, "required in the publish arguments");
        Ok((
            self.anchor.clone().ok_or_else(|| missing("anchor"))?,
            self.driver.clone().ok_or_else(|| missing("driver"))?,
            self.livestream_type
                .ok_or_else(|| missing("livestream_type"))?,
            self.drive_mode.ok_or_else(|| missing("drive_mode"))?,
        ))
    }
}

/// The START a gateway asks for: the room (the stream key, for RTMP gateways) names the
/// merchant, its registered owner, and the claims fill in the rest. `room_field` is what the
/// gateway calls the room, for the error; `stream` is set when the gateway's hooks will look
/// the session up again.
pub fn start_command(
    pdp: &Pdp,
    gateway_id: String,
    room_id: String,
    stream: Option<StreamRef>,
    claims: Claims,
    room_field: &str,
) -> Result<AuthorizeCommand, PdpError> {
    let (anchor, driver, livestream_type, drive_mode) = claims.for_start()?;
    let merchant = pdp.room_owner(&room_id)?.ok_or_else(|| {
        PdpError::invalid(
            room_field,
            format!("stream key {room_id} names no filed livestream room"),
        )
    })?;
    // The gateway's connection and stream name one broadcast: a retried hook for it must not
    // open a second session.
    let idempotency_key = stream
        .as_ref()
        .map(|s| format!("{}:{}:{}/{}", s.protocol, s.client_id, s.app, s.name));
    let labels = claims.labels()?;
    Ok(AuthorizeCommand {
        phase: Phase::Start,
        merchant_id: Some(merchant),
        room_id: Some(room_id),
        anchor_id: Some(anchor),
        driver_id: Some(driver),
        livestream_type: Some(livestream_type),
        drive_mode: Some(drive_mode),
        ai_features: claims.ai_features,
        session_id: None,
        gateway_id,
        explain: false,
        stream,
        idempotency_key,
        labels,
    })
}

/// The record origin of a hook request: the gateway is the caller (hooks carry no token), and
/// the request is the hook's form fields.
pub fn hook_origin(entry_point: &'static str, gateway: &str, form: &[u8]) -> Origin {
    let mut fields = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(form) {
        match fields.get_mut(key.as_ref()) {
            // A repeated field is kept in full: it is what an attacker would try.
            Some(serde_json::Value::Array(values)) => values.push(json!(value)),
            Some(first) => *first = json!([first.take(), value]),
            None => {
                fields.insert(key.into_owned(), json!(value));
            }
        }
    }
    Origin {
        request_id: None,
        entry_point,
        gateway_id: gateway.to_owned(),
        caller: format!("gateway {gateway} (hook)"),
        request: serde_json::Value::Object(fields),
    }
}

/// The record origin of a hook that posts JSON (SRS, MediaMTX, OvenMediaEngine): the body as
/// sent, or as text if it is not JSON.
pub fn json_hook_origin(protocol: &'static str, gateway: &str, body: &[u8]) -> Origin {
    let mut origin = hook_origin(protocol, gateway, &[]);
    origin.request = serde_json::from_slice(body)
        .unwrap_or_else(|_| json!({ "body": String::from_utf8_lossy(body) }));
    origin
}

/// Decides a gateway's request and records it. A request that cannot be mapped to a decision is
/// a recorded deny too (rule `GATEWAY`). The decision runs to its end even if the gateway hangs
/// up meanwhile.
pub async fn decide(
    pdp: &Arc<Pdp>,
    origin: Origin,
    phase: Phase,
    command: Result<AuthorizeCommand, PdpError>,
) -> Result<AuthorizeOutcome, PdpError> {
    match command {
        Ok(command) => {
            let pdp = pdp.clone();
            to_completion(async move { pdp.authorize(&origin, command).await }).await
        }
        Err(error) => pdp.refuse(&origin, phase, gateway_violation(&error)).await,
    }
}

/// Ends the session a gateway reports stopped, with its record.
pub async fn end_session(
    pdp: &Arc<Pdp>,
    origin: Origin,
    session_id: String,
    reason: &'static str,
) -> Result<crate::domain::Session, PdpError> {
    let pdp = pdp.clone();
    to_completion(async move { pdp.end_session(&origin, &session_id, reason).await }).await
}

/// The pseudo rule id of a gateway request the PDP could not map to a decision.
pub const GATEWAY_RULE_ID: &str = "GATEWAY";

pub fn gateway_violation(error: &PdpError) -> Violation {
    Violation {
        rule_id: GATEWAY_RULE_ID.into(),
        message_en: format!("The gateway's request cannot be decided, so it is denied: {error}"),
        message_zh: format!("网关请求无法判定,因此拒绝:{error}"),
        penalty: Penalty::None,
    }
}

/// The JSON body every gateway deny (and allow) carries, for logs and people.
pub fn decision_json(outcome: &AuthorizeOutcome) -> serde_json::Value {
    let decision = &outcome.decision;
    json!({
        "decision": if decision.allowed { "ALLOW" } else { "DENY" },
        "session_id": outcome.session_id,
        "decision_id": outcome.decision_id,
        "policy_version": decision.policy_version,
        "frozen_until_ms": outcome.frozen_until,
        "violations": decision.violations.iter().map(violation_json).collect::<Vec<_>>(),
    })
}

pub fn violation_json(v: &Violation) -> serde_json::Value {
    json!({
        "rule_id": v.rule_id,
        "message_en": v.message_en,
        "message_zh": v.message_zh,
        "penalty": v.penalty.name(),
    })
}

pub fn refusal_json(error: &PdpError) -> serde_json::Value {
    json!({
        "decision": "DENY",
        "violations": [violation_json(&gateway_violation(error))],
    })
}

/// A hook's answer: 200 to allow, 403 with the reasons to deny.
pub fn hook_response(outcome: &AuthorizeOutcome) -> Response {
    let status = if outcome.decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    (status, axum::Json(decision_json(outcome))).into_response()
}

pub fn hook_refusal(error: &PdpError) -> Response {
    (StatusCode::FORBIDDEN, axum::Json(refusal_json(error))).into_response()
}

/// The HTTP hook listener's routes, each behind its gateway's secret.
/// What the ingest servers that post JSON (MediaMTX, OvenMediaEngine) need besides the PDP.
#[derive(Default)]
pub struct GatewayOptions {
    /// Admit viewers (MediaMTX `read`/`playback`, OME `outgoing`); `--deny-playback` refuses.
    pub allow_playback: bool,
    pub ome_secrets: ome::OmeSecrets,
    /// OME's `lifetime` for an admitted publish (`--ome-lifetime-secs`): OME ends the
    /// connection then, and the publisher's reconnect is decided afresh. None: no limit.
    pub ome_lifetime: Option<std::time::Duration>,
}

pub fn hooks_router(
    pdp: Arc<Pdp>,
    secrets: Arc<secrets::HookSecrets>,
    options: Arc<GatewayOptions>,
) -> Router {
    Router::new()
        .merge(nginx::routes())
        .merge(srs::routes())
        .merge(mediamtx::routes())
        .merge(ome::routes())
        .layer(axum::Extension(options))
        .with_state(pdp)
        .layer(axum::middleware::from_fn_with_state(
            secrets,
            secrets::require_secret,
        ))
}

/// A hook request refused before it reached a decision: the wrong content type, or fields
/// where they do not belong. Logged when answered; the gateway denies on any non-2xx.
#[derive(Debug)]
pub struct MalformedHook {
    status: StatusCode,
    reason: String,
}

impl MalformedHook {
    pub fn new(status: StatusCode, reason: String) -> Self {
        MalformedHook { status, reason }
    }
}

impl IntoResponse for MalformedHook {
    fn into_response(self) -> Response {
        tracing::warn!(status = self.status.as_u16(), reason = %self.reason, "hook refused");
        let body =
            json!({ "code": self.status.as_u16(), "decision": "DENY", "error": self.reason });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Checks a POSTed hook's content type and that its query carries nothing but the secret (the
/// body holds the fields; a query must not add to or override them).
pub fn check_post(
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    content_type: &str,
) -> Result<(), MalformedHook> {
    let given = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(content_type) {
        return Err(MalformedHook::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {given:?}; this hook takes {content_type}"),
        ));
    }
    if !secrets::without_secret(query).is_empty() {
        return Err(MalformedHook::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the query of a POSTed hook may carry only {}; the fields belong in the body",
                secrets::SECRET_PARAM
            ),
        ));
    }
    Ok(())
}
