//! SRS `http_hooks`: `on_publish` and `on_unpublish`. SRS posts JSON (`action`, `client_id`,
//! `ip`, `vhost`, `app`, `tcUrl`, `stream`, `param`, and since v5 `server_id`, `stream_url`,
//! `stream_id`) and admits a publish only on HTTP 200 with `0` or `{"code":0}`. Any other answer
//! rejects; ours is 403 with `{"code":403, ...}` and the reasons. SRS has no periodic hook: a
//! live stream is cut through SRS's own API, driven by `WatchEnforcements`.
//!
//! Configure, per SRS instance (GATEWAY names it):
//!   http_hooks { enabled on; on_publish http://PDP_HTTP/srs/GATEWAY/on_publish;
//!                on_unpublish http://PDP_HTTP/srs/GATEWAY/on_unpublish; }

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::{Claims, decision_json, refusal_json};
use crate::api::convert;
use crate::domain::StreamRef;
use crate::error::PdpError;
use crate::policy::Phase;
use crate::service::{Origin, Pdp};

pub const PROTOCOL: &str = "srs";

pub fn routes() -> Router<Arc<Pdp>> {
    Router::new()
        .route("/srs/{gateway}/on_publish", post(on_publish))
        .route("/srs/{gateway}/on_unpublish", post(on_unpublish))
}

/// The fields of an SRS hook the PDP uses; SRS sends more, which are ignored.
#[derive(Debug, Deserialize)]
pub struct HookRequest {
    pub action: String,
    /// A string since SRS 4, a number before.
    pub client_id: serde_json::Value,
    #[serde(default)]
    pub vhost: String,
    pub app: String,
    pub stream: String,
    #[serde(default)]
    pub param: String,
}

impl HookRequest {
    pub fn parse(body: &[u8]) -> Result<HookRequest, PdpError> {
        serde_json::from_slice(body).map_err(|e| PdpError::invalid("body", e.to_string()))
    }

    pub fn stream(&self, expected_action: &str) -> Result<StreamRef, PdpError> {
        if self.action != expected_action {
            return Err(PdpError::invalid(
                "action",
                format!("{:?} sent to the {expected_action} hook", self.action),
            ));
        }
        let client_id = match &self.client_id {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(PdpError::invalid(
                    "client_id",
                    "must be a string or a number",
                ));
            }
        };
        let vhost = if self.vhost.is_empty() {
            "__defaultVhost__"
        } else {
            &self.vhost
        };
        Ok(StreamRef {
            protocol: PROTOCOL.into(),
            app: format!(
                "{}/{}",
                convert::id("vhost", vhost)?,
                convert::id("app", &self.app)?
            ),
            name: convert::id("stream", &self.stream)?,
            client_id: convert::id("client_id", &client_id)?,
        })
    }

    /// The publisher's claims, from `param` (`?anchor=a1&driver=d1&...`).
    pub fn claims(&self) -> Result<Claims, PdpError> {
        let mut claims = Claims::default();
        let query = self.param.strip_prefix('?').unwrap_or(&self.param);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            claims.set(&key, &value)?;
        }
        Ok(claims)
    }
}

fn refuse(error: &PdpError) -> Response {
    let mut body = refusal_json(error);
    body["code"] = json!(403);
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

async fn on_publish(
    State(pdp): State<Arc<Pdp>>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Err(refused) = super::check_post(&headers, query.as_deref(), "application/json") {
        return refused.into_response();
    }
    let command = (|| {
        let gateway = convert::id("gateway", &gateway)?;
        let request = HookRequest::parse(&body)?;
        let stream = request.stream("on_publish")?;
        let room = stream.name.clone();
        super::start_command(
            &pdp,
            gateway,
            room,
            Some(stream),
            request.claims()?,
            "stream",
        )
    })();
    let origin = origin(&gateway, &body);
    match super::decide(&pdp, origin, Phase::Start, command).await {
        Ok(outcome) if outcome.decision.allowed => {
            let mut body = decision_json(&outcome);
            body["code"] = json!(0);
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Ok(outcome) => {
            tracing::warn!(rules = %outcome.decision.rule_ids().join(","), "SRS on_publish denied");
            let mut body = decision_json(&outcome);
            body["code"] = json!(403);
            (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
        }
        Err(error) => refuse(&error),
    }
}

fn origin(gateway: &str, body: &[u8]) -> Origin {
    super::json_hook_origin(PROTOCOL, gateway, body)
}

async fn on_unpublish(
    State(pdp): State<Arc<Pdp>>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Err(refused) = super::check_post(&headers, query.as_deref(), "application/json") {
        return refused.into_response();
    }
    let ended = async {
        let gateway_id = convert::id("gateway", &gateway)?;
        let request = HookRequest::parse(&body)?;
        let stream = request.stream("on_unpublish")?;
        match pdp.session_for_stream(&stream, &gateway_id)? {
            Some(session) => super::end_session(
                &pdp,
                origin(&gateway, &body),
                session.id,
                "SRS on_unpublish",
            )
            .await
            .map(Some),
            None => Ok(None),
        }
    }
    .await;
    match ended {
        Ok(_) => (StatusCode::OK, axum::Json(json!({"code": 0}))).into_response(),
        Err(error) => refuse(&error),
    }
}
