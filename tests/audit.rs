//! Every decision on the record, exactly once: from every entry point, with the change it made,
//! idempotent STARTs, one live session per room, and one penalty per discovery.

mod common;

use anchor_pdp::proto::{self, Decision, Penalty, RegistrationKind, SessionState};
use common::hooks::*;
use common::*;

fn by_merchant(merchant: &str) -> proto::ReadDecisionLogRequest {
    proto::ReadDecisionLogRequest {
        merchant_id: merchant.into(),
        ..Default::default()
    }
}

fn request_json(record: &proto::DecisionLogRecord) -> serde_json::Value {
    serde_json::from_str(&record.request)
        .unwrap_or_else(|e| panic!("{e}: request is not JSON: {}", record.request))
}

async fn hooked() -> TestServer {
    TestServer::admitted_with(Options {
        http: true,
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_decision_is_recorded_with_its_entry_point_gateway_and_change() {
    let mut s = TestServer::admitted().await;
    let allowed = s.authorize(start()).await;
    assert_allowed(&allowed);
    let record = s.log_record(&allowed.decision_id).await;
    assert_eq!(
        (
            record.entry_point.as_str(),
            record.gateway_id.as_str(),
            record.caller.as_str(),
            record.merchant_id.as_str(),
            record.session_id.as_str(),
            record.decision,
            record.change.as_str(),
        ),
        (
            "grpc",
            "test-gw",
            "anonymous (admin)",
            "m1",
            allowed.session_id.as_str(),
            Decision::Allow as i32,
            "session opened",
        )
    );
    assert_eq!(request_json(&record)["roomId"], "r1");
    let mine = s.log(by_merchant("m1")).await;
    assert!(mine.iter().any(|r| r.id == allowed.decision_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_and_srs_hook_decisions_are_recorded_with_the_hook_fields() {
    let mut s = hooked().await;
    let http = s.http_addr.expect("hook listener");

    let (status, body) = http_post(
        http,
        "/rtmp/edge-1/on_publish",
        &nginx_publish("r1", 7, CLAIMS),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    let decision_id = answer["decision_id"]
        .as_str()
        .expect("decision id")
        .to_owned();
    let record = s.log_record(&decision_id).await;
    assert_eq!(
        (
            record.entry_point.as_str(),
            record.gateway_id.as_str(),
            record.caller.as_str(),
            record.merchant_id.as_str(),
            record.decision,
            record.enforcement.as_str(),
        ),
        (
            "nginx-rtmp",
            "edge-1",
            "gateway edge-1 (hook)",
            "m1",
            Decision::Allow as i32,
            "NONE"
        )
    );
    let fields = request_json(&record);
    assert_eq!(
        (fields["clientid"].as_str(), fields["anchor"].as_str()),
        (Some("7"), Some("a1"))
    );
    assert!(
        s.log(by_merchant("m1"))
            .await
            .iter()
            .any(|r| r.id == decision_id)
    );

    // A request that cannot be mapped is a recorded deny too.
    let (status, body) = http_post(
        http,
        "/rtmp/edge-1/on_publish",
        &nginx_publish("r1", 8, "&anchor=a1"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let refused = s
        .log_record(json(&body)["decision_id"].as_str().expect("id"))
        .await;
    assert_eq!(
        (refused.decision, refused.rule_ids.clone()),
        (Decision::Deny as i32, vec!["GATEWAY".to_owned()])
    );

    s.room("r2", "m1").await;
    s.approve(RegistrationKind::Room, "r2").await;
    let (status, body) = srs_post(
        http,
        "/srs/srs-1/on_publish",
        &srs_body(
            "on_publish",
            "r2",
            "?anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let record = s
        .log_record(json(&body)["decision_id"].as_str().expect("id"))
        .await;
    assert_eq!(
        (
            record.entry_point.as_str(),
            record.gateway_id.as_str(),
            record.merchant_id.as_str()
        ),
        ("srs", "srs-1", "m1")
    );
    assert_eq!(request_json(&record)["stream"], "r2");
}

async fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, FORM, body).await
}

async fn srs_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, "application/json", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_records_its_owner_and_the_recheck_it_caused() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    s.review(RegistrationKind::Anchor, "a1", proto::Verdict::Revoke)
        .await;
    let mine = s.log(by_merchant("m1")).await;
    let revoke = mine
        .iter()
        .find(|r| r.action == "ReviewFiling" && r.change.contains("REVOKED"))
        .unwrap_or_else(|| panic!("no revoke record for m1: {mine:?}"));
    assert_eq!(revoke.change, "anchor a1 revision 3, REVOKED");
    let rechecks: Vec<_> = mine
        .iter()
        .filter(|r| r.entry_point == "pdp-recheck")
        .collect();
    assert_eq!(rechecks.len(), 1, "{mine:?}");
    let recheck = rechecks[0];
    assert_eq!(
        (
            recheck.session_id.as_str(),
            recheck.cause_id.as_str(),
            recheck.decision,
            recheck.enforcement.as_str(),
            recheck.penalty_applied,
            recheck.warning_issued,
            recheck.gateway_id.as_str(),
            recheck.change.as_str(),
        ),
        (
            session.as_str(),
            revoke.id.as_str(),
            Decision::Deny as i32,
            "SHUT_DOWN",
            Penalty::E2WarnShutDownAndFreeze as i32,
            true,
            "test-gw",
            "session shut down; E2 applied",
        )
    );
    assert_eq!(recheck.rule_ids, ["R8"]);
    assert!(
        recheck.explanation.is_some(),
        "a deny keeps its explanation"
    );
    // The same record by its id.
    assert_eq!(&s.log_record(&recheck.id).await, recheck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_sweep_is_recorded_with_the_report_that_caused_it() {
    let mut s = TestServer::admitted().await;
    let reported = s.start_session().await;
    let other = s.start_session_in("r2").await;
    s.report(&reported, "R6").await;
    let mine = s.log(by_merchant("m1")).await;
    let report = mine
        .iter()
        .find(|r| r.action == "ReportViolation")
        .unwrap_or_else(|| panic!("no report record: {mine:?}"));
    assert_eq!(
        (
            report.session_id.as_str(),
            report.penalty_applied,
            report.change.as_str()
        ),
        (
            reported.as_str(),
            Penalty::E2WarnShutDownAndFreeze as i32,
            "session shut down; E2 applied"
        )
    );
    let sweeps: Vec<_> = mine
        .iter()
        .filter(|r| r.entry_point == "pdp-sweep")
        .collect();
    assert_eq!(sweeps.len(), 1, "{mine:?}");
    assert_eq!(
        (
            sweeps[0].session_id.as_str(),
            sweeps[0].cause_id.as_str(),
            sweeps[0].rule_ids.clone(),
            sweeps[0].penalty_applied,
        ),
        (
            other.as_str(),
            report.id.as_str(),
            vec!["E3".to_owned()],
            Penalty::Unspecified as i32
        )
    );
    assert_eq!(s.session(&other).await.state, SessionState::ShutDown as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_retried_with_its_key_gets_the_same_session_and_decision() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.idempotency_key = "publish-42".into();
    let first = s.authorize(request.clone()).await;
    assert_allowed(&first);
    let again = s.authorize(request.clone()).await;
    assert_allowed(&again);
    assert_eq!(
        (
            again.session_id.as_str(),
            again.decision_id.as_str(),
            again.replayed
        ),
        (first.session_id.as_str(), first.decision_id.as_str(), true)
    );
    let live = s
        .admin
        .list_live_sessions(proto::ListLiveSessionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(live.len(), 1);
    // Opened once, recorded once.
    let opened: Vec<_> = s
        .log(by_merchant("m1"))
        .await
        .into_iter()
        .filter(|r| r.change.starts_with("session opened"))
        .collect();
    assert_eq!(opened.len(), 1);

    // Once the session is closed, the key cannot bring it back.
    s.report(&first.session_id, "R3").await;
    let late = s.authorize(request).await;
    assert_eq!(
        (decision(&late), rule_ids(&late), enforcement(&late)),
        (
            Decision::Deny,
            vec!["SESSION".to_owned()],
            proto::Enforcement::RefuseStart
        )
    );
    assert_eq!(late.session_id, first.session_id);
    assert!(!late.replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_publish_retried_for_the_same_connection_opens_one_session() {
    let s = hooked().await;
    let http = s.http_addr.expect("hook listener");
    let body = nginx_publish("r1", 7, CLAIMS);
    let (_, first) = http_post(http, "/rtmp/edge-1/on_publish", &body).await;
    let (_, again) = http_post(http, "/rtmp/edge-1/on_publish", &body).await;
    let (first, again) = (json(&first), json(&again));
    assert_eq!(first["session_id"], again["session_id"]);
    assert_eq!(first["decision_id"], again["decision_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_start_on_a_live_room_supersedes_its_session() {
    let mut s = TestServer::admitted().await;
    let first = s.authorize(start()).await;
    let second = s.authorize(start()).await;
    assert_allowed(&second);
    assert_ne!(first.session_id, second.session_id);
    assert_eq!(second.superseded_session_id, first.session_id);
    let old = s.session(&first.session_id).await;
    assert_eq!(old.state, SessionState::Ended as i32);
    assert_eq!(
        old.close_reason,
        format!(
            "superseded by session {}: a room has one live broadcast",
            second.session_id
        )
    );
    let start_record = s.log_record(&second.decision_id).await;
    assert_eq!(
        start_record.change,
        format!("session opened; superseded session {}", first.session_id)
    );
    let superseded = s
        .log(proto::ReadDecisionLogRequest {
            session_id: first.session_id.clone(),
            action: "Supersede".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(superseded.len(), 1);
    assert_eq!(superseded[0].cause_id, second.decision_id);
    // No penalty: superseding breaks no rule.
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.penalties), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revoke_over_three_live_sessions_is_one_warning_and_one_freeze() {
    let mut s = TestServer::admitted().await;
    let sessions = [
        s.start_session().await,
        s.start_session_in("r2").await,
        s.start_session_in("r3").await,
    ];
    s.review(RegistrationKind::Anchor, "a1", proto::Verdict::Revoke)
        .await;
    for session in &sessions {
        assert_eq!(
            s.session(session).await.state,
            SessionState::ShutDown as i32
        );
    }
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.penalties), (1, 1));
    let penalized: Vec<_> = s
        .log(by_merchant("m1"))
        .await
        .into_iter()
        .filter(|r| r.penalty_applied == Penalty::E2WarnShutDownAndFreeze as i32)
        .collect();
    assert_eq!(penalized.len(), 1, "{penalized:?}"); // The status's count is kept as records are written, by every path, not counted by
    // walking the log: it matches what reading the whole log finds.
    let everything = s
        .log(proto::ReadDecisionLogRequest {
            limit: 100_000,
            ..Default::default()
        })
        .await;
    let status = s
        .admin
        .get_decision_log_status(proto::GetDecisionLogStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.records, everything.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_that_closes_a_session_records_what_it_observed() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let mut check = live(&session);
    check.drive_mode = proto::DriveMode::PreRecorded as i32;
    let denied = s.authorize(check).await;
    assert_eq!(
        (decision(&denied), rule_ids(&denied), enforcement(&denied)),
        (
            Decision::Deny,
            vec!["R3".to_owned()],
            proto::Enforcement::ShutDown
        )
    );
    let closed = s.session(&session).await;
    assert_eq!(
        (closed.state, closed.drive_mode),
        (
            SessionState::ShutDown as i32,
            proto::DriveMode::PreRecorded as i32
        )
    );
}
