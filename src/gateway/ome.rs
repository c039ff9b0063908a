//! OvenMediaEngine's AdmissionWebhooks: when a stream opens or closes, OME POSTs
//! `{"client":{"address","port","real_ip"?,"user_agent"?},"request":{"direction","protocol",
//! "status","url","new_url"?,"time"}}` with `X-OME-Signature`, the base64url (unpadded)
//! HMAC-SHA1 of the body under the shared secret (checked in constant time), and expects
//! `{"allowed": bool, "new_url"?, "lifetime"?, "reason"?}`.
//!
//! - `incoming` + `opening` is a publish: the URL's last two segments are the app and the
//!   stream (the room), its query the publisher's claims (for SRT, the URL inside `streamid`).
//!   With no live session for that client and stream it is a START; with one, a LIVE re-check.
//!   With `--ome-lifetime-secs`, an admission carries that `lifetime`: OME ends the connection
//!   then and the publisher's reconnect is decided afresh. Otherwise a live stream is cut
//!   through OME's API, driven by `WatchEnforcements`.
//! - With `--ome-secret` for no gateway, admissions are taken unsigned (like the hooks without
//!   `--hook-secret`: on loopback only).
//! - `outgoing` (playback) is admitted unless `--deny-playback`.
//! - `closing` ends the client's session on that stream and is answered `{}`.
//!
//! Configure, per OME instance (GATEWAY names it; the secret by `--ome-secret GATEWAY=SECRET`):
//!   <AdmissionWebhooks>
//!     <ControlServerUrl>http://PDP_HTTP/ome/GATEWAY/admission?pdp_secret=SECRET</ControlServerUrl>
//!     <SecretKey>OME_SECRET</SecretKey>
//!     <Timeout>3000</Timeout>
//!     <Enables><Providers>rtmp,webrtc,srt</Providers><Publishers>webrtc,llhls</Publishers></Enables>
//!   </AdmissionWebhooks>

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;

use super::{Claims, GatewayOptions, decision_json};
use crate::api::convert;
use crate::domain::StreamRef;
use crate::error::PdpError;
use crate::policy::Phase;
use crate::service::{AuthorizeCommand, Origin, Pdp};

pub const PROTOCOL: &str = "ome";
pub const SIGNATURE_HEADER: &str = "x-ome-signature";

pub fn routes() -> Router<Arc<Pdp>> {
    Router::new().route("/ome/{gateway}/admission", post(admission))
}

/// Each OME gateway's shared secret (HMAC needs the secret itself, not a hash of it).
#[derive(Default)]
pub struct OmeSecrets {
    /// Replaced whole by a SIGHUP after the config file's secrets changed (`replace`).
    by_gateway: std::sync::RwLock<HashMap<String, Vec<u8>>>,
}

impl OmeSecrets {
    /// From `GATEWAY=SECRET` entries.
    pub fn from_specs(specs: &[String]) -> Result<OmeSecrets, String> {
        let mut by_gateway = HashMap::new();
        for spec in specs {
            let (gateway, secret) = spec
                .split_once('=')
                .ok_or_else(|| "--ome-secret: expected GATEWAY=SECRET".to_owned())?;
            convert::id("--ome-secret GATEWAY", gateway).map_err(|e| e.to_string())?;
            if secret.len() < 16 {
                return Err(format!(
                    "--ome-secret {gateway}: the secret must be at least 16 bytes"
                ));
            }
            if by_gateway
                .insert(gateway.to_owned(), secret.as_bytes().to_vec())
                .is_some()
            {
                return Err(format!("--ome-secret {gateway} is given twice"));
            }
        }
        Ok(OmeSecrets {
            by_gateway: std::sync::RwLock::new(by_gateway),
        })
    }

    /// Replaces the secrets with `specs`; returns how many there are now. Refused, the old
    /// ones kept, if invalid or if it would leave admissions unsigned while they are not.
    pub fn replace(&self, specs: &[String]) -> Result<usize, String> {
        let new = OmeSecrets::from_specs(specs)?
            .by_gateway
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let mut by_gateway = self.by_gateway.write().unwrap_or_else(|e| e.into_inner());
        if new.is_empty() && !by_gateway.is_empty() {
            return Err(
                "no OME secret would be left, so admissions would go unsigned: refused \
                        (restart to run without them)"
                    .into(),
            );
        }
        let count = new.len();
        *by_gateway = new;
        Ok(count)
    }

    /// Whether `body` is signed by `gateway`'s secret. With no OME secret configured at all,
    /// every body is taken as is (like the hooks without secrets: loopback only); with some,
    /// a gateway without one is refused.
    pub fn verify(
        &self,
        gateway: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<(), String> {
        let by_gateway = self.by_gateway.read().unwrap_or_else(|e| e.into_inner());
        if by_gateway.is_empty() {
            return Ok(());
        }
        let secret = by_gateway
            .get(gateway)
            .ok_or_else(|| format!("gateway {gateway:?} has no OME secret configured"))?;
        let signature = signature.ok_or("no X-OME-Signature")?;
        let given = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature.trim_end_matches('='))
            .map_err(|_| "X-OME-Signature is not base64url")?;
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(secret).map_err(|e| format!("HMAC key: {e}"))?;
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&given)
            .map_err(|_| "X-OME-Signature does not match the body".to_owned())
    }
}

/// The base64url HMAC-SHA1 of `body` under `secret`, as OME signs (tests, examples).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes a key of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

#[derive(Debug, Deserialize)]
pub struct Client {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Deserialize)]
pub struct RequestInfo {
    pub direction: String,
    #[serde(default)]
    pub protocol: String,
    pub status: String,
    pub url: String,
}

/// The app, the stream and the query of an OME URL (`scheme://host[:port]/app/stream[/file]`);
/// for SRT, of the URL inside its `streamid` (`nested` levels at most).
fn url_parts(url: &str, nested: u8) -> Result<(String, String, String), PdpError> {
    let bad = |why: &str| PdpError::invalid("request.url", format!("{url:?} {why}"));
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| bad("is not a URL"))?;
    let (authority_and_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = authority_and_path
        .find('/')
        .map_or("", |i| &authority_and_path[i..]);
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    match (segments.next(), segments.next()) {
        (Some(app), Some(stream)) => Ok((app.to_owned(), stream.to_owned(), query.to_owned())),
        _ => {
            let inner = form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == "streamid")
                .map(|(_, inner)| inner.into_owned());
            match inner {
                Some(inner) if nested > 0 => url_parts(&inner, nested - 1),
                _ => Err(bad("names no app/stream")),
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Admission {
    pub client: Client,
    pub request: RequestInfo,
}

impl Admission {
    pub fn parse(body: &[u8]) -> Result<Admission, PdpError> {
        serde_json::from_slice(body).map_err(|e| PdpError::invalid("body", e.to_string()))
    }

    fn url_parts(&self) -> Result<(String, String, String), PdpError> {
        url_parts(&self.request.url, 1)
    }

    /// The broadcast: app and stream (the room) from the URL, the client's address and port.
    pub fn stream(&self) -> Result<StreamRef, PdpError> {
        let (app, stream, _) = self.url_parts()?;
        Ok(StreamRef {
            protocol: PROTOCOL.into(),
            app: convert::id("app", &app)?,
            name: convert::id("stream", &stream)?,
            client_id: convert::id(
                "client",
                &format!("{}:{}", self.client.address, self.client.port),
            )?,
        })
    }

    /// The publisher's claims from the URL's query (OME's own `direction`, `transport` and
    /// `streamid` arguments are not claims).
    pub fn claims(&self) -> Result<Claims, PdpError> {
        let (_, _, query) = self.url_parts()?;
        let mut claims = Claims::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if !matches!(key.as_ref(), "direction" | "transport" | "streamid") {
                claims.set(&key, &value)?;
            }
        }
        Ok(claims)
    }
}

/// `{"allowed": false, "reason": ...}`: OME refuses the stream and logs the reason.
fn refused(reason: String) -> Response {
    refused_with(reason, None)
}

fn refused_with(reason: String, decision: Option<serde_json::Value>) -> Response {
    tracing::warn!(%reason, "OME admission refused");
    let mut body = json!({ "allowed": false, "reason": reason });
    if let Some(decision) = decision {
        body["decision"] = decision;
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn admission(
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
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(why) = options.ome_secrets.verify(&gateway, &body, signature) {
        tracing::warn!(%gateway, %why, "OME admission refused");
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "allowed": false, "reason": why })),
        )
            .into_response();
    }
    let admission = match Admission::parse(&body) {
        Ok(admission) => admission,
        Err(error) => return refused(error.to_string()),
    };
    let origin = origin(&gateway, &body);
    match (
        admission.request.direction.as_str(),
        admission.request.status.as_str(),
    ) {
        ("outgoing", "opening") if options.allow_playback => {
            (StatusCode::OK, axum::Json(json!({ "allowed": true }))).into_response()
        }
        ("outgoing", "opening") => refused("playback is refused here (--deny-playback)".into()),
        (_, "closing") => {
            close(&pdp, &gateway, &admission, origin).await;
            (StatusCode::OK, axum::Json(json!({}))).into_response()
        }
        ("incoming", "opening") => open(&pdp, &options, &gateway, &admission, origin).await,
        (direction, status) => refused(format!(
            "unknown direction {direction:?} or status {status:?}"
        )),
    }
}

/// A publish: START, or LIVE if this client's broadcast of that stream is live already.
async fn open(
    pdp: &Arc<Pdp>,
    options: &GatewayOptions,
    gateway: &str,
    admission: &Admission,
    origin: Origin,
) -> Response {
    let planned = (|| {
        let gateway = convert::id("gateway", gateway)?;
        let stream = admission.stream()?;
        match pdp.session_for_stream(&stream, &gateway)? {
            Some(live) if live.state == crate::domain::SessionState::Active => {
                Ok((Phase::Live, AuthorizeCommand::live(live.id, gateway)))
            }
            _ => {
                let room = stream.name.clone();
                let command = super::start_command(
                    pdp,
                    gateway,
                    room,
                    Some(stream),
                    admission.claims()?,
                    "request.url",
                )?;
                Ok((Phase::Start, command))
            }
        }
    })();
    let (phase, command) = match planned {
        Ok((phase, command)) => (phase, Ok(command)),
        Err(error) => (Phase::Start, Err(error)),
    };
    match super::decide(pdp, origin, phase, command).await {
        Ok(outcome) if outcome.decision.allowed => {
            let mut body = json!({ "allowed": true, "reason": "ALLOW" });
            if let Some(lifetime) = options.ome_lifetime {
                body["lifetime"] = json!(lifetime.as_millis() as u64);
            }
            body["decision"] = decision_json(&outcome);
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Ok(outcome) => {
            let reasons: Vec<String> = outcome
                .decision
                .violations
                .iter()
                .map(|v| format!("{}: {}", v.rule_id, v.message_en))
                .collect();
            refused_with(reasons.join("; "), Some(decision_json(&outcome)))
        }
        Err(error) => refused(error.to_string()),
    }
}

/// A stream closing: the client's session on it ends (nothing if there is none).
async fn close(pdp: &Arc<Pdp>, gateway: &str, admission: &Admission, origin: Origin) {
    let ended = async {
        let gateway = convert::id("gateway", gateway)?;
        let stream = admission.stream()?;
        match pdp.session_for_stream(&stream, &gateway)? {
            Some(session) if session.state == crate::domain::SessionState::Active => {
                super::end_session(pdp, origin, session.id, "OME closing")
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        }
    }
    .await;
    if let Err(error) = ended {
        tracing::warn!(%error, "OME closing: no session ended");
    }
}

fn origin(gateway: &str, body: &[u8]) -> Origin {
    super::json_hook_origin(PROTOCOL, gateway, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of OME's documentation (AdmissionWebhooks, "Request").
    const DOCUMENTED: &str = r#"{
      "client": {"address": "211.233.58.86", "port": 29291, "real_ip": "192.168.0.1", "user_agent": "Mozilla/5.0"},
      "request": {"direction": "incoming", "protocol": "webrtc", "status": "opening",
                  "url": "scheme://host[:port]/app/stream/file?query=value&query2=value2",
                  "new_url": "scheme://host[:port]/app/stream/file?query=value&query2=value2",
                  "time": "2021-05-12T13:45:00.000Z"}
    }"#;

    #[test]
    fn the_documented_request_parses_and_names_its_stream() {
        let admission = Admission::parse(DOCUMENTED.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(admission.request.status, "opening");
        assert_eq!(admission.client.port, 29291);
        let stream = admission.stream().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                stream.app.as_str(),
                stream.name.as_str(),
                stream.client_id.as_str()
            ),
            ("app", "stream", "211.233.58.86:29291")
        );
        let publish = r#"{"client":{"address":"10.0.0.7","port":40000},
            "request":{"direction":"incoming","protocol":"rtmp","status":"opening",
            "url":"rtmp://ome:1935/app/r1?anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=REAL_PERSON",
            "time":"2021-05-12T13:45:00.000Z"}}"#;
        let admission = Admission::parse(publish.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let claims = admission.claims().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(claims.anchor.as_deref(), Some("a1"));
        let srt = r#"{"client":{"address":"10.0.0.7","port":40000},
            "request":{"direction":"incoming","protocol":"srt","status":"opening",
            "url":"srt://ome:9999?streamid=srt%3A%2F%2Fome%3A9999%2Fapp%2Fr2%3Fanchor%3Da2",
            "time":"2021-05-12T13:45:00.000Z"}}"#;
        let admission = Admission::parse(srt.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let stream = admission.stream().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((stream.app.as_str(), stream.name.as_str()), ("app", "r2"));
        assert_eq!(
            admission
                .claims()
                .unwrap_or_else(|e| panic!("{e}"))
                .anchor
                .as_deref(),
            Some("a2")
        );
    }

    #[test]
    fn signatures_are_hmac_sha1_base64url_and_checked() {
        // RFC 2202 test case 2 (effcdf6ae5eb2fa2d27416d5f184df9c259a7c79), base64url unpadded.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "7_zfauXrL6LSdBbV8YTfnCWafHk"
        );
        let secrets = OmeSecrets::from_specs(&["ome-1=a-shared-secret-of-16+".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        let body = br#"{"x":1}"#;
        let good = sign(b"a-shared-secret-of-16+", body);
        assert_eq!(secrets.verify("ome-1", body, Some(&good)), Ok(()));
        assert!(secrets.verify("ome-1", br#"{"x":2}"#, Some(&good)).is_err());
        assert!(secrets.verify("ome-1", body, None).is_err());
        assert!(secrets.verify("ome-2", body, Some(&good)).is_err());
        assert!(OmeSecrets::from_specs(&["ome-1=short".into()]).is_err());
        assert_eq!(OmeSecrets::default().verify("any", body, None), Ok(()));
    }
}
