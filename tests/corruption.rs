//! A damaged store: a corrupt sled snapshot (as a full disk can leave it) is set aside (kept)
//! and sled rebuilds its state from its log, with every write there; a damaged or torn log,
//! which loses acknowledged writes, is refused at every start with what to do.

mod common;

use std::path::Path;
use std::time::Duration;

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use common::programs::{Guard, free_port};
use common::serve_sled;
use tonic::transport::Channel;

/// The server, stopped with SIGTERM (gracefully) when dropped, a failed assertion included.
fn spawn(data: &Path, log: &Path) -> (Guard, u16) {
    let port = free_port();
    (
        serve_sled(data, port, log, &["--disk-ballast-mib", "0"]),
        port,
    )
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

const MERCHANTS: usize = 50;

/// A store holding `MERCHANTS` merchants, stopped cleanly.
async fn store_with_merchants(data: &Path, log: &Path) {
    let (server, port) = spawn(data, log);
    let mut pdp = PolicyDecisionPointClient::new(channel(port).await);
    for i in 0..MERCHANTS {
        let id = format!("m{i}");
        pdp.register(proto::RegisterRequest {
            request_id: String::new(),
            record: Some(Record::Merchant(proto::Merchant {
                id: id.clone(),
                tier: proto::MerchantTier::Other as i32,
                display_name: id,
            })),
            expected_revision: None,
        })
        .await
        .expect("register");
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_set_aside_and_the_store_rebuilt_with_every_write() {
    let temp = tempfile::tempdir().expect("temp");
    let data = temp.path().join("data");
    store_with_merchants(&data, &temp.path().join("0.log")).await;
    // What a write torn by a full disk leaves: a snapshot whose checksum does not match.
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(data.join("snap.0000000000000100"), garbage).expect("plant");

    let log = temp.path().join("1.log");
    let (server, port) = spawn(&data, &log);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("store repaired"), "{said}");
    // And checked: it holds every change the decision log has a record of.
    assert!(
        said.contains("it holds every logged change")
            && said.contains(&format!("last_commit={MERCHANTS}")),
        "{said}"
    );
    let aside: Vec<_> = std::fs::read_dir(&data)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("corrupt-snapshots-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the snapshot is kept aside, not deleted");
    assert!(aside[0].path().join("snap.0000000000000100").exists());
    let mut admin = PolicyAdminClient::new(channel(port).await);
    for i in 0..MERCHANTS {
        admin
            .get_registration(proto::GetRegistrationRequest {
                kind: proto::RegistrationKind::Merchant as i32,
                id: format!("m{i}"),
            })
            .await
            .unwrap_or_else(|e| panic!("m{i} lost in the repair: {e}"));
    }
    drop(server);
}

/// How a start on `data` ended: `Err(log)` if the server refused (exited), `Ok` if it serves.
fn start_or_refusal(data: &Path, log: &Path) -> Result<(Guard, u16), String> {
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_anchor-pdp"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--watch-policies", "false", "--disk-ballast-mib", "0"])
        .arg("--data-dir")
        .arg(data)
        .arg("--policies")
        .arg(common::repo_policies())
        .env_remove("ANCHOR_PDP_TOKENS")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(std::fs::read_to_string(log).unwrap_or_default());
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let guard = Guard {
                child,
                log: log.to_owned(),
                dir: None,
            };
            return Ok((guard, port));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither serving nor refused after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What sled's log can suffer besides a torn snapshot: bytes damaged mid-log (sled replays up
/// to the damage and drops the rest) and a tail torn off. Either way the store has lost
/// acknowledged changes its decision log has records of: it must refuse to serve, every time
/// it is started, and say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_torn_sled_log_is_refused_not_served_with_changes_missing() {
    type Damage = fn(&mut Vec<u8>, usize);
    let damages: [(&str, Damage); 2] = [
        ("64 bytes damaged at half the log", |bytes, used| {
            for b in &mut bytes[used / 2..used / 2 + 64] {
                *b ^= 0x5a;
            }
        }),
        ("the log's last 30% torn off", |bytes, used| {
            bytes.truncate(used * 7 / 10)
        }),
    ];
    for (damage, apply) in damages {
        let temp = tempfile::tempdir().expect("temp");
        let data = temp.path().join("data");
        store_with_merchants(&data, &temp.path().join("0.log")).await;
        let db = data.join("db");
        let mut bytes = std::fs::read(&db).expect("db");
        let used = bytes.iter().rposition(|b| *b != 0).unwrap_or(0);
        apply(&mut bytes, used);
        std::fs::write(&db, &bytes).expect("damage");
        for start in 1..=2 {
            match start_or_refusal(&data, &temp.path().join(format!("{start}.log"))) {
                Err(said) => {
                    assert!(
                        said.contains("has lost changes it acknowledged: its last commit is")
                            && said
                                .contains(&format!("holds records of commits up to {MERCHANTS}"))
                            && said.contains("anchor-pdp restore --from FILE --data-dir"),
                        "{damage}, start {start}: {said}"
                    );
                }
                Ok((server, port)) => {
                    let mut admin = PolicyAdminClient::new(channel(port).await);
                    let mut missing = Vec::new();
                    for i in 0..MERCHANTS {
                        let found = admin
                            .get_registration(proto::GetRegistrationRequest {
                                kind: proto::RegistrationKind::Merchant as i32,
                                id: format!("m{i}"),
                            })
                            .await;
                        if found.is_err() {
                            missing.push(i);
                        }
                    }
                    drop(server);
                    panic!("{damage}, start {start}: served, missing merchants {missing:?}");
                }
            }
        }
    }
}
