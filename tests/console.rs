//! The browser console's pages and forms over real HTTP against the real server: sign-in with
//! caller tokens and roles, the session cookie, CSRF, security headers, escaping of hostile
//! record fields, the review queue and a verdict that a gRPC START then relies on.

mod common;

use std::net::SocketAddr;

use anchor_pdp::proto::{self, register_request::Record};
use common::console::{Reply, approve, console_server, exchange, form, http, sign_in, token};
use common::{labelled, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_takes_a_console_role_and_every_page_carries_the_security_headers() {
    let (server, _pdp, _admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let home = http(addr, "GET", "/", &[], "");
    assert_eq!(
        (home.status, home.header("location")),
        (303, Some("/sign-in"))
    );
    let page = http(addr, "GET", "/sign-in", &[], "");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("frame-ancestors 'none'")
            && csp.contains("img-src 'self';"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("same-origin"));
    assert_eq!(
        page.header("strict-transport-security"),
        None,
        "HSTS only over TLS"
    );
    assert!(!page.body.contains("<script>") || page.body.contains("src=\"/static/console.js\""));

    for refused in [token("gateway"), "not-a-token-at-all-000000".to_owned()] {
        let reply = http(addr, "POST", "/sign-in", &[], &form(&[("token", &refused)]));
        assert_eq!(reply.header("location"), Some("/sign-in?failed=true"));
        assert!(reply.header("set-cookie").is_none());
    }
    let unsigned = http(addr, "GET", "/review", &[], "");
    assert_eq!(
        (unsigned.status, unsigned.header("location")),
        (303, Some("/sign-in?next=%2Freview"))
    );
    let forged = http(
        addr,
        "GET",
        "/review",
        &[("Cookie", "pdp_console=forged")],
        "",
    );
    assert_eq!(forged.status, 303);

    // Sign-out needs the form's CSRF token, then ends the session.
    let (cookie, csrf) = sign_in(addr, "reviewer");
    let refused = http(
        addr,
        "POST",
        "/sign-out",
        &[("Cookie", &cookie)],
        &form(&[("csrf", "wrong")]),
    );
    assert_eq!(refused.status, 403);
    let out = http(
        addr,
        "POST",
        "/sign-out",
        &[("Cookie", &cookie)],
        &form(&[("csrf", &csrf)]),
    );
    assert_eq!(out.status, 303);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    let after = http(addr, "GET", "/review", &[("Cookie", &cookie)], "");
    assert_eq!(after.status, 303, "the session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_sees_the_pending_anchor_with_its_image_and_approves_it_for_start() {
    let (server, mut pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let (cookie, csrf) = sign_in(addr, "reviewer");

    let queue = http(addr, "GET", "/review", &[("Cookie", &cookie)], "");
    assert!(
        queue.body.contains("href=\"/review/anchor/a1\""),
        "{}",
        queue.body
    );
    assert!(
        !queue.body.contains("<script>alert"),
        "hostile names are escaped"
    );
    assert!(queue.body.contains("&lt;script&gt;alert"), "{}", queue.body);
    let rooms_only = http(addr, "GET", "/review?kind=room", &[("Cookie", &cookie)], "");
    assert!(!rooms_only.body.contains("/review/anchor/a1"));

    // The image is the console's own: fetched by the server, shown with its hash, and that
    // hash is what the verdict form says the reviewer saw.
    let default_sha = anchor_pdp::domain::sha256_hex(common::images::default_png());
    let filing = http(addr, "GET", "/review/anchor/a1", &[("Cookie", &cookie)], "");
    assert!(
        filing.body.contains(&format!(
            "src=\"/review/anchor/a1/image?v={}\"",
            &default_sha[..16]
        )),
        "{}",
        filing.body
    );
    assert!(
        filing
            .body
            .contains(&format!("name=\"image_sha256\" value=\"{default_sha}\"")),
        "{}",
        filing.body
    );
    let image = http(
        addr,
        "GET",
        "/review/anchor/a1/image",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(
        (
            image.status,
            image.header("content-type"),
            image.header("x-image-sha256")
        ),
        (200, Some("image/png"), Some(default_sha.as_str()))
    );
    // Served sandboxed (an image cannot run anything even if opened as a page), kept a minute.
    assert_eq!(
        (
            image.header("content-security-policy"),
            image.header("cache-control")
        ),
        (
            Some("default-src 'none'; sandbox"),
            Some("private, max-age=60")
        )
    );
    let unsigned = http(addr, "GET", "/review/anchor/a1/image", &[], "");
    assert_eq!(
        unsigned.status, 303,
        "only a signed-in console user gets images"
    );
    assert!(
        filing.body.contains("listed on the market"),
        "{}",
        filing.body
    );

    // Before the verdict, START is refused (R7); a form without its CSRF token changes nothing.
    let refused = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(refused.decision, proto::Decision::Deny as i32);
    let approve = [
        ("verdict", "approve"),
        ("image_sha256", common::images::default_sha()),
        ("expected_revision", "1"),
        ("note", "looks right"),
    ];
    let no_csrf = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &cookie)],
        &form(&approve),
    );
    assert_eq!(no_csrf.status, 403);
    let mut with_csrf = approve.to_vec();
    with_csrf.push(("csrf", &csrf));
    let done = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &cookie)],
        &form(&with_csrf),
    );
    // Nothing else waits: "& next" comes back to the queue, saying what it recorded.
    assert_eq!(
        (done.status, done.header("location")),
        (303, Some("/review?done=anchor%2Fa1"))
    );
    let queue = http(
        addr,
        "GET",
        "/review?done=anchor%2Fa1",
        &[("Cookie", &cookie)],
        "",
    );
    assert!(
        queue
            .body
            .contains("Verdict recorded. Anchor image a1 · approved"),
        "{}",
        queue.body
    );
    let allowed = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(
        allowed.decision,
        proto::Decision::Allow as i32,
        "{allowed:?}"
    );

    // The verdict is in the decision log under the signed-in reviewer.
    let mut records = admin
        .read_decision_log(proto::ReadDecisionLogRequest {
            action: "ReviewFiling".into(),
            entry_point: "console".into(),
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
    assert_eq!(record.caller, "reviewer-1 (reviewer, console)");

    // The same form again carries a stale revision: the conflict is shown, nothing overwritten.
    let stale = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &cookie)],
        &form(&with_csrf),
    );
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert!(
        stale.body.contains("changed since you opened it"),
        "{}",
        stale.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspector_may_read_the_queue_but_not_record_a_verdict_and_chinese_is_one_click_away() {
    let (server, _pdp, _admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let (cookie, csrf) = sign_in(addr, "inspector");
    let verdict = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &cookie)],
        &form(&[("verdict", "approve"), ("csrf", &csrf)]),
    );
    assert_eq!(verdict.status, 403);

    let chinese = http(
        addr,
        "GET",
        "/review",
        &[
            ("Cookie", &cookie),
            ("Accept-Language", "zh-CN,zh;q=0.9,en;q=0.5"),
        ],
        "",
    );
    assert!(chinese.body.contains("审核队列"), "{}", chinese.body);
    let switch = http(
        addr,
        "GET",
        "/lang/en",
        &[
            ("Cookie", &cookie),
            ("Referer", &format!("http://{addr}/review?kind=anchor")),
        ],
        "",
    );
    assert_eq!(switch.header("location"), Some("/review?kind=anchor"));
    assert!(
        switch
            .header("set-cookie")
            .is_some_and(|c| c.starts_with("lang=en"))
    );
    let english = http(
        addr,
        "GET",
        "/review",
        &[
            ("Cookie", &format!("{cookie}; lang=en")),
            ("Accept-Language", "zh-CN"),
        ],
        "",
    );
    assert!(english.body.contains("Review queue"), "the cookie wins");
    // An outside Referer never becomes the redirect.
    let outside = http(
        addr,
        "GET",
        "/lang/zh",
        &[("Referer", "http://evil.example//x")],
        "",
    );
    assert_eq!(outside.header("location"), Some("/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspector_reports_on_the_live_board_and_the_admin_sees_the_freeze_and_why() {
    let (server, mut pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    approve(&mut admin, proto::RegistrationKind::Anchor, "a1").await;
    let started = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(started.decision, proto::Decision::Allow as i32);
    let session = started.session_id;

    let (cookie, csrf) = sign_in(addr, "inspector");
    let board = http(addr, "GET", "/live", &[("Cookie", &cookie)], "");
    assert!(
        board.body.contains(&format!("href=\"/live/{session}\"")),
        "{}",
        board.body
    );
    let page = http(
        addr,
        "GET",
        &format!("/live/{session}"),
        &[("Cookie", &cookie)],
        "",
    );
    assert!(
        page.body.contains("<option value=\"R2\">R2 — "),
        "{}",
        page.body
    );
    let chinese = http(
        addr,
        "GET",
        &format!("/live/{session}"),
        &[("Cookie", &cookie), ("Accept-Language", "zh-CN")],
        "",
    );
    assert!(chinese.body.contains("上报违规"), "{}", chinese.body);

    // Step one shows the penalty and changes nothing; step two reports.
    let report = format!("/live/{session}/report");
    let shown = http(
        addr,
        "POST",
        &report,
        &[("Cookie", &cookie)],
        &form(&[
            ("rule_id", "R2"),
            ("note", "seen on stream"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(
        shown
            .body
            .contains("E1: shutdown and a 7-day livestream freeze"),
        "{}",
        shown.body
    );
    let still = pdp
        .authorize(common::live(&session))
        .await
        .expect("live")
        .into_inner();
    assert_eq!(
        still.decision,
        proto::Decision::Allow as i32,
        "nothing happened yet"
    );
    let done = http(
        addr,
        "POST",
        &report,
        &[("Cookie", &cookie)],
        &form(&[
            ("rule_id", "R2"),
            ("note", "seen on stream"),
            ("confirm", "yes"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(done.status, 303, "{}", done.body);
    let cut = pdp
        .authorize(common::live(&session))
        .await
        .expect("live")
        .into_inner();
    assert_eq!(cut.decision, proto::Decision::Deny as i32);
    let refused = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(
        refused.violations.first().map(|v| v.rule_id.as_str()),
        Some("E3")
    );

    // The admin's account page shows the freeze with a lift form; the log shows the deny and
    // why.
    let (admin_cookie, admin_csrf) = sign_in(addr, "admin");
    let account = http(
        addr,
        "GET",
        "/accounts?merchant=m1",
        &[("Cookie", &admin_cookie)],
        "",
    );
    assert!(
        account.body.contains("action=\"/accounts/m1/lift\""),
        "{}",
        account.body
    );
    assert!(!account.body.contains("not frozen"), "{}", account.body);
    let log = http(
        addr,
        "GET",
        "/log?merchant=m1&decision=deny&rule=E3",
        &[("Cookie", &admin_cookie)],
        "",
    );
    assert!(
        log.body.contains("DENY") && log.body.contains("E3"),
        "{}",
        log.body
    );
    assert!(
        log.body.contains("frozen = true"),
        "the deny is explained: {}",
        log.body
    );

    // A reviewer may read the account but not lift the freeze.
    let (reviewer_cookie, reviewer_csrf) = sign_in(addr, "reviewer");
    let lift = http(
        addr,
        "POST",
        "/accounts/m1/lift",
        &[("Cookie", &reviewer_cookie)],
        &form(&[("reason", "appeal"), ("csrf", &reviewer_csrf)]),
    );
    assert_eq!(lift.status, 403);
    let lifted = http(
        addr,
        "POST",
        "/accounts/m1/lift",
        &[("Cookie", &admin_cookie)],
        &form(&[("reason", "appeal upheld"), ("csrf", &admin_csrf)]),
    );
    assert_eq!(lifted.status, 303);
    let allowed = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(
        allowed.decision,
        proto::Decision::Allow as i32,
        "{allowed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lists_providers_and_files_ai_features_and_an_inspector_only_reads_them() {
    let (server, mut pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::AiFeature(proto::AiFeature {
            id: "voice-clone".into(),
            display_name: String::new(),
        })),
        expected_revision: None,
    })
    .await
    .expect("ai feature");
    let (cookie, csrf) = sign_in(addr, "admin");
    let catalog = http(addr, "GET", "/catalog", &[("Cookie", &cookie)], "");
    assert!(
        catalog.body.contains("action=\"/catalog/provider/p1\""),
        "{}",
        catalog.body
    );
    let unlisted = http(
        addr,
        "POST",
        "/catalog/provider/p1",
        &[("Cookie", &cookie)],
        &form(&[("listed", "false"), ("csrf", &csrf)]),
    );
    assert_eq!(unlisted.status, 303, "{}", unlisted.body);
    let filed = http(
        addr,
        "POST",
        "/catalog/ai-feature/voice-clone",
        &[("Cookie", &cookie)],
        &form(&[
            ("assessed", "true"),
            ("filing_number", "AI-FILING-9"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(filed.status, 303, "{}", filed.body);
    let provider = admin
        .get_registration(proto::GetRegistrationRequest {
            kind: proto::RegistrationKind::Provider as i32,
            id: "p1".into(),
        })
        .await
        .expect("provider")
        .into_inner()
        .registration
        .expect("registration");
    assert_eq!(provider.provider_listing.map(|l| l.listed), Some(false));
    let feature = admin
        .get_registration(proto::GetRegistrationRequest {
            kind: proto::RegistrationKind::AiFeature as i32,
            id: "voice-clone".into(),
        })
        .await
        .expect("feature")
        .into_inner()
        .registration
        .expect("registration");
    let clearance = feature.ai_feature_clearance.expect("clearance");
    assert!(clearance.security_assessment_passed);
    assert_eq!(clearance.filing_number, "AI-FILING-9");

    let (inspector, inspector_csrf) = sign_in(addr, "inspector");
    let read = http(addr, "GET", "/catalog", &[("Cookie", &inspector)], "");
    assert_eq!(read.status, 200);
    assert!(
        !read.body.contains("action=\"/catalog/provider/p1\""),
        "no forms for a reader"
    );
    let refused = http(
        addr,
        "POST",
        "/catalog/provider/p1",
        &[("Cookie", &inspector)],
        &form(&[("listed", "true"), ("csrf", &inspector_csrf)]),
    );
    assert_eq!(refused.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_comes_in_pages_of_50_oldest_first_searched_and_sorted() {
    let (server, pdp, _admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut pdp = pdp.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..249).step_by(8) {
                pdp.register(proto::RegisterRequest {
                    request_id: String::new(),
                    record: Some(Record::Room(proto::LivestreamRoom {
                        id: format!("room{i:03}"),
                        owner_merchant_id: "m1".into(),
                        display_name: String::new(),
                    })),
                    expected_revision: None,
                })
                .await
                .expect("room");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let (cookie, _) = sign_in(addr, "reviewer");
    // 249 rooms and the pending anchor a1: 250 filings, five pages.
    let first = http(addr, "GET", "/review", &[("Cookie", &cookie)], "");
    assert!(first.body.contains("250 pending"), "{}", first.body);
    assert_eq!(first.body.matches("<a href=\"/review/").count(), 50);
    assert!(first.body.contains("1 / 5"), "{}", first.body);
    let second = http(
        addr,
        "GET",
        "/review?kind=&q=&page=4",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(second.body.matches("<a href=\"/review/").count(), 50);
    assert!(second.body.contains("5 / 5"));
    // Oldest first (all filed at T0 here, so by id): a1, then the rooms in order.
    let rows: Vec<&str> = first
        .body
        .split("<a href=\"/review/")
        .skip(1)
        .map(|row| row.split('"').next().unwrap_or_default())
        .collect();
    assert_eq!(&rows[..3], ["anchor/a1", "room/room000", "room/room001"]);
    assert_eq!(
        second
            .body
            .split("<a href=\"/review/")
            .last()
            .map(|r| r.split('"').next()),
        Some(Some("room/room248"))
    );
    // A page past the end shows the last page; a merchant with nothing pending, none.
    let past = http(addr, "GET", "/review?page=9", &[("Cookie", &cookie)], "");
    assert!(past.body.contains("5 / 5"), "{}", past.body);
    assert_eq!(past.body.matches("<a href=\"/review/").count(), 50);
    let other = http(
        addr,
        "GET",
        "/review?q=merchant-9",
        &[("Cookie", &cookie)],
        "",
    );
    assert!(other.body.contains("0 pending"), "{}", other.body);
    // Search by part of an id (any case), by merchant; sorted newest first or by name.
    let found = http(addr, "GET", "/review?q=ROOM24", &[("Cookie", &cookie)], "");
    assert!(found.body.contains("9 pending"), "{}", found.body);
    let by_merchant = http(addr, "GET", "/review?q=m1", &[("Cookie", &cookie)], "");
    assert!(
        by_merchant.body.contains("250 pending"),
        "{}",
        by_merchant.body
    );
    let newest = http(
        addr,
        "GET",
        "/review?sort=newest&kind=room",
        &[("Cookie", &cookie)],
        "",
    );
    assert!(newest.body.contains("249 pending"), "{}", newest.body);
    // Rooms have no name and sort first; a1 is named, so it comes last.
    let by_name = http(addr, "GET", "/review?sort=name", &[("Cookie", &cookie)], "");
    assert!(
        !by_name.body.contains("/review/anchor/a1"),
        "{}",
        by_name.body
    );
    let by_name_last = http(
        addr,
        "GET",
        "/review?sort=name&page=4",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(
        by_name_last
            .body
            .split("<a href=\"/review/")
            .last()
            .map(|r| r.split('"').next()),
        Some(Some("anchor/a1?sort=name"))
    );
}

/// Where `needle` first appears in `page`, for order checks (newest first).
fn position(page: &str, needle: &str) -> usize {
    page.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not on the page: {page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filing_shows_its_history_the_board_its_last_check_and_the_log_a_time_window() {
    let (server, mut pdp, _admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    // Filed at T0 (2026-01-01 00:00 UTC); revised at 00:01; approved at 00:02 with a note.
    server.clock.advance(60_000);
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Anchor(proto::VirtualAnchor {
            id: "a1".into(),
            owner_merchant_id: "m1".into(),
            provider_id: "p1".into(),
            image_style: proto::ImageStyle::RealisticHuman as i32,
            image_reference: "oss://anchors/a1-v2.png".into(),
            display_name: "Anchor One".into(),
            likeness_of: String::new(),
            consent_id: String::new(),
        })),
        expected_revision: None,
    })
    .await
    .expect("revise a1");
    server.clock.advance(60_000);
    let (reviewer, reviewer_csrf) = sign_in(addr, "reviewer");
    let approved = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &reviewer)],
        &form(&[
            ("verdict", "approve"),
            ("image_sha256", common::images::default_sha()),
            ("note", "face matches the licence"),
            ("expected_revision", "2"),
            ("csrf", &reviewer_csrf),
        ]),
    );
    assert_eq!(approved.status, 303, "{}", approved.body);

    // The filing's page lists every change, newest first, with who made it and the note.
    let filing = http(
        addr,
        "GET",
        "/review/anchor/a1",
        &[("Cookie", &reviewer)],
        "",
    )
    .body;
    let history = &filing[position(&filing, "<h2>History</h2>")..];
    let approval = position(history, "<td>Revision 3 · approved</td>");
    let revision = position(history, "<td>Revision 2 · pending review</td>");
    let filed = position(history, "<td>Revision 1 · pending review</td>");
    assert!(approval < revision && revision < filed, "{history}");
    assert!(
        history.contains("<td>ReviewFiling · console</td><td>reviewer-1 (reviewer, console)</td>"),
        "{history}"
    );
    assert!(
        history.contains("<td>face matches the licence</td>"),
        "{history}"
    );
    assert!(
        !history.contains("Earlier changes"),
        "the history is whole: {history}"
    );
    let chinese = http(
        addr,
        "GET",
        "/review/anchor/a1",
        &[("Cookie", &reviewer), ("Accept-Language", "zh")],
        "",
    );
    assert!(
        chinese.body.contains("<h2>历史记录</h2>"),
        "{}",
        chinese.body
    );

    // The live board shows each session's last check: its START, then its latest LIVE.
    let started = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(
        started.decision,
        proto::Decision::Allow as i32,
        "{started:?}"
    );
    let session = started.session_id;
    let (inspector, _) = sign_in(addr, "inspector");
    let last_check = |board: &str| {
        let row = &board[position(board, &format!("href=\"/live/{session}\""))..];
        let cell = &row[position(row, "<td class=\"last-check\">")..];
        cell[..position(cell, "</td>")].to_owned()
    };
    let board = http(addr, "GET", "/live", &[("Cookie", &inspector)], "").body;
    let at_start = last_check(&board);
    assert!(
        at_start.contains("datetime=\"2026-01-01T00:02:00Z\"") && at_start.ends_with(" · 0 s"),
        "{at_start}"
    );
    server.clock.advance(90_000);
    let live = pdp
        .authorize(common::live(&session))
        .await
        .expect("live")
        .into_inner();
    assert_eq!(live.decision, proto::Decision::Allow as i32);
    server.clock.advance(30_000);
    let board = http(addr, "GET", "/live", &[("Cookie", &inspector)], "").body;
    let after_live = last_check(&board);
    assert!(
        after_live.contains("datetime=\"2026-01-01T00:03:30Z\"") && after_live.ends_with(" · 30 s"),
        "{after_live}"
    );

    // The log, newest first, between `since` and `until` (UTC, `until` takes its whole minute).
    // (Checked below on a restarted server: the log is durable, the last checks are not.)
    let clock = server.clock.clone();
    let data_dir = server.data_dir.clone();
    let _kept = server.stop().await;
    let server = common::TestServer::start_with(&data_dir, clock, common::console::options()).await;
    let addr = server.console_addr.expect("console");
    // The inspector is still signed in after the restart (sign-ins are in the store), and
    // the broadcast still live, but no check of it has reached this process.
    let board = http(addr, "GET", "/live", &[("Cookie", &inspector)], "").body;
    assert!(
        last_check(&board)
            .starts_with("<td class=\"last-check\"><span title=\"No check of this session"),
        "{}",
        last_check(&board)
    );
    let (admin, _) = sign_in(addr, "admin");
    let search = |query: &str| {
        http(
            addr,
            "GET",
            &format!("/log?{query}"),
            &[("Cookie", &admin)],
            "",
        )
    };
    let all = search("").body;
    assert!(
        position(&all, "authorize · grpc") < position(&all, "ReviewFiling · console")
            && position(&all, "ReviewFiling · console") < position(&all, "Register · grpc"),
        "newest first: {all}"
    );
    let first_minutes = search("until=2026-01-01T00%3A01").body;
    assert!(first_minutes.contains("Register · grpc"), "{first_minutes}");
    assert!(
        !first_minutes.contains("ReviewFiling · console")
            && !first_minutes.contains("authorize · "),
        "{first_minutes}"
    );
    let revised = search("since=2026-01-01T00%3A01&until=2026-01-01T00%3A01").body;
    assert!(
        revised.contains("<p>1 records · newest first</p>"),
        "{revised}"
    );
    assert!(revised.contains("Register · grpc"), "{revised}");
    // A viewer in Shanghai (UTC+8) sees that minute as 08:01 and types it so.
    let in_shanghai = http(
        addr,
        "GET",
        "/log?since=2026-01-01T08%3A01&until=2026-01-01T08%3A01",
        &[("Cookie", &format!("{admin}; tz=Asia/Shanghai"))],
        "",
    )
    .body;
    for shown in [
        "<p>1 records · newest first</p>",
        "Register · grpc",
        ">1 Jan 2026 08:01:00</time>",
        "Asia/Shanghai (UTC+08:00)",
    ] {
        assert!(in_shanghai.contains(shown), "{shown}: {in_shanghai}");
    }
    let later = search("since=2026-01-01T00%3A02").body;
    assert!(
        later.contains("ReviewFiling · console") && later.contains("authorize · grpc"),
        "{later}"
    );
    assert!(!later.contains("Register · "), "{later}");
    let backwards = search("since=2026-01-01T00%3A02&until=2026-01-01T00%3A01");
    // Said in the page, above the search form that keeps what was typed.
    assert_eq!(backwards.status, 400, "{}", backwards.body);
    assert!(
        backwards.body.contains(
            "<p class=\"notice\" role=\"alert\">The log was not searched: until: before since</p>"
        ) && backwards
            .body
            .contains("name=\"since\" value=\"2026-01-01T00:02\""),
        "{}",
        backwards.body
    );

    // A sign-in holds only while its token is configured, and for 8 hours.
    let clock = server.clock.clone();
    let _kept = server.stop().await;
    let mut options = common::console::options();
    options
        .tokens
        .retain(|spec| !spec.starts_with("inspector-1:"));
    let server = common::TestServer::start_with(&data_dir, clock.clone(), options).await;
    let addr = server.console_addr.expect("console");
    let revoked = http(addr, "GET", "/live", &[("Cookie", &inspector)], "");
    assert_eq!(
        (revoked.status, revoked.header("location")),
        (303, Some("/sign-in?next=%2Flive"))
    );
    let kept = http(addr, "GET", "/log", &[("Cookie", &admin)], "");
    assert_eq!(kept.status, 200, "{}", kept.body);
    clock.advance(8 * 3600 * 1000);
    let expired = http(addr, "GET", "/log", &[("Cookie", &admin)], "");
    assert_eq!(
        (expired.status, expired.header("location")),
        (303, Some("/sign-in?next=%2Flog"))
    );
}

/// An HTTP exchange from a given loopback source address (127.0.0.x): the throttle counts by
/// source.
async fn http_from(
    source: [u8; 4],
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind a loopback source");
    let stream = socket.connect(addr).await.expect("connect console");
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    tokio::task::spawn_blocking({
        let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
        move || exchange(stream, &method, &path, &[], &body).expect("an HTTP reply")
    })
    .await
    .expect("exchange")
}

/// Sign-in before any session exists: a form posted from another site is refused (login
/// CSRF), guessing is throttled per source with a growing wait, a credential keeps at most 5
/// sessions (the oldest end), and every sign-in, refused or not, and every sign-out is in the
/// decision log with its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_refused_from_another_site_throttled_capped_and_logged() {
    let (server, _pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let reviewer = form(&[("token", &token("reviewer"))]);

    // Login CSRF: a page elsewhere posting the reviewer's token is refused, nothing is set.
    for headers in [
        [
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        [("Origin", "http://evil.example"), ("X-Other", "1")],
        [("Sec-Fetch-Site", "same-site"), ("X-Other", "1")],
        [("Origin", "null"), ("X-Other", "1")],
    ] {
        let reply = http(addr, "POST", "/sign-in", &headers, &reviewer);
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.body);
        assert!(reply.header("set-cookie").is_none(), "{headers:?}");
    }
    // The console's own page (Host: localhost) signs in.
    let own = http(
        addr,
        "POST",
        "/sign-in",
        &[
            ("Origin", "http://localhost"),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        &reviewer,
    );
    assert_eq!(own.status, 303, "{}", own.body);
    assert!(own.header("set-cookie").is_some());

    // Guessing from 127.0.0.2: ten wrong tokens are answered as wrong, then the source waits
    // 1 s, 2 s, 4 s … and while it waits even the right token is refused, with Retry-After.
    let mut statuses = Vec::new();
    for i in 0..100 {
        let guess = form(&[("token", &format!("guess-{i:03}-0000000000000000"))]);
        statuses.push(
            http_from([127, 0, 0, 2], addr, "POST", "/sign-in", &guess)
                .await
                .status,
        );
    }
    assert_eq!(
        statuses[..11],
        [303; 11],
        "ten free failures, and the 11th is counted"
    );
    assert!(statuses[11..].iter().all(|s| *s == 429), "{statuses:?}");
    let held = http_from([127, 0, 0, 2], addr, "POST", "/sign-in", &reviewer).await;
    assert_eq!(held.status, 429, "{}", held.body);
    let wait: u64 = held
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .expect("Retry-After");
    assert!((1..=900).contains(&wait), "{wait}");
    // Another source is not held back.
    let other = http_from([127, 0, 0, 3], addr, "POST", "/sign-in", &reviewer).await;
    assert_eq!(other.status, 303, "{}", other.body);

    // At most 5 sessions per credential: of 7 sign-ins the first 2 end.
    let mut cookies = Vec::new();
    for _ in 0..7 {
        let reply = http(
            addr,
            "POST",
            "/sign-in",
            &[],
            &form(&[("token", &token("inspector"))]),
        );
        assert_eq!(reply.status, 303, "{}", reply.body);
        let set = reply.header("set-cookie").expect("a session cookie");
        cookies.push(set.split(';').next().expect("cookie").to_owned());
    }
    let live: Vec<u16> = cookies
        .iter()
        .map(|cookie| http(addr, "GET", "/live", &[("Cookie", cookie)], "").status)
        .collect();
    assert_eq!(
        live,
        [303, 303, 200, 200, 200, 200, 200],
        "303: sent to sign in again"
    );

    // Sign-out, then the log: each sign-in with its outcome and source, never the token.
    let page = http(addr, "GET", "/live", &[("Cookie", &cookies[6])], "");
    let csrf = common::console::csrf_of(&page.body);
    let out = http(
        addr,
        "POST",
        "/sign-out",
        &[("Cookie", &cookies[6])],
        &form(&[("csrf", &csrf)]),
    );
    assert_eq!(out.status, 303, "{}", out.body);
    let mut outcomes = Vec::new();
    for action in ["console.sign_in", "console.sign_out"] {
        let mut records = admin
            .read_decision_log(proto::ReadDecisionLogRequest {
                action: action.into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("log")
            .into_inner();
        while let Some(record) = records.message().await.expect("record") {
            let request: serde_json::Value =
                serde_json::from_str(&record.request).expect("request JSON");
            let source = request["source"].as_str().unwrap_or_default().to_owned();
            assert!(
                !format!("{record:?}").contains(&token("reviewer")),
                "no token logged"
            );
            outcomes.push((record.action.clone(), record.outcome.clone(), source));
        }
    }
    let count = |action: &str, outcome: &str, source: &str| {
        outcomes
            .iter()
            .filter(|(a, o, s)| a == action && o == outcome && s == source)
            .count()
    };
    assert_eq!(
        count(
            "console.sign_in",
            "refused: unknown credential",
            "127.0.0.2"
        ),
        11
    );
    assert_eq!(
        count("console.sign_in", "ok", "127.0.0.1"),
        8,
        "{outcomes:?}"
    );
    assert_eq!(count("console.sign_in", "ok", "127.0.0.3"), 1);
    assert_eq!(count("console.sign_out", "signed out", "127.0.0.1"), 1);
}

/// A verdict whose note is not valid UTF-8, or carries a bidirectional control, is refused
/// with 400 and records nothing (no U+FFFD stored in someone's name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_that_is_not_utf8_or_carries_a_bidi_control_is_refused() {
    let (server, _pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let (cookie, csrf) = sign_in(addr, "reviewer");
    for note in ["%FF%FEbad", "evil%E2%80%AEgnp.exe"] {
        let body = format!("verdict=approve&expected_revision=1&csrf={csrf}&note={note}");
        let reply = http(
            addr,
            "POST",
            "/review/anchor/a1",
            &[("Cookie", &cookie)],
            &body,
        );
        assert_eq!(reply.status, 400, "{note}: {}", reply.body);
    }
    let filing = admin
        .get_registration(proto::GetRegistrationRequest {
            kind: proto::RegistrationKind::Anchor as i32,
            id: "a1".into(),
        })
        .await
        .expect("filing")
        .into_inner()
        .registration
        .expect("a1");
    assert_eq!(filing.revision, 1, "no verdict was recorded");
}

/// The nav shows each role only the pages it may open, and a filing's page offers only the
/// verdicts its state takes, to a role that may give them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nav_and_verdict_forms_follow_the_role_and_the_filings_state() {
    let (server, _pdp, _admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let nav = |body: &str| -> Vec<&'static str> {
        let nav = body
            .split("<nav>")
            .nth(1)
            .and_then(|rest| rest.split("</nav>").next())
            .unwrap_or_default()
            .to_owned();
        ["/review", "/live", "/accounts", "/log", "/catalog"]
            .into_iter()
            .filter(|href| nav.contains(&format!("href=\"{href}\"")))
            .collect()
    };
    let verdicts = |body: &str| -> Vec<&'static str> {
        ["approve", "reject", "revoke"]
            .into_iter()
            .filter(|v| body.contains(&format!("name=\"verdict\" value=\"{v}\"")))
            .collect()
    };
    let (inspector, _) = sign_in(addr, "inspector");
    let page = http(
        addr,
        "GET",
        "/review/anchor/a1",
        &[("Cookie", &inspector)],
        "",
    );
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("class=\"verdict\""),
        "no form an inspector cannot submit"
    );
    let (reviewer, csrf) = sign_in(addr, "reviewer");
    let page = http(
        addr,
        "GET",
        "/review/anchor/a1",
        &[("Cookie", &reviewer)],
        "",
    );
    assert_eq!(
        verdicts(&page.body),
        ["approve", "reject"],
        "pending: no revoke"
    );
    // Values are named in the page's language, not as the wire spells them.
    assert!(
        page.body.contains("<p class=\"state\">pending review"),
        "{}",
        page.body
    );
    let chinese = http(
        addr,
        "GET",
        "/review/anchor/a1",
        &[("Cookie", &reviewer), ("Accept-Language", "zh-CN")],
        "",
    );
    assert!(
        chinese.body.contains("<p class=\"state\">待审核")
            && chinese.body.contains("<dd>写实真人</dd>"),
        "{}",
        chinese.body
    );
    assert!(
        !chinese.body.contains(">PENDING_REVIEW<"),
        "{}",
        chinese.body
    );
    let reviewer_nav = nav(&page.body);
    for href in &reviewer_nav {
        let opened = http(addr, "GET", href, &[("Cookie", &reviewer)], "");
        assert_eq!(opened.status, 200, "{href} is in the reviewer's nav");
    }
    assert!(!reviewer_nav.contains(&"/log"), "{reviewer_nav:?}");
    let forbidden = http(addr, "GET", "/log", &[("Cookie", &reviewer)], "");
    assert_eq!(forbidden.status, 403);
    let approved = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &reviewer)],
        &form(&[
            ("verdict", "approve"),
            ("image_sha256", common::images::default_sha()),
            ("expected_revision", "1"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let page = http(
        addr,
        "GET",
        "/review/anchor/a1",
        &[("Cookie", &reviewer)],
        "",
    );
    assert_eq!(verdicts(&page.body), ["revoke"], "approved: revoke only");
    let (admin, _) = sign_in(addr, "admin");
    let page = http(addr, "GET", "/accounts", &[("Cookie", &admin)], "");
    assert_eq!(
        nav(&page.body),
        ["/review", "/live", "/accounts", "/log", "/catalog"]
    );
}

/// A deep link opened without a session comes back after sign-in; a `next` that leaves the
/// console is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_link_survives_the_sign_in_and_only_local_ones_are_followed() {
    let (server, _pdp, _admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let asked = http(addr, "GET", "/review/anchor/a1?lang=x", &[], "");
    assert_eq!(asked.status, 303);
    assert_eq!(
        asked.header("location"),
        Some("/sign-in?next=%2Freview%2Fanchor%2Fa1%3Flang%3Dx")
    );
    let page = http(
        addr,
        "GET",
        "/sign-in?next=%2Freview%2Fanchor%2Fa1%3Flang%3Dx",
        &[],
        "",
    );
    assert!(
        page.body
            .contains("name=\"next\" value=\"/review/anchor/a1?lang=x\""),
        "{}",
        page.body
    );
    let signed_in = http(
        addr,
        "POST",
        "/sign-in",
        &[],
        &form(&[
            ("token", &token("reviewer")),
            ("next", "/review/anchor/a1?lang=x"),
        ]),
    );
    assert_eq!(
        signed_in.header("location"),
        Some("/review/anchor/a1?lang=x")
    );
    // A wrong token keeps the link for the next try.
    let failed = http(
        addr,
        "POST",
        "/sign-in",
        &[],
        &form(&[("token", "wrong-token-000000000000"), ("next", "/live")]),
    );
    assert_eq!(
        failed.header("location"),
        Some("/sign-in?failed=true&next=%2Flive")
    );
    for away in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/sign-out",
    ] {
        let signed_in = http(
            addr,
            "POST",
            "/sign-in",
            &[],
            &form(&[("token", &token("reviewer")), ("next", away)]),
        );
        assert_eq!(signed_in.header("location"), Some("/review"), "{away}");
    }
}

/// A verdict that is not recorded comes back as the filing's page, in the viewer's language,
/// saying why, with the typed note kept: a form from before a second sign-in, and a verdict
/// the filing's state does not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_not_recorded_comes_back_in_the_page_with_its_note() {
    let (server, _pdp, _admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    let (cookie, stale_csrf) = sign_in(addr, "reviewer");
    let (cookie, csrf) = {
        // Signing in again in this browser replaces the session and its CSRF token.
        let (again, csrf) = sign_in(addr, "reviewer");
        assert_ne!(again, cookie);
        (again, csrf)
    };
    let note = "checked the licence <b>twice</b>";
    let expired = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &cookie)],
        &form(&[
            ("verdict", "approve"),
            ("image_sha256", common::images::default_sha()),
            ("expected_revision", "1"),
            ("note", note),
            ("csrf", &stale_csrf),
        ]),
    );
    assert_eq!(expired.status, 403, "{}", expired.body);
    assert!(
        expired.body.contains("from before your last sign-in")
            && expired
                .body
                .contains("checked the licence &lt;b&gt;twice&lt;/b&gt;</textarea>")
            && expired.body.contains("<nav>"),
        "{}",
        expired.body
    );
    let refused = http(
        addr,
        "POST",
        "/review/anchor/a1",
        &[("Cookie", &cookie), ("Accept-Language", "zh-CN")],
        &form(&[
            ("verdict", "revoke"),
            ("expected_revision", "1"),
            ("note", "撤销"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("审核结论未记录：") && refused.body.contains(">撤销</textarea>"),
        "{}",
        refused.body
    );
}

/// A form of any page that does not do what it asked comes back as that page: in the layout,
/// in the viewer's language, saying why, with what was typed kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forms_refusal_comes_back_in_its_page_translated_with_what_was_typed() {
    let (server, mut pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    admin
        .review_filing(proto::ReviewFilingRequest {
            kind: proto::RegistrationKind::Anchor as i32,
            id: "a1".into(),
            verdict: proto::Verdict::Approve as i32,
            reviewer: "admin-1".into(),
            ..Default::default()
        })
        .await
        .expect("approve a1");
    let live = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(live.decision, proto::Decision::Allow as i32, "{live:?}");
    let (cookie, csrf) = sign_in(addr, "admin");
    let chinese = format!("{cookie}; lang=zh");
    let post = |path: &str, fields: &[(&str, &str)]| {
        http(addr, "POST", path, &[("Cookie", &chinese)], &form(fields))
    };
    let in_layout = |reply: &Reply, status: u16, notice: &str, kept: &str| {
        assert_eq!(reply.status, status, "{}", reply.body);
        for part in ["<header>", "<nav>", notice, kept] {
            assert!(reply.body.contains(part), "{part}: {}", reply.body);
        }
    };

    // The catalog: an AI filing number too long; the typed number stays in its field.
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::AiFeature(proto::AiFeature {
            id: "voice-clone".into(),
            display_name: String::new(),
        })),
        expected_revision: None,
    })
    .await
    .expect("feature");
    let long = "F".repeat(130);
    let catalog = post(
        "/catalog/ai-feature/voice-clone",
        &[
            ("csrf", &csrf),
            ("assessed", "true"),
            ("filing_number", &long),
        ],
    );
    in_layout(
        &catalog,
        400,
        "未做任何更改: filing_number: at most 128 bytes",
        &format!("name=\"filing_number\" value=\"{long}\""),
    );
    // A provider that is not registered: the refusal names it, in the catalog.
    let refused = post(
        "/catalog/provider/nobody",
        &[("csrf", &csrf), ("listed", "true")],
    );
    in_layout(&refused, 404, "未做任何更改: ", "<h2>服务商</h2>");

    // A report with a rule the active set does not have: the session's page, rule and note kept.
    let report = post(
        &format!("/live/{}/report", live.session_id),
        &[
            ("csrf", &csrf),
            ("rule_id", "R99"),
            ("note", "seen at 10:02"),
        ],
    );
    in_layout(
        &report,
        400,
        "未做任何更改: rule_id: R99 is not a rule of the active set",
        ">seen at 10:02</textarea>",
    );

    // A lift from before the last sign-in: the account's page, the reason kept.
    let lift = post(
        "/accounts/m1/lift",
        &[("csrf", "stale"), ("reason", "appeal upheld")],
    );
    in_layout(
        &lift,
        403,
        "未做任何更改: 此表单早于您最近一次登录",
        "<h1>商家账户</h1>",
    );
    let empty = post("/accounts/m1/lift", &[("csrf", &csrf), ("reason", " ")]);
    in_layout(
        &empty,
        400,
        "未做任何更改: reason: 1-512 bytes",
        "<h1>商家账户</h1>",
    );

    // An unknown filing is a page of the console too, not bare text.
    let unknown = http(
        addr,
        "GET",
        "/review/anchor/nobody",
        &[("Cookie", &chinese)],
        "",
    );
    in_layout(&unknown, 404, "nobody", "返回控制台");
}

/// A likeness consent (C1) filed by m1 for `person`.
fn consent(id: &str, person: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Consent(proto::LikenessConsent {
            id: id.into(),
            owner_merchant_id: "m1".into(),
            person_reference: person.into(),
            consent_reference: format!("doc://consents/{id}.pdf"),
            display_name: format!("Consent {id}"),
        })),
        expected_revision: None,
    }
}

/// An anchor of m1 cloned from `likeness_of`, relying on consent `consent_id` (empty: none).
fn cloned_anchor(id: &str, likeness_of: &str, consent_id: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Anchor(proto::VirtualAnchor {
            id: id.into(),
            owner_merchant_id: "m1".into(),
            provider_id: "p1".into(),
            image_style: proto::ImageStyle::RealisticHuman as i32,
            image_reference: format!("oss://anchors/{id}.png"),
            display_name: format!("Clone {id}"),
            likeness_of: likeness_of.into(),
            consent_id: consent_id.into(),
        })),
        expected_revision: None,
    }
}

/// The review state of consent `id`, as gRPC reads it.
async fn consent_status(admin: &mut common::bearer::Admin, id: &str) -> proto::ReviewStatus {
    let filing = common::console::registration(admin, proto::RegistrationKind::Consent, id).await;
    proto::ReviewStatus::try_from(filing.review_status).unwrap_or(proto::ReviewStatus::Unspecified)
}

/// A consent filing waits in the queue beside the others (its own kind in the filter, found
/// by search), shows its person and document, and takes approve & next, bulk approval and
/// revoke like a driver: no image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_filing_is_reviewed_in_the_queue_like_the_others() {
    let (server, mut pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    for id in ["c1", "c2"] {
        pdp.register(consent(id, "person://mei"))
            .await
            .expect("consent");
    }
    let (cookie, csrf) = sign_in(addr, "reviewer");
    let get = |path: &str| http(addr, "GET", path, &[("Cookie", &cookie)], "").body;

    let queue = get("/review?kind=consent");
    assert!(
        queue.contains("<option value=\"consent\" selected>Likeness consent</option>"),
        "{queue}"
    );
    assert!(queue.contains("2 pending"), "{queue}");
    assert!(
        queue.contains("<td>Likeness consent</td><td><a href=\"/review/consent/c1?kind=consent\">c1</a></td><td>m1</td><td>Consent c1</td>"),
        "{queue}"
    );
    assert!(!queue.contains("/review/anchor/a1"), "{queue}");
    let everything = get("/review");
    assert!(everything.contains("3 pending"), "a1, c1, c2: {everything}");
    for (search, found) in [("q=CONSENT%20C2", "1 pending"), ("q=m1", "3 pending")] {
        let page = get(&format!("/review?{search}"));
        assert!(page.contains(found), "{search}: {page}");
    }
    let by_name = get("/review?kind=consent&sort=name");
    assert!(
        position(&by_name, "/review/consent/c1") < position(&by_name, "/review/consent/c2"),
        "{by_name}"
    );
    let chinese = http(
        addr,
        "GET",
        "/review?kind=consent",
        &[("Cookie", &cookie), ("Accept-Language", "zh-CN")],
        "",
    );
    assert!(
        chinese
            .body
            .contains("<option value=\"consent\" selected>肖像同意</option>"),
        "{}",
        chinese.body
    );

    // Its page: the person and the signed document, no image, approve and reject.
    let filing = get("/review/consent/c1?kind=consent");
    assert!(
        filing.contains("<dt>Owner</dt><dd>m1</dd>")
            && filing.contains("<dt>Person who consents</dt><dd><code>person://mei</code></dd>")
            && filing.contains(
                "<dt>Signed consent (document reference)</dt><dd><code>doc://consents/c1.pdf</code></dd>"
            ),
        "{filing}"
    );
    assert!(!filing.contains("<img"), "{filing}");
    assert!(
        filing.contains("name=\"verdict\" value=\"approve\"")
            && filing.contains("name=\"verdict\" value=\"reject\""),
        "{filing}"
    );
    let chinese = http(
        addr,
        "GET",
        "/review/consent/c1",
        &[("Cookie", &cookie), ("Accept-Language", "zh-CN")],
        "",
    );
    assert!(
        chinese
            .body
            .contains("<dt>同意人</dt><dd><code>person://mei</code></dd>")
            && chinese.body.contains("<dt>单独同意书(文件引用)</dt>")
            && chinese.body.contains("<title>肖像同意 c1"),
        "{}",
        chinese.body
    );

    // Approve & next: on to c2, in the same queue.
    let approved = http(
        addr,
        "POST",
        "/review/consent/c1",
        &[("Cookie", &cookie)],
        &form(&[
            ("verdict", "approve"),
            ("expected_revision", "1"),
            ("kind", "consent"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(
        (approved.status, approved.header("location")),
        (
            303,
            Some("/review/consent/c2?kind=consent&done=consent%2Fc1")
        ),
        "{}",
        approved.body
    );
    assert_eq!(
        consent_status(&mut admin, "c1").await,
        proto::ReviewStatus::Approved
    );
    let next = get("/review/consent/c2?kind=consent&done=consent%2Fc1");
    assert!(
        next.contains("Verdict recorded. Likeness consent c1 · approved"),
        "{next}"
    );

    // Bulk approval: asked once, then each consent its own verdict.
    let pick = [("pick.consent/c2", "1"), ("csrf", &csrf)];
    let asked = http(
        addr,
        "POST",
        "/review/bulk",
        &[("Cookie", &cookie)],
        &form(&pick),
    );
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(
        asked
            .body
            .contains("<td>Likeness consent</td><td>c2</td><td>m1</td><td>Consent c2</td>"),
        "{}",
        asked.body
    );
    let mut confirmed = pick.to_vec();
    confirmed.push(("confirm", "yes"));
    let done = http(
        addr,
        "POST",
        "/review/bulk",
        &[("Cookie", &cookie)],
        &form(&confirmed),
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("1 / 1 approved"), "{}", done.body);
    assert_eq!(
        consent_status(&mut admin, "c2").await,
        proto::ReviewStatus::Approved
    );

    // Approved: revoke only, and it takes.
    let filing = get("/review/consent/c1");
    assert!(
        filing.contains("<p class=\"state\">approved")
            && filing.contains("name=\"verdict\" value=\"revoke\"")
            && !filing.contains("name=\"verdict\" value=\"approve\""),
        "{filing}"
    );
    let revoked = http(
        addr,
        "POST",
        "/review/consent/c1",
        &[("Cookie", &cookie)],
        &form(&[
            ("verdict", "revoke"),
            ("expected_revision", "2"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    assert_eq!(
        consent_status(&mut admin, "c1").await,
        proto::ReviewStatus::Revoked
    );
    // The merchant's account lists its consents with its other filings.
    let (admin_cookie, _) = sign_in(addr, "admin");
    let account = http(
        addr,
        "GET",
        "/accounts?merchant=m1",
        &[("Cookie", &admin_cookie)],
        "",
    );
    assert!(
        account.body.contains(
            "<td>Likeness consent</td><td><a href=\"/review/consent/c1\">c1</a></td><td>revoked</td>"
        ),
        "{}",
        account.body
    );
}

/// A cloned anchor's page names the person it is cloned from and links the consent it relies
/// on with that consent's state, in the viewer's language; without one it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_anchor_shows_the_person_and_its_consents_state() {
    let (server, mut pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    pdp.register(consent("c1", "person://mei"))
        .await
        .expect("consent");
    for (id, person, consent_id) in [
        ("a2", "person://mei", "c1"),
        ("a3", "person://mei", ""),
        ("a4", "person://lin", "c1"),
    ] {
        pdp.register(cloned_anchor(id, person, consent_id))
            .await
            .expect("anchor");
    }
    let (cookie, _) = sign_in(addr, "reviewer");
    let page = |path: &str, lang: &str| {
        http(
            addr,
            "GET",
            path,
            &[("Cookie", &cookie), ("Accept-Language", lang)],
            "",
        )
        .body
    };
    let likeness = "<dt>Cloned from (likeness of)</dt><dd><code>person://mei</code></dd>";

    let a2 = page("/review/anchor/a2", "en");
    assert!(
        a2.contains(&format!(
            "{likeness}<dt>Likeness consent</dt><dd><a href=\"/review/consent/c1\">c1</a> — <span class=\"error\">pending review</span></dd>"
        )),
        "{a2}"
    );
    approve(&mut admin, proto::RegistrationKind::Consent, "c1").await;
    let a2 = page("/review/anchor/a2", "en");
    assert!(
        a2.contains(
            "<dt>Likeness consent</dt><dd><a href=\"/review/consent/c1\">c1</a> — approved</dd>"
        ),
        "{a2}"
    );
    let chinese = page("/review/anchor/a2", "zh-CN");
    assert!(
        chinese.contains("<dt>克隆自(真人肖像)</dt><dd><code>person://mei</code></dd>")
            && chinese.contains(
                "<dt>肖像同意</dt><dd><a href=\"/review/consent/c1\">c1</a> — 已通过</dd>"
            ),
        "{chinese}"
    );
    assert!(!chinese.contains("APPROVED"), "{chinese}");

    // No consent named; a consent for someone else.
    let a3 = page("/review/anchor/a3", "en");
    assert!(
        a3.contains(&format!(
            "{likeness}<dt>Likeness consent</dt><dd><span class=\"error\">no consent filed</span></dd>"
        )),
        "{a3}"
    );
    let a3 = page("/review/anchor/a3", "zh-CN");
    assert!(
        a3.contains("<dt>肖像同意</dt><dd><span class=\"error\">未报备肖像同意</span></dd>"),
        "{a3}"
    );
    let a4 = page("/review/anchor/a4", "en");
    assert!(
        a4.contains("<a href=\"/review/consent/c1\">c1</a> — approved — <span class=\"error\">it names another person: <code>person://mei</code></span></dd>"),
        "{a4}"
    );
    // An anchor of no real person says nothing of likeness.
    let a1 = page("/review/anchor/a1", "en");
    assert!(
        !a1.contains("Cloned from") && !a1.contains("Likeness consent"),
        "{a1}"
    );

    // The consent's page names what revoking it would stop.
    let c1 = page("/review/consent/c1", "en");
    assert!(
        c1.contains(
            "<dt>Anchors relying on it (revoking it stops their broadcasts)</dt><dd><a href=\"/review/anchor/a2\">a2</a> (pending review), <a href=\"/review/anchor/a4\">a4</a> (pending review)</dd>"
        ),
        "{c1}"
    );
    let c1 = page("/review/consent/c1", "zh-CN");
    assert!(
        c1.contains("<dt>依赖此同意的虚拟主播(撤销将关停其直播)</dt><dd><a href=\"/review/anchor/a2\">a2</a> (待审核)"),
        "{c1}"
    );
    // Searching the queue for a person finds every pending filing about them.
    let queue = page("/review?q=person%3A%2F%2Fmei", "en");
    for id in ["a2", "a3"] {
        assert!(
            queue.contains(&format!(
                "<a href=\"/review/anchor/{id}?q=person%3A%2F%2Fmei\">{id}</a>"
            )),
            "{id}: {queue}"
        );
    }
    assert!(
        !queue.contains(">a4</a>") && !queue.contains(">a1</a>"),
        "{queue}"
    );
}

/// The live board and a session's page show the AI-content labels the session last reported,
/// and "not reported" for a session that reported none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_board_shows_whether_each_session_reports_its_ai_label() {
    let (server, mut pdp, mut admin) = console_server().await;
    let addr = server.console_addr.expect("console");
    // A second room: a room has one live session.
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Room(proto::LivestreamRoom {
            id: "r2".into(),
            owner_merchant_id: "m1".into(),
            display_name: String::new(),
        })),
        expected_revision: None,
    })
    .await
    .expect("room");
    for (kind, id) in [
        (proto::RegistrationKind::Anchor, "a1"),
        (proto::RegistrationKind::Room, "r2"),
    ] {
        approve(&mut admin, kind, id).await;
    }
    let labelled = pdp
        .authorize(proto::AuthorizeRequest {
            labels: Some(labelled()),
            ..start()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        labelled.decision,
        proto::Decision::Allow as i32,
        "{labelled:?}"
    );
    let unlabelled = pdp
        .authorize(proto::AuthorizeRequest {
            room_id: "r2".into(),
            ..start()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        unlabelled.decision,
        proto::Decision::Allow as i32,
        "{unlabelled:?}"
    );
    let (labelled, unlabelled) = (labelled.session_id, unlabelled.session_id);

    let (cookie, _) = sign_in(addr, "inspector");
    let get = |path: &str, lang: &str| {
        http(
            addr,
            "GET",
            path,
            &[("Cookie", &cookie), ("Accept-Language", lang)],
            "",
        )
        .body
    };
    // The labels cell of `session`'s row.
    let cell = |board: &str, session: &str| {
        let row = &board[position(board, &format!("href=\"/live/{session}\""))..];
        let cell = &row[position(row, "<td class=\"labels\">")..];
        cell[..position(cell, "</td>") + "</td>".len()].to_owned()
    };
    let board = get("/live", "en");
    assert!(
        board.contains("<th title=\"The AI-content labels the gateway last reported for this session: the label viewers see, and the implicit one in the stream's metadata.\">AI label</th>"),
        "{board}"
    );
    assert_eq!(
        cell(&board, &labelled),
        "<td class=\"labels\">shown (overlay)<br>metadata: p1</td>"
    );
    assert_eq!(
        cell(&board, &unlabelled),
        "<td class=\"labels\">not reported</td>"
    );
    let chinese = get("/live", "zh-CN");
    assert!(chinese.contains(">AI 标识</th>"), "{chinese}");
    assert_eq!(
        cell(&chinese, &labelled),
        "<td class=\"labels\">已显示(画面叠加)<br>元数据标识: p1</td>"
    );
    assert_eq!(
        cell(&chinese, &unlabelled),
        "<td class=\"labels\">未上报</td>"
    );
    let page = get(&format!("/live/{labelled}"), "en");
    assert!(
        page.contains("AI label</dt><dd class=\"labels\">shown (overlay)<br>metadata: p1</dd>"),
        "{page}"
    );

    // A LIVE check that reports the label gone replaces the report; one that reports nothing
    // leaves it as it was.
    let gone = pdp
        .authorize(proto::AuthorizeRequest {
            labels: Some(proto::LabelReport::default()),
            ..common::live(&labelled)
        })
        .await
        .expect("live")
        .into_inner();
    assert_eq!(gone.decision, proto::Decision::Allow as i32, "{gone:?}");
    let silent = pdp
        .authorize(common::live(&labelled))
        .await
        .expect("live")
        .into_inner();
    assert_eq!(silent.decision, proto::Decision::Allow as i32, "{silent:?}");
    let board = get("/live", "en");
    assert_eq!(
        cell(&board, &labelled),
        "<td class=\"labels\"><span class=\"error\">NOT shown</span><br><span class=\"error\">no metadata label</span></td>"
    );
    let chinese = get("/live", "zh-CN");
    assert_eq!(
        cell(&chinese, &labelled),
        "<td class=\"labels\"><span class=\"error\">未显示</span><br><span class=\"error\">无元数据标识</span></td>"
    );
    let page = get(&format!("/live/{unlabelled}"), "en");
    assert!(
        page.contains("AI label</dt><dd class=\"labels\">not reported</dd>"),
        "{page}"
    );
}

/// With the label pack on, an inspector can report L1 (a label gone from the picture) and C1,
/// but not L2 (it only warns when found live) nor E3 (a freeze is no violation on a stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_label_pack_the_report_form_offers_what_a_report_can_shut_down() {
    let policies = common::labels_enabled();
    let (server, mut pdp, mut admin) = common::console::console_server_from(common::Options {
        policies: Some(policies.path().to_owned()),
        ..common::console::options()
    })
    .await;
    let addr = server.console_addr.expect("console");
    approve(&mut admin, proto::RegistrationKind::Anchor, "a1").await;
    let started = pdp
        .authorize(proto::AuthorizeRequest {
            labels: Some(labelled()),
            ..start()
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        started.decision,
        proto::Decision::Allow as i32,
        "{started:?}"
    );
    let (cookie, _) = sign_in(addr, "inspector");
    let page = http(
        addr,
        "GET",
        &format!("/live/{}", started.session_id),
        &[("Cookie", &cookie)],
        "",
    )
    .body;
    let form = &page[position(&page, "<select name=\"rule_id\"")..];
    let form = &form[..position(form, "</select>")];
    let offered: Vec<&str> = form
        .split("<option value=\"")
        .skip(1)
        .filter_map(|o| o.split('"').next())
        .collect();
    assert_eq!(
        offered,
        [
            "L1", "C1", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"
        ],
        "{form}"
    );
}
