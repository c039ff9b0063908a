//! The review fast path and anchor images over real HTTP against the real server: images come
//! only through the console from configured prefixes and are checked; an approval binds to the
//! image's SHA-256 and a swapped image sends the anchor back to review (and its START is
//! refused); "& next" goes on to the next filing not claimed by another and claims it; bulk
//! approval asks once and records each filing as its own verdict.

mod common;

use anchor_pdp::proto::{self, register_request::Record};
use common::console::{anchor, console_server_with, form, http, sign_in};
use common::images::{image_host, png};
use common::start;

async fn register_anchor(pdp: &mut common::bearer::Pdp, id: &str, reference: &str) {
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Anchor(proto::VirtualAnchor {
            id: id.into(),
            owner_merchant_id: "m1".into(),
            provider_id: "p1".into(),
            image_style: proto::ImageStyle::RealisticHuman as i32,
            image_reference: reference.into(),
            display_name: format!("Anchor {id}"),
            likeness_of: String::new(),
            consent_id: String::new(),
        })),
        expected_revision: None,
    })
    .await
    .expect("register the anchor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_come_only_through_the_console_and_a_swapped_image_sends_the_anchor_back_to_review()
{
    let (server, mut pdp, mut admin) = console_server_with(|args| {
        args.console_image_prefixes = vec![image_host().prefix()];
        args.image_recheck_secs = 1;
    })
    .await;
    let addr = server.console_addr.expect("console");
    let host = image_host();
    host.put("swap-1.png", "image/png", png(64, [200, 30, 30]));
    host.put(
        "evil.svg",
        "image/svg+xml",
        b"<svg onload=\"alert(1)\"/>".to_vec(),
    );
    host.put(
        "html.png",
        "text/html",
        b"<script>alert(1)</script>".to_vec(),
    );
    let mut huge = png(16, [1, 2, 3]);
    huge.resize(9 << 20, 0);
    host.put("huge.png", "image/png", huge);
    for (id, reference) in [
        ("a-swap", "oss://anchors/swap-1.png"),
        ("a-dots", "oss://anchors/../../private/x.png"),
        ("a-svg", "oss://anchors/evil.svg"),
        ("a-html", "oss://anchors/html.png"),
        ("a-huge", "oss://anchors/huge.png"),
        ("a-elsewhere", "https://images.example.net/x.png"),
    ] {
        register_anchor(&mut pdp, id, reference).await;
    }
    let (cookie, csrf) = sign_in(addr, "reviewer");
    let image = |id: &str| {
        http(
            addr,
            "GET",
            &format!("/review/anchor/{id}/image"),
            &[("Cookie", &cookie)],
            "",
        )
    };
    for (id, status, why) in [
        ("a-dots", 404, "a `.` or `..` path segment"),
        (
            "a-elsewhere",
            404,
            "no configured image prefix maps this reference",
        ),
        ("a-svg", 502, "Content-Type `image/svg+xml` is not one of"),
        ("a-html", 502, "Content-Type `text/html` is not one of"),
        ("a-huge", 502, "larger than 8388608 bytes"),
    ] {
        let reply = image(id);
        assert_eq!(reply.status, status, "{id}: {}", reply.body);
        assert!(reply.body.contains(why), "{id}: {}", reply.body);
        // Its filing page says why there is no image and offers no approval; an approval is
        // refused all the same, from the console (no image was seen) and over gRPC (the
        // server cannot fetch it): an image that cannot be checked is not approved.
        let page = http(
            addr,
            "GET",
            &format!("/review/anchor/{id}"),
            &[("Cookie", &cookie)],
            "",
        );
        assert!(page.body.contains(why), "{id}: {}", page.body);
        assert!(!page.body.contains("data-key=\"a\""), "{id}: {}", page.body);
        let approve = http(
            addr,
            "POST",
            &format!("/review/anchor/{id}"),
            &[("Cookie", &cookie)],
            &form(&[
                ("verdict", "approve"),
                ("expected_revision", "1"),
                ("csrf", &csrf),
            ]),
        );
        assert_eq!(approve.status, 400, "{id}: {}", approve.body);
        assert!(
            approve
                .body
                .contains("its image was not shown, so it cannot be approved"),
            "{id}: {}",
            approve.body
        );
        let over_grpc = admin
            .review_filing(proto::ReviewFilingRequest {
                kind: proto::RegistrationKind::Anchor as i32,
                id: id.into(),
                verdict: proto::Verdict::Approve as i32,
                reviewer: "reviewer-1".into(),
                ..Default::default()
            })
            .await;
        let (code, message) = common::code(over_grpc);
        assert_eq!(code, tonic::Code::FailedPrecondition, "{id}: {message}");
        assert!(
            message.contains("its image cannot be checked, so it is not approved"),
            "{id}: {message}"
        );
        assert_eq!(
            anchor(&mut admin, id).await.review_status,
            proto::ReviewStatus::PendingReview as i32
        );
    }

    // The reviewer saw the red image; the approval binds to its hash.
    let seen = image("a-swap");
    assert_eq!(seen.status, 200);
    let red = seen.header("x-image-sha256").expect("hash").to_owned();
    assert_eq!(red, anchor_pdp::domain::sha256_hex(png(64, [200, 30, 30])));
    // An image asked for as another version than it now is: refused, not shown.
    let other = http(
        addr,
        "GET",
        "/review/anchor/a-swap/image?v=0000000000000000",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(other.status, 409, "{}", other.body);
    // A hash the image does not have is refused over gRPC (ABORTED), as from a stale page.
    let stale = admin
        .review_filing(proto::ReviewFilingRequest {
            kind: proto::RegistrationKind::Anchor as i32,
            id: "a-swap".into(),
            verdict: proto::Verdict::Approve as i32,
            reviewer: "reviewer-1".into(),
            image_sha256: Some("0".repeat(64)),
            ..Default::default()
        })
        .await;
    let (code, message) = common::code(stale);
    assert_eq!(code, tonic::Code::Aborted, "{message}");
    assert!(
        message.contains("the image changed since it was shown"),
        "{message}"
    );
    let approve = http(
        addr,
        "POST",
        "/review/anchor/a-swap",
        &[("Cookie", &cookie)],
        &form(&[
            ("verdict", "approve"),
            ("expected_revision", "1"),
            ("image_sha256", &red),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(approve.status, 303, "{}", approve.body);
    let approved = anchor(&mut admin, "a-swap").await;
    assert_eq!(approved.review_status, proto::ReviewStatus::Approved as i32);
    assert_eq!(
        approved
            .last_review
            .as_ref()
            .map(|r| r.image_sha256.as_str()),
        Some(red.as_str())
    );
    let mut asks = start();
    asks.anchor_id = "a-swap".into();
    common::assert_allowed(
        &pdp.authorize(asks.clone())
            .await
            .expect("start")
            .into_inner(),
    );

    // The same reference now serves another picture: the re-check (every second here) sends
    // the anchor back to review, and a START with it is refused.
    host.put("swap-1.png", "image/png", png(64, [30, 30, 200]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let back = loop {
        let now = anchor(&mut admin, "a-swap").await;
        if now.review_status != proto::ReviewStatus::Approved as i32
            || std::time::Instant::now() > deadline
        {
            break now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        back.review_status,
        proto::ReviewStatus::PendingReview as i32
    );
    assert_eq!(back.revision, 3, "approval, then back to review");
    let refused = pdp.authorize(asks).await.expect("start").into_inner();
    assert_eq!(
        refused.decision,
        proto::Decision::Deny as i32,
        "{refused:?}"
    );
    let mut records = admin
        .read_decision_log(proto::ReadDecisionLogRequest {
            action: "ImageChanged".into(),
            ..Default::default()
        })
        .await
        .expect("log")
        .into_inner();
    let record = records
        .message()
        .await
        .expect("record")
        .expect("one record");
    assert_eq!(
        (record.entry_point.as_str(), record.change.as_str()),
        ("image-check", "anchor a-swap revision 3, PENDING_REVIEW")
    );

    // A retried approval gets its first answer, even once its image cannot be fetched.
    host.put("retry.png", "image/png", png(32, [9, 9, 9]));
    register_anchor(&mut pdp, "a-retry", "oss://anchors/retry.png").await;
    let approve = || proto::ReviewFilingRequest {
        kind: proto::RegistrationKind::Anchor as i32,
        id: "a-retry".into(),
        verdict: proto::Verdict::Approve as i32,
        reviewer: "reviewer-1".into(),
        request_id: "approve-a-retry".into(),
        ..Default::default()
    };
    let first = admin
        .review_filing(approve())
        .await
        .expect("approve")
        .into_inner();
    host.put("retry.png", "image/svg+xml", b"<svg/>".to_vec());
    let again = admin
        .review_filing(approve())
        .await
        .expect("the retry")
        .into_inner();
    assert_eq!(again.registration, first.registration);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_and_next_passes_filings_claimed_by_others_and_bulk_approval_asks_once() {
    let (server, mut pdp, mut admin) = console_server_with(|args| {
        args.console_image_prefixes = vec![image_host().prefix()];
    })
    .await;
    let addr = server.console_addr.expect("console");
    for i in 1..=6 {
        register_anchor(
            &mut pdp,
            &format!("q-{i:02}"),
            &format!("oss://anchors/q-{i:02}.png"),
        )
        .await;
    }
    let (reviewer, csrf) = sign_in(addr, "reviewer");
    let (other, other_csrf) = sign_in(addr, "admin");

    // The admin claims q-02: the reviewer's queue marks it, and "& next" passes it by.
    let claimed = http(
        addr,
        "POST",
        "/review/anchor/q-02/claim",
        &[("Cookie", &other)],
        &form(&[("csrf", &other_csrf)]),
    );
    assert_eq!(claimed.status, 200, "{}", claimed.body);
    assert!(claimed.body.contains("Claimed by you"), "{}", claimed.body);
    let queue = http(
        addr,
        "GET",
        "/review?kind=anchor",
        &[("Cookie", &reviewer)],
        "",
    );
    assert!(
        queue.body.contains("Claimed by admin-1 (admin, console)"),
        "{}",
        queue.body
    );
    // The queue has thumbnails served by the console.
    assert!(
        queue.body.contains("src=\"/review/anchor/q-01/image\""),
        "{}",
        queue.body
    );

    let approve_next = |id: &str, filter: &[(&str, &str)]| {
        let mut fields = vec![
            ("verdict", "approve"),
            ("expected_revision", "1"),
            ("image_sha256", common::images::default_sha()),
            ("csrf", &csrf),
        ];
        fields.extend_from_slice(filter);
        http(
            addr,
            "POST",
            &format!("/review/anchor/{id}"),
            &[("Cookie", &reviewer)],
            &form(&fields),
        )
    };
    // The queue's order (oldest first) within the reviewer's filter (anchors): a1, q-01, ...
    let first = approve_next("a1", &[("kind", "anchor")]);
    assert_eq!(
        first.header("location"),
        Some("/review/anchor/q-01?kind=anchor&done=anchor%2Fa1")
    );
    let second = approve_next("q-01", &[("kind", "anchor")]);
    assert_eq!(
        second.header("location"),
        Some("/review/anchor/q-03?kind=anchor&done=anchor%2Fq-01"),
        "q-02 is claimed by another"
    );
    // Going on to q-03 claimed it for the reviewer: the admin's claim is refused.
    let taken = http(
        addr,
        "POST",
        "/review/anchor/q-03/claim",
        &[("Cookie", &other)],
        &form(&[("csrf", &other_csrf)]),
    );
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert!(
        taken
            .body
            .contains("Claimed by reviewer-1 (reviewer, console)"),
        "{}",
        taken.body
    );
    let landed = http(
        addr,
        "GET",
        "/review/anchor/q-03?kind=anchor&done=anchor%2Fq-01",
        &[("Cookie", &reviewer)],
        "",
    );
    assert!(
        landed
            .body
            .contains("Verdict recorded. Anchor image q-01 · approved"),
        "{}",
        landed.body
    );
    assert!(landed.body.contains("Claimed by you"), "{}", landed.body);
    // Its place in the queue, and the keys; no "previous" (k): the one before is another's.
    assert!(landed.body.contains("2 / 5"), "{}", landed.body);
    for key in ["a", "r", "j", "v"] {
        assert!(
            landed.body.contains(&format!("data-key=\"{key}\"")),
            "{key}: {}",
            landed.body
        );
    }
    assert!(!landed.body.contains("data-key=\"k\""), "{}", landed.body);

    // Bulk: the first post only asks; nothing changes until it is confirmed. q-02 is claimed
    // by the admin, q-06 picked at a revision it does not have.
    let mut fields = vec![
        ("pick.anchor/q-02", "1"),
        ("pick.anchor/q-04", "1"),
        ("pick.anchor/q-05", "1"),
        ("pick.anchor/q-06", "7"),
        ("csrf", csrf.as_str()),
    ];
    let asked = http(
        addr,
        "POST",
        "/review/bulk",
        &[("Cookie", &reviewer)],
        &form(&fields),
    );
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(asked.body.contains("Approve them (4)"), "{}", asked.body);
    for id in ["q-02", "q-04", "q-05", "q-06"] {
        assert_eq!(
            anchor(&mut admin, id).await.review_status,
            proto::ReviewStatus::PendingReview as i32,
            "{id}: not before the confirmation"
        );
    }
    // The confirmation shows each image at the hash it carries for the approval.
    let sha = common::images::default_sha();
    assert!(
        asked
            .body
            .contains(&format!("name=\"sha.anchor/q-04\" value=\"{sha}\""))
            && asked.body.contains(&format!(
                "src=\"/review/anchor/q-04/image?v={}\"",
                &sha[..16]
            )),
        "{}",
        asked.body
    );
    let shas: Vec<String> = ["q-02", "q-04", "q-05", "q-06"]
        .iter()
        .map(|id| format!("sha.anchor/{id}"))
        .collect();
    for name in &shas {
        fields.push((name.as_str(), sha));
    }
    fields.push(("confirm", "yes"));
    let confirmed = http(
        addr,
        "POST",
        "/review/bulk",
        &[("Cookie", &reviewer)],
        &form(&fields),
    );
    // Neither q-02 nor q-06 is approved, and the page says why.
    assert_eq!(confirmed.status, 409, "{}", confirmed.body);
    for said in [
        "2 / 4 approved",
        "expected revision 7",
        "Claimed by admin-1 (admin, console)",
    ] {
        assert!(confirmed.body.contains(said), "{said}: {}", confirmed.body);
    }
    for (id, status) in [
        ("q-02", proto::ReviewStatus::PendingReview),
        ("q-04", proto::ReviewStatus::Approved),
        ("q-05", proto::ReviewStatus::Approved),
        ("q-06", proto::ReviewStatus::PendingReview),
    ] {
        let filing = anchor(&mut admin, id).await;
        assert_eq!(filing.review_status, status as i32, "{id}");
    }
    // Each approval is its own verdict in the decision log, under the reviewer.
    let mut records = admin
        .read_decision_log(proto::ReadDecisionLogRequest {
            action: "ReviewFiling".into(),
            entry_point: "console".into(),
            ..Default::default()
        })
        .await
        .expect("log")
        .into_inner();
    let mut bulk = Vec::new();
    while let Some(record) = records.message().await.expect("record") {
        if record.request.contains("\"bulk\":4") {
            assert_eq!(record.caller, "reviewer-1 (reviewer, console)");
            bulk.push(record.change);
        }
    }
    bulk.sort();
    assert_eq!(
        bulk,
        [
            "anchor q-04 revision 2, APPROVED",
            "anchor q-05 revision 2, APPROVED"
        ]
    );
    // Without the hash of the image seen (a page whose image did not load), no approval.
    let unseen = http(
        addr,
        "POST",
        "/review/anchor/q-03",
        &[("Cookie", &reviewer)],
        &form(&[
            ("verdict", "approve"),
            ("expected_revision", "1"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(unseen.status, 400, "{}", unseen.body);
    assert!(
        unseen
            .body
            .contains("its image was not shown, so it cannot be approved"),
        "{}",
        unseen.body
    );
}
