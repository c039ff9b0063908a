//! "Acknowledged" means on disk, synced: the real binary runs under strace while clients
//! register concurrently, and every acknowledgement must follow an fdatasync (or fsync) that
//! began after the request was sent and ended before the answer came.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anchor_pdp::PolicyDecisionPointClient;
use anchor_pdp::proto::{self, register_request::Record};
use common::programs::{Guard, free_port, require, wait_listening};
use common::repo_policies;
use tokio::sync::Semaphore;

const REGISTERS: usize = 120;
const IN_FLIGHT: usize = 16;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// (start, end) of every successful fsync/fdatasync in an `strace -f -ttt` trace.
fn syncs(trace: &str) -> Vec<(f64, f64)> {
    let mut open: std::collections::HashMap<&str, f64> = Default::default();
    let mut done = Vec::new();
    for line in trace.lines() {
        // strace pads the pid column: `4280  1795901768.878113 fsync(9) = 0`.
        let Some((pid, rest)) = line.trim_start().split_once(char::is_whitespace) else {
            continue;
        };
        let Some((at, call)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(at) = at.parse::<f64>() else { continue };
        let is_sync = call.starts_with("fdatasync(") || call.starts_with("fsync(");
        if is_sync && call.ends_with("<unfinished ...>") {
            open.insert(pid, at);
        } else if is_sync && call.contains(" = 0") {
            done.push((at, at));
        } else if (call.starts_with("<... fdatasync resumed>")
            || call.starts_with("<... fsync resumed>"))
            && call.contains(" = 0")
            && let Some(start) = open.remove(pid)
        {
            done.push((start, at));
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledgement_follows_a_sync_that_began_after_its_request() {
    let strace = require("strace");
    let temp = tempfile::tempdir().expect("temp");
    let trace_path = temp.path().join("trace");
    let log = temp.path().join("server.log");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(strace)
        .args([
            "-f",
            "-ttt",
            "-e",
            "trace=fdatasync,fsync,sync_file_range",
            "-o",
        ])
        .arg(&trace_path)
        .arg(env!("CARGO_BIN_EXE_anchor-pdp"))
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--watch-policies",
            "false",
        ])
        .arg("--data-dir")
        .arg(temp.path().join("data"))
        .arg("--policies")
        .arg(repo_policies())
        .env_remove("ANCHOR_PDP_TOKENS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn strace");
    let mut server = Guard {
        child,
        log: log.clone(),
        dir: None,
    };
    wait_listening(addr, "anchor-pdp under strace", &mut server.child, &log);
    let mut pdp = PolicyDecisionPointClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Merchant(proto::Merchant {
            id: "m1".into(),
            tier: proto::MerchantTier::ChineseGoldSupplier as i32,
            display_name: String::new(),
        })),
        expected_revision: None,
    })
    .await
    .expect("merchant");

    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..REGISTERS {
        let mut pdp = pdp.clone();
        let slots = slots.clone();
        calls.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("slot");
            let sent = now();
            pdp.register(proto::RegisterRequest {
                request_id: String::new(),
                record: Some(Record::Room(proto::LivestreamRoom {
                    id: format!("r{i}"),
                    owner_merchant_id: "m1".into(),
                    display_name: String::new(),
                })),
                expected_revision: None,
            })
            .await
            .expect("register");
            (sent, now())
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(call) = calls.join_next().await {
        acknowledged.push(call.expect("call"));
    }
    drop(pdp);
    // strace given TERM detaches and leaves the server running: stop the server itself; strace
    // writes out the rest of the trace and exits with it.
    let strace_pid = server.child.id();
    let tracees = std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
        .unwrap_or_default();
    for pid in tracees.split_whitespace() {
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(10))
            .is_some(),
        "the server under strace did not stop"
    );
    drop(server);
    let trace = std::fs::read_to_string(&trace_path).expect("trace");
    let syncs = syncs(&trace);
    assert!(!syncs.is_empty(), "no fsync/fdatasync at all:\n{trace}");
    let unsynced: Vec<_> = acknowledged
        .iter()
        .filter(|(sent, answered)| {
            !syncs
                .iter()
                .any(|(start, end)| start >= sent && end <= answered)
        })
        .collect();
    assert!(
        unsynced.is_empty(),
        "{} of {} acknowledgements had no sync between request and answer: {:?}",
        unsynced.len(),
        acknowledged.len(),
        &unsynced[..unsynced.len().min(5)]
    );
    println!(
        "{} acknowledgements, each after its own sync; {} syncs in all",
        acknowledged.len(),
        syncs.len()
    );
}

#[test]
fn the_trace_parser_reads_padded_and_split_lines() {
    let trace = "4280  1795901768.878113 fsync(9)        = 0\n\
                 4281  1795901768.919421 sync_file_range(9, 0, 161, 0 <unfinished ...>\n\
                 12345 1795901769.000001 fdatasync(9 <unfinished ...>\n\
                 4281  1795901769.000002 <... sync_file_range resumed>) = 0\n\
                 12345 1795901769.000500 <... fdatasync resumed>) = 0\n";
    let found = syncs(trace);
    assert_eq!(found.len(), 2, "{found:?}");
    // The split fdatasync spans from its start line to its resumed line (0.5 ms).
    assert!(
        (found[1].1 - found[1].0 - 0.000_499).abs() < 1e-6,
        "{found:?}"
    );
}
