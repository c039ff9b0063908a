//! The decision log: every decision and admin action recorded, found by decision id, filtered
//! by merchant, session, decision and time.

mod common;

use anchor_pdp::proto::{self, Decision};
use common::*;

#[tokio::test]
async fn the_decision_id_finds_its_record() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.drive_mode = proto::DriveMode::Autonomous as i32;
    let denied = s.authorize(request).await;
    let found = s
        .log(proto::ReadDecisionLogRequest {
            decision_id: denied.decision_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(found.len(), 1);
    let record = &found[0];
    assert_eq!(record.id, denied.decision_id);
    assert_eq!(record.action, "authorize");
    assert_eq!(record.caller, "anonymous (admin)");
    assert_eq!(record.merchant_id, "m1");
    assert_eq!(record.decision, Decision::Deny as i32);
    assert_eq!(record.rule_ids, ["R3"]);
    assert_eq!(record.enforcement, "REFUSE_START");
    assert_eq!(record.policy_version, denied.policy_version);
    // The request as proto3 JSON, as grpcurl would show it.
    let request: serde_json::Value = serde_json::from_str(&record.request).expect("JSON request");
    assert_eq!(request["driveMode"], "DRIVE_MODE_AUTONOMOUS", "{request}");
    assert_eq!(request["merchantId"], "m1", "{request}");
    assert_eq!(record.entry_point, "grpc");
    assert_eq!(record.gateway_id, "test-gw");
    assert_eq!(record.change, "");
    assert_eq!(millis(&record.at), Some(T0));
    // A deny keeps its explanation, though the gateway did not ask for one (nor got one).
    assert!(denied.explanation.is_none());
    let explanation = record.explanation.as_ref().expect("explanation");
    assert_eq!(explanation.determining_policies, ["R3"]);
    assert!(
        explanation
            .context
            .iter()
            .any(|f| f.attribute == "drive_mode" && f.value == r#""AUTONOMOUS""#)
    );
    assert!(
        explanation
            .facts
            .iter()
            .any(|f| f.entity == r#"AnchorPdp::Anchor::"a1""#)
    );
    // An allow is not explained unless asked.
    let allowed = s.authorize(start()).await;
    let found = s
        .log(proto::ReadDecisionLogRequest {
            decision_id: allowed.decision_id,
            ..Default::default()
        })
        .await;
    assert!(found[0].explanation.is_none());
}

#[tokio::test]
async fn the_log_filters_by_merchant_session_decision_and_time() {
    let mut s = TestServer::admitted().await;
    s.merchant("m2", proto::MerchantTier::GlobalGoldSupplier)
        .await;
    let session = s.start_session().await;
    s.clock.advance(60_000);
    let recheck = s.authorize(live(&session)).await;
    let mut other = start();
    other.merchant_id = "m2".into();
    s.authorize(other).await;
    s.clock.advance(60_000);
    s.report(&session, "R7").await;

    let of_session = s
        .log(proto::ReadDecisionLogRequest {
            session_id: session.clone(),
            ..Default::default()
        })
        .await;
    let actions: Vec<&str> = of_session.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["authorize", "authorize", "ReportViolation"]);
    assert_eq!(of_session[1].id, recheck.decision_id);
    assert_eq!(of_session[2].outcome, "ok");

    let denies = s
        .log(proto::ReadDecisionLogRequest {
            decision: Decision::Deny as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(denies.len(), 1);
    assert_eq!(denies[0].merchant_id, "m2");

    let of_m2 = s
        .log(proto::ReadDecisionLogRequest {
            merchant_id: "m2".into(),
            ..Default::default()
        })
        .await;
    let m2_actions: Vec<&str> = of_m2.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(m2_actions, ["Register", "authorize"]);

    let ts = |ms: i64| {
        Some(prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: 0,
        })
    };
    let in_window = s
        .log(proto::ReadDecisionLogRequest {
            since: ts(T0 + 60_000),
            until: ts(T0 + 120_000),
            ..Default::default()
        })
        .await;
    assert_eq!(in_window.len(), 2, "{in_window:?}");
    assert!(in_window.iter().all(|r| r.action == "authorize"));

    // Every admin action is there, with who did it.
    let reviews = s
        .log(proto::ReadDecisionLogRequest {
            action: "ReviewFiling".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(reviews.len(), 3);
    assert!(
        reviews
            .iter()
            .all(|r| r.caller == "anonymous (admin)" && r.outcome == "ok")
    );
    let status = s
        .admin
        .get_decision_log_status(proto::GetDecisionLogStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.dropped, 0);
    assert_eq!(status.overflow, "wait");
    assert!(status.records >= 14, "{status:?}");
    // One segment so far, holding every record's bytes.
    assert_eq!(status.segments, 1);
    assert!(status.bytes > status.records * 100, "{status:?}");
}

#[tokio::test]
async fn refused_admin_actions_are_logged_with_their_error() {
    let mut s = TestServer::admitted().await;
    let refused = s
        .admin
        .review_filing(proto::ReviewFilingRequest {
            kind: proto::RegistrationKind::Anchor as i32,
            id: "a1".into(),
            verdict: proto::Verdict::Approve as i32,
            reviewer: "reviewer-2".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        refused.map(|_| ()).unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    let reviews = s
        .log(proto::ReadDecisionLogRequest {
            action: "ReviewFiling".into(),
            ..Default::default()
        })
        .await;
    let last = reviews.last().expect("logged");
    assert!(
        last.outcome.starts_with("FailedPrecondition"),
        "{}",
        last.outcome
    );
    assert!(last.request.contains("reviewer-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sessions_and_their_events_leave_with_the_log_age_limit() {
    let temp = tempfile::tempdir().expect("temp");
    let data_dir = temp.path().join("data");
    let clock = anchor_pdp::clock::ManualClock::new(T0);
    let mut s = TestServer::start_on(&data_dir, clock.clone()).await;
    admit(&mut s).await;
    let ended = s.start_session().await;
    s.report(&ended, "R3").await;
    let live = s.start_session_in("r2").await;
    let events_before = enforcement_count(&mut s).await;
    assert_eq!(events_before, 1);
    s.stop().await;

    // 181 days on (the default age limit is 180): retention runs as the server starts.
    clock.advance(181 * DAY_MS);
    let mut s = TestServer::start_on(&data_dir, clock).await;
    let mut gone = false;
    for _ in 0..100 {
        let found = s
            .admin
            .get_session(proto::GetSessionRequest {
                session_id: ended.clone(),
            })
            .await;
        if found.is_err_and(|status| status.code() == tonic::Code::NotFound) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the closed session outlived the age limit");
    assert_eq!(enforcement_count(&mut s).await, 0);
    // A live broadcast is never pruned, however old.
    assert_eq!(
        s.session(&live).await.state,
        proto::SessionState::Active as i32
    );
}

/// Files and approves m1's broadcast fixtures on a server started on its own data dir.
async fn admit(s: &mut TestServer) {
    s.merchant("m1", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.provider("p1", true).await;
    s.anchor("a1", "m1", "p1", proto::ImageStyle::RealisticHuman)
        .await;
    s.driver("d1", "m1").await;
    s.room("r1", "m1").await;
    for (kind, id) in [
        (proto::RegistrationKind::Anchor, "a1"),
        (proto::RegistrationKind::Driver, "d1"),
        (proto::RegistrationKind::Room, "r1"),
    ] {
        s.approve(kind, id).await;
    }
}

/// Enforcement events kept, read from the start of the stream.
async fn enforcement_count(s: &mut TestServer) -> usize {
    let mut stream = s
        .pdp
        .watch_enforcements(proto::WatchEnforcementsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut count = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        tokio_stream::StreamExt::next(&mut stream),
    )
    .await
    {
        count += 1;
    }
    count
}
