//! Races: reviewers on one filing, inspectors on one session.

mod common;

use anchor_pdp::proto::{self, Penalty, RegistrationKind as K};
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reviewers_racing_on_one_filing_yield_exactly_one_verdict() {
    let mut s = TestServer::admitted().await;
    for round in 0..20 {
        let id = format!("r-race-{round}");
        s.room(&id, "m1").await;
        let verdict = |verdict: proto::Verdict, reviewer: &str| proto::ReviewFilingRequest {
            kind: K::Room as i32,
            id: id.clone(),
            verdict: verdict as i32,
            reviewer: reviewer.into(),
            // Both saw revision 1.
            expected_revision: Some(1),
            ..Default::default()
        };
        let (mut a, mut b) = (s.admin.clone(), s.admin.clone());
        let approve = verdict(proto::Verdict::Approve, "reviewer-a");
        let reject = verdict(proto::Verdict::Reject, "reviewer-b");
        let (first, second) = tokio::join!(
            tokio::spawn(async move { a.review_filing(approve).await }),
            tokio::spawn(async move { b.review_filing(reject).await })
        );
        let results = [first.expect("task"), second.expect("task")];
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for lost in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(lost.code(), Code::Aborted | Code::FailedPrecondition),
                "{lost:?}"
            );
        }
        let stored = s
            .admin
            .get_registration(proto::GetRegistrationRequest {
                kind: K::Room as i32,
                id: id.clone(),
            })
            .await
            .expect("room")
            .into_inner()
            .registration
            .expect("room");
        assert_eq!(stored.revision, 2, "exactly one verdict written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_violation_reports_on_one_session_freeze_once() {
    let mut s = TestServer::admitted().await;
    for round in 0..10 {
        let session = s.start_session().await;
        let reports: Vec<_> = ["R2", "R6", "R7", "R8", "R2", "R6", "R7", "R8"]
            .into_iter()
            .map(|rule| {
                let mut admin = s.admin.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    admin
                        .report_violation(proto::ReportViolationRequest {
                            request_id: String::new(),
                            session_id: session,
                            rule_id: rule.into(),
                            inspector: format!("inspector-{rule}"),
                            note: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner())
                })
            })
            .collect();
        let mut applied = 0;
        for report in reports {
            let report = report.await.expect("task").expect("report");
            if report.penalty_applied != Penalty::Unspecified as i32 {
                applied += 1;
            }
        }
        assert_eq!(applied, 1, "round {round}: one freeze per session");
        let account = s.account("m1").await;
        assert_eq!(account.penalties, round + 1);
        // Lift it so the next round can broadcast.
        s.admin
            .lift_freeze(proto::LiftFreezeRequest {
                request_id: String::new(),
                merchant_id: "m1".into(),
                operator: "ops".into(),
                reason: String::new(),
            })
            .await
            .expect("lift");
    }
}

/// A freeze (an E2 report) racing STARTs of the same merchant in other rooms: each START
/// either commits before the freeze, and the freeze's sweep ends its session, or sees the
/// freeze and is refused. Once the report is answered, the merchant has no live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_racing_a_freeze_is_refused_or_ended_by_the_sweep() {
    let mut s = TestServer::admitted().await;
    const ROOMS: usize = 24;
    for room in 0..ROOMS {
        s.room(&format!("race-{room}"), "m1").await;
        s.approve(K::Room, &format!("race-{room}")).await;
    }
    let (mut refused_by_freeze, mut ended_by_sweep) = (0, 0);
    for round in 0..30 {
        let reported = s.start_session().await;
        let starts: Vec<_> = (0..ROOMS)
            .map(|room| {
                let mut pdp = s.pdp.clone();
                let mut request = start();
                request.room_id = format!("race-{room}");
                tokio::spawn(async move {
                    // Spread over the report's commit: some before, some after.
                    tokio::time::sleep(std::time::Duration::from_micros(100 * room as u64)).await;
                    pdp.authorize(request).await.map(|r| r.into_inner())
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let report = s.report(&reported, "R6").await;
        assert_eq!(
            report.penalty_applied,
            Penalty::E2WarnShutDownAndFreeze as i32,
            "{report:?}"
        );
        for start in starts {
            let response = start.await.expect("task").expect("authorize");
            if decision(&response) == proto::Decision::Deny {
                assert_eq!(rule_ids(&response), ["E3"], "round {round}: {response:?}");
                refused_by_freeze += 1;
            } else {
                ended_by_sweep += 1;
            }
        }
        let live: Vec<_> = s
            .admin
            .list_live_sessions(proto::ListLiveSessionsRequest {
                merchant_id: "m1".into(),
            })
            .await
            .expect("live sessions")
            .into_inner()
            .sessions
            .into_iter()
            .filter(|session| session.merchant_id == "m1")
            .map(|session| session.id)
            .collect();
        assert!(
            live.is_empty(),
            "round {round}: m1 is frozen but sessions {live:?} are live"
        );
        s.admin
            .lift_freeze(proto::LiftFreezeRequest {
                request_id: String::new(),
                merchant_id: "m1".into(),
                operator: "ops-1".into(),
                reason: "next round".into(),
            })
            .await
            .expect("lift");
    }
    // Both sides of the race were taken, or the test raced nothing.
    println!("refused by the freeze: {refused_by_freeze}, ended by its sweep: {ended_by_sweep}");
    assert!(refused_by_freeze > 0 && ended_by_sweep > 0);
}
