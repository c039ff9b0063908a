//! Registration, review, sessions, admin reads, durability across restarts, and every class of
//! bad input, against a real server through the generated client.

mod common;

use anchor_pdp::proto::{
    self, Decision, Enforcement, RegistrationKind as K, ReviewStatus, register_request::Record,
};
use common::*;
use tonic::Code;

fn anchor(style: proto::ImageStyle, name: &str) -> Record {
    let mut record = anchor_record("a1", "m1", "p1", style);
    record.display_name = name.into();
    Record::Anchor(record)
}

async fn register_with(
    s: &mut TestServer,
    record: Record,
    expected_revision: Option<u64>,
) -> Result<proto::RegisterResponse, tonic::Status> {
    s.pdp
        .register(proto::RegisterRequest {
            request_id: String::new(),
            record: Some(record),
            expected_revision,
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(s: &mut TestServer, kind: K, id: &str) -> Result<proto::Registration, tonic::Status> {
    s.admin
        .get_registration(proto::GetRegistrationRequest {
            kind: kind as i32,
            id: id.into(),
        })
        .await
        .map(|r| r.into_inner().registration.expect("registration"))
}

async fn end(s: &mut TestServer, session_id: &str) {
    s.pdp
        .end_session(proto::EndSessionRequest {
            request_id: String::new(),
            session_id: session_id.into(),
            reason: "test done".into(),
        })
        .await
        .expect("end session");
}

// ---- Register ----

#[tokio::test]
async fn filings_start_pending_review_and_other_records_need_none() {
    let mut s = TestServer::start().await;
    s.merchant("m1", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.provider("p1", true).await;
    let merchant = get(&mut s, K::Merchant, "m1").await.expect("merchant");
    assert_eq!(merchant.review_status, ReviewStatus::NotRequired as i32);
    assert_eq!(merchant.revision, 1);
    let provider = get(&mut s, K::Provider, "p1").await.expect("provider");
    assert_eq!(provider.review_status, ReviewStatus::NotRequired as i32);
    assert!(provider.provider_listing.expect("listing").listed);
    assert_eq!(provider.revision, 2, "registered, then listed");
    let anchor = s
        .register(anchor(proto::ImageStyle::RealisticHuman, "A"))
        .await;
    s.driver("d1", "m1").await;
    s.room("r1", "m1").await;
    assert_eq!(anchor.review_status, ReviewStatus::PendingReview as i32);
    assert_eq!(anchor.revision, 1);
    for (kind, id) in [(K::Driver, "d1"), (K::Room, "r1")] {
        let record = get(&mut s, kind, id).await.expect("filing");
        assert_eq!(record.review_status, ReviewStatus::PendingReview as i32);
    }
}

#[tokio::test]
async fn re_sending_the_same_record_is_a_no_op() {
    let mut s = TestServer::admitted().await;
    let response = register_with(
        &mut s,
        anchor(proto::ImageStyle::RealisticHuman, "Anchor a1"),
        Some(0),
    )
    .await
    .expect("idempotent");
    assert!(!response.changed);
    let record = response.registration.expect("registration");
    assert_eq!(
        record.revision, 2,
        "filed, approved: unchanged by the re-send"
    );
    assert_eq!(record.review_status, ReviewStatus::Approved as i32);
}

#[tokio::test]
async fn a_material_change_to_an_approved_filing_returns_it_to_review() {
    let mut s = TestServer::admitted().await;
    // Renaming is not material: the approval stands.
    let renamed = register_with(
        &mut s,
        anchor(proto::ImageStyle::RealisticHuman, "Renamed"),
        None,
    )
    .await
    .expect("rename")
    .registration
    .expect("registration");
    assert_eq!(renamed.review_status, ReviewStatus::Approved as i32);
    assert_eq!(renamed.revision, 3);
    let response = s.authorize(start()).await;
    assert_allowed(&response);
    end(&mut s, &response.session_id).await;
    // A new image is: back to review, and broadcasts are refused until it is approved again.
    let mut record = anchor_record("a1", "m1", "p1", proto::ImageStyle::RealisticHuman);
    record.image_reference = "oss://anchors/a1-v2.png".into();
    let changed = register_with(&mut s, Record::Anchor(record), Some(3))
        .await
        .expect("material change")
        .registration
        .expect("registration");
    assert_eq!(changed.review_status, ReviewStatus::PendingReview as i32);
    assert_eq!(changed.revision, 4);
    assert_refused(&s.authorize(start()).await, &["R6", "R7"]);
    s.approve(K::Anchor, "a1").await;
    let response = s.authorize(start()).await;
    assert_allowed(&response);
    end(&mut s, &response.session_id).await;
    // The same for a driver's identity and a room's owner.
    s.merchant("m2", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    let driver = s
        .register(Record::Driver(proto::Driver {
            id: "d1".into(),
            owner_merchant_id: "m1".into(),
            identity_reference: "kyc://someone-else".into(),
            display_name: String::new(),
        }))
        .await;
    assert_eq!(driver.review_status, ReviewStatus::PendingReview as i32);
    let room = s
        .register(Record::Room(proto::LivestreamRoom {
            id: "r1".into(),
            owner_merchant_id: "m2".into(),
            display_name: String::new(),
        }))
        .await;
    assert_eq!(room.review_status, ReviewStatus::PendingReview as i32);
}

#[tokio::test]
async fn a_stale_expected_revision_is_aborted_and_changes_nothing() {
    let mut s = TestServer::admitted().await;
    let (c, message) =
        code(register_with(&mut s, anchor(proto::ImageStyle::Anime, "A"), Some(1)).await);
    assert_eq!(c, Code::Aborted, "{message}");
    assert!(message.contains("expected revision 1"), "{message}");
    let stored = get(&mut s, K::Anchor, "a1").await.expect("anchor");
    assert_eq!(stored.revision, 2);
    assert_eq!(stored.review_status, ReviewStatus::Approved as i32);
    // 0 means "must not exist yet".
    let (c, _) = code(
        register_with(
            &mut s,
            Record::Merchant(proto::Merchant {
                id: "m1".into(),
                tier: proto::MerchantTier::Other as i32,
                display_name: String::new(),
            }),
            Some(0),
        )
        .await,
    );
    assert_eq!(c, Code::Aborted);
    register_with(
        &mut s,
        Record::Merchant(proto::Merchant {
            id: "m-new".into(),
            tier: proto::MerchantTier::Other as i32,
            display_name: String::new(),
        }),
        Some(0),
    )
    .await
    .expect("create with expected revision 0");
}

#[tokio::test]
async fn a_filing_must_name_registered_owner_and_provider() {
    let mut s = TestServer::start().await;
    s.merchant("m1", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    let (code_, message) = code(
        register_with(
            &mut s,
            Record::Anchor(anchor_record(
                "a1",
                "m1",
                "p-missing",
                proto::ImageStyle::RealisticHuman,
            )),
            None,
        )
        .await,
    );
    assert_eq!(code_, Code::FailedPrecondition);
    assert!(message.contains("provider_id"), "{message}");
    let (code_, message) = code(
        register_with(
            &mut s,
            Record::Room(proto::LivestreamRoom {
                id: "r1".into(),
                owner_merchant_id: "m-missing".into(),
                display_name: String::new(),
            }),
            None,
        )
        .await,
    );
    assert_eq!(code_, Code::FailedPrecondition);
    assert!(message.contains("owner_merchant_id"), "{message}");
    assert_eq!(code(get(&mut s, K::Anchor, "a1").await).0, Code::NotFound);
    assert_eq!(code(get(&mut s, K::Room, "r1").await).0, Code::NotFound);
}

// ---- Review ----

#[tokio::test]
async fn review_verdicts_follow_the_review_states() {
    let mut s = TestServer::admitted().await;
    let review =
        |verdict: proto::Verdict, expected_revision: Option<u64>| proto::ReviewFilingRequest {
            request_id: String::new(),
            kind: K::Anchor as i32,
            id: "a1".into(),
            verdict: verdict as i32,
            reviewer: "reviewer-2".into(),
            note: String::new(),
            expected_revision,
            approval_expires_at: None,
            image_sha256: None,
        };
    // Already approved: approving or rejecting again is refused.
    for verdict in [proto::Verdict::Approve, proto::Verdict::Reject] {
        let (c, message) = code(s.admin.review_filing(review(verdict, None)).await);
        assert_eq!(c, Code::FailedPrecondition, "{message}");
    }
    // A reviewer who saw an older revision is refused.
    let (c, _) = code(
        s.admin
            .review_filing(review(proto::Verdict::Revoke, Some(1)))
            .await,
    );
    assert_eq!(c, Code::Aborted);
    let revoked = s
        .admin
        .review_filing(review(proto::Verdict::Revoke, Some(2)))
        .await
        .expect("revoke")
        .into_inner()
        .registration
        .expect("registration");
    assert_eq!(revoked.review_status, ReviewStatus::Revoked as i32);
    // Recorded under the authenticated caller; the typed name is kept in the note.
    let last = revoked.last_review.expect("review");
    assert!(last.reviewer.ends_with("(admin)"), "{last:?}");
    assert_eq!(last.note, "reviewer: reviewer-2");
    let (c, _) = code(
        s.admin
            .review_filing(review(proto::Verdict::Revoke, None))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    // Unknown filings and unreviewed kinds.
    let mut unknown = review(proto::Verdict::Approve, None);
    unknown.id = "nope".into();
    assert_eq!(code(s.admin.review_filing(unknown).await).0, Code::NotFound);
    let mut merchant = review(proto::Verdict::Approve, None);
    merchant.kind = K::Merchant as i32;
    merchant.id = "m1".into();
    let (c, message) = code(s.admin.review_filing(merchant).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("kind:"), "{message}");
}

#[tokio::test]
async fn an_approval_expiry_must_be_in_the_future() {
    let mut s = TestServer::admitted().await;
    s.room("r2", "m1").await;
    let (c, message) = code(
        s.admin
            .review_filing(proto::ReviewFilingRequest {
                request_id: String::new(),
                kind: K::Room as i32,
                id: "r2".into(),
                verdict: proto::Verdict::Approve as i32,
                reviewer: "reviewer-1".into(),
                note: String::new(),
                expected_revision: None,
                approval_expires_at: Some(prost_types::Timestamp {
                    seconds: T0 / 1000 - 1,
                    nanos: 0,
                }),
                image_sha256: None,
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("approval_expires_at:"), "{message}");
    let room = get(&mut s, K::Room, "r2").await.expect("room");
    assert_eq!(room.review_status, ReviewStatus::PendingReview as i32);
}

// ---- Admin reads ----

#[tokio::test]
async fn registrations_list_in_pages() {
    let mut s = TestServer::start().await;
    for i in 0..7 {
        s.merchant(&format!("m{i}"), proto::MerchantTier::ChineseGoldSupplier)
            .await;
    }
    let mut token = String::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = s
            .admin
            .list_registrations(proto::ListRegistrationsRequest {
                kind: K::Merchant as i32,
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        seen.extend(page.registrations.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
    assert_eq!(pages, 3);
    let (c, message) = code(
        s.admin
            .list_registrations(proto::ListRegistrationsRequest {
                kind: K::Merchant as i32,
                page_size: 5000,
                page_token: String::new(),
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("page_size:"), "{message}");
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let mut s = TestServer::start().await;
    assert_eq!(
        code(get(&mut s, K::Anchor, "ghost").await).0,
        Code::NotFound
    );
    let (c, _) = code(
        s.admin
            .get_account(proto::GetAccountRequest {
                merchant_id: "ghost".into(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let (c, _) = code(
        s.admin
            .get_session(proto::GetSessionRequest {
                session_id: "ghost".into(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
}

// ---- Sessions ----

#[tokio::test]
async fn a_live_session_says_when_this_replica_last_checked_it_and_an_ended_one_does_not() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let last_checked = |session: proto::Session| session.last_checked_at.map(|t| t.seconds);
    let get = |s: &mut TestServer| {
        let mut admin = s.admin.clone();
        let session_id = session.clone();
        async move {
            admin
                .get_session(proto::GetSessionRequest { session_id })
                .await
                .expect("get")
                .into_inner()
                .session
                .expect("session")
        }
    };
    assert_eq!(
        last_checked(get(&mut s).await),
        Some(T0 / 1000),
        "its START"
    );
    s.clock.advance(45_000);
    let live = s
        .pdp
        .authorize(live(&session))
        .await
        .expect("live")
        .into_inner();
    assert_eq!(decision(&live), proto::Decision::Allow);
    s.clock.advance(5_000);
    assert_eq!(last_checked(get(&mut s).await), Some(T0 / 1000 + 45));
    let listed = s
        .admin
        .list_live_sessions(proto::ListLiveSessionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert_eq!(
        listed.into_iter().map(last_checked).collect::<Vec<_>>(),
        [Some(T0 / 1000 + 45)]
    );
    s.pdp
        .end_session(proto::EndSessionRequest {
            request_id: String::new(),
            session_id: session.clone(),
            reason: "done".into(),
        })
        .await
        .expect("end");
    assert_eq!(last_checked(get(&mut s).await), None, "no longer live");
}

#[tokio::test]
async fn ending_a_session_is_idempotent_and_stops_its_rechecks() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    for _ in 0..2 {
        let ended = s
            .pdp
            .end_session(proto::EndSessionRequest {
                request_id: String::new(),
                session_id: session.clone(),
                reason: "publisher disconnected".into(),
            })
            .await
            .expect("end")
            .into_inner()
            .session
            .expect("session");
        assert_eq!(ended.state, proto::SessionState::Ended as i32);
        assert_eq!(ended.close_reason, "ended: publisher disconnected");
    }
    let response = s.authorize(live(&session)).await;
    assert_eq!(decision(&response), Decision::Deny);
    assert_eq!(rule_ids(&response), ["SESSION"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
    // Violations are enforced on live broadcasts only.
    let (c, _) = code(
        s.admin
            .report_violation(proto::ReportViolationRequest {
                request_id: String::new(),
                session_id: session.clone(),
                rule_id: "R2".into(),
                inspector: "inspector-7".into(),
                note: String::new(),
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert_eq!(s.account("m1").await.penalties, 0);
}

#[tokio::test]
async fn a_recheck_of_an_unknown_session_denies() {
    let mut s = TestServer::admitted().await;
    let response = s.authorize(live("no-such-session")).await;
    assert_eq!(decision(&response), Decision::Deny);
    assert_eq!(rule_ids(&response), ["SESSION"]);
    assert_eq!(enforcement(&response), Enforcement::ShutDown);
}

#[tokio::test]
async fn a_violation_report_names_a_loaded_rule_and_a_known_session() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let (c, message) = code(
        s.admin
            .report_violation(proto::ReportViolationRequest {
                request_id: String::new(),
                session_id: session.clone(),
                rule_id: "R42".into(),
                inspector: "inspector-7".into(),
                note: String::new(),
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("rule_id:"), "{message}");
    let (c, _) = code(
        s.admin
            .report_violation(proto::ReportViolationRequest {
                request_id: String::new(),
                session_id: "ghost".into(),
                rule_id: "R2".into(),
                inspector: "inspector-7".into(),
                note: String::new(),
            })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let state = s.session(&session).await;
    assert_eq!(state.state, proto::SessionState::Active as i32);
}

// ---- Durability ----

#[tokio::test]
async fn a_restart_on_the_same_data_dir_keeps_everything() {
    let mut s = TestServer::admitted().await;
    let live_session = s.start_session().await;
    let penalized = s.start_session_in("r2").await;
    s.report(&penalized, "R6").await;
    let before: Vec<_> = [
        (K::Merchant, "m1"),
        (K::Provider, "p1"),
        (K::Anchor, "a1"),
        (K::Driver, "d1"),
        (K::Room, "r1"),
        (K::AiFeature, "voice-clone"),
    ]
    .into_iter()
    .collect();
    let mut records = Vec::new();
    for (kind, id) in &before {
        records.push(get(&mut s, *kind, id).await.expect("record"));
    }
    let account = s.account("m1").await;
    let data_dir = s.data_dir.clone();
    let clock = s.clock.clone();
    let temp = s.stop().await;

    let mut s = TestServer::start_on(&data_dir, clock).await;
    for ((kind, id), record) in before.iter().zip(&records) {
        assert_eq!(&get(&mut s, *kind, id).await.expect("record"), record);
    }
    assert_eq!(s.account("m1").await, account);
    assert_eq!(account.warnings, 1);
    let penalized_state = s.session(&penalized).await;
    assert_eq!(penalized_state.state, proto::SessionState::ShutDown as i32);
    let live_state = s.session(&live_session).await;
    // The freeze ended the account's other broadcast too (E3).
    assert_eq!(live_state.state, proto::SessionState::ShutDown as i32);
    assert!(
        live_state.close_reason.contains("E3"),
        "{}",
        live_state.close_reason
    );
    // Still frozen after the restart.
    assert_refused(&s.authorize(start()).await, &["E3"]);
    drop(temp);
}

// ---- Bad input: INVALID_ARGUMENT naming the field, nothing written ----

async fn assert_invalid_authorize(
    s: &mut TestServer,
    request: proto::AuthorizeRequest,
    field: &str,
) {
    let (c, message) = code(s.pdp.authorize(request).await);
    assert_eq!(c, Code::InvalidArgument, "{message}");
    assert!(
        message.starts_with(&format!("{field}:")),
        "{field}: {message}"
    );
}

#[tokio::test]
async fn authorize_rejects_missing_required_fields() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.phase = 0;
    assert_invalid_authorize(&mut s, request, "phase").await;
    for field in ["merchant_id", "room_id", "anchor_id", "driver_id"] {
        let mut request = start();
        match field {
            "merchant_id" => request.merchant_id.clear(),
            "room_id" => request.room_id.clear(),
            "anchor_id" => request.anchor_id.clear(),
            _ => request.driver_id.clear(),
        }
        assert_invalid_authorize(&mut s, request, field).await;
    }
    let mut request = start();
    request.livestream_type = 0;
    assert_invalid_authorize(&mut s, request, "livestream_type").await;
    let mut request = start();
    request.drive_mode = 0;
    assert_invalid_authorize(&mut s, request, "drive_mode").await;
    assert_invalid_authorize(&mut s, live(""), "session_id").await;
    let mut request = start();
    request.session_id = "s1".into();
    assert_invalid_authorize(&mut s, request, "session_id").await;
}

#[tokio::test]
async fn authorize_rejects_unknown_enum_values() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.phase = 99;
    assert_invalid_authorize(&mut s, request, "phase").await;
    let mut request = start();
    request.livestream_type = 42;
    assert_invalid_authorize(&mut s, request, "livestream_type").await;
    let mut request = start();
    request.drive_mode = -1;
    assert_invalid_authorize(&mut s, request, "drive_mode").await;
}

#[tokio::test]
async fn ids_are_bounded_in_length_and_charset() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.merchant_id = "m".repeat(129);
    assert_invalid_authorize(&mut s, request, "merchant_id").await;
    for bad in ["a b", "a/b", "a\u{0}b", "主播", "a%2F"] {
        let mut request = start();
        request.anchor_id = bad.into();
        assert_invalid_authorize(&mut s, request, "anchor_id").await;
    }
    let mut request = start();
    request.ai_features = vec!["ok".into(), "not ok".into()];
    assert_invalid_authorize(&mut s, request, "ai_features[1]").await;
    let mut request = start();
    request.ai_features = vec!["voice-clone".into(), "voice-clone".into()];
    assert_invalid_authorize(&mut s, request, "ai_features[1]").await;
    let mut request = start();
    request.ai_features = (0..33).map(|i| format!("f{i}")).collect();
    assert_invalid_authorize(&mut s, request, "ai_features").await;
    // 128 characters is the limit, not past it.
    let mut request = start();
    request.merchant_id = "m".repeat(128);
    assert_refused(&s.authorize(request).await, &["R1", "R6", "R7"]);
}

#[tokio::test]
async fn a_live_recheck_must_match_its_session() {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    let mut request = live(&session);
    request.merchant_id = "m2".into();
    assert_invalid_authorize(&mut s, request, "merchant_id").await;
    let mut request = live(&session);
    request.anchor_id = "a1".into();
    assert_eq!(decision(&s.authorize(request).await), Decision::Allow);
}

#[tokio::test]
async fn register_rejects_bad_records_and_writes_nothing() {
    let mut s = TestServer::start().await;
    s.merchant("m1", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.provider("p1", true).await;
    let cases: Vec<(Option<Record>, &str)> = vec![
        (None, "record"),
        (
            Some(Record::Merchant(proto::Merchant {
                id: "m2".into(),
                tier: 0,
                display_name: String::new(),
            })),
            "merchant.tier",
        ),
        (
            Some(Record::Merchant(proto::Merchant {
                id: "m2".into(),
                tier: 17,
                display_name: String::new(),
            })),
            "merchant.tier",
        ),
        (
            Some(Record::Merchant(proto::Merchant {
                id: String::new(),
                tier: 1,
                display_name: String::new(),
            })),
            "merchant.id",
        ),
        (
            Some(Record::Merchant(proto::Merchant {
                id: "m2".into(),
                tier: 1,
                display_name: "x".repeat(257),
            })),
            "merchant.display_name",
        ),
        (
            Some(Record::Merchant(proto::Merchant {
                id: "m2".into(),
                tier: 1,
                display_name: "bell\u{7}".into(),
            })),
            "merchant.display_name",
        ),
        (
            Some(Record::Anchor({
                let mut a = anchor_record("a2", "m1", "p1", proto::ImageStyle::RealisticHuman);
                a.image_reference.clear();
                a
            })),
            "anchor.image_reference",
        ),
        (
            Some(Record::Anchor(anchor_record(
                "a2",
                "m1",
                "p1",
                proto::ImageStyle::Unspecified,
            ))),
            "anchor.image_style",
        ),
        (
            Some(Record::Anchor(anchor_record(
                "a2",
                "",
                "p1",
                proto::ImageStyle::Anime,
            ))),
            "anchor.owner_merchant_id",
        ),
        (
            Some(Record::Driver(proto::Driver {
                id: "d2".into(),
                owner_merchant_id: "m1".into(),
                identity_reference: "x".repeat(1025),
                display_name: String::new(),
            })),
            "driver.identity_reference",
        ),
        (
            Some(Record::Room(proto::LivestreamRoom {
                id: "r 2".into(),
                owner_merchant_id: "m1".into(),
                display_name: String::new(),
            })),
            "room.id",
        ),
    ];
    for (record, field) in cases {
        let (c, message) = code(
            s.pdp
                .register(proto::RegisterRequest {
                    request_id: String::new(),
                    record,
                    expected_revision: None,
                })
                .await,
        );
        assert_eq!(c, Code::InvalidArgument, "{field}: {message}");
        assert!(
            message.starts_with(&format!("{field}:")),
            "{field}: {message}"
        );
    }
    for kind in [K::Merchant, K::Anchor, K::Driver, K::Room] {
        let listed = s
            .admin
            .list_registrations(proto::ListRegistrationsRequest {
                kind: kind as i32,
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("list")
            .into_inner()
            .registrations;
        let ids: Vec<_> = listed.into_iter().map(|r| r.id).collect();
        let expected: &[&str] = if kind == K::Merchant { &["m1"] } else { &[] };
        assert_eq!(ids, expected, "{kind:?}");
    }
}

#[tokio::test]
async fn admin_requests_name_their_bad_fields() {
    let mut s = TestServer::admitted().await;
    let (c, message) = code(
        s.admin
            .review_filing(proto::ReviewFilingRequest {
                kind: K::Anchor as i32,
                id: "a1".into(),
                verdict: 0,
                reviewer: "r".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("verdict:"), "{message}");
    let (c, message) = code(
        s.admin
            .review_filing(proto::ReviewFilingRequest {
                kind: K::Anchor as i32,
                id: "a1".into(),
                verdict: proto::Verdict::Revoke as i32,
                reviewer: String::new(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("reviewer:"), "{message}");
    let (c, message) = code(
        s.admin
            .set_provider_listing(proto::SetProviderListingRequest {
                request_id: String::new(),
                provider_id: "p1".into(),
                listed: false,
                operator: String::new(),
                expected_revision: None,
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("operator:"), "{message}");
    let (c, message) = code(
        s.admin
            .lift_freeze(proto::LiftFreezeRequest {
                request_id: String::new(),
                merchant_id: "m1".into(),
                operator: "ops".into(),
                reason: "r".repeat(513),
            })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(message.starts_with("reason:"), "{message}");
    // Nothing changed: the anchor is still approved and the provider still listed.
    assert_allowed(&s.authorize(start()).await);
}

#[tokio::test]
async fn oversized_messages_are_rejected() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.gateway_id = "g".repeat(70 * 1024);
    let (c, message) = code(s.pdp.authorize(request).await);
    assert_eq!(c, Code::OutOfRange, "{message}");
    let (c, _) = code(
        s.pdp
            .register(proto::RegisterRequest {
                request_id: String::new(),
                record: Some(Record::Merchant(proto::Merchant {
                    id: "m-big".into(),
                    tier: 1,
                    display_name: "x".repeat(70 * 1024),
                })),
                expected_revision: None,
            })
            .await,
    );
    assert_eq!(c, Code::OutOfRange);
    assert_eq!(
        code(get(&mut s, K::Merchant, "m-big").await).0,
        Code::NotFound
    );
}

/// A name with a bidirectional control (an RTL override makes `evil\u{202E}gnp.exe` display
/// as `evilexe.png`) is refused with the character named, and nothing is stored; right-to-left
/// letters are fine.
#[tokio::test]
async fn names_with_bidirectional_controls_are_refused() {
    let mut s = TestServer::start().await;
    s.merchant("m1", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.provider("p1", true).await;
    for name in ["evil\u{202E}gnp.exe", "a\u{2066}b", "x\u{200F}"] {
        let refused = register_with(
            &mut s,
            anchor(proto::ImageStyle::RealisticHuman, name),
            None,
        )
        .await
        .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("anchor.display_name")
                && refused
                    .message()
                    .contains("bidirectional control character U+"),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        get(&mut s, K::Anchor, "a1").await.map_err(|e| e.code()),
        Err(Code::NotFound),
        "nothing stored"
    );
    let hebrew = register_with(
        &mut s,
        anchor(proto::ImageStyle::RealisticHuman, "שלום"),
        None,
    )
    .await
    .expect("right-to-left letters are a name like any other");
    assert!(hebrew.registration.is_some());
}
