//! `examples/gateway.rs`, the client-only gateway loop, run against a real server.

mod common;

use std::process::Command;

use common::{Options, TestServer};

/// The example's binary, built by `cargo test` beside this test's.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let target = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    target.join("examples").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_example_starts_rechecks_and_ends_a_broadcast() {
    let mut server = TestServer::admitted_with(Options {
        configure: Some(|args| args.recheck_secs = 1),
        ..Options::default()
    })
    .await;
    let endpoint = format!("http://{}", server.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(example("gateway"))
            .args([&endpoint, "2"])
            .output()
            .expect("run examples/gateway (built by cargo test)")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("START allowed: session "), "{stdout}");
    assert_eq!(lines[1..3], ["LIVE allowed", "LIVE allowed"], "{stdout}");
    let session = lines[0].trim_start_matches("START allowed: session ");
    assert_eq!(lines[3], format!("ended: session {session}"));
    assert_eq!(
        server.session(session).await.state,
        anchor_pdp::proto::SessionState::Ended as i32
    );
}
