//! How heavy and how fast the console's review queue is with many pending filings.
//!
//!     cargo bench --bench console              # 10,000 pending anchors
//!     cargo bench --bench console -- 50000
//!
//! Starts the release server binary with the console on, files N pending anchors over gRPC,
//! signs in, then fetches the review queue (its first page of 50 rows, with the count of all;
//! also searched and sorted by name) 20 times: time to first byte, whole response time and
//! page weight (the HTML; the stylesheet and script add a few KB once, then are cached). Then
//! the same for the pages that read the decision log: the newest and the oldest filing (each
//! with its history and its place in the queue) and two log searches. Last, 50 verdicts on the
//! fast path ("Approve & next": the verdict, the next filing found and claimed, the redirect),
//! one after another as a reviewer gives them. (No image prefix here: approvals fetch no image.)
//!
//! First, in process on the store alone: what a sign-in costs with 0 and with 6,000 sessions
//! stored (1,200 credentials × 5, the most each may hold), fdatasync included.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use common::load::{Result, ServerProcess, percentile};

/// One GET: (time to the first byte, whole time, bytes).
fn get(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: &str,
) -> Result<(Duration, Duration, usize)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first)?;
    let ttfb = started.elapsed();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok((ttfb, started.elapsed(), rest.len() + 1))
}

/// Sign-ins per second on a store already holding `stored` sessions of `stored / 5`
/// credentials: `calls` sign-ins of credentials that each hold 5 already (each ends its
/// oldest), one at a time.
async fn sign_in_rate(stored: usize, calls: usize) -> Result<f64> {
    use anchor_pdp::domain::ConsoleSignIn;
    let temp = tempfile::tempdir()?;
    let store = anchor_pdp::store::Store::open(&temp.path().join("data"))?;
    let now = 1_000_000;
    let credentials = (stored / 5).max(1);
    let sign_in = |credential: usize, i: usize| ConsoleSignIn {
        credential: format!("sha256:{credential:064x}"),
        caller: format!("reviewer-{credential}"),
        csrf: format!("{i:064x}"),
        expires_at: now + 8 * 3600 * 1000,
    };
    for i in 0..stored {
        store
            .put_console_sign_in(&format!("{i:064x}"), &sign_in(i % credentials, i), now)
            .await?;
    }
    let started = Instant::now();
    for i in stored..stored + calls {
        store
            .put_console_sign_in(&format!("{i:064x}"), &sign_in(i % credentials, i), now)
            .await?;
    }
    Ok(calls as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    for stored in [0, 6_000] {
        let rate = sign_in_rate(stored, 500).await?;
        println!(
            "console sign-in with {stored} sessions stored: {rate:.0}/s ({:.2} ms each, one at a time)",
            1000.0 / rate
        );
    }
    let pending: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let console_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let console: std::net::SocketAddr = format!("127.0.0.1:{console_port}").parse()?;
    let server =
        ServerProcess::start_with(&["--console-listen".to_owned(), console.to_string()]).await?;
    let endpoint = format!("http://{}", server.addr);
    let mut pdp = PolicyDecisionPointClient::connect(endpoint.clone()).await?;
    let mut admin = PolicyAdminClient::connect(endpoint).await?;
    common::load::fixtures(&mut pdp, &mut admin).await?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let mut pdp = pdp.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..pending).step_by(32) {
                pdp.register(proto::RegisterRequest {
                    request_id: String::new(),
                    record: Some(Record::Anchor(proto::VirtualAnchor {
                        id: format!("pending{i:06}"),
                        owner_merchant_id: "m1".into(),
                        provider_id: "p1".into(),
                        image_style: proto::ImageStyle::RealisticHuman as i32,
                        image_reference: format!("oss://anchors/pending{i:06}.png"),
                        display_name: format!("Pending anchor {i}"),
                        likeness_of: String::new(),
                        consent_id: String::new(),
                    })),
                    expected_revision: None,
                })
                .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "filed {pending} pending anchors in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Without caller tokens (loopback), an empty token signs in as the anonymous admin.
    let mut stream = TcpStream::connect(console)?;
    write!(
        stream,
        "POST /sign-in HTTP/1.1\r\nHost: {console}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\nConnection: close\r\n\r\ntoken="
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let cookie = reply
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .ok_or("no session cookie")?
        .to_owned();

    let pages = [
        (
            format!("review queue with {pending} pending (its first page of 50)"),
            "/review".to_owned(),
        ),
        (
            "review queue searched for one id".to_owned(),
            format!("/review?q=pending{:06}", pending / 2),
        ),
        (
            "review queue sorted by name".to_owned(),
            "/review?sort=name".to_owned(),
        ),
        (
            "the newest filing's page (its history: the log since it was filed)".to_owned(),
            format!("/review/anchor/pending{:06}", pending - 1),
        ),
        (
            format!("the oldest filing's page (its history: the log of all {pending} filings)"),
            "/review/anchor/pending000000".to_owned(),
        ),
        (
            "log search, everything (the newest 500)".to_owned(),
            "/log".to_owned(),
        ),
        (
            "log search that matches nothing (reads the whole log)".to_owned(),
            "/log?merchant=nobody".to_owned(),
        ),
    ];
    for (what, path) in pages {
        let (mut ttfb, mut whole) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        for _ in 0..20 {
            let (first, all, size) = get(console, &path, &cookie)?;
            ttfb.push(first);
            whole.push(all);
            bytes = size;
        }
        ttfb.sort();
        whole.sort();
        let ms = |v: &[Duration], p| percentile(v, p).as_secs_f64() * 1e3;
        println!(
            "{what}: time to first byte p50 {:.1} ms, p90 {:.1} ms; whole page p50 {:.1} ms; {:.0} KiB of HTML",
            ms(&ttfb, 0.5),
            ms(&ttfb, 0.9),
            ms(&whole, 0.5),
            bytes as f64 / 1024.0,
        );
    }

    // The fast path: "Approve & next" on the oldest 50, in order, as a reviewer gives them.
    let mut page = String::new();
    TcpStream::connect(console).and_then(|mut stream| {
        write!(
            stream,
            "GET /review HTTP/1.1\r\nHost: {console}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        )?;
        stream.read_to_string(&mut page)
    })?;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("no CSRF token on the queue")?
        .to_owned();
    // The queue's "start reviewing" link, then wherever each verdict leads.
    let mut at = page
        .split("data-key=\"j\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("no first filing on the queue")?
        .to_owned();
    let mut verdicts = Vec::new();
    for i in 0..50 {
        let body = format!("verdict=approve&expected_revision=1&csrf={csrf}");
        let started = Instant::now();
        let mut stream = TcpStream::connect(console)?;
        write!(
            stream,
            "POST {at} HTTP/1.1\r\nHost: {console}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        verdicts.push(started.elapsed());
        let next = reply
            .lines()
            .find_map(|l| l.strip_prefix("location: /review/anchor/"))
            .filter(|_| reply.starts_with("HTTP/1.1 303"))
            .ok_or_else(|| format!("verdict {i}: not on to the next filing: {reply}"))?;
        at = format!(
            "/review/anchor/{}",
            next.split('?').next().unwrap_or_default()
        );
    }
    verdicts.sort();
    let ms = |p| percentile(&verdicts, p).as_secs_f64() * 1e3;
    println!(
        "approve & next with {pending} pending: p50 {:.1} ms, p90 {:.1} ms per verdict (recorded, fsynced, next found and claimed)",
        ms(0.5),
        ms(0.9)
    );
    drop(server);
    Ok(())
}
