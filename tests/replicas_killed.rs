//! Replicas as real processes over a real 3-member etcd: one is killed with `kill -9` mid-load
//! and the other goes on; nothing acknowledged is lost; the killed one restarts and catches up.
//! And no stream is cut by a replica dying: nginx-rtmp's hooks reach two replicas through an
//! nginx `upstream`, replica A dies mid-broadcast, B keeps answering `on_update`, and a
//! violation reported on B still cuts the stream.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use common::etcd::EtcdCluster;
use common::programs::Nginx;
use common::replica::{clients, fixtures, register, spawn};

#[derive(Default)]
struct Acked {
    /// (merchant id, revision) of every acknowledged Register.
    merchants: Vec<(String, u64)>,
    /// (session id, decision id) of every acknowledged START.
    starts: Vec<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_load_loses_nothing_acknowledged_and_catches_up_on_restart() {
    let cluster = EtcdCluster::start(3).await;
    let prefix = format!("/crash-{}/", uuid::Uuid::now_v7());
    let dirs = tempfile::tempdir().expect("dirs");
    let mut a = spawn(&cluster, &prefix, "A", &dirs.path().join("a"));
    let b = spawn(&cluster, &prefix, "B", &dirs.path().join("b"));
    const WORKERS: usize = 4;
    fixtures(a.grpc, WORKERS).await;

    // Load on A: each worker registers merchants and (re)starts broadcasts in its own room.
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let acked = acked.clone();
        let (mut pdp, _) = clients(a.grpc).await;
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{worker}-m{i}");
                let registered = pdp
                    .register(register(Record::Merchant(proto::Merchant {
                        id: id.clone(),
                        tier: proto::MerchantTier::Other as i32,
                        display_name: id.clone(),
                    })))
                    .await;
                let Ok(registered) = registered else { return };
                let revision = registered
                    .into_inner()
                    .registration
                    .map_or(0, |r| r.revision);
                acked.lock().expect("acked").merchants.push((id, revision));
                let mut start = common::start();
                start.room_id = format!("r{}", worker + 1);
                let Ok(started) = pdp.authorize(start).await else {
                    return;
                };
                let started = started.into_inner();
                assert_eq!(
                    started.decision,
                    proto::Decision::Allow as i32,
                    "{started:?}"
                );
                acked
                    .lock()
                    .expect("acked")
                    .starts
                    .push((started.session_id, started.decision_id));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.guard.child.kill().expect("kill -9");
    let _ = a.guard.child.wait();
    for worker in workers {
        worker.await.expect("worker");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    assert!(
        acked.merchants.len() > 20 && acked.starts.len() > 20,
        "too little load before the kill: {} registers, {} starts",
        acked.merchants.len(),
        acked.starts.len()
    );

    // B serves, with everything A acknowledged.
    let check = |addr: SocketAddr, acked: &Acked| {
        let merchants = acked.merchants.clone();
        let starts = acked.starts.clone();
        async move {
            let (mut pdp, mut admin) = clients(addr).await;
            let deadline = Instant::now() + Duration::from_secs(10);
            for (id, revision) in &merchants {
                loop {
                    let found = admin
                        .get_registration(proto::GetRegistrationRequest {
                            kind: proto::RegistrationKind::Merchant as i32,
                            id: id.clone(),
                        })
                        .await;
                    match found {
                        Ok(found) => {
                            let stored = found.into_inner().registration.expect("registration");
                            assert!(stored.revision >= *revision, "{id} went back");
                            break;
                        }
                        Err(e) => {
                            assert!(Instant::now() < deadline, "{id} lost: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            for (session, _) in &starts {
                admin
                    .get_session(proto::GetSessionRequest {
                        session_id: session.clone(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("session {session} lost: {e}"));
            }
            // And it decides: a new broadcast in room 1 is admitted.
            let mut start = common::start();
            start.room_id = "r1".into();
            let admitted = pdp.authorize(start).await.expect("start").into_inner();
            assert_eq!(
                admitted.decision,
                proto::Decision::Allow as i32,
                "{admitted:?}"
            );
        }
    };
    check(b.grpc, &acked).await;

    // A restarts on its data dir, catches up, and its own decision log has the record of every
    // START it acknowledged (they travelled with their transactions through etcd).
    let a = spawn(&cluster, &prefix, "A", &dirs.path().join("a"));
    check(a.grpc, &acked).await;
    let (_, mut admin) = clients(a.grpc).await;
    for (_, decision) in &acked.starts {
        let mut stream = admin
            .read_decision_log(proto::ReadDecisionLogRequest {
                decision_id: decision.clone(),
                ..Default::default()
            })
            .await
            .expect("read log")
            .into_inner();
        let record = stream.message().await.expect("record");
        assert!(record.is_some(), "decision {decision} missing from A's log");
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_is_cut_by_a_replica_dying_and_a_violation_reported_on_the_survivor_still_cuts_it()
 {
    let cluster = EtcdCluster::start(3).await;
    let prefix = format!("/nginx-{}/", uuid::Uuid::now_v7());
    let dirs = tempfile::tempdir().expect("dirs");
    let mut a = spawn(&cluster, &prefix, "A", &dirs.path().join("a"));
    let b = spawn(&cluster, &prefix, "B", &dirs.path().join("b"));
    fixtures(a.grpc, 1).await;
    let interval = 1;
    let nginx = Nginx::start_upstream(&[a.http, b.http], "edge-1", interval);
    let mut ffmpeg = nginx
        .publish("r1?anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON");
    let (_, mut admin) = clients(b.grpc).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        let live = admin
            .list_live_sessions(proto::ListLiveSessionsRequest {
                merchant_id: "m1".into(),
            })
            .await
            .expect("list")
            .into_inner()
            .sessions;
        if let Some(session) = live.into_iter().next() {
            break session;
        }
        assert!(
            ffmpeg.exited().is_none(),
            "ffmpeg stopped:\n{}",
            ffmpeg.log()
        );
        assert!(Instant::now() < deadline, "never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A dies mid-broadcast; several update intervals later the stream still runs, its
    // re-checks answered by B.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.guard.child.kill().expect("kill -9");
    let _ = a.guard.child.wait();
    tokio::time::sleep(Duration::from_secs(4 * u64::from(interval))).await;
    assert!(
        ffmpeg.exited().is_none(),
        "the stream was cut when replica A died:\n{}\n{}",
        ffmpeg.log(),
        std::fs::read_to_string(&b.guard.log).unwrap_or_default()
    );
    let mut checks = admin
        .read_decision_log(proto::ReadDecisionLogRequest {
            session_id: session.id.clone(),
            entry_point: "nginx-rtmp".into(),
            ..Default::default()
        })
        .await
        .expect("log")
        .into_inner();
    let mut on_b = 0;
    while let Some(record) = checks.message().await.expect("record") {
        if record.decision == proto::Decision::Allow as i32 {
            on_b += 1;
        }
    }
    assert!(on_b >= 2, "B answered {on_b} of the re-checks");

    // A violation reported on B cuts the stream at its next update.
    admin
        .report_violation(proto::ReportViolationRequest {
            request_id: String::new(),
            session_id: session.id.clone(),
            rule_id: "R2".into(),
            inspector: "inspector-7".into(),
            note: "seen on stream".into(),
        })
        .await
        .expect("report");
    assert!(
        ffmpeg
            .wait_exit(Duration::from_secs(u64::from(interval) + 4))
            .is_some(),
        "not cut after the report on B:\n{}",
        ffmpeg.log()
    );
}
