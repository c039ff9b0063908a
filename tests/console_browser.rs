//! The console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, installed by scripts/test). A reviewer approves a pending anchor whose image
//! shows, and a gRPC START is then allowed; an inspector reports R2 on the live broadcast (in
//! Chinese, seeing the Chinese rule messages); the admin sees the freeze and the explained deny;
//! a reviewer gets no lift form; a page on another site cannot sign the browser in as someone
//! else (login CSRF). Screenshots of the review page, the live board and the account
//! page go to target/console-*.png on every run.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anchor_pdp::proto;
use common::console::{console_server_with, token};
use common::programs::{Guard, free_port, require, wait_listening};
use common::start;
use fantoccini::{Client, ClientBuilder, Locator};

/// Where the test's image server serves anchor images; the console maps `oss://anchors/` there.
static IMAGES: OnceLock<String> = OnceLock::new();

const ANCHOR_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="240" height="240"><rect width="240" height="240" fill="#dfe8f5"/><circle cx="120" cy="95" r="55" fill="#f2c9a0"/><rect x="50" y="160" width="140" height="70" rx="30" fill="#3b5b8c"/><circle cx="100" cy="90" r="6"/><circle cx="140" cy="90" r="6"/><path d="M100 120 q20 15 40 0" stroke="#000" fill="none" stroke-width="4"/></svg>"##;

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

/// Serves the anchor image.
fn image_server() -> SocketAddr {
    serve_fixed("image/svg+xml", ANCHOR_SVG.to_owned())
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
    let child = Command::new(require("chromedriver"))
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
    let images = image_server();
    IMAGES
        .set(format!("oss://anchors/=http://{images}/anchors/"))
        .expect("once");
    let (server, mut pdp, _admin) = console_server_with(|args| {
        args.console_image_prefixes = IMAGES.get().cloned().into_iter().collect();
    })
    .await;
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
        .find(Locator::Css("input[name=verdict][value=approve]"))
        .await
        .expect("approve")
        .click()
        .await
        .expect("choose approve");
    client
        .find(Locator::Css("form.verdict button"))
        .await
        .expect("submit")
        .click()
        .await
        .expect("record verdict");
    wait_for_text(&client, "Verdict recorded.").await;
    // The filing's history now starts with this verdict.
    wait_for_text(&client, "<td>revision 2, APPROVED</td>").await;
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
