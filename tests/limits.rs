//! What a peer can hold, and for how long: idle connections on both ports are closed within
//! their time limits while health on a new connection still answers; hook connections and
//! server streams are capped; a decision-log read ends at its deadline with a resume cursor.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anchor_pdp::config::ServeArgs;
use anchor_pdp::proto;
use common::hooks::*;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const IDLE: usize = 2000;

fn tight(args: &mut ServeArgs) {
    args.handshake_timeout_secs = 1;
    args.hook_header_timeout_secs = 1;
    args.max_hook_connections = 100;
    args.max_streams = 4;
}

async fn limited() -> TestServer {
    TestServer::admitted_with(Options {
        http: true,
        configure: Some(tight),
        ..Options::default()
    })
    .await
}

async fn health_on_a_new_connection(addr: SocketAddr) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("a new connection is accepted");
    tokio::time::timeout(
        Duration::from_secs(2),
        HealthClient::new(channel).check(tonic_health::pb::HealthCheckRequest {
            service: "anchorpdp.v1.PolicyDecisionPoint".into(),
        }),
    )
    .await
    .expect("health answers in time")
    .expect("health")
    .into_inner()
    .status
}

/// Whether the server has closed `stream` (EOF or reset) within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_in_time_and_health_still_answers() {
    let s = limited().await;
    let hooks = s.http_addr.expect("hooks");
    let mut idle = Vec::with_capacity(2 * IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(s.addr).await.expect("gRPC connect"));
        idle.push(TcpStream::connect(hooks).await.expect("hook connect"));
    }
    let opened = Instant::now();
    // While they are open (and the hook cap is hit), a new client is still served.
    assert_eq!(
        health_on_a_new_connection(s.addr).await,
        ServingStatus::Serving as i32
    );
    // Every idle connection is closed by the server: past the cap at once, the rest after
    // their 1 s handshake / header limit.
    let mut still_open = 0;
    for stream in &mut idle {
        let left = Duration::from_secs(5).saturating_sub(opened.elapsed());
        if !closed_by_server(stream, left.max(Duration::from_millis(1))).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "idle connections the server kept");
    println!(
        "{} idle connections closed in {:?}",
        idle.len(),
        opened.elapsed()
    );
    drop(idle);
    // The hook listener serves again once the flood is gone.
    let (status, body) = http(
        hooks,
        "POST",
        "/rtmp/edge-1/on_publish",
        FORM,
        &nginx_publish("r1", 7, CLAIMS),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_are_capped_across_connections() {
    let s = limited().await;
    let mut open = Vec::new();
    for _ in 0..4 {
        // Each on its own connection: the cap is process-wide.
        let mut client =
            anchor_pdp::PolicyDecisionPointClient::connect(format!("http://{}", s.addr))
                .await
                .expect("connect");
        let stream = client
            .watch_enforcements(proto::WatchEnforcementsRequest::default())
            .await
            .expect("a stream under the cap")
            .into_inner();
        open.push((client, stream));
    }
    let mut client = anchor_pdp::PolicyDecisionPointClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    let refused = client
        .watch_enforcements(proto::WatchEnforcementsRequest::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        health_on_a_new_connection(s.addr).await,
        ServingStatus::Serving as i32
    );
    // A stream that ends gives its slot back.
    drop(open.pop());
    let mut again = None;
    for _ in 0..50 {
        match client
            .watch_enforcements(proto::WatchEnforcementsRequest::default())
            .await
        {
            Ok(stream) => {
                again = Some(stream);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(again.is_some(), "the slot was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_read_ends_at_its_deadline_with_a_cursor_to_resume_from() {
    let mut s = TestServer::admitted().await;
    // 1,000 decisions on the record.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let mut pdp = s.pdp.clone();
        calls.spawn(async move {
            pdp.authorize(live(&format!("gone-{i}")))
                .await
                .expect("authorize");
        });
        if calls.len() >= 32 {
            calls.join_next().await;
        }
    }
    while calls.join_next().await.is_some() {}
    let everything = |after_id: String| proto::ReadDecisionLogRequest {
        action: "authorize".into(),
        limit: 100_000,
        after_id,
        ..Default::default()
    };
    // A reader slower than its 500 ms deadline allows.
    let mut request = tonic::Request::new(everything(String::new()));
    request.set_timeout(Duration::from_secs(30));
    request
        .metadata_mut()
        .insert("grpc-timeout", "500m".parse().expect("header"));
    // A small receive window, so that the server fills it long before it runs out of records.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .expect("uri")
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .expect("connect");
    let mut stream = anchor_pdp::PolicyAdminClient::new(channel)
        .read_decision_log(request)
        .await
        .expect("read")
        .into_inner();
    // The reader takes no record until the deadline has passed: the server fills what the
    // connection buffers and then waits, out of time.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut seen = Vec::new();
    let ended = loop {
        match stream.message().await {
            Ok(Some(record)) => seen.push(record.id),
            Ok(None) => panic!("the read ended OK after {} of 1000 records", seen.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(seen.len() < 1000, "the read finished before its deadline");
    let cursor = ended
        .metadata()
        .get("resume-after-id")
        .expect("resume-after-id")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(Some(&cursor), seen.last());
    let rest = s.log(everything(cursor)).await;
    let all: BTreeSet<String> = seen
        .iter()
        .cloned()
        .chain(rest.into_iter().map(|r| r.id))
        .collect();
    assert_eq!(
        all.len(),
        1000,
        "a record was lost or repeated across the resume"
    );
    assert_eq!(seen.len() + (all.len() - seen.len()), 1000);
}
