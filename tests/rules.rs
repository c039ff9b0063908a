//! Every rule (R1–R9) and enforcement (E1–E3) of RULES.md, each where it holds and where it is
//! broken, against a real server through the generated client.

mod common;

use anchor_pdp::domain::MAX_CLOCK_SKEW_MS;
use anchor_pdp::proto::{self, Decision, Enforcement, Penalty, RegistrationKind as K};
use common::*;

// ---- R1: only Chinese Gold Suppliers ----

#[tokio::test]
async fn r1_holds_for_chinese_gold_supplier() {
    let mut s = TestServer::admitted().await;
    assert_allowed(&s.authorize(start()).await);
}

#[tokio::test]
async fn r1_broken_for_global_gold_supplier() {
    let mut s = TestServer::admitted().await;
    s.merchant("m1", proto::MerchantTier::GlobalGoldSupplier)
        .await;
    let response = s.authorize(start()).await;
    assert_refused(&response, &["R1"]);
    assert_eq!(response.violations[0].penalty, Penalty::None as i32);
}

#[tokio::test]
async fn r1_broken_for_other_tier_and_for_unregistered_merchant() {
    let mut s = TestServer::admitted().await;
    s.merchant("m1", proto::MerchantTier::Other).await;
    assert_refused(&s.authorize(start()).await, &["R1"]);
    // An unknown merchant has no tier and owns none of the filings.
    let mut request = start();
    request.merchant_id = "nobody".into();
    assert_refused(&s.authorize(request).await, &["R1", "R6", "R7"]);
}

// ---- R2: provider listed on the Foreign Trade Service Market ----

#[tokio::test]
async fn r2_holds_for_listed_provider() {
    let mut s = TestServer::admitted().await;
    assert_allowed(&s.authorize(start()).await);
}

#[tokio::test]
async fn r2_broken_for_delisted_provider_reports_e1_without_applying_it() {
    let mut s = TestServer::admitted().await;
    s.provider("p1", false).await;
    let response = s.authorize(start()).await;
    assert_refused(&response, &["R2"]);
    assert_eq!(
        response.violations[0].penalty,
        Penalty::E1ShutDownAndFreeze as i32
    );
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.frozen_until), (0, None));
}

#[tokio::test]
async fn r2_broken_for_never_listed_provider() {
    let mut s = TestServer::admitted().await;
    s.register(proto::register_request::Record::Provider(
        proto::ServiceProvider {
            id: "p-unlisted".into(),
            display_name: String::new(),
        },
    ))
    .await;
    s.anchor("a2", "m1", "p-unlisted", proto::ImageStyle::RealisticHuman)
        .await;
    s.approve(K::Anchor, "a2").await;
    let mut request = start();
    request.anchor_id = "a2".into();
    assert_refused(&s.authorize(request).await, &["R2"]);
}

// ---- R3: driven by a real person ----

#[tokio::test]
async fn r3_holds_for_real_person_drive() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.drive_mode = proto::DriveMode::RealPerson as i32;
    assert_allowed(&s.authorize(request).await);
}

#[tokio::test]
async fn r3_broken_for_autonomous_text_to_video_and_pre_recorded() {
    let mut s = TestServer::admitted().await;
    for mode in [
        proto::DriveMode::Autonomous,
        proto::DriveMode::TextToVideo,
        proto::DriveMode::PreRecorded,
    ] {
        let mut request = start();
        request.drive_mode = mode as i32;
        assert_refused(&s.authorize(request).await, &["R3"]);
    }
}

// ---- R4: realistic-human image ----

#[tokio::test]
async fn r4_holds_for_realistic_human_image() {
    let mut s = TestServer::admitted().await;
    assert_allowed(&s.authorize(start()).await);
}

#[tokio::test]
async fn r4_broken_for_cartoon_anime_and_animal_images() {
    let mut s = TestServer::admitted().await;
    for (id, style) in [
        ("a-cartoon", proto::ImageStyle::Cartoon),
        ("a-anime", proto::ImageStyle::Anime),
        ("a-animal", proto::ImageStyle::Animal),
    ] {
        s.anchor(id, "m1", "p1", style).await;
        s.approve(K::Anchor, id).await;
        let mut request = start();
        request.anchor_id = id.into();
        assert_refused(&s.authorize(request).await, &["R4"]);
    }
}

// ---- R5: livestream type ----

#[tokio::test]
async fn r5_holds_for_each_allowed_type() {
    let mut s = TestServer::admitted().await;
    for t in [
        proto::LivestreamType::WorkstationReception,
        proto::LivestreamType::DailyMarketing,
        proto::LivestreamType::EventLivestream,
    ] {
        let mut request = start();
        request.livestream_type = t as i32;
        assert_allowed(&s.authorize(request).await);
    }
}

#[tokio::test]
async fn r5_broken_for_other_type() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.livestream_type = proto::LivestreamType::Other as i32;
    assert_refused(&s.authorize(request).await, &["R5"]);
}

// ---- R6: anchor filed and admitted for this merchant ----

#[tokio::test]
async fn r6_holds_for_approved_anchor_of_this_merchant() {
    let mut s = TestServer::admitted().await;
    assert_allowed(&s.authorize(start()).await);
}

#[tokio::test]
async fn r6_broken_for_unknown_anchor() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.anchor_id = "never-filed".into();
    // The anchor's image (R7b) is part of admission, so an unknown anchor breaks both.
    let response = s.authorize(request).await;
    assert_refused(&response, &["R6", "R7"]);
    assert_eq!(
        response.violations[0].penalty,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
}

#[tokio::test]
async fn r6_broken_for_pending_and_rejected_anchor() {
    let mut s = TestServer::admitted().await;
    s.anchor("a-pending", "m1", "p1", proto::ImageStyle::RealisticHuman)
        .await;
    s.anchor("a-rejected", "m1", "p1", proto::ImageStyle::RealisticHuman)
        .await;
    s.review(K::Anchor, "a-rejected", proto::Verdict::Reject)
        .await;
    for id in ["a-pending", "a-rejected"] {
        let mut request = start();
        request.anchor_id = id.into();
        assert_refused(&s.authorize(request).await, &["R6", "R7"]);
    }
}

#[tokio::test]
async fn r6_broken_for_approved_anchor_of_another_merchant() {
    let mut s = TestServer::admitted().await;
    s.merchant("m2", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.anchor("a-m2", "m2", "p1", proto::ImageStyle::RealisticHuman)
        .await;
    s.approve(K::Anchor, "a-m2").await;
    let mut request = start();
    request.anchor_id = "a-m2".into();
    assert_refused(&s.authorize(request).await, &["R6", "R7"]);
}

// ---- R7: room, anchor image and driver each approved and owned ----

#[tokio::test]
async fn r7_holds_when_all_three_parts_are_approved() {
    let mut s = TestServer::admitted().await;
    assert_allowed(&s.authorize(start()).await);
}

#[tokio::test]
async fn r7_broken_for_pending_room_and_pending_driver() {
    let mut s = TestServer::admitted().await;
    s.room("r-pending", "m1").await;
    s.driver("d-pending", "m1").await;
    let mut request = start();
    request.room_id = "r-pending".into();
    assert_refused(&s.authorize(request).await, &["R7"]);
    let mut request = start();
    request.driver_id = "d-pending".into();
    assert_refused(&s.authorize(request).await, &["R7"]);
}

#[tokio::test]
async fn r7_broken_for_rejected_driver_and_unknown_room() {
    let mut s = TestServer::admitted().await;
    s.driver("d-rejected", "m1").await;
    s.review(K::Driver, "d-rejected", proto::Verdict::Reject)
        .await;
    let mut request = start();
    request.driver_id = "d-rejected".into();
    assert_refused(&s.authorize(request).await, &["R7"]);
    let mut request = start();
    request.room_id = "no-such-room".into();
    assert_refused(&s.authorize(request).await, &["R7"]);
}

#[tokio::test]
async fn r7_broken_for_room_or_driver_of_another_merchant() {
    let mut s = TestServer::admitted().await;
    s.merchant("m2", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.room("r-m2", "m2").await;
    s.driver("d-m2", "m2").await;
    s.approve(K::Room, "r-m2").await;
    s.approve(K::Driver, "d-m2").await;
    let mut request = start();
    request.room_id = "r-m2".into();
    assert_refused(&s.authorize(request).await, &["R7"]);
    let mut request = start();
    request.driver_id = "d-m2".into();
    assert_refused(&s.authorize(request).await, &["R7"]);
}

// ---- R8: approvals hold at the moment of the decision ----

#[tokio::test]
async fn r8_holds_before_an_approval_expires() {
    let mut s = TestServer::admitted().await;
    s.driver("d-expiring", "m1").await;
    s.admin
        .review_filing(proto::ReviewFilingRequest {
            request_id: String::new(),
            kind: K::Driver as i32,
            id: "d-expiring".into(),
            verdict: proto::Verdict::Approve as i32,
            reviewer: "reviewer-1".into(),
            note: "valid for 30 days".into(),
            expected_revision: None,
            approval_expires_at: Some(prost_types::Timestamp {
                seconds: (T0 + 30 * DAY_MS) / 1000,
                nanos: 0,
            }),
            image_sha256: None,
        })
        .await
        .expect("approve with expiry");
    let mut request = start();
    request.driver_id = "d-expiring".into();
    s.clock.set(T0 + 30 * DAY_MS - 1);
    assert_allowed(&s.authorize(request).await);
}

#[tokio::test]
async fn r8_broken_once_the_approval_has_expired() {
    let mut s = TestServer::admitted().await;
    s.driver("d-expiring", "m1").await;
    s.admin
        .review_filing(proto::ReviewFilingRequest {
            request_id: String::new(),
            kind: K::Driver as i32,
            id: "d-expiring".into(),
            verdict: proto::Verdict::Approve as i32,
            reviewer: "reviewer-1".into(),
            note: String::new(),
            expected_revision: None,
            approval_expires_at: Some(prost_types::Timestamp {
                seconds: (T0 + 30 * DAY_MS) / 1000,
                nanos: 0,
            }),
            image_sha256: None,
        })
        .await
        .expect("approve with expiry");
    s.clock.set(T0 + 30 * DAY_MS);
    let mut request = start();
    request.driver_id = "d-expiring".into();
    assert_refused(&s.authorize(request).await, &["R8"]);
}

#[tokio::test]
async fn r8_broken_for_revoked_anchor_room_or_driver() {
    for (kind, id) in [(K::Anchor, "a1"), (K::Room, "r1"), (K::Driver, "d1")] {
        let mut s = TestServer::admitted().await;
        s.review(kind, id, proto::Verdict::Revoke).await;
        assert_refused(&s.authorize(start()).await, &["R8"]);
    }
}

// ---- R9: generative-AI features assessed and filed ----

#[tokio::test]
async fn r9_holds_for_assessed_and_filed_feature() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.ai_features = vec!["voice-clone".into()];
    assert_allowed(&s.authorize(request).await);
}

#[tokio::test]
async fn r9_broken_for_unknown_unassessed_or_unfiled_feature() {
    let mut s = TestServer::admitted().await;
    s.ai_feature("script-gen", true, "").await; // assessed, not filed
    s.ai_feature("auto-reply", false, "AI-FILING-9").await; // filed, not assessed
    for feature in ["never-registered", "script-gen", "auto-reply"] {
        let mut request = start();
        request.ai_features = vec!["voice-clone".into(), feature.into()];
        assert_refused(&s.authorize(request).await, &["R9"]);
    }
}

#[tokio::test]
async fn r9_broken_when_a_live_session_starts_using_an_unfiled_feature() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let mut request = live(&session);
    request.ai_features = vec!["never-registered".into()];
    let response = s.authorize(request).await;
    assert_eq!(decision(&response), Decision::Deny);
    assert_eq!(rule_ids(&response), ["R9"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
    // R9 carries no penalty: shut down, no freeze.
    assert_eq!(response.penalty_applied, Penalty::Unspecified as i32);
    assert_eq!(s.account("m1").await.frozen_until, None);
}

// ---- Every violation at once, in rule order ----

#[tokio::test]
async fn all_broken_rules_are_reported_in_rule_order() {
    let mut s = TestServer::admitted().await;
    s.merchant("m1", proto::MerchantTier::GlobalGoldSupplier)
        .await;
    s.provider("p1", false).await;
    let mut request = start();
    request.drive_mode = proto::DriveMode::Autonomous as i32;
    request.livestream_type = proto::LivestreamType::Other as i32;
    request.ai_features = vec!["unknown-ai".into()];
    request.room_id = "unknown-room".into();
    assert_refused(
        &s.authorize(request).await,
        &["R1", "R2", "R3", "R5", "R7", "R9"],
    );
}

// ---- E1: R2 found live → shut down + 7-day freeze ----

#[tokio::test]
async fn e1_applied_when_a_delisted_provider_is_found_live() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    s.clock.advance(60_000);
    // Delisting re-checks the live sessions that rely on the provider at once.
    s.provider("p1", false).await;
    let discovered = T0 + 60_000;
    let account = s.account("m1").await;
    assert_eq!(account.warnings, 0, "E1 carries no warning");
    assert_eq!(millis(&account.frozen_until), Some(discovered + FREEZE_MS));
    assert_eq!(account.penalties, 1);
    let last = account.last_penalty.expect("penalty");
    assert_eq!(last.penalty, Penalty::E1ShutDownAndFreeze as i32);
    assert_eq!(last.rule_ids, ["R2"]);
    assert_eq!(last.session_id, session);
    // The gateway's next re-check is told to cut the stream, with the freeze end.
    let response = s.authorize(live(&session)).await;
    assert_eq!(decision(&response), Decision::Deny);
    assert_eq!(rule_ids(&response), ["SESSION"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
    assert_eq!(response.penalty_applied, Penalty::Unspecified as i32);
    assert_eq!(millis(&response.frozen_until), Some(discovered + FREEZE_MS));
}

#[tokio::test]
async fn e1_not_applied_at_start_nor_for_rules_without_penalty() {
    let mut s = TestServer::admitted().await;
    s.provider("p1", false).await;
    assert_refused(&s.authorize(start()).await, &["R2"]);
    s.provider("p1", true).await;
    let session = s.start_session().await;
    let mut request = live(&session);
    request.drive_mode = proto::DriveMode::PreRecorded as i32;
    let response = s.authorize(request).await;
    assert_eq!(rule_ids(&response), ["R3"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
    assert_eq!(response.penalty_applied, Penalty::Unspecified as i32);
    let account = s.account("m1").await;
    assert_eq!((account.penalties, account.frozen_until), (0, None));
}

// ---- E2: R6/R7/R8 found live → warning + shut down + 7-day freeze ----

#[tokio::test]
async fn e2_applied_when_a_revoked_filing_is_found_live() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    s.review(K::Room, "r1", proto::Verdict::Revoke).await;
    let account = s.account("m1").await;
    assert_eq!(account.warnings, 1);
    assert_eq!(millis(&account.frozen_until), Some(T0 + FREEZE_MS));
    let last = account.last_penalty.expect("last penalty");
    assert_eq!(last.penalty, Penalty::E2WarnShutDownAndFreeze as i32);
    assert_eq!(last.rule_ids, ["R8"]);
    assert_eq!(last.session_id, session);
    let state = s.session(&session).await;
    assert_eq!(state.state, proto::SessionState::ShutDown as i32);
    assert_eq!(
        state.penalty_applied,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
}

#[tokio::test]
async fn e2_applied_by_a_live_recheck_after_an_approval_expires() {
    let mut s = TestServer::admitted().await;
    s.driver("d-expiring", "m1").await;
    s.admin
        .review_filing(proto::ReviewFilingRequest {
            request_id: String::new(),
            kind: K::Driver as i32,
            id: "d-expiring".into(),
            verdict: proto::Verdict::Approve as i32,
            reviewer: "reviewer-1".into(),
            note: String::new(),
            expected_revision: None,
            approval_expires_at: Some(prost_types::Timestamp {
                seconds: (T0 + DAY_MS) / 1000,
                nanos: 0,
            }),
            image_sha256: None,
        })
        .await
        .expect("approve with expiry");
    let mut request = start();
    request.driver_id = "d-expiring".into();
    let session = s.authorize(request).await.session_id;
    s.clock.set(T0 + DAY_MS);
    let response = s.authorize(live(&session)).await;
    assert_eq!(decision(&response), Decision::Deny);
    assert_eq!(rule_ids(&response), ["R8"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
    assert_eq!(
        response.penalty_applied,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    assert!(response.warning_issued);
    assert_eq!(
        millis(&response.frozen_until),
        Some(T0 + DAY_MS + FREEZE_MS)
    );
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.penalties), (1, 1));
}

#[tokio::test]
async fn e2_applied_by_an_inspectors_report() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let report = s.report(&session, "R6").await;
    assert_eq!(
        report.penalty_applied,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    assert!(report.warning_issued);
    let session_after = report.session.expect("session");
    assert_eq!(session_after.state, proto::SessionState::ShutDown as i32);
    let account = report.account.expect("account");
    assert_eq!(account.warnings, 1);
    assert_eq!(millis(&account.frozen_until), Some(T0 + FREEZE_MS));
    // The gateway's next re-check is told to cut the stream, with no second penalty.
    let response = s.authorize(live(&session)).await;
    assert_eq!(decision(&response), Decision::Deny);
    assert_eq!(rule_ids(&response), ["SESSION"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
    assert_eq!(response.penalty_applied, Penalty::Unspecified as i32);
}

#[tokio::test]
async fn e2_not_applied_at_start() {
    let mut s = TestServer::admitted().await;
    s.review(K::Anchor, "a1", proto::Verdict::Revoke).await;
    let response = s.authorize(start()).await;
    assert_refused(&response, &["R8"]);
    assert_eq!(
        response.violations[0].penalty,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.frozen_until), (0, None));
}

#[tokio::test]
async fn e1_and_e2_apply_at_most_once_per_session() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let first = s.report(&session, "R6").await;
    assert_eq!(
        first.penalty_applied,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    s.clock.advance(DAY_MS);
    // Another discovery in the same broadcast, by every route: nothing more.
    let again = s.report(&session, "R2").await;
    assert_eq!(again.penalty_applied, Penalty::Unspecified as i32);
    assert!(!again.warning_issued);
    let recheck = s.authorize(live(&session)).await;
    assert_eq!(rule_ids(&recheck), ["SESSION"]);
    assert_eq!(recheck.penalty_applied, Penalty::Unspecified as i32);
    s.review(K::Anchor, "a1", proto::Verdict::Revoke).await;
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.penalties), (1, 1));
    assert_eq!(millis(&account.frozen_until), Some(T0 + FREEZE_MS));
}

#[tokio::test]
async fn a_discovery_in_a_second_broadcast_extends_the_freeze() {
    let mut s = TestServer::admitted().await;
    let first = s.start_session().await;
    let second = s.start_session_in("r2").await;
    s.report(&first, "R2").await;
    s.clock.advance(2 * DAY_MS);
    let report = s.report(&second, "R2").await;
    assert_eq!(report.penalty_applied, Penalty::E1ShutDownAndFreeze as i32);
    let account = report.account.expect("account");
    assert_eq!(
        millis(&account.frozen_until),
        Some(T0 + 2 * DAY_MS + FREEZE_MS)
    );
    assert_eq!(account.penalties, 2);
}

// ---- E3: a frozen account may not broadcast until the freeze ends ----

#[tokio::test]
async fn e3_holds_for_an_account_never_frozen() {
    let mut s = TestServer::admitted().await;
    let response = s.authorize(start()).await;
    assert_allowed(&response);
    assert_eq!(response.frozen_until, None);
}

#[tokio::test]
async fn e3_denies_a_frozen_account_until_the_seven_days_end() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    s.report(&session, "R7").await;
    let response = s.authorize(start()).await;
    assert_refused(&response, &["E3"]);
    assert_eq!(millis(&response.frozen_until), Some(T0 + FREEZE_MS));
    s.clock.set(T0 + FREEZE_MS - 1);
    assert_refused(&s.authorize(start()).await, &["E3"]);
    s.clock.set(T0 + FREEZE_MS);
    let response = s.authorize(start()).await;
    assert_allowed(&response);
    assert_eq!(response.frozen_until, None);
}

#[tokio::test]
async fn e3_shuts_down_other_live_sessions_of_a_frozen_account_without_a_new_penalty() {
    let mut s = TestServer::admitted().await;
    let penalized = s.start_session().await;
    let other = s.start_session_in("r2").await;
    s.report(&penalized, "R2").await;
    let state = s.session(&other).await;
    assert_eq!(state.state, proto::SessionState::ShutDown as i32);
    assert!(state.close_reason.contains("E3"), "{}", state.close_reason);
    assert_eq!(state.penalty_applied, Penalty::Unspecified as i32);
    let response = s.authorize(live(&other)).await;
    assert_eq!(rule_ids(&response), ["SESSION"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
    assert_eq!(millis(&response.frozen_until), Some(T0 + FREEZE_MS));
    assert_eq!(s.account("m1").await.penalties, 1);
}

#[tokio::test]
async fn e3_ends_when_the_freeze_is_lifted() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    s.report(&session, "R2").await;
    assert_refused(&s.authorize(start()).await, &["E3"]);
    let lifted = s
        .admin
        .lift_freeze(proto::LiftFreezeRequest {
            request_id: String::new(),
            merchant_id: "m1".into(),
            operator: "appeals-1".into(),
            reason: "appeal upheld".into(),
        })
        .await
        .expect("lift")
        .into_inner();
    assert!(lifted.was_frozen);
    assert_eq!(lifted.account.expect("account").frozen_until, None);
    assert_allowed(&s.authorize(start()).await);
}

/// A lift acts on the stored freeze, not on this replica's clock alone: a freeze that ended
/// less than the clock-skew bound ago may still be enforced by a replica whose clock is
/// behind, so it is lifted (and recorded); one that ended longer ago is not.
#[tokio::test]
async fn a_lift_clears_a_freeze_other_replicas_may_still_enforce() {
    let lift = || proto::LiftFreezeRequest {
        request_id: String::new(),
        merchant_id: "m1".into(),
        operator: "appeals-1".into(),
        reason: "appeal upheld".into(),
    };
    for (after_end, lifted_expected) in [(MAX_CLOCK_SKEW_MS - 1, true), (MAX_CLOCK_SKEW_MS, false)]
    {
        let mut s = TestServer::admitted().await;
        let session = s.start_session().await;
        s.report(&session, "R2").await;
        s.clock.advance(FREEZE_MS + after_end);
        assert_allowed(&s.authorize(start()).await);
        let lifted = s
            .admin
            .lift_freeze(lift())
            .await
            .expect("lift")
            .into_inner();
        assert_eq!(
            lifted.was_frozen, lifted_expected,
            "{after_end} ms after the end"
        );
    }
}

// ---- LIVE re-checks ----

#[tokio::test]
async fn live_recheck_of_an_admitted_session_allows() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    s.clock.advance(30_000);
    let response = s.authorize(live(&session)).await;
    assert_eq!(decision(&response), Decision::Allow);
    assert_eq!(response.session_id, session);
    assert_eq!(enforcement(&response), Enforcement::None);
}
