//! How long from a violation report to the stream being cut, with the real nginx-rtmp and
//! ffmpeg (installed by scripts/test): through `on_update` (at a 2 s interval) and through
//! the control drop.
//!
//!     cargo bench --bench gateway_cut            # 5 rounds each
//!     cargo bench --bench gateway_cut -- 10

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anchor_pdp::proto;
use common::programs::{self, Nginx};
use common::{Options, TestServer};

const ADMITTED: &str =
    "r1?anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON";

async fn server(nginx_control: Vec<String>) -> TestServer {
    TestServer::admitted_with(Options {
        http: true,
        nginx_control,
        ..Options::default()
    })
    .await
}

/// Publishes, waits until admitted and streaming, reports R2, returns report → ffmpeg exit.
async fn one_cut(s: &mut TestServer, nginx: &Nginx) -> Duration {
    let mut ffmpeg = nginx.publish(ADMITTED);
    let session = loop {
        let live = s
            .admin
            .list_live_sessions(proto::ListLiveSessionsRequest {
                merchant_id: "m1".into(),
            })
            .await
            .expect("list")
            .into_inner()
            .sessions;
        if let Some(session) = live.into_iter().next() {
            break session;
        }
        assert!(
            ffmpeg.exited().is_none(),
            "ffmpeg stopped:\n{}",
            ffmpeg.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reported = Instant::now();
    s.report(&session.id, "R3").await;
    while ffmpeg.exited().is_none() {
        assert!(reported.elapsed() < Duration::from_secs(30), "never cut");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    reported.elapsed()
}

fn summary(name: &str, mut cuts: Vec<Duration>) {
    cuts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<40} median {:>7.0} ms   min {:>7.0} ms   max {:>7.0} ms   ({} rounds)",
        ms(cuts[cuts.len() / 2]),
        ms(cuts[0]),
        ms(cuts[cuts.len() - 1]),
        cuts.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    println!("report -> stream cut, nginx-rtmp + ffmpeg on loopback, {rounds} rounds each");

    let mut s = server(vec![]).await;
    let nginx = Nginx::start(s.http_addr.expect("hooks"), "edge-1", 2);
    let mut cuts = Vec::new();
    for _ in 0..rounds {
        cuts.push(one_cut(&mut s, &nginx).await);
    }
    summary("via on_update (2 s interval)", cuts);
    drop(nginx);
    s.stop().await;

    let control_port = programs::free_port();
    let mut s = server(vec![format!(
        "edge-1=http://127.0.0.1:{control_port}/control"
    )])
    .await;
    let nginx = Nginx::start_with_control(s.http_addr.expect("hooks"), "edge-1", 60, control_port);
    let mut cuts = Vec::new();
    for _ in 0..rounds {
        cuts.push(one_cut(&mut s, &nginx).await);
    }
    summary("via rtmp_control drop (60 s interval)", cuts);
}
