//! The console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, installed by scripts/test). A reviewer approves a pending anchor whose image
//! shows, and a gRPC START is then allowed; an inspector reports R2 on the live broadcast (in
//! Chinese, seeing the Chinese rule messages); the admin sees the freeze and the explained deny;
//! a reviewer gets no lift form; a page on another site cannot sign the browser in as someone
//! else (login CSRF). A reviewer's morning: 50 filings approved with the keyboard alone (keys
//! counted), the rest with one bulk approval, a swapped image sent back to review; every page
//! fits 1366×768 and 390×844 in both languages without sideways scrolling. Screenshots go to
//! target/console-*.png on every run.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anchor_pdp::proto;
use common::console::{console_server, token};
use common::images::{image_host, png};
use common::programs::{Guard, free_port, require, wait_listening};
use common::start;
use fantoccini::{Client, ClientBuilder, Locator};

/// Answers every request with `body`, for as long as the test runs.
fn serve_fixed(content_type: &'static str, body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream: TcpStream = stream;
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    addr
}

/// Another site: its one page posts a sign-in form to the console as soon as it loads, with
/// `token` (login CSRF: it would sign the viewer in as the token's owner).
fn attacker_site(console: &str, token: &str) -> SocketAddr {
    serve_fixed(
        "text/html",
        format!(
            "<!doctype html><html><body><form id=f method=post action=\"{console}/sign-in\">\
             <input name=token value=\"{token}\"></form>\
             <script>document.getElementById('f').submit()</script></body></html>"
        ),
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// chromedriver on a free port.
fn chromedriver() -> (Guard, String) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("chromedriver.log");
    // The browser lives in Shanghai: the console must show and read times in its zone.
    let child = Command::new(require("chromedriver"))
        .env("TZ", "Asia/Shanghai")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn chromedriver");
    let mut guard = Guard {
        child,
        log,
        dir: Some(dir),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(addr, "chromedriver", &mut guard.child, &guard.log);
    (guard, format!("http://127.0.0.1:{port}"))
}

async fn browser(webdriver: &str, profile: &std::path::Path) -> Client {
    // Talking to chromedriver over plain HTTP needs no TLS, but the client's builder wants a
    // crypto provider all the same. (Already installed is fine.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                "--lang=en-US", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a WebDriver session with chromium")
}

async fn sign_in(client: &Client, console: &str, role: &str) {
    client
        .goto(&format!("{console}/sign-in"))
        .await
        .expect("sign-in page");
    let field = client
        .find(Locator::Css("input[name=token]"))
        .await
        .expect("token field");
    field.send_keys(&token(role)).await.expect("type token");
    client
        .find(Locator::Css("form[action='/sign-in'] button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    wait_for_text(client, &format!("{role}-1 ({role})")).await;
}

async fn sign_out(client: &Client) {
    client
        .find(Locator::Css("form.sign-out button"))
        .await
        .expect("sign-out")
        .click()
        .await
        .expect("sign out");
    wait_for_text(client, "Caller token").await;
}

/// Waits until the page's source shows `text`; returns the source.
async fn wait_for_text(client: &Client, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let source = client.source().await.expect("page source");
        if source.contains(text) {
            return source;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {text:?}:\n{source}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = target_dir().join(format!("console-{name}.png"));
    std::fs::create_dir_all(target_dir()).expect("target dir");
    std::fs::write(&path, png).expect("write screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewer_inspector_and_admin_do_their_work_in_a_real_browser() {
    let (server, mut pdp, _admin) = console_server().await;
    let console = format!("http://{}", server.console_addr.expect("console"));
    let (_driver, webdriver) = chromedriver();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&webdriver, profile.path()).await;

    // A reviewer signs in; a page on another site then posts the inspector's token to the
    // console's sign-in (login CSRF). The console refuses it and the reviewer stays herself.
    sign_in(&client, &console, "reviewer").await;
    let attacker = attacker_site(&console, &token("inspector"));
    client
        .goto(&format!("http://localhost:{}/", attacker.port()))
        .await
        .expect("the other site");
    wait_for_text(&client, "posted from another site").await;
    client
        .goto(&format!("{console}/review"))
        .await
        .expect("queue");
    let still = wait_for_text(&client, "reviewer-1 (reviewer)").await;
    assert!(
        !still.contains("inspector-1"),
        "the other site signed nobody in"
    );

    // The reviewer opens the pending anchor, sees its image, approves it.
    client
        .goto(&format!("{console}/review"))
        .await
        .expect("queue");
    wait_for_text(&client, "/review/anchor/a1").await;
    client
        .find(Locator::Css("a[href='/review/anchor/a1']"))
        .await
        .expect("link")
        .click()
        .await
        .expect("open filing");
    wait_for_text(&client, "img class=\"anchor\"").await;
    let loaded = client
        .execute(
            "const img = document.querySelector('img.anchor'); return img.complete && img.naturalWidth > 0;",
            vec![],
        )
        .await
        .expect("image state");
    assert_eq!(loaded, serde_json::json!(true), "the anchor image shows");
    screenshot(&client, "review").await;
    client
        .find(Locator::Css("button[data-key=a]"))
        .await
        .expect("approve & next")
        .click()
        .await
        .expect("record verdict");
    // Nothing else waits: back to the queue, which says what was recorded.
    wait_for_text(&client, "Verdict recorded. Anchor image a1 · approved").await;
    // The filing's history now starts with this verdict.
    client
        .goto(&format!("{console}/review/anchor/a1"))
        .await
        .expect("filing");
    wait_for_text(&client, "<td>Revision 2 · approved</td>").await;
    let admitted = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(
        admitted.decision,
        proto::Decision::Allow as i32,
        "{admitted:?}"
    );
    // The reviewer may read the account but gets no lift form (and the freeze comes later).
    sign_out(&client).await;

    // An inspector, in Chinese, reports R2 on the live broadcast.
    sign_in(&client, &console, "inspector").await;
    client
        .goto(&format!("{console}/live"))
        .await
        .expect("board");
    wait_for_text(&client, &admitted.session_id).await;
    screenshot(&client, "live").await;
    client
        .goto(&format!("{console}/live/{}", admitted.session_id))
        .await
        .expect("session");
    client
        .find(Locator::Css("a[href='/lang/zh']"))
        .await
        .expect("中文")
        .click()
        .await
        .expect("switch to Chinese");
    wait_for_text(&client, "数字人虚拟直播服务商未入驻阿里巴巴外贸服务市场").await;
    client
        .find(Locator::Css("select[name=rule_id]"))
        .await
        .expect("rule picker")
        .select_by_value("R2")
        .await
        .expect("pick R2");
    client
        .find(Locator::Css("form.verdict button"))
        .await
        .expect("report")
        .click()
        .await
        .expect("report");
    wait_for_text(&client, "E1:关停直播并冻结直播权限 7 天").await;
    client
        .find(Locator::Css("form.verdict button"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("confirm");
    wait_for_text(&client, "违规已上报").await;
    client
        .goto(&format!("{console}/lang/en"))
        .await
        .expect("back to English");
    sign_out(&client).await;

    // The frozen merchant's next START is denied under E3; the admin sees both.
    let refused = pdp.authorize(start()).await.expect("start").into_inner();
    assert_eq!(refused.decision, proto::Decision::Deny as i32);
    sign_in(&client, &console, "admin").await;
    client
        .goto(&format!("{console}/accounts?merchant=m1"))
        .await
        .expect("account");
    wait_for_text(&client, "Lift the freeze").await;
    screenshot(&client, "account").await;
    client
        .goto(&format!("{console}/log?merchant=m1&decision=deny&rule=E3"))
        .await
        .expect("log");
    let log = wait_for_text(&client, "DENY").await;
    assert!(log.contains("frozen = true"), "the deny is explained");
    sign_out(&client).await;

    sign_in(&client, &console, "reviewer").await;
    client
        .goto(&format!("{console}/accounts?merchant=m1"))
        .await
        .expect("account as reviewer");
    let seen = wait_for_text(&client, "Frozen until").await;
    assert!(
        !seen.contains("Lift the freeze"),
        "a reviewer cannot lift a freeze"
    );
    client.close().await.expect("close the browser");
}

/// Presses `key` on the keyboard (WebDriver key actions: what a person's key press does).
async fn press(client: &Client, key: char) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    client.perform_actions(keys).await.expect("key press");
}

/// (document width, viewport width, viewport height) of the page shown.
async fn page_size(client: &Client) -> (u64, u64, u64) {
    let size = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth, window.innerHeight];",
            vec![],
        )
        .await
        .expect("page size");
    let n = |i: usize| size[i].as_u64().expect("a number");
    (n(0), n(1), n(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewers_morning_with_the_keyboard_bulk_approval_and_a_swapped_image() {
    let (server, mut pdp, mut admin) = console_server().await;
    let console = format!("http://{}", server.console_addr.expect("console"));
    // The queue: a1 (pending from the set-up) and 60 more anchors, each with its own picture.
    for i in 1..=60u8 {
        let id = format!("k-{i:03}");
        image_host().put(
            &format!("{id}.png"),
            "image/png",
            png(512, [40 + i * 3, 120, 200 - i * 2]),
        );
        pdp.register(proto::RegisterRequest {
            request_id: String::new(),
            record: Some(proto::register_request::Record::Anchor(
                common::anchor_record(&id, "m1", "p1", proto::ImageStyle::RealisticHuman),
            )),
            expected_revision: None,
        })
        .await
        .expect("register");
    }
    let (_driver, webdriver) = chromedriver();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&webdriver, profile.path()).await;
    client.set_window_size(1366, 768).await.expect("1366×768");
    sign_in(&client, &console, "reviewer").await;
    client
        .goto(&format!("{console}/review?kind=anchor"))
        .await
        .expect("queue");
    wait_for_text(&client, "61 pending").await;
    // Times in the browser's zone, which the header names; filed at 00:00 UTC is 08:00 there.
    wait_for_text(&client, "Times: Asia/Shanghai (UTC+08:00)").await;
    wait_for_text(&client, ">1 Jan 2026 08:00:00</time>").await;

    // Keyboard only: j opens the first filing, then a approves it and opens the next.
    let mut keys = 0;
    press(&client, 'j').await;
    keys += 1;
    wait_for_text(&client, "<h1>Anchor image a1</h1>").await;
    // Above the fold at 1366×768: the whole image and the approve button.
    let fold = client
        .execute(
            "const b = document.querySelector('button[data-key=a]').getBoundingClientRect();
             const i = document.querySelector('img.anchor').getBoundingClientRect();
             return [b.bottom, i.bottom, i.width, window.innerHeight];",
            vec![],
        )
        .await
        .expect("layout");
    let at = |i: usize| fold[i].as_f64().expect("a number");
    assert!(
        at(0) <= at(3) && at(1) <= at(3) && at(2) >= 400.0,
        "approve button bottom {}, image bottom {} (width {}), viewport height {}",
        at(0),
        at(1),
        at(2),
        at(3)
    );
    screenshot(&client, "fast-path").await;
    let mut approved = vec!["a1".to_owned()];
    approved.extend((1..=49).map(|i| format!("k-{i:03}")));
    for (n, id) in approved.iter().enumerate() {
        press(&client, 'a').await;
        keys += 1;
        wait_for_text(
            &client,
            &format!("Verdict recorded. Anchor image {id} · approved"),
        )
        .await;
        if n + 1 < approved.len() {
            wait_for_text(
                &client,
                &format!("<h1>Anchor image {}</h1>", approved[n + 1]),
            )
            .await;
        }
    }
    for id in &approved {
        assert_eq!(
            common::console::anchor(&mut admin, id).await.review_status,
            proto::ReviewStatus::Approved as i32,
            "{id}"
        );
    }
    let per_filing = keys as f64 / approved.len() as f64;
    println!(
        "keyboard: {keys} keys for {} filings ({per_filing:.2} per filing), no clicks",
        approved.len()
    );
    assert!(
        per_filing <= 3.0,
        "{keys} keys for {} filings",
        approved.len()
    );

    // The other 11 at once: select the page, approve, confirm once (3 clicks).
    client
        .goto(&format!("{console}/review?kind=anchor"))
        .await
        .expect("queue");
    wait_for_text(&client, "11 pending").await;
    for css in ["#pick-all", "form.bulk button[type=submit]"] {
        client
            .find(Locator::Css(css))
            .await
            .expect(css)
            .click()
            .await
            .expect(css);
    }
    wait_for_text(&client, "Approve them (11)").await;
    client
        .find(Locator::Css("form.bulk button[type=submit]"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("confirm");
    wait_for_text(&client, "11 / 11 approved").await;
    for i in 50..=60 {
        assert_eq!(
            common::console::anchor(&mut admin, &format!("k-{i:03}"))
                .await
                .review_status,
            proto::ReviewStatus::Approved as i32,
            "k-{i:03}"
        );
    }

    // k-055's picture is swapped at the same reference after its approval: the reviewer who
    // opens it sees it back in review (and a START with it would be refused).
    image_host().put("k-055.png", "image/png", png(512, [10, 10, 10]));
    client
        .goto(&format!("{console}/review/anchor/k-055"))
        .await
        .expect("k-055");
    wait_for_text(&client, "<p class=\"state\">pending review").await;
    assert_eq!(
        common::console::anchor(&mut admin, "k-055")
            .await
            .review_status,
        proto::ReviewStatus::PendingReview as i32
    );

    // Every page fits both sizes in both languages without sideways scrolling: the
    // reviewer's, then the admin's.
    let pages: [(&str, &[(&str, &str)]); 2] = [
        (
            "reviewer",
            &[
                ("queue", "/review"),
                ("filing", "/review/anchor/k-055"),
                ("live", "/live"),
                ("account", "/accounts?merchant=m1"),
                ("catalog", "/catalog"),
            ],
        ),
        (
            "admin",
            &[
                ("log", "/log?merchant=m1"),
                ("account", "/accounts?merchant=m1"),
            ],
        ),
    ];
    for (role, paths) in pages {
        if role == "admin" {
            client
                .goto(&format!("{console}/lang/en"))
                .await
                .expect("English");
            sign_out(&client).await;
            sign_in(&client, &console, role).await;
        }
        for (lang, width, height) in [
            ("en", 1366, 768),
            ("zh", 1366, 768),
            ("en", 390, 844),
            ("zh", 390, 844),
        ] {
            client.set_window_size(width, height).await.expect("size");
            client
                .goto(&format!("{console}/lang/{lang}"))
                .await
                .expect("language");
            for (name, path) in paths {
                client.goto(&format!("{console}{path}")).await.expect(path);
                wait_for_text(&client, "</main>").await;
                if lang == "zh" {
                    // Every value is named in Chinese, none as the wire spells it (PENDING_REVIEW).
                    let raw = client
                        .execute(
                            "return (document.body.innerText.match(/\\b[A-Z]{2,}_[A-Z_]{2,}\\b/g) || []).join(' ');",
                            vec![],
                        )
                        .await
                        .expect("text");
                    assert_eq!(
                        raw,
                        serde_json::json!(""),
                        "{path} ({role}) shows wire names"
                    );
                }
                let (document, viewport, _) = page_size(&client).await;
                assert!(
                    document <= viewport,
                    "{path} at {width}×{height} ({lang}, {role}) scrolls sideways: {document} > {viewport}"
                );
                if *name == "queue" && lang == "zh" {
                    wait_for_text(&client, ">2026年1月1日 08:00:00</time>").await;
                }
                if matches!(*name, "queue" | "filing") {
                    screenshot(&client, &format!("{name}-{width}x{height}-{lang}")).await;
                }
            }
        }
    }
    client.close().await.expect("close the browser");
}
