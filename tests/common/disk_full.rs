//! A full disk, as a round: `anchor-pdp serve` (a real process) on a small tmpfs beside a
//! filler that leaves it a few MiB, four clients registering until the free-space guard
//! refuses them, then either kill -9 while full and a restart after space is freed, or
//! recovery without a restart and kill -9 after. Checked each round: every refusal is
//! RESOURCE_EXHAUSTED naming the disk (sled never met ENOSPC), health NOT_SERVING for `""`
//! and each service while full, every acknowledged write present after the restart, and no
//! corruption. Mounting needs root (CI runs as root). `tests/disk_full.rs` runs a few rounds,
//! `cargo bench --bench disk_full` twenty.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::anchor_record;
use super::programs::{Guard, free_port};
use super::serve_sled;

const MIB: u64 = 1024 * 1024;
const RESERVE_MIB: u64 = 4;
const BALLAST_MIB: u64 = 2;
/// What the filler leaves free above the reserve: a few thousand registrations.
const HEADROOM_MIB: u64 = 3;
const WRITERS: usize = 4;
/// Services whose health must follow the disk: the server's and each PDP service.
const SERVICES: [&str; 3] = [
    "",
    "anchorpdp.v1.PolicyDecisionPoint",
    "anchorpdp.v1.PolicyAdmin",
];

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A tmpfs mounted for the round, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed although root");
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem holding `path` to the last byte, then gives `leave` bytes back.
fn fill_leaving(path: &Path, leave: u64) {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC: {e}");
                break;
            }
        }
    }
    file.set_len(written.saturating_sub(leave))
        .expect("give space back");
    file.sync_all().expect("sync filler");
}

/// The server; killed when dropped (a failed assertion included).
fn spawn(data: &Path, port: u16, log: &Path) -> Guard {
    let (reserve, ballast) = (RESERVE_MIB.to_string(), BALLAST_MIB.to_string());
    serve_sled(
        data,
        port,
        log,
        &[
            "--disk-reserve-mib",
            &reserve,
            "--disk-ballast-mib",
            &ballast,
            "--decision-log-segment-mib",
            "1",
        ],
    )
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect")
}

async fn health(port: u16, service: &str) -> i32 {
    HealthClient::new(channel(port).await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

/// Waits until every service reports `want`; returns how long that took.
async fn wait_for_health(port: u16, want: ServingStatus) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for service in SERVICES {
            all &= health(port, service).await == want as i32;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn anchor(id: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Anchor(anchor_record(
            id,
            "m1",
            "p1",
            proto::ImageStyle::RealisticHuman,
        ))),
        expected_revision: None,
    }
}

/// What one round saw.
#[derive(Debug, Default)]
pub struct Round {
    /// Writes acknowledged (and found after the restart).
    pub acknowledged: usize,
    /// Refusals: all RESOURCE_EXHAUSTED.
    pub refused: usize,
    /// Whether the server was killed while the disk was full (else after recovering).
    pub killed_while_full: bool,
    /// From freeing space to SERVING without a restart (rounds that recover in place).
    pub recovered_in: Option<Duration>,
}

/// One round; panics on anything the PDP promises and did not do.
pub async fn round(round: usize) -> Round {
    let temp = tempfile::tempdir().expect("temp");
    let disk = Tmpfs::mount(&temp.path().join("disk"), "32m");
    let data = disk.path.clone();
    let log = |n: usize| temp.path().join(format!("server-{n}.log"));
    let port = free_port();
    let mut server = spawn(&data, port, &log(0));
    let mut pdp = PolicyDecisionPointClient::new(channel(port).await);
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Merchant(proto::Merchant {
            id: "m1".into(),
            tier: proto::MerchantTier::ChineseGoldSupplier as i32,
            display_name: "m1".into(),
        })),
        expected_revision: None,
    })
    .await
    .expect("merchant");
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Provider(proto::ServiceProvider {
            id: "p1".into(),
            display_name: String::new(),
        })),
        expected_revision: None,
    })
    .await
    .expect("provider");

    let filler = data.join("filler");
    fill_leaving(&filler, (RESERVE_MIB + HEADROOM_MIB) * MIB);

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let acknowledged = acknowledged.clone();
        let mut pdp = pdp.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("a{round}-{w}-{i}");
                match pdp.register(anchor(&id)).await {
                    Ok(_) => acknowledged.lock().expect("acked").push(id),
                    Err(status) => return status,
                }
            }
            unreachable!()
        }));
    }
    let mut refused = 0;
    for writer in writers {
        let status = writer.await.expect("writer");
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "round {round}: a write on a full disk failed otherwise: {status:?}\n{}",
            std::fs::read_to_string(log(0)).unwrap_or_default()
        );
        assert!(status.message().contains("disk full"), "{status:?}");
        refused += 1;
    }
    wait_for_health(port, ServingStatus::NotServing).await;
    // Decisions fail closed: nothing can be recorded.
    let mut start = super::start();
    start.room_id = "r-none".into();
    match pdp.authorize(start).await {
        Ok(response) => assert_eq!(response.into_inner().decision, proto::Decision::Deny as i32),
        Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}"),
    }

    let killed_while_full = round.is_multiple_of(2);
    let mut recovered_in = None;
    let mut restarted_log = log(1);
    if killed_while_full {
        server.child.kill().expect("kill -9");
        server.child.wait().expect("reap");
        std::fs::remove_file(&filler).expect("free space");
    } else {
        std::fs::remove_file(&filler).expect("free space");
        recovered_in = Some(wait_for_health(port, ServingStatus::Serving).await);
        for i in 0..20 {
            let id = format!("a{round}-after-{i}");
            pdp.register(anchor(&id))
                .await
                .expect("a write after space came back");
            acknowledged.lock().expect("acked").push(id);
        }
        server.child.kill().expect("kill -9");
        server.child.wait().expect("reap");
        restarted_log = log(2);
    }

    let port = free_port();
    let mut server = spawn(&data, port, &restarted_log);
    wait_for_health(port, ServingStatus::Serving).await;
    let mut admin_after = PolicyAdminClient::new(channel(port).await);
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("acked"));
    for id in &acknowledged {
        let found = admin_after
            .get_registration(proto::GetRegistrationRequest {
                kind: proto::RegistrationKind::Anchor as i32,
                id: id.clone(),
            })
            .await;
        assert!(
            found.is_ok(),
            "round {round}: acknowledged {id} lost: {found:?}"
        );
    }
    let restarted = std::fs::read_to_string(&restarted_log).unwrap_or_default();
    assert!(
        !restarted.to_lowercase().contains("corrupt"),
        "round {round}: {restarted}"
    );
    let _ = server.child.kill();
    let _ = server.child.wait();
    drop(disk);
    Round {
        acknowledged: acknowledged.len(),
        refused,
        killed_while_full,
        recovered_in,
    }
}
