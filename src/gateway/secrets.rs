//! Hook authentication. nginx-rtmp and SRS cannot send a bearer token, but they call whatever
//! URL they are configured with, so each gateway's hook URLs carry its secret in the query:
//! `.../rtmp/edge-1/on_publish?pdp_secret=SECRET`. The server knows each secret only by its
//! SHA-256 (`--hook-secret GATEWAY:sha256:HEX`, the form `anchor-pdp token hash` prints),
//! compares in constant time and never logs it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The query parameter that carries a hook's secret.
pub const SECRET_PARAM: &str = "pdp_secret";

/// Each gateway's hook secret, by SHA-256.
#[derive(Default)]
pub struct HookSecrets {
    /// Replaced whole by a SIGHUP after the config file's secrets changed (`replace`).
    by_gateway: std::sync::RwLock<HashMap<String, [u8; 32]>>,
}

impl HookSecrets {
    /// From `GATEWAY:sha256:HEX` entries.
    pub fn from_specs(specs: &[String]) -> Result<HookSecrets, String> {
        let mut by_gateway = HashMap::new();
        for spec in specs {
            let (gateway, hash) = spec.split_once(':').ok_or_else(|| {
                format!(
                    "--hook-secret {spec:?}: expected GATEWAY:sha256:HEX (never the secret itself)"
                )
            })?;
            crate::api::convert::id("--hook-secret GATEWAY", gateway).map_err(|e| e.to_string())?;
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(crate::api::auth::parse_digest)
                .ok_or_else(|| {
                    format!("--hook-secret {gateway}: the hash must be sha256:<64 hex digits>")
                })?;
            if by_gateway.insert(gateway.to_owned(), digest).is_some() {
                return Err(format!("--hook-secret {gateway} is given twice"));
            }
        }
        Ok(HookSecrets {
            by_gateway: std::sync::RwLock::new(by_gateway),
        })
    }

    fn by_gateway(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, [u8; 32]>> {
        self.by_gateway.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enabled(&self) -> bool {
        !self.by_gateway().is_empty()
    }

    /// Replaces the secrets with `specs`; returns how many there are now. Refused, the old
    /// ones kept, if invalid or if it would leave the hooks open while they are not.
    pub fn replace(&self, specs: &[String]) -> Result<usize, String> {
        let new = HookSecrets::from_specs(specs)?
            .by_gateway
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        if new.is_empty() && self.enabled() {
            return Err(
                "no hook secret would be left, so anyone could call the hooks: refused \
                        (restart to run without them)"
                    .into(),
            );
        }
        let count = new.len();
        *self.by_gateway.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(count)
    }

    /// Whether `secret` is `gateway`'s.
    fn admits(&self, gateway: &str, secret: Option<&str>) -> Result<(), (StatusCode, String)> {
        let by_gateway = self.by_gateway();
        let Some(expected) = by_gateway.get(gateway) else {
            return Err((
                StatusCode::FORBIDDEN,
                format!("gateway {gateway:?} has no hook secret configured"),
            ));
        };
        let Some(secret) = secret else {
            return Err((
                StatusCode::UNAUTHORIZED,
                format!("the hook URL carries no {SECRET_PARAM}"),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if crate::api::auth::same(expected, &digest) {
            Ok(())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                format!("wrong {SECRET_PARAM} for gateway {gateway:?}"),
            ))
        }
    }
}

/// The secret in a hook URL's query, if any.
pub fn secret_in(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == SECRET_PARAM)
        .map(|(_, value)| value.into_owned())
}

/// A query with the secret taken out (what may be parsed and recorded).
pub fn without_secret(query: Option<&str>) -> String {
    let mut kept = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != SECRET_PARAM {
            kept.append_pair(&key, &value);
        }
    }
    kept.finish()
}

/// Refuses a hook call without its gateway's secret (when secrets are configured).
pub async fn require_secret(
    State(secrets): State<Arc<HookSecrets>>,
    request: Request,
    next: Next,
) -> Response {
    if !secrets.enabled() {
        return next.run(request).await;
    }
    // /rtmp/GATEWAY/hook or /srs/GATEWAY/hook
    let gateway = request
        .uri()
        .path()
        .split('/')
        .nth(2)
        .unwrap_or("")
        .to_owned();
    let secret = secret_in(request.uri().query());
    match secrets.admits(&gateway, secret.as_deref()) {
        Ok(()) => next.run(request).await,
        Err((status, reason)) => {
            tracing::warn!(
                path = request.uri().path(),
                status = status.as_u16(),
                %reason,
                "hook refused"
            );
            let body = json!({
                "code": status.as_u16(),
                "decision": "DENY",
                "error": reason,
            });
            (status, axum::Json(body)).into_response()
        }
    }
}
