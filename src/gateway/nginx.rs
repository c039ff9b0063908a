//! nginx-rtmp's `on_publish`, `on_update` and `on_publish_done` hooks.
//!
//! nginx sends `application/x-www-form-urlencoded` fields (body for POST, query for GET): its
//! own session fields, then the event's, then the publisher's URL arguments appended raw. So
//! the first occurrence of each of nginx's own fields is nginx's; a later one is the
//! publisher's attempt to pass for nginx and is ignored. Every other argument must be a claim
//! (`anchor`, `driver`, `livestream_type`, `drive_mode`, `ai_features`, and the label
//! observations `label_shown`, `label_kind`, `implicit_label`, `implicit_label_provider`);
//! anything else denies. `on_update` repeats the publish URL, so it re-checks on the labels
//! the publish reported; a label that disappears mid-stream is reported by whatever watches
//! the picture, with a LIVE Authorize.
//!
//! Configure, per nginx instance (GATEWAY names it):
//!   on_publish      http://PDP_HTTP/rtmp/GATEWAY/on_publish;
//!   on_update       http://PDP_HTTP/rtmp/GATEWAY/on_update;
//!   on_publish_done http://PDP_HTTP/rtmp/GATEWAY/on_publish_done;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{Claims, hook_refusal, hook_response};
use crate::api::convert;
use crate::domain::StreamRef;
use crate::error::PdpError;
use crate::policy::Phase;
use crate::service::{AuthorizeCommand, AuthorizeOutcome, Pdp};

/// The fields nginx-rtmp 1.2 itself sends.
const NGINX_FIELDS: [&str; 12] = [
    "app",
    "flashver",
    "swfurl",
    "tcurl",
    "pageurl",
    "addr",
    "clientid",
    "call",
    "name",
    "type",
    "time",
    "timestamp",
];

pub const PROTOCOL: &str = "nginx-rtmp";

pub fn routes() -> Router<Arc<Pdp>> {
    Router::new()
        // nginx-rtmp POSTs a form (notify_method post, the default) or GETs with the form
        // in the query (notify_method get).
        .route(
            "/rtmp/{gateway}/on_publish",
            post(on_publish).get(on_publish),
        )
        .route("/rtmp/{gateway}/on_update", post(on_update).get(on_update))
        .route(
            "/rtmp/{gateway}/on_publish_done",
            post(on_publish_done).get(on_publish_done),
        )
}

/// A hook request, split into nginx's own fields and the publisher's claims.
#[derive(Debug, PartialEq, Eq)]
pub struct HookRequest {
    pub fields: HashMap<String, String>,
    pub claims: Claims,
}

impl HookRequest {
    /// Parses a form-encoded hook request (the POST body, or the GET query).
    pub fn parse(form: &[u8]) -> Result<HookRequest, PdpError> {
        let mut fields = HashMap::new();
        let mut claims = Claims::default();
        for (key, value) in form_urlencoded::parse(form) {
            if NGINX_FIELDS.contains(&key.as_ref()) {
                // First wins: nginx writes its own fields before the publisher's arguments.
                fields
                    .entry(key.into_owned())
                    .or_insert_with(|| value.into_owned());
            } else {
                claims.set(&key, &value)?;
            }
        }
        Ok(HookRequest { fields, claims })
    }

    pub fn field(&self, name: &str) -> Result<&str, PdpError> {
        self.fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| PdpError::invalid(name, "missing from the hook request"))
    }

    /// Checks the hook is the event its URL says, and returns the stream it is about.
    pub fn stream(&self, expected_call: &str) -> Result<StreamRef, PdpError> {
        let call = self.field("call")?;
        if call != expected_call {
            return Err(PdpError::invalid(
                "call",
                format!("{call:?} sent to the {expected_call} hook"),
            ));
        }
        Ok(StreamRef {
            protocol: PROTOCOL.into(),
            app: convert::id("app", self.field("app")?)?,
            name: convert::id("name", self.field("name")?)?,
            client_id: convert::id("clientid", self.field("clientid")?)?,
        })
    }
}

/// The hook's form: the POST body, or the query of a GET (the secret taken out).
fn form(
    method: &Method,
    headers: &HeaderMap,
    query: &Option<String>,
    body: &Bytes,
) -> Result<Vec<u8>, super::MalformedHook> {
    if method == Method::POST {
        super::check_post(
            headers,
            query.as_deref(),
            "application/x-www-form-urlencoded",
        )?;
        Ok(body.to_vec())
    } else if body.is_empty() {
        Ok(super::secrets::without_secret(query.as_deref()).into_bytes())
    } else {
        Err(super::MalformedHook::new(
            StatusCode::BAD_REQUEST,
            "a GET hook carries its fields in the query, not a body".into(),
        ))
    }
}

async fn on_publish(
    State(pdp): State<Arc<Pdp>>,
    Path(gateway): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let form = match form(&method, &headers, &query, &body) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let form = form.as_slice();
    let command = (|| {
        let gateway = convert::id("gateway", &gateway)?;
        let request = HookRequest::parse(form)?;
        let stream = request.stream("publish")?;
        let room = stream.name.clone();
        super::start_command(&pdp, gateway, room, Some(stream), request.claims, "name")
    })();
    let origin = super::hook_origin(PROTOCOL, &gateway, form);
    answer(
        super::decide(&pdp, origin, Phase::Start, command).await,
        "on_publish",
    )
}

async fn on_update(
    State(pdp): State<Arc<Pdp>>,
    Path(gateway): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let form = match form(&method, &headers, &query, &body) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let form = form.as_slice();
    let command = (|| {
        let gateway = convert::id("gateway", &gateway)?;
        let request = HookRequest::parse(form)?;
        let stream = request.stream("update_publish")?;
        let session = pdp.session_for_stream(&stream, &gateway)?.ok_or_else(|| {
            PdpError::NotFound(format!(
                "no session for {}/{} (client {}) on {gateway}",
                stream.app, stream.name, stream.client_id
            ))
        })?;
        Ok::<_, PdpError>(AuthorizeCommand::live(session.id, gateway))
    })();
    let origin = super::hook_origin(PROTOCOL, &gateway, form);
    answer(
        super::decide(&pdp, origin, Phase::Live, command).await,
        "on_update",
    )
}

fn answer(decided: Result<AuthorizeOutcome, PdpError>, hook: &str) -> Response {
    match decided {
        Ok(outcome) => {
            if !outcome.decision.allowed {
                tracing::warn!(
                    hook,
                    session_id = outcome.session_id.as_deref().unwrap_or(""),
                    rules = %outcome.decision.rule_ids().join(","),
                    "nginx-rtmp hook denied"
                );
            }
            hook_response(&outcome)
        }
        Err(error) => {
            tracing::warn!(hook, %error, "nginx-rtmp hook denied");
            hook_refusal(&error)
        }
    }
}

async fn on_publish_done(
    State(pdp): State<Arc<Pdp>>,
    Path(gateway): Path<String>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let form = match form(&method, &headers, &query, &body) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let form = form.as_slice();
    let ended = async {
        let gateway_id = convert::id("gateway", &gateway)?;
        let request = HookRequest::parse(form)?;
        let stream = request.stream("publish_done")?;
        match pdp.session_for_stream(&stream, &gateway_id)? {
            Some(session) => {
                let origin = super::hook_origin(PROTOCOL, &gateway, form);
                super::end_session(&pdp, origin, session.id, "nginx-rtmp publish_done")
                    .await
                    .map(Some)
            }
            None => Ok(None),
        }
    }
    .await;
    match ended {
        Ok(_) => StatusCode::OK.into_response(),
        Err(error) => {
            tracing::warn!(%error, "nginx-rtmp on_publish_done not applied");
            hook_refusal(&error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED: &str = "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19350/live&pageurl=&addr=127.0.0.1&clientid=1&call=publish&name=r1&type=live";

    #[test]
    fn publisher_arguments_cannot_pass_for_nginx_fields() {
        let form = format!(
            "{CAPTURED}&anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON&name=evil&addr=6.6.6.6&call=play&clientid=99"
        );
        let request = HookRequest::parse(form.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let stream = request.stream("publish").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stream.name, "r1");
        assert_eq!(stream.client_id, "1");
        assert_eq!(request.field("addr").ok(), Some("127.0.0.1"));
        assert_eq!(request.claims.anchor.as_deref(), Some("a1"));
    }

    #[test]
    fn unknown_or_repeated_arguments_are_refused() {
        for extra in [
            "merchant=m2",
            "anchor=a1&anchor=a2",
            "drive_mode=robot",
            "anchor=a%2F1",
        ] {
            let form = format!("{CAPTURED}&{extra}");
            assert!(HookRequest::parse(form.as_bytes()).is_err(), "{extra}");
        }
    }
}
