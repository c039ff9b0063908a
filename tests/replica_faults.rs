//! Replicas over a real 3-member etcd under the faults a process can suffer without dying:
//! a member that hangs (SIGSTOP, not a crash), and a replica that hangs and resumes. Each
//! asserts the outcome a caller sees: writes go on, health stays SERVING, and no answer comes
//! from a view older than a write the replica already acknowledged.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use common::etcd::EtcdCluster;
use common::replica::{clients, fixtures, register, spawn};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn in_room(room: &str) -> proto::AuthorizeRequest {
    let mut request = common::start();
    request.room_id = room.into();
    request
}

fn report(session_id: &str, rule: &str) -> proto::ReportViolationRequest {
    proto::ReportViolationRequest {
        request_id: String::new(),
        session_id: session_id.into(),
        rule_id: rule.into(),
        inspector: "inspector-7".into(),
        note: "seen on stream".into(),
    }
}

fn lift() -> proto::LiftFreezeRequest {
    proto::LiftFreezeRequest {
        request_id: String::new(),
        merchant_id: "m1".into(),
        operator: "ops-1".into(),
        reason: "next phase".into(),
    }
}

/// Samples the health (service "", what load balancers probe) of every replica until `stop`,
/// and counts the samples that were not SERVING.
fn sample_health(
    replicas: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut samples = 0;
        let mut bad = Vec::new();
        let started = Instant::now();
        while !stop.load(Ordering::Acquire) {
            for addr in &replicas {
                let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .expect("uri")
                    .timeout(Duration::from_secs(2))
                    .connect()
                    .await;
                let status = match channel {
                    Ok(channel) => HealthClient::new(channel)
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().status),
                    Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                };
                samples += 1;
                if !matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
                    bad.push(format!(
                        "{addr} at {:.1} s: {status:?}",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (samples, bad)
    })
}

/// Registers merchants through each replica until `stop`, noting every failure; each task
/// returns how many it wrote and the slowest write.
fn write_all_along(
    replicas: &[(&'static str, SocketAddr)],
    stop: &Arc<AtomicBool>,
    failures: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<(usize, Duration)>> {
    let mut writers = Vec::new();
    for &(name, addr) in replicas {
        let (stop, failures) = (stop.clone(), failures.clone());
        writers.push(tokio::spawn(async move {
            let (mut pdp, _) = clients(addr).await;
            let (mut written, mut slowest) = (0, Duration::ZERO);
            while !stop.load(Ordering::Acquire) {
                let id = format!("{name}-m{written}");
                let asked = Instant::now();
                let outcome = pdp
                    .register(register(Record::Merchant(proto::Merchant {
                        id: id.clone(),
                        tier: proto::MerchantTier::Other as i32,
                        display_name: id.clone(),
                    })))
                    .await;
                slowest = slowest.max(asked.elapsed());
                if let Err(e) = outcome {
                    failures
                        .lock()
                        .expect("failures")
                        .push(format!("{id}: {e}"));
                }
                written += 1;
            }
            (written, slowest)
        }));
    }
    writers
}

/// Stops the writers and the health sampler; asserts no write failed and health stayed
/// SERVING. Returns the writes made.
async fn no_write_failed_and_always_serving(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<(usize, Duration)>>,
    failures: &Mutex<Vec<String>>,
    health: tokio::task::JoinHandle<(usize, Vec<String>)>,
) -> usize {
    stop.store(true, Ordering::Release);
    let mut written = 0;
    for writer in writers {
        let (count, slowest) = writer.await.expect("writer");
        println!(
            "writer: {count} registrations, slowest {} ms",
            slowest.as_millis()
        );
        written += count;
    }
    let (samples, not_serving) = health.await.expect("health");
    let failures = failures.lock().expect("failures").clone();
    println!(
        "{written} writes, {} failed; {samples} health samples, {} not SERVING",
        failures.len(),
        not_serving.len()
    );
    assert!(written > 30, "too little load: {written} writes");
    assert!(failures.is_empty(), "writes failed: {failures:#?}");
    assert!(not_serving.is_empty(), "health: {not_serving:#?}");
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_member_changes_nothing_and_a_freeze_is_seen_at_once_by_the_replica_that_took_it() {
    let cluster = EtcdCluster::start(3).await;
    let prefix = format!("/hung-{}/", uuid::Uuid::now_v7());
    let dirs = tempfile::tempdir().expect("dirs");
    let a = spawn(&cluster, &prefix, "A", &dirs.path().join("a"));
    let b = spawn(&cluster, &prefix, "B", &dirs.path().join("b"));
    fixtures(a.grpc, 4).await;

    // Writes through both replicas all along: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let writers = write_all_along(&[("A", a.grpc), ("B", b.grpc)], &stop, &failures);
    let health = sample_health(vec![a.grpc, b.grpc], stop.clone());

    let (mut pdp_a, mut admin_a) = clients(a.grpc).await;
    let (mut pdp_b, _) = clients(b.grpc).await;
    for member in 0..3 {
        let room = format!("r{}", member + 1);
        let started = pdp_a.authorize(in_room(&room)).await.expect("start");
        let started = started.into_inner();
        assert_eq!(
            common::decision(&started),
            proto::Decision::Allow,
            "{started:?}"
        );

        cluster.pause(member);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reported = admin_a
            .report_violation(report(&started.session_id, "R6"))
            .await
            .unwrap_or_else(|e| panic!("member {member} paused: report: {e}"))
            .into_inner();
        assert_eq!(
            reported.penalty_applied,
            proto::Penalty::E2WarnShutDownAndFreeze as i32,
            "{reported:?}"
        );
        // The replica that took the freeze decides on it at once, whichever member hangs.
        let refused = pdp_a
            .authorize(in_room("r4"))
            .await
            .expect("start")
            .into_inner();
        assert_eq!(
            common::rule_ids(&refused),
            ["E3"],
            "member {member} paused: START on A after its own freeze: {refused:?}"
        );
        assert!(
            refused.store_revision >= reported.store_revision,
            "{} < {}",
            refused.store_revision,
            reported.store_revision
        );
        let live = pdp_a
            .authorize(common::live(&started.session_id))
            .await
            .expect("live")
            .into_inner();
        assert_eq!(
            common::decision(&live),
            proto::Decision::Deny,
            "member {member} paused: LIVE on A after its own freeze: {live:?}\nA's log:\n{}",
            a.guard.log()
        );
        // And the other replica, asked for at least the freeze's revision, too.
        let mut on_b = in_room("r4");
        on_b.min_revision = reported.store_revision;
        let refused = pdp_b
            .authorize(on_b)
            .await
            .expect("start on B")
            .into_inner();
        assert_eq!(common::rule_ids(&refused), ["E3"], "{refused:?}");

        tokio::time::sleep(Duration::from_millis(2500)).await;
        cluster.resume(member);
        admin_a.lift_freeze(lift()).await.expect("lift");
    }
    no_write_failed_and_always_serving(&stop, writers, &failures, health).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_resumed_from_a_pause_answers_nothing_queued_from_its_old_view() {
    let cluster = EtcdCluster::start(3).await;
    let prefix = format!("/paused-{}/", uuid::Uuid::now_v7());
    let dirs = tempfile::tempdir().expect("dirs");
    let a = spawn(&cluster, &prefix, "A", &dirs.path().join("a"));
    let b = spawn(&cluster, &prefix, "B", &dirs.path().join("b"));
    fixtures(a.grpc, 3).await;
    let (mut pdp_a, _) = clients(a.grpc).await;
    let (_, mut admin_b) = clients(b.grpc).await;
    let started = pdp_a.authorize(in_room("r1")).await.expect("start");
    let session = started.into_inner().session_id;
    let pid = a.guard.child.id().to_string();
    let signal = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    };

    signal("-STOP");
    let reported = admin_b
        .report_violation(report(&session, "R6"))
        .await
        .expect("report on B")
        .into_inner();
    assert_eq!(
        reported.penalty_applied,
        proto::Penalty::E2WarnShutDownAndFreeze as i32
    );
    // Requests to A queue up while it is stopped.
    let queued: Vec<_> = (0..16)
        .map(|i| match i % 2 {
            0 => in_room(if i % 4 == 0 { "r2" } else { "r3" }),
            _ => common::live(&session),
        })
        .map(|request| {
            let mut pdp = pdp_a.clone();
            tokio::spawn(async move { pdp.authorize(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal("-CONT");
    for (i, answer) in queued.into_iter().enumerate() {
        let answer = answer.await.expect("task").expect("authorize").into_inner();
        assert_eq!(
            common::decision(&answer),
            proto::Decision::Deny,
            "request {i} queued during the pause was answered from the old view: {answer:?}"
        );
        // Either decided on a view that has the freeze, or refused outright because the view
        // could not be brought up to date (fail closed, rule PDP): never allowed, and never
        // denied for reasons an old view made up.
        // The report's answer may carry a later revision than its freeze's commit (the E3
        // sweep after it catches the view up with a nudge write), so an answer below it refuses
        // outright or shows it knew of the shutdown or the freeze (no view older than the
        // report could know either).
        if answer.store_revision < reported.store_revision {
            let rules = common::rule_ids(&answer);
            let knew = answer.violations.iter().any(|v| {
                v.rule_id == "E3" || (v.rule_id == "SESSION" && v.message_en.contains("R6"))
            });
            assert!(
                rules == ["PDP"] || knew,
                "request {i}: answered at revision {} (the report at {}) neither as a \
                 fail-closed refusal nor knowing of the shutdown: {answer:?}",
                answer.store_revision,
                reported.store_revision
            );
        }
    }
}

/// A write on one replica and, the moment it is answered, a write that depends on it through
/// the other, under load: each is decided on what etcd holds, not on a view that has not
/// caught up yet (NOT_FOUND, FAILED_PRECONDITION, `was_frozen: false` would be stale answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_one_replica_is_seen_at_once_by_a_dependent_write_on_another() {
    let cluster = EtcdCluster::start(3).await;
    let prefix = format!("/dependent-{}/", uuid::Uuid::now_v7());
    let dirs = tempfile::tempdir().expect("dirs");
    let a = spawn(&cluster, &prefix, "A", &dirs.path().join("a"));
    let b = spawn(&cluster, &prefix, "B", &dirs.path().join("b"));
    fixtures(a.grpc, 2).await;
    let (mut pdp_a, mut admin_a) = clients(a.grpc).await;
    let (mut pdp_b, mut admin_b) = clients(b.grpc).await;

    // Load on both replicas meanwhile, so their watches have work to do.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for addr in [a.grpc, b.grpc] {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut pdp, _) = clients(addr).await;
            let mut i = 0;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                let id = format!("load-{addr}-{i}").replace([':', '.'], "-");
                let _ = pdp
                    .register(register(Record::Merchant(proto::Merchant {
                        id: id.clone(),
                        tier: proto::MerchantTier::Other as i32,
                        display_name: id,
                    })))
                    .await;
            }
        }));
    }

    let review = |id: &str, verdict: proto::Verdict| proto::ReviewFilingRequest {
        kind: proto::RegistrationKind::Room as i32,
        id: id.into(),
        verdict: verdict as i32,
        reviewer: "reviewer-1".into(),
        ..Default::default()
    };
    for i in 0..30 {
        let id = format!("dep-{i}");
        pdp_a
            .register(register(Record::Room(proto::LivestreamRoom {
                id: id.clone(),
                owner_merchant_id: "m1".into(),
                display_name: id.clone(),
            })))
            .await
            .expect("register on A");
        admin_b
            .review_filing(review(&id, proto::Verdict::Approve))
            .await
            .unwrap_or_else(|e| panic!("{i}: approve on B right after register on A: {e}"));
        admin_a
            .review_filing(review(&id, proto::Verdict::Revoke))
            .await
            .unwrap_or_else(|e| panic!("{i}: revoke on A right after approve on B: {e}"));
    }
    for i in 0..10 {
        let started = pdp_a.authorize(in_room("r1")).await.expect("start on A");
        let session = started.into_inner().session_id;
        let reported = admin_b
            .report_violation(report(&session, "R6"))
            .await
            .unwrap_or_else(|e| panic!("{i}: report on B right after START on A: {e}"))
            .into_inner();
        assert_eq!(
            reported.session.map(|s| s.state),
            Some(proto::SessionState::ShutDown as i32)
        );
        let lifted = admin_a
            .lift_freeze(lift())
            .await
            .unwrap_or_else(|e| panic!("{i}: lift on A right after report on B: {e}"))
            .into_inner();
        assert!(
            lifted.was_frozen,
            "{i}: the freeze B just wrote: {lifted:?}"
        );
        // A decision (unlike a write) answers from the view: asked for the lift's revision,
        // B waits for it rather than deny on the freeze it may still hold.
        let mut on_b = in_room("r2");
        on_b.min_revision = lifted.store_revision;
        let started = pdp_b.authorize(on_b).await.expect("start on B");
        let started = started.into_inner();
        assert_eq!(
            common::decision(&started),
            proto::Decision::Allow,
            "{i}: {started:?}"
        );
        let ended = pdp_a
            .end_session(proto::EndSessionRequest {
                session_id: started.session_id.clone(),
                reason: "publisher left".into(),
                request_id: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{i}: end on A right after START on B: {e}"))
            .into_inner();
        assert_eq!(
            ended.session.map(|s| s.state),
            Some(proto::SessionState::Ended as i32)
        );
    }
    stop.store(true, Ordering::Release);
    for task in load {
        task.await.expect("load");
    }
}

/// A member whose disk is lost is replaced (removed, a new one added empty, which copies the
/// data from the leader), each member in turn, under writes through two replicas: nothing
/// fails, health stays SERVING, and a freeze taken afterwards is enforced at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_is_replaced_under_load_and_nothing_fails() {
    let mut cluster = EtcdCluster::start(3).await;
    let prefix = format!("/wiped-{}/", uuid::Uuid::now_v7());
    let dirs = tempfile::tempdir().expect("dirs");
    let a = spawn(&cluster, &prefix, "A", &dirs.path().join("a"));
    let b = spawn(&cluster, &prefix, "B", &dirs.path().join("b"));
    fixtures(a.grpc, 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let writers = write_all_along(&[("A", a.grpc), ("B", b.grpc)], &stop, &failures);
    let health = sample_health(vec![a.grpc, b.grpc], stop.clone());
    for member in [0, 1, 2, 0] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.wipe(member).await;
    }
    no_write_failed_and_always_serving(&stop, writers, &failures, health).await;

    let (mut pdp_a, mut admin_a) = clients(a.grpc).await;
    let (mut pdp_b, _) = clients(b.grpc).await;
    let started = pdp_a
        .authorize(in_room("r1"))
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        common::decision(&started),
        proto::Decision::Allow,
        "{started:?}"
    );
    let reported = admin_a
        .report_violation(report(&started.session_id, "R6"))
        .await
        .expect("report")
        .into_inner();
    let mut on_b = in_room("r2");
    on_b.min_revision = reported.store_revision;
    let refused = pdp_b
        .authorize(on_b)
        .await
        .expect("start on B")
        .into_inner();
    assert_eq!(common::rule_ids(&refused), ["E3"], "{refused:?}");
}
