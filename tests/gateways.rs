//! Gateway protocols against a real server: nginx-rtmp and SRS hooks in their captured wire
//! formats, Envoy's ext_authz Check through the generated envoy-types client, and the
//! enforcement stream with resume across a restart.

mod common;

use std::time::Duration;

use anchor_pdp::proto::{self, EnforcementTrigger, Penalty};
use common::hooks::*;
use common::*;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, check_response::HttpResponse,
};
use tokio_stream::StreamExt;

async fn hooked() -> TestServer {
    TestServer::admitted_with(Options {
        http: true,
        ..Options::default()
    })
    .await
}

fn rules(body: &serde_json::Value) -> Vec<String> {
    body["violations"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|v| v["rule_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ---- nginx-rtmp ----

#[tokio::test]
async fn nginx_publish_update_and_done_follow_one_session() {
    let mut s = hooked().await;
    let http_addr = s.http_addr.expect("http");
    let (status, body) = http(
        http_addr,
        "POST",
        "/rtmp/edge-1/on_publish",
        FORM,
        &nginx_publish("r1", 7, CLAIMS),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let allowed = json(&body);
    assert_eq!(allowed["decision"], "ALLOW");
    let session_id = allowed["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let session = s.session(&session_id).await;
    assert_eq!(session.merchant_id, "m1", "the room's owner");
    assert_eq!(session.gateway_id, "edge-1");
    let stream = session.stream.expect("stream ref");
    assert_eq!(
        (
            stream.protocol.as_str(),
            stream.app.as_str(),
            stream.name.as_str(),
            stream.client_id.as_str()
        ),
        ("nginx-rtmp", "live", "r1", "7")
    );

    // GET works too (notify_method get): fields in the query.
    let (status, _) = http(
        http_addr,
        "GET",
        &format!("/rtmp/edge-1/on_update?{}", nginx_update("r1", 7, CLAIMS)),
        FORM,
        "",
    )
    .await;
    assert_eq!(status, 200);

    // The platform revokes the anchor: the next update answers 403 with the reasons.
    s.review(
        proto::RegistrationKind::Anchor,
        "a1",
        proto::Verdict::Revoke,
    )
    .await;
    let (status, body) = http(
        http_addr,
        "POST",
        "/rtmp/edge-1/on_update",
        FORM,
        &nginx_update("r1", 7, CLAIMS),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(rules(&json(&body)), ["SESSION"]);

    let (status, _) = http(
        http_addr,
        "POST",
        "/rtmp/edge-1/on_publish_done",
        FORM,
        &nginx_done("r1", 7),
    )
    .await;
    assert_eq!(status, 200);
    let session = s.session(&session_id).await;
    assert_eq!(session.state, proto::SessionState::Ended as i32);
}

#[tokio::test]
async fn nginx_publish_denied_with_reasons_when_a_rule_is_broken() {
    let s = hooked().await;
    let http_addr = s.http_addr.expect("http");
    let args = "&anchor=a1&driver=d1&livestream_type=OTHER&drive_mode=AUTONOMOUS";
    let (status, body) = http(
        http_addr,
        "POST",
        "/rtmp/edge-1/on_publish",
        FORM,
        &nginx_publish("r1", 3, args),
    )
    .await;
    assert_eq!(status, 403);
    let body = json(&body);
    assert_eq!(body["decision"], "DENY");
    assert_eq!(rules(&body), ["R3", "R5"]);
    assert!(
        body["violations"][0]["message_zh"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn nginx_publisher_arguments_cannot_change_identity() {
    let s = hooked().await;
    let http_addr = s.http_addr.expect("http");
    // An unfiled stream key, trying to pass as room r1 and another address and call.
    let args = format!("{CLAIMS}&name=r1&addr=6.6.6.6&call=play&clientid=1");
    let (status, body) = http(
        http_addr,
        "POST",
        "/rtmp/edge-1/on_publish",
        FORM,
        &nginx_publish("r-unfiled", 9, &args),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let body = json(&body);
    assert_eq!(rules(&body), ["GATEWAY"]);
    assert!(
        body["violations"][0]["message_en"]
            .as_str()
            .is_some_and(|m| m.contains("r-unfiled")),
        "{body}"
    );
    // An argument that is not a claim is refused outright, as are garbage and a wrong call.
    for form in [
        nginx_publish("r1", 9, &format!("{CLAIMS}&merchant=m2")),
        nginx_publish(
            "r1",
            9,
            "&anchor=a1&anchor=a2&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON",
        ),
        nginx_publish("r1", 9, ""),
        "\u{1}%%%&&==".to_owned(),
        nginx_update("r1", 9, CLAIMS),
    ] {
        let (status, body) = http(http_addr, "POST", "/rtmp/edge-1/on_publish", FORM, &form).await;
        assert_eq!(status, 403, "{form}: {body}");
        assert_eq!(rules(&json(&body)), ["GATEWAY"], "{form}");
    }
    // An update for a stream no session carries is refused (fail closed).
    let (status, _) = http(
        http_addr,
        "POST",
        "/rtmp/edge-1/on_update",
        FORM,
        &nginx_update("r1", 12345, CLAIMS),
    )
    .await;
    assert_eq!(status, 403);
}

// ---- SRS ----

#[tokio::test]
async fn srs_publish_and_unpublish() {
    let mut s = hooked().await;
    let http_addr = s.http_addr.expect("http");
    let param = "?anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=REAL_PERSON";
    let (status, body) = http(
        http_addr,
        "POST",
        "/srs/srs-1/on_publish",
        "application/json",
        &srs_body("on_publish", "r1", param),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let allowed = json(&body);
    assert_eq!(allowed["code"], 0);
    let session_id = allowed["session_id"].as_str().expect("session").to_owned();

    let denied_param =
        "?anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=PRE_RECORDED";
    let (status, body) = http(
        http_addr,
        "POST",
        "/srs/srs-1/on_publish",
        "application/json",
        &srs_body("on_publish", "r1", denied_param),
    )
    .await;
    assert_eq!(status, 403);
    let denied = json(&body);
    assert_ne!(denied["code"], 0);
    assert_eq!(rules(&denied), ["R3"]);

    let (status, body) = http(
        http_addr,
        "POST",
        "/srs/srs-1/on_publish",
        "application/json",
        "{\"action\": 1}",
    )
    .await;
    assert_eq!(status, 403);
    assert_ne!(json(&body)["code"], 0);

    let (status, body) = http(
        http_addr,
        "POST",
        "/srs/srs-1/on_unpublish",
        "application/json",
        &srs_body("on_unpublish", "r1", param),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["code"], 0);
    let session = s.session(&session_id).await;
    assert_eq!(session.state, proto::SessionState::Ended as i32);
}

// ---- MediaMTX ----

#[tokio::test]
async fn mediamtx_publish_read_and_unready() {
    let mut s = hooked().await;
    let http_addr = s.http_addr.expect("http");
    let claims = "anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=REAL_PERSON";
    let auth = |body: String| async move {
        http(
            http_addr,
            "POST",
            "/mediamtx/mtx-1/auth",
            "application/json",
            &body,
        )
        .await
    };
    // An RTMP client's credentials for MediaMTX ride in the same query: not claims.
    let with_credentials = format!("{claims}&user=cam-1&pass=hunter2");
    let (status, body) = auth(mediamtx_body("publish", "r1", "conn-1", &with_credentials)).await;
    assert_eq!(status, 200, "{body}");
    let session_id = json(&body)["session_id"]
        .as_str()
        .expect("session")
        .to_owned();

    // The same rules: a pre-recorded "live" broadcast is refused with its reason (any non-2xx
    // refuses in MediaMTX).
    let recorded = "anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=PRE_RECORDED";
    let (status, body) = auth(mediamtx_body("publish", "r1", "conn-2", recorded)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(rules(&json(&body)), ["R3"]);
    // A path that is no filed room, a claim given twice: refused, recorded as GATEWAY.
    let (status, body) = auth(mediamtx_body("publish", "nowhere", "conn-3", claims)).await;
    assert_eq!(
        (status, rules(&json(&body))),
        (403, vec!["GATEWAY".to_owned()]),
        "{body}"
    );
    // Viewers are admitted (no --deny-playback); the API is not the PDP's to admit.
    let (status, _) = auth(mediamtx_body("read", "r1", "viewer-1", "")).await;
    assert_eq!(status, 200);
    let (status, body) = auth(mediamtx_body("api", "", "", "")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("authHTTPExclude"), "{body}");

    // runOnUnready ends the path's broadcast.
    let (status, body) = http(
        http_addr,
        "POST",
        "/mediamtx/mtx-1/unready",
        "application/json",
        r#"{"path":"r1","id":"conn-1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["ended"], session_id.as_str());
    let session = s.session(&session_id).await;
    assert_eq!(session.state, proto::SessionState::Ended as i32);
}

// ---- OvenMediaEngine ----

const OME_SECRET: &str = "ome-1-shared-secret";

#[tokio::test]
async fn ome_admission_is_signed_starts_rechecks_and_closes() {
    let mut s = TestServer::admitted_with(Options {
        http: true,
        configure: Some(|args| {
            args.ome_secrets = vec![format!("ome-1={OME_SECRET}")];
            args.ome_lifetime_secs = Some(30);
        }),
        ..Options::default()
    })
    .await;
    let http_addr = s.http_addr.expect("http");
    let admit = |body: String, signature: Option<String>| async move {
        let signature = signature.unwrap_or_else(|| {
            anchor_pdp::gateway::ome::sign(OME_SECRET.as_bytes(), body.as_bytes())
        });
        let (status, reply) = http_with(
            http_addr,
            "POST",
            "/ome/ome-1/admission",
            "application/json",
            &[("X-OME-Signature", &signature)],
            &body,
        )
        .await;
        (status, json(&reply))
    };
    let url = "rtmp://127.0.0.1:1935/app/r1?anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=REAL_PERSON";

    // A body signed with another secret is refused before anything is decided.
    let body = ome_body("incoming", "opening", url, 40000);
    let forged = anchor_pdp::gateway::ome::sign(b"not-the-shared-secret", body.as_bytes());
    let (status, reply) = admit(body.clone(), Some(forged)).await;
    assert_eq!(
        (status, &reply["allowed"]),
        (401, &serde_json::json!(false)),
        "{reply}"
    );

    // Opening: a START, admitted for the re-check interval (OME asks again after it).
    let (status, reply) = admit(body.clone(), None).await;
    assert_eq!(
        (status, &reply["allowed"]),
        (200, &serde_json::json!(true)),
        "{reply}"
    );
    assert_eq!(reply["lifetime"], 30_000, "{reply}");
    let session_id = reply["decision"]["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    // The same client and stream again while live: a LIVE re-check of that session.
    let (_, again) = admit(body.clone(), None).await;
    assert_eq!(again["allowed"], true, "{again}");
    assert_eq!(again["decision"]["session_id"], session_id.as_str());
    assert_ne!(
        again["decision"]["decision_id"], reply["decision"]["decision_id"],
        "a decision of its own, not the START's answer replayed"
    );

    // Broken rules: not allowed, with the reasons OME logs.
    let recorded = ome_body(
        "incoming",
        "opening",
        "rtmp://127.0.0.1:1935/app/r1?anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=PRE_RECORDED",
        40001,
    );
    let (status, reply) = admit(recorded, None).await;
    assert_eq!(
        (status, &reply["allowed"]),
        (200, &serde_json::json!(false)),
        "{reply}"
    );
    assert!(
        reply["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("R3: ")),
        "{reply}"
    );
    // Viewers are admitted.
    let (_, viewer) = admit(
        ome_body(
            "outgoing",
            "opening",
            "webrtc://127.0.0.1:3333/app/r1",
            50000,
        ),
        None,
    )
    .await;
    assert_eq!(viewer["allowed"], true, "{viewer}");

    // Closing: the session ends, and OME gets {}.
    let (status, reply) = admit(ome_body("incoming", "closing", url, 40000), None).await;
    assert_eq!((status, reply), (200, serde_json::json!({})));
    let session = s.session(&session_id).await;
    assert_eq!(session.state, proto::SessionState::Ended as i32);
}

// ---- Envoy ext_authz ----

fn check(phase: Option<&str>, headers: &[(&str, &str)]) -> CheckRequest {
    let mut context_extensions = std::collections::HashMap::new();
    context_extensions.insert("gateway".to_owned(), "envoy-whip".to_owned());
    if let Some(phase) = phase {
        context_extensions.insert("phase".to_owned(), phase.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "POST".into(),
                    path: "/whip/r1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

const WHIP: [(&str, &str); 5] = [
    ("x-pdp-room", "r1"),
    ("x-pdp-anchor", "a1"),
    ("x-pdp-driver", "d1"),
    ("x-pdp-livestream-type", "WORKSTATION_RECEPTION"),
    ("x-pdp-drive-mode", "REAL_PERSON"),
];

#[tokio::test]
async fn envoy_check_allows_with_the_session_and_denies_with_reasons() {
    let s = hooked().await;
    let mut client = AuthorizationClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    let allowed = client
        .check(check(None, &WHIP))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(allowed.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = allowed.http_response else {
        panic!("expected ok_response: {allowed:?}");
    };
    let session = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-pdp-session-id")
        .map(|h| h.value.clone())
        .expect("session header");
    assert!(!session.is_empty());

    let live = client
        .check(check(Some("live"), &[("x-pdp-session", &session)]))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(live.status.as_ref().map(|s| s.code), Some(0));

    let mut bad = WHIP.to_vec();
    bad[4] = ("x-pdp-drive-mode", "TEXT_TO_VIDEO");
    let denied = client
        .check(check(None, &bad))
        .await
        .expect("check")
        .into_inner();
    assert_ne!(denied.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::DeniedResponse(denied)) = denied.http_response else {
        panic!("expected denied_response");
    };
    assert_eq!(denied.status.map(|s| s.code), Some(403));
    assert_eq!(rules(&json(&denied.body)), ["R3"]);

    // Without the route's gateway id, or with garbage claims: denied, never allowed.
    let mut unconfigured = check(None, &WHIP);
    if let Some(attributes) = unconfigured.attributes.as_mut() {
        attributes.context_extensions.clear();
    }
    for request in [
        unconfigured,
        check(None, &[("x-pdp-room", "r1")]),
        check(Some("sideways"), &WHIP),
        check(None, &[("x-pdp-room", "../r1")]),
    ] {
        let response = client.check(request).await.expect("check").into_inner();
        assert_ne!(response.status.as_ref().map(|s| s.code), Some(0));
        assert!(matches!(
            response.http_response,
            Some(HttpResponse::DeniedResponse(_))
        ));
    }

    let ended = client
        .check(check(Some("end"), &[("x-pdp-session", &session)]))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(ended.status.as_ref().map(|s| s.code), Some(0));
}

// ---- Push revocation ----

async fn next_event(
    stream: &mut tonic::Streaming<proto::EnforcementEvent>,
) -> proto::EnforcementEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("stream open")
        .expect("event")
}

#[tokio::test]
async fn enforcements_are_pushed_in_order_and_resume_after_a_restart() {
    let mut s = hooked().await;
    let mut watch = s
        .pdp
        .watch_enforcements(proto::WatchEnforcementsRequest {
            after_sequence: 0,
            gateway_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let reported = s.start_session().await;
    let revoked = s.start_session_in("r2").await;
    s.merchant("m2", proto::MerchantTier::ChineseGoldSupplier)
        .await;

    s.report(&reported, "R7").await;
    let first = next_event(&mut watch).await;
    assert_eq!(first.sequence, 1);
    assert_eq!(first.session_id, reported);
    assert_eq!(first.trigger, EnforcementTrigger::ViolationReport as i32);
    assert_eq!(
        first.penalty_applied,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    assert_eq!(first.violations[0].rule_id, "R7");
    // The freeze ends the account's other live broadcast (E3), pushed next.
    let second = next_event(&mut watch).await;
    assert_eq!(second.sequence, 2);
    assert_eq!(second.session_id, revoked);
    assert_eq!(second.trigger, EnforcementTrigger::Recheck as i32);
    assert_eq!(second.violations[0].rule_id, "E3");

    // A gateway that reconnects resumes after the last sequence it saw, even across a restart.
    let data_dir = s.data_dir.clone();
    let clock = s.clock.clone();
    let temp = s.stop().await;
    let mut s = TestServer::start_with(
        &data_dir,
        clock,
        Options {
            http: true,
            ..Options::default()
        },
    )
    .await;
    let mut resumed = s
        .pdp
        .watch_enforcements(proto::WatchEnforcementsRequest {
            after_sequence: 1,
            gateway_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_event(&mut resumed).await.sequence, 2);
    // New events continue the sequence; a gateway filter sees only its own sessions.
    s.clock.advance(8 * DAY_MS);
    let http_addr = s.http_addr.expect("http");
    let (status, body) = http(
        http_addr,
        "POST",
        "/rtmp/edge-9/on_publish",
        FORM,
        &nginx_publish("r1", 1, CLAIMS),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let nginx_session = json(&body)["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    let mut only_edge9 = s
        .pdp
        .watch_enforcements(proto::WatchEnforcementsRequest {
            after_sequence: 0,
            gateway_id: "edge-9".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    s.provider("p1", false).await;
    let third = next_event(&mut resumed).await;
    assert_eq!(third.sequence, 3);
    assert_eq!(third.session_id, nginx_session);
    assert_eq!(third.trigger, EnforcementTrigger::Recheck as i32);
    assert_eq!(third.penalty_applied, Penalty::E1ShutDownAndFreeze as i32);
    let stream = third.stream.expect("stream ref");
    assert_eq!(
        (
            stream.app.as_str(),
            stream.name.as_str(),
            stream.client_id.as_str()
        ),
        ("live", "r1", "1")
    );
    let filtered = next_event(&mut only_edge9).await;
    assert_eq!(filtered.sequence, 3, "events of other gateways are skipped");
    drop(temp);
}

// ---- The README's gateway configurations are the ones the end-to-end tests run ----

fn readme_block(lang: &str, after: &str) -> String {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("README");
    let start = readme.find(after).expect("section");
    let fence = format!("```{lang}\n");
    let open = readme[start..].find(&fence).expect("block") + start + fence.len();
    let close = readme[open..].find("```").expect("block end") + open;
    readme[open..close].to_owned()
}

fn assert_lines_in(shown: &str, config: &str) {
    let config: Vec<&str> = config.lines().map(str::trim).collect();
    for line in shown.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            config.contains(&line),
            "README line {line:?} is not in the tested config"
        );
    }
}

#[test]
fn readme_gateway_configs_are_the_ones_the_tests_run() {
    let nginx = programs::nginx_conf(
        "127.0.0.1:8080".parse().expect("addr"),
        "edge-1",
        "EDGE_1_SECRET",
        10,
        1935,
        8081,
    );
    assert_lines_in(&readme_block("nginx", "### nginx-rtmp"), &nginx);
    let envoy = programs::envoy_conf(
        10000,
        9901,
        "127.0.0.1:50051".parse().expect("addr"),
        "127.0.0.1:18081".parse().expect("addr"),
    );
    assert_lines_in(&readme_block("yaml", "### Envoy"), &envoy);
    let srs = readme_block("", "### SRS");
    assert!(
        srs.contains("/srs/srs-1/on_publish?pdp_secret=SRS_1_SECRET;")
            && srs.contains("/srs/srs-1/on_unpublish?pdp_secret=SRS_1_SECRET;")
    );
    // MediaMTX and OME: the README's configuration names the routes the tests post to, and
    // the runOnUnready command sends the body the handler reads.
    let mediamtx = readme_block("yaml", "### MediaMTX");
    for line in [
        "authMethod: http",
        "authHTTPAddress: http://127.0.0.1:8080/mediamtx/mtx-1/auth?pdp_secret=MTX_1_SECRET",
        "- action: api",
        "-d '{\"path\":\"'$MTX_PATH'\",\"id\":\"'$MTX_SOURCE_ID'\"}'",
        "http://127.0.0.1:8080/mediamtx/mtx-1/unready?pdp_secret=MTX_1_SECRET",
    ] {
        assert!(
            mediamtx.lines().any(|l| l.trim() == line),
            "{line}: {mediamtx}"
        );
    }
    let unready_body = r#"{"path":"'$MTX_PATH'","id":"'$MTX_SOURCE_ID'"}"#
        .replace("'$MTX_PATH'", "r1")
        .replace("'$MTX_SOURCE_ID'", "conn-1");
    let parsed: serde_json::Value = serde_json::from_str(&unready_body).expect("JSON");
    assert_eq!(parsed["path"], "r1");
    let ome = readme_block("xml", "### OvenMediaEngine");
    assert!(
        ome.contains("<ControlServerUrl>http://127.0.0.1:8080/ome/ome-1/admission?pdp_secret=OME_1_SECRET</ControlServerUrl>")
            && ome.contains("<SecretKey>OME_1_SHARED_SECRET</SecretKey>"),
        "{ome}"
    );
}

use common::programs;

// ---- The label rule pack's observations, through SRS and Envoy ----

#[tokio::test]
async fn srs_and_envoy_carry_the_label_observations_to_the_label_pack() {
    let policies = common::labels_enabled();
    let mut s = TestServer::admitted_with(Options {
        http: true,
        policies: Some(policies.path().to_owned()),
        ..Options::default()
    })
    .await;
    let http_addr = s.http_addr.expect("http");
    let srs = |param: &str| srs_body("on_publish", "r1", param);
    let claims = "?anchor=a1&driver=d1&livestream_type=EVENT_LIVESTREAM&drive_mode=REAL_PERSON";

    let (status, body) = http(
        http_addr,
        "POST",
        "/srs/srs-1/on_publish",
        "application/json",
        &srs(claims),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(rules(&json(&body)), ["L1", "L2"]);
    let interface = format!(
        "{claims}&label_shown=true&label_kind=INTERFACE&implicit_label=1&implicit_label_provider=p1"
    );
    let (status, body) = http(
        http_addr,
        "POST",
        "/srs/srs-1/on_publish",
        "application/json",
        &srs(&interface),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let session_id = json(&body)["session_id"]
        .as_str()
        .expect("session")
        .to_owned();
    let session = s.session(&session_id).await;
    let labels = session.labels.expect("labels recorded");
    assert_eq!(labels.label_kind, proto::LabelKind::Interface as i32);
    assert_eq!(labels.implicit_label_provider, "p1");
    // A malformed or repeated observation is refused by name, never guessed.
    for (param, named) in [
        (format!("{claims}&label_shown=yes"), "label_shown"),
        (format!("{claims}&label_kind=overlay"), "label_kind"),
        (
            format!("{claims}&label_shown=1&label_shown=0"),
            "label_shown",
        ),
        (
            format!(
                "{claims}&label_shown=1&label_kind=OVERLAY&implicit_label=0&implicit_label_provider=p1"
            ),
            "implicit_label_provider",
        ),
    ] {
        let (status, body) = http(
            http_addr,
            "POST",
            "/srs/srs-2/on_publish",
            "application/json",
            &srs(&param),
        )
        .await;
        assert_eq!(status, 403, "{param}: {body}");
        let denied = json(&body);
        assert_eq!(rules(&denied), ["GATEWAY"], "{param}");
        assert!(body.contains(named), "{param}: {body}");
    }

    let mut client = AuthorizationClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    let mut whip = WHIP.to_vec();
    whip[0] = ("x-pdp-room", "r2");
    s.room("r2", "m1").await;
    s.approve(proto::RegistrationKind::Room, "r2").await;
    let denied = client
        .check(check(None, &whip))
        .await
        .expect("check")
        .into_inner();
    let Some(HttpResponse::DeniedResponse(denied)) = denied.http_response else {
        panic!("expected denied_response");
    };
    assert_eq!(rules(&json(&denied.body)), ["L1", "L2"]);
    whip.extend([
        ("x-pdp-label-shown", "1"),
        ("x-pdp-label-kind", "OVERLAY"),
        ("x-pdp-implicit-label", "1"),
        ("x-pdp-implicit-label-provider", "p1"),
    ]);
    let allowed = client
        .check(check(None, &whip))
        .await
        .expect("check")
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = allowed.http_response else {
        panic!("expected ok_response: {allowed:?}");
    };
    let session = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-pdp-session-id")
        .map(|h| h.value.clone())
        .expect("session header");
    // At LIVE, a header saying the label is gone shuts the session down.
    let gone = client
        .check(check(
            Some("live"),
            &[("x-pdp-session", &session), ("x-pdp-label-shown", "0")],
        ))
        .await
        .expect("check")
        .into_inner();
    let Some(HttpResponse::DeniedResponse(gone)) = gone.http_response else {
        panic!("expected denied_response");
    };
    assert_eq!(rules(&json(&gone.body)), ["L1"]);
    let session = s.session(&session).await;
    assert_eq!(session.state, proto::SessionState::ShutDown as i32);
    // A malformed header is named as the header.
    let bad = client
        .check(check(
            None,
            &[("x-pdp-room", "r2"), ("x-pdp-label-kind", "SKY")],
        ))
        .await
        .expect("check")
        .into_inner();
    let Some(HttpResponse::DeniedResponse(bad)) = bad.http_response else {
        panic!("expected denied_response");
    };
    assert!(bad.body.contains("x-pdp-label-kind"), "{}", bad.body);
}
