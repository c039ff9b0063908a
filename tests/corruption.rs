//! A damaged store, as a full disk can leave it: a corrupt sled snapshot is set aside (kept)
//! and sled rebuilds its state from its log, with every write there.

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
