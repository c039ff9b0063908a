//! The label rule pack (L1, L2, C1) against a real server through the generated client: off
//! by default, where the 2023 rules decide exactly as before; on when the policy directory's
//! packs.toml names it.

mod common;

use anchor_pdp::proto::register_request::Record;
use anchor_pdp::proto::{self, Decision, Enforcement, Penalty, RegistrationKind as K};
use common::*;

/// `admitted()`, serving the built-in set with the label pack enabled.
async fn admitted_with_labels() -> (TestServer, tempfile::TempDir) {
    let policies = labels_enabled();
    let s = TestServer::admitted_with(Options {
        policies: Some(policies.path().to_owned()),
        ..Options::default()
    })
    .await;
    (s, policies)
}

fn start_labelled() -> proto::AuthorizeRequest {
    let mut request = start();
    request.labels = Some(labelled());
    request
}

fn warning_ids(response: &proto::AuthorizeResponse) -> Vec<String> {
    response
        .warnings
        .iter()
        .map(|w| w.rule_id.clone())
        .collect()
}

fn consent(id: &str, owner: &str, person: &str) -> Record {
    Record::Consent(proto::LikenessConsent {
        id: id.into(),
        owner_merchant_id: owner.into(),
        person_reference: person.into(),
        consent_reference: format!("oss://consents/{id}.pdf"),
        display_name: format!("Consent {id}"),
    })
}

fn cloned_anchor(id: &str, person: &str, consent_id: &str) -> Record {
    let mut anchor = anchor_record(id, "m1", "p1", proto::ImageStyle::RealisticHuman);
    anchor.likeness_of = person.into();
    anchor.consent_id = consent_id.into();
    Record::Anchor(anchor)
}

async fn register_err(s: &mut TestServer, record: Record) -> (tonic::Code, String) {
    code(
        s.pdp
            .register(proto::RegisterRequest {
                record: Some(record),
                ..Default::default()
            })
            .await,
    )
}

#[tokio::test]
async fn with_the_pack_off_the_2023_rules_decide_as_before_whatever_the_labels_say() {
    let mut s = TestServer::admitted().await;
    let status = s
        .admin
        .get_policy_status(proto::GetPolicyStatusRequest {})
        .await
        .expect("policy status")
        .into_inner();
    let ids: Vec<&str> = status.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "E3"]
    );

    // No label reported, and a label reported as not shown: both allowed, as in 2023.
    let mut request = start();
    request.explain = true;
    let unlabelled = s.authorize(request).await;
    assert_allowed(&unlabelled);
    let explanation = unlabelled.explanation.expect("explained");
    assert!(
        explanation
            .context
            .iter()
            .chain(&explanation.facts)
            .all(|f| !f.attribute.contains("label") && !f.attribute.contains("consent")),
        "a set that reads no labels is given none: {explanation:?}"
    );
    let mut request = start();
    request.room_id = "r2".into();
    s.room("r2", "m1").await;
    s.approve(K::Room, "r2").await;
    request.labels = Some(proto::LabelReport::default());
    assert_allowed(&s.authorize(request).await);

    // A cloned likeness without any consent: not a 2023 rule.
    s.register(cloned_anchor("a-clone", "person-1", "")).await;
    s.approve(K::Anchor, "a-clone").await;
    let mut request = start();
    request.anchor_id = "a-clone".into();
    request.room_id = "r3".into();
    s.room("r3", "m1").await;
    s.approve(K::Room, "r3").await;
    assert_allowed(&s.authorize(request).await);
}

#[tokio::test]
async fn l1_refuses_a_broadcast_without_a_shown_label_and_admits_one_with_it() {
    let (mut s, _policies) = admitted_with_labels().await;
    let refused = s.authorize(start()).await;
    assert_refused(&refused, &["L1", "L2"]);
    assert_eq!(enforcement(&refused), Enforcement::RefuseStart);
    let l1 = &refused.violations[0];
    assert_eq!(l1.penalty, Penalty::None as i32);
    assert!(
        l1.message_en.contains("explicit label"),
        "{}",
        l1.message_en
    );
    assert!(l1.message_en.contains("Art. 4"), "{}", l1.message_en);
    assert!(
        l1.message_zh
            .contains("《人工智能生成合成内容标识办法》第四条"),
        "{}",
        l1.message_zh
    );
    assert!(
        l1.message_zh.contains("《直播电商监督管理办法》"),
        "{}",
        l1.message_zh
    );
    assert_eq!(refused.violations[1].penalty, Penalty::WarningOnly as i32);

    // Shown, but nobody says where: still refused.
    let mut request = start_labelled();
    request.labels = Some(proto::LabelReport {
        label_kind: proto::LabelKind::Unspecified as i32,
        ..labelled()
    });
    assert_refused(&s.authorize(request).await, &["L1"]);

    let admitted = s.authorize(start_labelled()).await;
    assert_allowed(&admitted);
    assert!(admitted.warnings.is_empty());
    let session = s.session(&admitted.session_id).await;
    assert_eq!(session.labels, Some(labelled()));
}

#[tokio::test]
async fn l1_shuts_down_a_broadcast_that_drops_its_label_without_a_freeze() {
    let (mut s, _policies) = admitted_with_labels().await;
    let session_id = s.authorize(start_labelled()).await.session_id;

    let mut check = live(&session_id);
    check.labels = Some(labelled());
    assert_allowed(&s.authorize(check.clone()).await);

    check.labels = Some(proto::LabelReport {
        label_shown: false,
        ..labelled()
    });
    let shut = s.authorize(check).await;
    assert_eq!(decision(&shut), Decision::Deny);
    assert_eq!(rule_ids(&shut), ["L1"]);
    assert_eq!(enforcement(&shut), Enforcement::ShutDown);
    assert_eq!(shut.penalty_applied, Penalty::Unspecified as i32);
    assert!(!shut.warning_issued);
    let session = s.session(&session_id).await;
    assert_eq!(session.state, proto::SessionState::ShutDown as i32);
    assert!(!session.labels.expect("labels recorded").label_shown);
    let account = s.account("m1").await;
    assert_eq!((account.warnings, account.frozen_until), (0, None));

    // No freeze: the merchant may start again, with the label.
    assert_allowed(&s.authorize(start_labelled()).await);
}

#[tokio::test]
async fn l2_only_warns_while_live_and_the_warning_is_logged() {
    let (mut s, _policies) = admitted_with_labels().await;
    let session_id = s.authorize(start_labelled()).await.session_id;

    let mut check = live(&session_id);
    check.labels = Some(proto::LabelReport {
        implicit_label: false,
        implicit_label_provider: String::new(),
        ..labelled()
    });
    let warned = s.authorize(check).await;
    assert_allowed(&warned);
    assert_eq!(enforcement(&warned), Enforcement::None);
    assert_eq!(warning_ids(&warned), ["L2"]);
    assert_eq!(warned.warnings[0].penalty, Penalty::WarningOnly as i32);
    assert!(warned.warnings[0].message_en.contains("implicit"));
    let record = s.log_record(&warned.decision_id).await;
    assert_eq!(record.warning_rule_ids, ["L2"]);
    assert!(record.rule_ids.is_empty());

    // A check that reports no labels decides on the latest report: still a warning.
    let again = s.authorize(live(&session_id)).await;
    assert_allowed(&again);
    assert_eq!(warning_ids(&again), ["L2"]);

    // The metadata label back: no warning.
    let mut check = live(&session_id);
    check.labels = Some(labelled());
    let fixed = s.authorize(check).await;
    assert_allowed(&fixed);
    assert!(fixed.warnings.is_empty());

    // An inspector cannot shut a broadcast down for a rule that only warns.
    let (code, message) = code(
        s.admin
            .report_violation(proto::ReportViolationRequest {
                session_id: session_id.clone(),
                rule_id: "L2".into(),
                inspector: "inspector-7".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");
    assert!(message.contains("L2 only warns"), "{message}");
    let session = s.session(&session_id).await;
    assert_eq!(session.state, proto::SessionState::Active as i32);
}

#[tokio::test]
async fn c1_refuses_a_cloned_likeness_until_its_consent_is_filed_and_approved() {
    let (mut s, _policies) = admitted_with_labels().await;
    s.register(cloned_anchor("a-clone", "person-1", "")).await;
    s.approve(K::Anchor, "a-clone").await;
    let mut request = start_labelled();
    request.anchor_id = "a-clone".into();

    let refused = s.authorize(request.clone()).await;
    assert_refused(&refused, &["C1"]);
    assert_eq!(
        refused.violations[0].penalty,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    assert!(
        refused.violations[0]
            .message_zh
            .contains("《互联网信息服务深度合成管理规定》第十四条")
    );

    let filed = s.register(consent("c1", "m1", "person-1")).await;
    assert_eq!(filed.kind, K::Consent as i32);
    assert_eq!(
        filed.review_status,
        proto::ReviewStatus::PendingReview as i32
    );
    // The anchor names the consent: a material change, so the anchor is reviewed again.
    let anchor = s.register(cloned_anchor("a-clone", "person-1", "c1")).await;
    assert_eq!(
        anchor.review_status,
        proto::ReviewStatus::PendingReview as i32
    );
    s.approve(K::Anchor, "a-clone").await;
    assert_refused(&s.authorize(request.clone()).await, &["C1"]);

    s.approve(K::Consent, "c1").await;
    assert_allowed(&s.authorize(request).await);
}

#[tokio::test]
async fn c1_refuses_a_consent_for_another_person_or_merchant() {
    let (mut s, _policies) = admitted_with_labels().await;
    s.merchant("m2", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.register(consent("c-other-person", "m1", "person-2"))
        .await;
    s.register(consent("c-other-merchant", "m2", "person-1"))
        .await;
    s.approve(K::Consent, "c-other-person").await;
    s.approve(K::Consent, "c-other-merchant").await;
    for (anchor, consent_id) in [
        ("a-wrong-person", "c-other-person"),
        ("a-wrong-merchant", "c-other-merchant"),
    ] {
        s.register(cloned_anchor(anchor, "person-1", consent_id))
            .await;
        s.approve(K::Anchor, anchor).await;
        let mut request = start_labelled();
        request.anchor_id = anchor.into();
        assert_refused(&s.authorize(request).await, &["C1"]);
    }
}

#[tokio::test]
async fn revoking_a_consent_shuts_its_live_broadcast_down_with_e2() {
    let (mut s, _policies) = admitted_with_labels().await;
    s.register(consent("c1", "m1", "person-1")).await;
    s.approve(K::Consent, "c1").await;
    s.register(cloned_anchor("a-clone", "person-1", "c1")).await;
    s.approve(K::Anchor, "a-clone").await;
    let mut request = start_labelled();
    request.anchor_id = "a-clone".into();
    let session_id = s.authorize(request).await.session_id;
    assert!(!session_id.is_empty());

    s.review(K::Consent, "c1", proto::Verdict::Revoke).await;

    let session = s.session(&session_id).await;
    assert_eq!(session.state, proto::SessionState::ShutDown as i32);
    assert_eq!(
        session.penalty_applied,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    assert!(
        session.close_reason.contains("C1"),
        "{}",
        session.close_reason
    );
    let account = s.account("m1").await;
    assert_eq!(account.warnings, 1);
    assert_eq!(millis(&account.frozen_until), Some(T0 + FREEZE_MS));
}

#[tokio::test]
async fn bad_consent_and_label_input_gets_a_precise_error_and_changes_nothing() {
    let (mut s, _policies) = admitted_with_labels().await;
    let (status, message) = register_err(&mut s, cloned_anchor("a-x", "", "c1")).await;
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("anchor.consent_id"), "{message}");
    let (status, message) =
        register_err(&mut s, cloned_anchor("a-x", "person-1", "c-nowhere")).await;
    assert_eq!(status, tonic::Code::FailedPrecondition);
    assert!(
        message.contains("consent_id: consent c-nowhere is not registered"),
        "{message}"
    );
    let (status, message) = register_err(&mut s, consent("c-x", "m1", "")).await;
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("consent.person_reference"), "{message}");
    for kind in [K::Anchor, K::Consent] {
        let id = if kind == K::Anchor { "a-x" } else { "c-x" };
        let found = s
            .admin
            .get_registration(proto::GetRegistrationRequest {
                kind: kind as i32,
                id: id.into(),
            })
            .await;
        assert_eq!(
            found.map_err(|e| e.code()).err(),
            Some(tonic::Code::NotFound)
        );
    }

    let mut request = start_labelled();
    request.labels = Some(proto::LabelReport {
        implicit_label: false,
        ..labelled()
    });
    let (status, message) = code(s.pdp.authorize(request).await);
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(
        message.contains("labels.implicit_label_provider"),
        "{message}"
    );
    let mut request = start_labelled();
    request.labels = Some(proto::LabelReport {
        label_kind: 9,
        ..labelled()
    });
    let (status, message) = code(s.pdp.authorize(request).await);
    assert_eq!(status, tonic::Code::InvalidArgument);
    assert!(message.contains("labels.label_kind"), "{message}");
    let live = s
        .admin
        .list_live_sessions(proto::ListLiveSessionsRequest::default())
        .await
        .expect("live sessions")
        .into_inner();
    assert!(live.sessions.is_empty(), "{live:?}");
}

#[tokio::test]
async fn a_consent_in_use_cannot_change_materially_until_its_broadcast_ends() {
    let (mut s, _policies) = admitted_with_labels().await;
    s.register(consent("c1", "m1", "person-1")).await;
    s.approve(K::Consent, "c1").await;
    s.register(cloned_anchor("a-clone", "person-1", "c1")).await;
    s.approve(K::Anchor, "a-clone").await;
    let mut request = start_labelled();
    request.anchor_id = "a-clone".into();
    let session_id = s.authorize(request).await.session_id;

    // Another document would send the consent back to review and end the broadcast.
    let Record::Consent(mut changed) = consent("c1", "m1", "person-1") else {
        unreachable!("a consent record")
    };
    changed.consent_reference = "oss://consents/c1-v2.pdf".into();
    let (status, message) = register_err(&mut s, Record::Consent(changed.clone())).await;
    assert_eq!(status, tonic::Code::FailedPrecondition, "{message}");
    assert!(
        message.contains(&format!(
            "consent c1 is in use by live session {session_id}"
        )),
        "{message}"
    );
    // A new display name is not material: accepted, the broadcast goes on.
    let Record::Consent(mut renamed) = consent("c1", "m1", "person-1") else {
        unreachable!("a consent record")
    };
    renamed.display_name = "Consent of person 1".into();
    let kept = s.register(Record::Consent(renamed)).await;
    assert_eq!(kept.review_status, proto::ReviewStatus::Approved as i32);
    assert_eq!(
        s.session(&session_id).await.state,
        proto::SessionState::Active as i32
    );

    s.pdp
        .end_session(proto::EndSessionRequest {
            session_id: session_id.clone(),
            reason: "publisher stopped".into(),
            ..Default::default()
        })
        .await
        .expect("end");
    let resubmitted = s.register(Record::Consent(changed)).await;
    assert_eq!(
        resubmitted.review_status,
        proto::ReviewStatus::PendingReview as i32
    );
}

/// STARTs of a cloned anchor racing the revocation of its consent: each either commits before
/// the revocation, and the revocation's re-check shuts it down, or sees it and is refused
/// (C1). Once the revocation is answered, no live session relies on the revoked consent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_racing_a_consent_revocation_is_refused_or_shut_down_by_the_recheck() {
    let (mut s, _policies) = admitted_with_labels().await;
    const ROOMS: usize = 16;
    for room in 0..ROOMS {
        s.room(&format!("race-{room}"), "m1").await;
        s.approve(K::Room, &format!("race-{room}")).await;
    }
    let (mut refused, mut shut_down) = (0, 0);
    for round in 0..12 {
        // A revoked consent is filed afresh, so each round has its own consent and anchor.
        let (consent_id, anchor) = (format!("c-{round}"), format!("a-clone-{round}"));
        s.register(consent(&consent_id, "m1", "person-1")).await;
        s.approve(K::Consent, &consent_id).await;
        s.register(cloned_anchor(&anchor, "person-1", &consent_id))
            .await;
        s.approve(K::Anchor, &anchor).await;
        let starts: Vec<_> = (0..ROOMS)
            .map(|room| {
                let mut pdp = s.pdp.clone();
                let mut request = start_labelled();
                request.anchor_id = anchor.clone();
                request.room_id = format!("race-{room}");
                tokio::spawn(async move {
                    // Spread over the revocation's commit: some before, some after.
                    tokio::time::sleep(std::time::Duration::from_micros(150 * room as u64)).await;
                    pdp.authorize(request).await.map(|r| r.into_inner())
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        s.review(K::Consent, &consent_id, proto::Verdict::Revoke)
            .await;
        let mut opened = Vec::new();
        for start in starts {
            let response = start.await.expect("task").expect("authorize");
            if decision(&response) == Decision::Deny {
                let rules = rule_ids(&response);
                assert!(
                    rules.contains(&"C1".to_owned()),
                    "round {round}: {response:?}"
                );
                refused += 1;
            } else {
                opened.push(response.session_id);
            }
        }
        let live = s
            .admin
            .list_live_sessions(proto::ListLiveSessionsRequest {
                merchant_id: "m1".into(),
            })
            .await
            .expect("live sessions")
            .into_inner()
            .sessions;
        assert!(
            live.iter().all(|session| session.anchor_id != anchor),
            "round {round}: the consent is revoked but {live:?} are live"
        );
        for session_id in opened {
            let session = s.session(&session_id).await;
            assert_eq!(session.state, proto::SessionState::ShutDown as i32);
            assert!(
                session.close_reason.contains("C1"),
                "{}",
                session.close_reason
            );
            shut_down += 1;
        }
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
    println!("refused (C1): {refused}, shut down by the re-check: {shut_down}");
    assert!(refused > 0 && shut_down > 0, "the race was not raced");
}

/// L1 brings no freeze as shipped; the penalty is an annotation, so an operator who exports the
/// pack may make a dropped label cost a freeze like an unfiled anchor.
#[tokio::test]
async fn an_operator_may_make_a_dropped_label_freeze_by_editing_l1s_penalty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let labels = anchor_pdp::policy::packs::find("labels").expect("labels pack");
    anchor_pdp::policy::builtin::export(dir.path(), &[labels]).expect("export");
    let path = dir.path().join("labels.cedar");
    let text = std::fs::read_to_string(&path).expect("labels.cedar");
    let shipped = "@id(\"L1\")\n@penalty(\"none\")";
    assert!(text.contains(shipped), "L1 as shipped changed");
    std::fs::write(
        &path,
        text.replace(shipped, "@id(\"L1\")\n@penalty(\"E2\")"),
    )
    .expect("edit");
    let mut s = TestServer::admitted_with(Options {
        policies: Some(dir.path().to_owned()),
        ..Options::default()
    })
    .await;
    let session_id = s.authorize(start_labelled()).await.session_id;
    let mut check = live(&session_id);
    check.labels = Some(proto::LabelReport {
        label_shown: false,
        ..labelled()
    });
    let shut = s.authorize(check).await;
    assert_eq!(rule_ids(&shut), ["L1"]);
    assert_eq!(
        shut.penalty_applied,
        Penalty::E2WarnShutDownAndFreeze as i32
    );
    assert!(shut.warning_issued);
    assert_eq!(millis(&shut.frozen_until), Some(T0 + FREEZE_MS));
}
