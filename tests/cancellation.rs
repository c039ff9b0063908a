//! Callers that give up: STARTs and Registers sent with a 1 ms deadline under load. Whatever
//! the caller saw, every change that was applied has its decision-log record, and every record
//! its change.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anchor_pdp::proto::{self, RegistrationKind, register_request::Record};
use common::*;
use tokio::sync::Semaphore;
use tonic::Code;

const STARTS: usize = 300;
const REGISTERS: usize = 200;
const IN_FLIGHT: usize = 32;

/// A connection of its own per call: h2 closes a connection whose client resets many streams
/// (rapid-reset protection), and every call here is likely to be reset.
async fn client(
    addr: std::net::SocketAddr,
) -> anchor_pdp::PolicyDecisionPointClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    anchor_pdp::PolicyDecisionPointClient::new(channel)
}

fn deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_millis(1));
    request
}

/// What the store holds: live sessions, and the anchors filed by this test.
async fn changes(s: &mut TestServer) -> (BTreeSet<String>, BTreeSet<String>) {
    let sessions = s
        .admin
        .list_live_sessions(proto::ListLiveSessionsRequest {
            merchant_id: "m1".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut anchors = BTreeSet::new();
    for i in 0..REGISTERS {
        let id = format!("a-cancel-{i}");
        let found = s
            .admin
            .get_registration(proto::GetRegistrationRequest {
                kind: RegistrationKind::Anchor as i32,
                id: id.clone(),
            })
            .await;
        if found.is_ok() {
            anchors.insert(id);
        }
    }
    (sessions, anchors)
}

/// What the decision log holds: the sessions START records opened, and the anchors Register
/// records filed.
async fn records(s: &mut TestServer) -> (BTreeSet<String>, BTreeSet<String>) {
    let log = s
        .log(proto::ReadDecisionLogRequest {
            merchant_id: "m1".into(),
            limit: 100_000,
            ..Default::default()
        })
        .await;
    let sessions = log
        .iter()
        .filter(|r| r.action == "authorize" && r.change == "session opened")
        .map(|r| r.session_id.clone())
        .collect();
    let anchors = log
        .iter()
        .filter(|r| r.action == "Register")
        .filter_map(|r| r.change.strip_prefix("anchor "))
        .filter_map(|rest| rest.split(' ').next())
        .filter(|id| id.starts_with("a-cancel-"))
        .map(str::to_owned)
        .collect();
    (sessions, anchors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_changes_nothing_or_changes_it_with_its_record() {
    let mut s = TestServer::admitted().await;
    // A room per START: none supersedes another, so every opened session stays live.
    for i in 0..STARTS {
        let room = format!("room-{i}");
        s.room(&room, "m1").await;
        s.approve(RegistrationKind::Room, &room).await;
    }

    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..STARTS.max(REGISTERS) {
        if i < STARTS {
            let addr = s.addr;
            let slots = slots.clone();
            calls.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore");
                let mut pdp = client(addr).await;
                let mut request = start();
                request.room_id = format!("room-{i}");
                (
                    "start",
                    pdp.authorize(deadline(request))
                        .await
                        .map(|r| r.into_inner().session_id),
                )
            });
        }
        if i < REGISTERS {
            let addr = s.addr;
            let slots = slots.clone();
            calls.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore");
                let mut pdp = client(addr).await;
                let id = format!("a-cancel-{i}");
                let request = proto::RegisterRequest {
                    request_id: String::new(),
                    record: Some(Record::Anchor(anchor_record(
                        &id,
                        "m1",
                        "p1",
                        proto::ImageStyle::RealisticHuman,
                    ))),
                    expected_revision: None,
                };
                (
                    "register",
                    pdp.register(deadline(request)).await.map(|_| id),
                )
            });
        }
    }
    let mut acknowledged: [BTreeSet<String>; 2] = Default::default();
    let mut cut_off = [0usize; 2];
    while let Some(call) = calls.join_next().await {
        let (kind, result) = call.expect("call task");
        let which = usize::from(kind == "register");
        match result {
            Ok(id) => {
                acknowledged[which].insert(id);
            }
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                    "{kind}: {status:?}"
                );
                cut_off[which] += 1;
            }
        }
    }
    assert!(
        cut_off[0] > 0 && cut_off[1] > 0,
        "the load cut no call off: {cut_off:?}"
    );

    // Work the server took on finishes after its caller left: wait until nothing changes.
    let mut applied = changes(&mut s).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = changes(&mut s).await;
        if now == applied {
            break;
        }
        applied = now;
    }
    let recorded = records(&mut s).await;
    println!(
        "STARTs: {} of {STARTS} opened a session ({} answered, {} cut off), {} recorded; \
         Registers: {} of {REGISTERS} filed ({} answered, {} cut off), {} recorded",
        applied.0.len(),
        acknowledged[0].len(),
        cut_off[0],
        recorded.0.len(),
        applied.1.len(),
        acknowledged[1].len(),
        cut_off[1],
        recorded.1.len(),
    );
    assert_eq!(applied.0, recorded.0, "sessions vs their START records");
    assert_eq!(applied.1, recorded.1, "anchors vs their Register records");
    assert!(
        acknowledged[0].is_subset(&applied.0),
        "an acknowledged START is missing"
    );
    assert!(
        acknowledged[1].is_subset(&applied.1),
        "an acknowledged Register is missing"
    );
}
