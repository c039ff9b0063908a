//! MediaMTX's external HTTP authentication (`authMethod: http`): before a client publishes or
//! reads, MediaMTX POSTs JSON (`user`, `password`, `token`, `ip`, `action`, `path`, `protocol`,
//! `id`, `query`) to `authHTTPAddress` and admits on any 2xx. A `publish` is a START: the path
//! is the room (the stream key), `query` carries the publisher's claims, `id` names the
//! connection. `read` and `playback` are viewers: admitted unless `--deny-playback`. Other
//! actions (`api`, `metrics`, `pprof`) are not for the PDP and are refused: exclude them with
//! `authHTTPExclude`. MediaMTX asks again only at the next connection, so the end of a
//! broadcast comes from its `runOnUnready` hook posting here (`/unready`); a cut while live
//! goes through MediaMTX's control API, driven by `WatchEnforcements`.
//!
//! Configure, per MediaMTX instance (GATEWAY names it):
//!   authMethod: http
//!   authHTTPAddress: http://PDP_HTTP/mediamtx/GATEWAY/auth?pdp_secret=SECRET
//!   authHTTPExclude: [{action: api}, {action: metrics}, {action: pprof}]
//!   pathDefaults:
//!     runOnUnready: curl -s -X POST -H 'Content-Type: application/json'
//!       -d '{"path":"'$MTX_PATH'","id":"'$MTX_SOURCE_ID'"}'
//!       http://PDP_HTTP/mediamtx/GATEWAY/unready?pdp_secret=SECRET
//! (`id` is recorded only: MediaMTX admits one publisher per path, so the path names it.)

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::{Claims, GatewayOptions, hook_refusal, hook_response};
use crate::api::convert;
use crate::domain::StreamRef;
use crate::error::PdpError;
use crate::policy::Phase;
use crate::service::{Origin, Pdp};

pub const PROTOCOL: &str = "mediamtx";

/// Query arguments that carry a client's credentials for MediaMTX (RTMP `user`/`pass`, a JWT):
/// not claims, and never recorded.
const CREDENTIAL_KEYS: [&str; 4] = ["user", "pass", "jwt", "token"];

pub fn routes() -> Router<Arc<Pdp>> {
    Router::new()
        .route("/mediamtx/{gateway}/auth", post(auth))
        .route("/mediamtx/{gateway}/unready", post(unready))
}

/// MediaMTX's authentication request (v1.x `authHTTPAddress`).
#[derive(Debug, Deserialize)]
pub struct AuthRequest {
    #[serde(default)]
    pub ip: String,
    pub action: String,
    pub path: String,
    #[serde(default)]
    pub protocol: String,
    /// The session or connection; absent for some actions.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub query: String,
}

impl AuthRequest {
    pub fn parse(body: &[u8]) -> Result<AuthRequest, PdpError> {
        serde_json::from_slice(body).map_err(|e| PdpError::invalid("body", e.to_string()))
    }

    /// The broadcast a publish names: the room is the path, the connection is `id`.
    pub fn stream(&self) -> Result<StreamRef, PdpError> {
        let id = self
            .id
            .as_deref()
            .ok_or_else(|| PdpError::invalid("id", "required for a publish"))?;
        Ok(StreamRef {
            protocol: PROTOCOL.into(),
            app: convert::id("protocol", &self.protocol)?,
            name: convert::id("path", &self.path)?,
            client_id: convert::id("id", id)?,
        })
    }

    /// The publisher's claims, from the publish URL's query (less the credentials clients put
    /// there for MediaMTX itself).
    pub fn claims(&self) -> Result<Claims, PdpError> {
        let mut claims = Claims::default();
        for (key, value) in form_urlencoded::parse(self.query.as_bytes()) {
            if !CREDENTIAL_KEYS.contains(&key.as_ref()) {
                claims.set(&key, &value)?;
            }
        }
        Ok(claims)
    }
}

/// The record of a MediaMTX request: as sent, without the credentials a client gave.
fn origin(gateway: &str, body: &[u8]) -> Origin {
    let mut origin = super::json_hook_origin(PROTOCOL, gateway, body);
    let request = &mut origin.request;
    for secret in ["password", "token"] {
        if let Some(value) = request.get_mut(secret).filter(|v| v.as_str() != Some("")) {
            *value = json!("<redacted>");
        }
    }
    if let Some(query) = request.get_mut("query")
        && let Some(text) = query.as_str()
    {
        let mut kept = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(text.as_bytes()) {
            let value = if CREDENTIAL_KEYS.contains(&key.as_ref()) {
                "<redacted>".into()
            } else {
                value
            };
            kept.append_pair(&key, &value);
        }
        *query = json!(kept.finish());
    }
    origin
}

async fn auth(
    State(pdp): State<Arc<Pdp>>,
    Extension(options): Extension<Arc<GatewayOptions>>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Err(refused) = super::check_post(&headers, query.as_deref(), "application/json") {
        return refused.into_response();
    }
    let request = match AuthRequest::parse(&body) {
        Ok(request) => request,
        Err(error) => return hook_refusal(&error),
    };
    match request.action.as_str() {
        "publish" => {}
        "read" | "playback" if options.allow_playback => {
            return (StatusCode::OK, axum::Json(json!({ "decision": "ALLOW" }))).into_response();
        }
        "read" | "playback" => {
            return hook_refusal(&PdpError::PermissionDenied(
                "playback is refused here (--deny-playback)".into(),
            ));
        }
        other => {
            return hook_refusal(&PdpError::invalid(
                "action",
                format!("{other:?} is not for the PDP: exclude it with authHTTPExclude"),
            ));
        }
    }
    let command = (|| {
        let gateway = convert::id("gateway", &gateway)?;
        let stream = request.stream()?;
        let room = stream.name.clone();
        super::start_command(&pdp, gateway, room, Some(stream), request.claims()?, "path")
    })();
    let origin = origin(&gateway, &body);
    match super::decide(&pdp, origin, Phase::Start, command).await {
        Ok(outcome) => {
            if !outcome.decision.allowed {
                tracing::warn!(rules = %outcome.decision.rule_ids().join(","), "MediaMTX publish denied");
            }
            hook_response(&outcome)
        }
        Err(error) => hook_refusal(&error),
    }
}

/// What `runOnUnready` posts: the path, and the source (the publisher's session), kept in the
/// record.
#[derive(Debug, Deserialize)]
pub struct UnreadyRequest {
    pub path: String,
}

/// The end of a broadcast: the path's live session on this gateway is ended (MediaMTX admits
/// one publisher per path, so the path names it).
async fn unready(
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
        let request: UnreadyRequest =
            serde_json::from_slice(&body).map_err(|e| PdpError::invalid("body", e.to_string()))?;
        let room = convert::id("path", &request.path)?;
        let live = pdp
            .live_sessions()?
            .into_iter()
            .find(|s| s.gateway_id == gateway_id && s.room_id == room);
        match live {
            Some(session) => super::end_session(
                &pdp,
                origin(&gateway, &body),
                session.id,
                "MediaMTX runOnUnready",
            )
            .await
            .map(Some),
            None => Ok(None),
        }
    }
    .await;
    match ended {
        Ok(session) => (
            StatusCode::OK,
            axum::Json(json!({ "ended": session.map(|s| s.id) })),
        )
            .into_response(),
        Err(error) => hook_refusal(&error),
    }
}
