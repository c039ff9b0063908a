//! Cuts a stream on nginx-rtmp the moment the PDP shuts its session down, instead of at the
//! next `on_update`: for each enforcement event of a session an nginx gateway carries, call
//! that gateway's `rtmp_control` endpoint, `GET {url}/drop/publisher?app=..&name=..&clientid=..`.
//! (nginx's control endpoint sees only the answering worker's sessions: run nginx-rtmp with
//! `worker_processes 1`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::domain::EnforcementEvent;
use crate::service::Pdp;

const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// An `http://host:port/path` control endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlUrl {
    pub authority: String,
    pub path: String,
}

impl ControlUrl {
    pub fn parse(url: &str) -> Result<ControlUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// control URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!("{url}: give host:port"));
        }
        Ok(ControlUrl {
            authority: authority.to_owned(),
            path: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// `GATEWAY=http://host:port/control` pairs, from `--nginx-control`.
pub fn parse_controls(specs: &[String]) -> Result<HashMap<String, ControlUrl>, String> {
    let mut controls = HashMap::new();
    for spec in specs {
        let (gateway, url) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec}: expected GATEWAY=http://host:port/path"))?;
        controls.insert(gateway.to_owned(), ControlUrl::parse(url)?);
    }
    Ok(controls)
}

/// Asks nginx to drop the publisher; returns how many sessions it dropped.
pub async fn drop_publisher(
    control: &ControlUrl,
    app: &str,
    name: &str,
    client_id: &str,
) -> Result<u32, String> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("app", app)
        .append_pair("name", name)
        .append_pair("clientid", client_id)
        .finish();
    let request = format!(
        "GET {}/drop/publisher?{query} HTTP/1.0\r\nHost: {}\r\n\r\n",
        control.path, control.authority
    );
    let exchange = async {
        let mut stream = TcpStream::connect(&control.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", control.authority))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(CONTROL_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_owned())??;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("control answered {status:?}"));
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    body.parse()
        .map_err(|_| format!("unexpected control body {body:?}"))
}

async fn apply(controls: &HashMap<String, ControlUrl>, event: &EnforcementEvent) {
    let Some(stream) = event
        .stream
        .as_ref()
        .filter(|s| s.protocol == super::nginx::PROTOCOL)
    else {
        return;
    };
    let Some(control) = controls.get(&event.gateway_id) else {
        return;
    };
    match drop_publisher(control, &stream.app, &stream.name, &stream.client_id).await {
        Ok(dropped) => tracing::info!(
            gateway = %event.gateway_id,
            session_id = %event.session_id,
            stream = %stream.name,
            dropped,
            "nginx-rtmp publisher dropped"
        ),
        Err(error) => tracing::warn!(
            gateway = %event.gateway_id,
            session_id = %event.session_id,
            %error,
            "nginx-rtmp drop failed; the next on_update cuts the stream"
        ),
    }
}

/// Follows enforcement events from now on and drops the publishers they name. With several
/// replicas, each sees every event; only the one whose transaction wrote it calls nginx, so
/// nginx is told once.
pub async fn run(pdp: Arc<Pdp>, controls: HashMap<String, ControlUrl>) {
    let replica = pdp.store().replica().to_owned();
    let mut published = pdp.subscribe_enforcements();
    // Events from before this start were acted on then, or are past: start at the newest.
    let mut after = *published.borrow_and_update();
    loop {
        match pdp.enforcement_events(after, 256) {
            Ok(events) => {
                for event in &events {
                    after = event.sequence;
                    if event.replica == replica {
                        apply(&controls, event).await;
                    }
                }
                if events.len() == 256 {
                    continue;
                }
            }
            Err(error) => tracing::error!(%error, "cannot read enforcement events"),
        }
        if published.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_urls_parse() {
        let parsed = parse_controls(&["edge-1=http://127.0.0.1:18080/control/".into()]);
        let url = parsed
            .ok()
            .and_then(|m| m.get("edge-1").cloned())
            .unwrap_or_else(|| panic!("parse"));
        assert_eq!(url.authority, "127.0.0.1:18080");
        assert_eq!(url.path, "/control");
        assert!(ControlUrl::parse("https://x:1/c").is_err());
        assert!(parse_controls(&["no-equals".into()]).is_err());
    }
}
