//! The edges an attacker tries: hooks without their secret, hooks in the wrong shape, messages
//! that do not decode, deadlines that pass, and how a bearer token is spelled.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use anchor_pdp::api::auth::hash_token;
use anchor_pdp::proto;
use common::hooks::*;
use common::*;
use tonic::Code;

const EDGE_SECRET: &str = "edge-1-hook-secret-0123456789abcdef";

async fn with_hook_secret() -> TestServer {
    TestServer::admitted_with(Options {
        http: true,
        hook_secrets: vec![format!("edge-1:{}", hash_token(EDGE_SECRET))],
        ..Options::default()
    })
    .await
}

async fn post_form(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, FORM, body).await
}

async fn live_count(s: &mut TestServer) -> usize {
    s.admin
        .list_live_sessions(proto::ListLiveSessionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .sessions
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_without_its_gateways_secret_is_refused() {
    let mut s = with_hook_secret().await;
    let addr = s.http_addr.expect("hooks");
    let publish = nginx_publish("r1", 7, CLAIMS);
    for (path, want) in [
        ("/rtmp/edge-1/on_publish".to_owned(), 401),
        ("/rtmp/edge-1/on_publish?pdp_secret=guess".to_owned(), 401),
        // A gateway with no secret configured cannot use another's.
        (
            format!("/rtmp/edge-2/on_publish?pdp_secret={EDGE_SECRET}"),
            403,
        ),
    ] {
        let (status, body) = post_form(addr, &path, &publish).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(!body.contains(EDGE_SECRET), "the secret is echoed: {body}");
    }
    assert_eq!(live_count(&mut s).await, 0);

    let (status, body) = post_form(
        addr,
        &format!("/rtmp/edge-1/on_publish?pdp_secret={EDGE_SECRET}"),
        &publish,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live_count(&mut s).await, 1);
    // The secret is not on the record.
    let id = json(&body)["decision_id"].as_str().expect("id").to_owned();
    let record = s.log_record(&id).await;
    assert!(!record.request.contains(EDGE_SECRET), "{}", record.request);

    // A stranger cannot end the broadcast.
    let (status, _) = post_form(addr, "/rtmp/edge-1/on_publish_done", &nginx_done("r1", 7)).await;
    assert_eq!(status, 401);
    let (status, _) = srs_like_done(addr).await;
    assert_eq!(status, 401);
    assert_eq!(live_count(&mut s).await, 1);
}

async fn srs_like_done(addr: SocketAddr) -> (u16, String) {
    http(
        addr,
        "POST",
        "/srs/edge-1/on_unpublish",
        "application/json",
        &srs_body("on_unpublish", "r1", ""),
    )
    .await
}

#[test]
fn hooks_beyond_loopback_need_secrets_even_with_tokens() {
    let bin = env!("CARGO_BIN_EXE_anchor-pdp");
    let temp = tempfile::tempdir().expect("temp");
    let token = hash_token("an-admin-token-0123456789abcdef0123");
    let output = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
        ])
        .args(["--token", &format!("ops:admin:{token}")])
        .arg("--data-dir")
        .arg(temp.path().join("data"))
        .arg("--policies")
        .arg(repo_policies())
        .env_remove("ANCHOR_PDP_HOOK_SECRETS")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to open the gateway hooks on 0.0.0.0:0 without hook secrets")
            && stderr.contains("--hook-secret GATEWAY:sha256:HEX")
            && stderr.contains("?pdp_secret=SECRET"),
        "{stderr}"
    );
    assert!(!temp.path().join("data").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_take_only_their_methods_content_types_and_places() {
    let mut s = TestServer::admitted_with(Options {
        http: true,
        ..Options::default()
    })
    .await;
    let addr = s.http_addr.expect("hooks");
    let publish = nginx_publish("r1", 7, CLAIMS);
    for method in ["PUT", "DELETE", "PATCH"] {
        let (status, _) = http(addr, method, "/rtmp/edge-1/on_publish", FORM, &publish).await;
        assert_eq!(status, 405, "{method}");
    }
    let (status, _) = http(addr, "GET", "/srs/edge-1/on_publish", FORM, "").await;
    assert_eq!(status, 405, "SRS posts");
    let (status, body) = http(
        addr,
        "POST",
        "/rtmp/edge-1/on_publish",
        "text/plain",
        &publish,
    )
    .await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/srs/edge-1/on_publish",
        FORM,
        &srs_body("on_publish", "r1", ""),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    // A POST body cannot be overridden (or added to) from the query.
    let (status, body) =
        post_form(addr, "/rtmp/edge-1/on_publish?name=r9&anchor=a9", &publish).await;
    assert_eq!(status, 400, "{body}");
    // Gateway ids are ids.
    let (status, body) = post_form(addr, "/rtmp/../on_publish", &publish).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("GATEWAY") && body.contains("gateway"),
        "{body}"
    );
    assert_eq!(live_count(&mut s).await, 0);
    // notify_method get: the form in the query.
    let (status, body) = http(
        addr,
        "GET",
        &format!("/rtmp/edge-1/on_publish?{publish}"),
        FORM,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live_count(&mut s).await, 1);
}

/// A message whose field 1 is a string where `AuthorizeRequest` has an enum.
#[derive(Clone, PartialEq, prost::Message)]
struct Undecodable {
    #[prost(string, tag = "1")]
    phase: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_invalid_argument() {
    let s = TestServer::admitted().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<Undecodable, proto::AuthorizeResponse>::default();
    let refused = grpc
        .unary(
            tonic::Request::new(Undecodable {
                phase: "START".into(),
            }),
            http::uri::PathAndQuery::from_static("/anchorpdp.v1.PolicyDecisionPoint/Authorize"),
            codec,
        )
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("failed to decode"),
        "{refused:?}"
    );
}

/// A gRPC call over a bare HTTP/2 connection, so that only the server enforces `grpc-timeout`
/// (tonic's client would give up on its own first). Returns the call's grpc-status.
async fn raw_grpc_status(
    addr: SocketAddr,
    path: &str,
    message: &impl prost::Message,
    timeout: &str,
) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(encoded.len()).expect("len").to_be_bytes());
    frame.extend_from_slice(&encoded);
    // The server may answer (deadline already passed) before the body is sent.
    let _ = send.send_data(prost::bytes::Bytes::from(frame), true);
    let (parts, mut body) = response.await.expect("response").into_parts();
    if let Some(status) = parts.headers.get("grpc-status") {
        return status.to_str().expect("status").to_owned();
    }
    while let Some(data) = body.data().await {
        data.expect("data");
    }
    let trailers = body
        .trailers()
        .await
        .expect("trailers")
        .expect("grpc trailers");
    trailers["grpc-status"].to_str().expect("status").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_on_the_server_is_deadline_exceeded() {
    let s = TestServer::admitted().await;
    let room = |i: usize| proto::RegisterRequest {
        request_id: String::new(),
        record: Some(proto::register_request::Record::Room(
            proto::LivestreamRoom {
                id: format!("r-deadline-{i}"),
                owner_merchant_id: "m1".into(),
                display_name: String::new(),
            },
        )),
        expected_revision: None,
    };
    let path = "/anchorpdp.v1.PolicyDecisionPoint/Register";
    let mut codes = Vec::new();
    for i in 0..20 {
        codes.push(raw_grpc_status(s.addr, path, &room(i), "1u").await);
    }
    // 4 = DEADLINE_EXCEEDED (tonic alone says 1, CANCELLED); 0 only if a call beat 1 µs.
    assert!(codes.iter().all(|c| c == "4" || c == "0"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "4"), "{codes:?}");
    // Deadlines the server's timer fires on (a call cut off there runs on to its end).
    let mut timed = Vec::new();
    for i in 20..60 {
        timed.push(raw_grpc_status(s.addr, path, &room(i), "3m").await);
    }
    assert!(timed.iter().all(|c| c == "4" || c == "0"), "{timed:?}");
    // A deadline long enough is met.
    assert_eq!(raw_grpc_status(s.addr, path, &room(99), "10S").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let token = "gateway-token-0123456789abcdef0123456";
    let mut s = TestServer::start_with_options(Options {
        tokens: vec![format!("edge-1:gateway:{}", hash_token(token))],
        ..Options::default()
    })
    .await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut request = tonic::Request::new(live("no-such-session"));
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} {token}").parse().expect("header"),
        );
        let answered = s.pdp.authorize(request).await.expect(scheme).into_inner();
        assert_eq!(rule_ids(&answered), ["SESSION"], "{scheme}");
    }
    let mut request = tonic::Request::new(live("no-such-session"));
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {token}").parse().expect("header"),
    );
    let refused = s.pdp.authorize(request).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[test]
fn one_token_hash_for_two_callers_is_refused_at_start() {
    let bin = env!("CARGO_BIN_EXE_anchor-pdp");
    let temp = tempfile::tempdir().expect("temp");
    let hash = hash_token("shared-token-0123456789abcdef012345");
    let output = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--token", &format!("edge-1:gateway:{hash}")])
        .args(["--token", &format!("ops:admin:{hash}")])
        .arg("--data-dir")
        .arg(temp.path().join("data"))
        .arg("--policies")
        .arg(repo_policies())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--token ops has the same hash as --token edge-1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filing_a_live_session_relies_on_cannot_be_materially_changed() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let refile = |record: proto::register_request::Record| proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    };
    let mut restyled = anchor_record("a1", "m1", "p1", proto::ImageStyle::Anime);
    restyled.display_name = "Anchor a1".into();
    let moved_room = proto::LivestreamRoom {
        id: "r1".into(),
        owner_merchant_id: "m2".into(),
        display_name: String::new(),
    };
    s.merchant("m2", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    for record in [
        proto::register_request::Record::Anchor(restyled.clone()),
        proto::register_request::Record::Room(moved_room),
    ] {
        let refused = s
            .pdp
            .register(refile(record))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains(&session), "{refused:?}");
    }
    // A change that keeps the approval is fine, and the broadcast goes on unpenalized.
    let mut renamed = anchor_record("a1", "m1", "p1", proto::ImageStyle::RealisticHuman);
    renamed.display_name = "A new name".into();
    s.pdp
        .register(refile(proto::register_request::Record::Anchor(renamed)))
        .await
        .expect("rename");
    assert_allowed(&s.authorize(live(&session)).await);
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.penalties), (0, 0));
    // Once the broadcast has ended, the material change goes through (back to review).
    s.pdp
        .end_session(proto::EndSessionRequest {
            request_id: String::new(),
            session_id: session.clone(),
            reason: "done".into(),
        })
        .await
        .expect("end");
    let changed = s
        .pdp
        .register(refile(proto::register_request::Record::Anchor(restyled)))
        .await
        .expect("restyle after the broadcast")
        .into_inner()
        .registration
        .expect("registration");
    assert_eq!(
        changed.review_status,
        proto::ReviewStatus::PendingReview as i32
    );
}
