//! Crash safety, proven: concurrent Register, review and violation-report load against the
//! real binary, `kill -9` mid-load, restart on the same data dir, and check that every write a
//! client saw acknowledged is there and no penalty is half-applied. Several rounds.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use common::programs::{Guard, free_port};
use common::serve_sled;
use tonic::transport::Channel;

const ROUNDS: usize = 4;
const WORKERS: usize = 6;

fn spawn(data: &Path, port: u16, log: &Path) -> Guard {
    serve_sled(data, port, log, &[])
}

async fn connect(
    port: u16,
) -> (
    PolicyDecisionPointClient<Channel>,
    PolicyAdminClient<Channel>,
) {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    (
        PolicyDecisionPointClient::new(channel.clone()),
        PolicyAdminClient::new(channel),
    )
}

/// What clients saw acknowledged.
#[derive(Default)]
struct Acked {
    /// (kind, id, revision) of every acknowledged Register and review.
    records: Vec<(proto::RegistrationKind, String, u64, i32)>,
    /// (merchant, session) of every acknowledged violation report.
    penalized: Vec<(String, String)>,
    /// Sessions acknowledged as opened, by merchant.
    sessions: Vec<(String, String)>,
    /// Decision ids of acknowledged Authorize calls: STARTs (their record goes with the
    /// session, through the outbox) and LIVE re-checks (straight to the log).
    decisions: Vec<String>,
}

fn register(record: Record) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    }
}

/// One worker: files a merchant's room, anchor and driver, approves them, opens a broadcast
/// and reports a violation on it (E2: warning + freeze), again and again until the server dies.
async fn worker(port: u16, round: usize, worker: usize, acked: Arc<Mutex<Acked>>) {
    let (mut pdp, mut admin) = connect(port).await;
    for n in 0.. {
        let m = format!("m-{round}-{worker}-{n}");
        let ack = |kind, id: &str, reg: &proto::Registration| {
            if let Ok(mut a) = acked.lock() {
                a.records
                    .push((kind, id.to_owned(), reg.revision, reg.review_status));
            }
        };
        let Ok(r) = pdp
            .register(register(Record::Merchant(proto::Merchant {
                id: m.clone(),
                tier: 1,
                display_name: String::new(),
            })))
            .await
        else {
            return;
        };
        ack(
            proto::RegistrationKind::Merchant,
            &m,
            r.get_ref().registration.as_ref().expect("reg"),
        );
        let filings = [
            (
                proto::RegistrationKind::Room,
                format!("{m}-r"),
                Record::Room(proto::LivestreamRoom {
                    id: format!("{m}-r"),
                    owner_merchant_id: m.clone(),
                    display_name: String::new(),
                }),
            ),
            (
                proto::RegistrationKind::Anchor,
                format!("{m}-a"),
                Record::Anchor(common::anchor_record(
                    &format!("{m}-a"),
                    &m,
                    "p1",
                    proto::ImageStyle::RealisticHuman,
                )),
            ),
            (
                proto::RegistrationKind::Driver,
                format!("{m}-d"),
                Record::Driver(proto::Driver {
                    id: format!("{m}-d"),
                    owner_merchant_id: m.clone(),
                    identity_reference: "kyc".into(),
                    display_name: String::new(),
                }),
            ),
        ];
        for (kind, id, record) in filings {
            let Ok(r) = pdp.register(register(record)).await else {
                return;
            };
            ack(kind, &id, r.get_ref().registration.as_ref().expect("reg"));
            let review = proto::ReviewFilingRequest {
                kind: kind as i32,
                id: id.clone(),
                verdict: proto::Verdict::Approve as i32,
                reviewer: "crash".into(),
                ..Default::default()
            };
            let Ok(r) = admin.review_filing(review).await else {
                return;
            };
            ack(kind, &id, r.get_ref().registration.as_ref().expect("reg"));
        }
        let mut start = common::start();
        start.merchant_id = m.clone();
        start.room_id = format!("{m}-r");
        start.anchor_id = format!("{m}-a");
        start.driver_id = format!("{m}-d");
        let Ok(allowed) = pdp.authorize(start).await else {
            return;
        };
        let allowed = allowed.into_inner();
        let session = allowed.session_id;
        assert!(!session.is_empty(), "an admitted broadcast was refused");
        if let Ok(mut a) = acked.lock() {
            a.sessions.push((m.clone(), session.clone()));
            a.decisions.push(allowed.decision_id);
        }
        let Ok(recheck) = pdp.authorize(common::live(&session)).await else {
            return;
        };
        if let Ok(mut a) = acked.lock() {
            a.decisions.push(recheck.into_inner().decision_id);
        }
        let report = proto::ReportViolationRequest {
            request_id: String::new(),
            session_id: session.clone(),
            rule_id: "R6".into(),
            inspector: "crash".into(),
            note: String::new(),
        };
        if admin.report_violation(report).await.is_err() {
            return;
        }
        if let Ok(mut a) = acked.lock() {
            a.penalized.push((m, session));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_no_penalty_is_half_applied() {
    let temp = tempfile::tempdir().expect("temp");
    let data = temp.path().join("data");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut port = free_port();
    let mut server = spawn(&data, port, &temp.path().join("server-0.log"));
    {
        let (mut pdp, mut admin) = connect(port).await;
        pdp.register(register(Record::Provider(proto::ServiceProvider {
            id: "p1".into(),
            display_name: String::new(),
        })))
        .await
        .expect("provider");
        admin
            .set_provider_listing(proto::SetProviderListingRequest {
                request_id: String::new(),
                provider_id: "p1".into(),
                listed: true,
                operator: "crash".into(),
                expected_revision: None,
            })
            .await
            .expect("listing");
    }
    let mut checked_total = 0;
    for round in 0..ROUNDS {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(worker(port, round, w, acked.clone())))
            .collect();
        // Kill mid-load, at a different moment each round.
        tokio::time::sleep(Duration::from_millis(700 + 150 * round as u64)).await;
        server.child.kill().expect("kill -9");
        server.child.wait().expect("reap");
        for w in workers {
            w.await.expect("worker");
        }
        port = free_port();
        server = spawn(
            &data,
            port,
            &temp.path().join(format!("server-{}.log", round + 1)),
        );
        let (_, mut admin) = connect(port).await;
        let (records, penalized, sessions, decisions) = {
            let a = acked.lock().expect("acked");
            (
                a.records.clone(),
                a.penalized.clone(),
                a.sessions.clone(),
                a.decisions.clone(),
            )
        };
        let mut lost = Vec::new();
        for id in &decisions {
            let mut found = admin
                .read_decision_log(proto::ReadDecisionLogRequest {
                    decision_id: id.clone(),
                    ..Default::default()
                })
                .await
                .expect("read log")
                .into_inner();
            match found.message().await {
                Ok(Some(record)) if &record.id == id => {}
                other => lost.push(format!("decision record {id}: {other:?}")),
            }
        }
        for (kind, id, revision, status) in &records {
            match admin
                .get_registration(proto::GetRegistrationRequest {
                    kind: *kind as i32,
                    id: id.clone(),
                })
                .await
            {
                Ok(r) => {
                    let stored = r.into_inner().registration.expect("registration");
                    if stored.revision < *revision
                        || (stored.revision == *revision && stored.review_status != *status)
                    {
                        lost.push(format!(
                            "{kind:?} {id} rev {revision}: stored rev {}",
                            stored.revision
                        ));
                    }
                }
                Err(e) => lost.push(format!("{kind:?} {id}: {e}")),
            }
        }
        for (merchant, session) in &penalized {
            let s = admin
                .get_session(proto::GetSessionRequest {
                    session_id: session.clone(),
                })
                .await
                .map(|r| r.into_inner().session);
            match s {
                Ok(Some(s))
                    if s.state == proto::SessionState::ShutDown as i32
                        && s.penalty_applied == proto::Penalty::E2WarnShutDownAndFreeze as i32 => {}
                other => lost.push(format!("penalty on {session} of {merchant}: {other:?}")),
            }
        }
        // Atomicity: a session's penalty, the account's warning and its freeze come together.
        let mut half = Vec::new();
        for (merchant, session) in &sessions {
            let s = admin
                .get_session(proto::GetSessionRequest {
                    session_id: session.clone(),
                })
                .await;
            let Ok(s) = s.map(|r| r.into_inner().session.expect("session")) else {
                lost.push(format!("session {session} of {merchant}"));
                continue;
            };
            let account = admin
                .get_account(proto::GetAccountRequest {
                    merchant_id: merchant.clone(),
                })
                .await
                .expect("account")
                .into_inner()
                .account
                .expect("account");
            let penalized = s.penalty_applied != proto::Penalty::Unspecified as i32;
            let consistent = if penalized {
                s.state == proto::SessionState::ShutDown as i32
                    && account.warnings == 1
                    && account.penalties == 1
                    && account.frozen_until.is_some()
            } else {
                account.warnings == 0 && account.penalties == 0 && account.frozen_until.is_none()
            };
            if !consistent {
                half.push(format!("{merchant}: session {s:?} account {account:?}"));
            }
        }
        let checked = records.len() + penalized.len() + sessions.len() + decisions.len();
        checked_total = checked;
        println!(
            "crash round {}: {} acknowledged writes checked ({} registrations/reviews, {} sessions, {} penalties, {} decision records), {} lost, {} half-applied",
            round + 1,
            checked,
            records.len(),
            sessions.len(),
            penalized.len(),
            decisions.len(),
            lost.len(),
            half.len()
        );
        assert!(lost.is_empty(), "lost after kill -9: {lost:#?}");
        assert!(half.is_empty(), "half-applied penalties: {half:#?}");
    }
    assert!(
        checked_total > 50,
        "too little load to prove anything: {checked_total}"
    );
    let _ = server.child.kill();
    let _ = server.child.wait();
}
