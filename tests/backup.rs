//! Backup, restore and migration, through the `anchor-pdp backup` / `restore` commands
//! against real servers: a backup taken while writes run holds every write acknowledged at or
//! below its revision and restores to an equal store; a damaged file or a non-empty target is
//! refused before anything is written; a restore that crashes halfway leaves a store no server
//! opens, and resumes when run again; sled → etcd → sled carries every record over.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::store::Backup;
use common::etcd::EtcdCluster;
use common::{Options, T0, TestServer};

/// Runs `anchor-pdp ARGS`; returns (success, stdout + stderr).
async fn cli(args: Vec<String>) -> (bool, String) {
    cli_with(args, None).await
}

/// Runs `anchor-pdp ARGS` with a restore that crashes after `abort_after` keys.
async fn cli_with(args: Vec<String>, abort_after: Option<u64>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_anchor-pdp"));
        if let Some(keys) = abort_after {
            command.env(
                "ANCHOR_PDP_FAULT_RESTORE_ABORT_AFTER_KEYS",
                keys.to_string(),
            );
        }
        let out = command
            .args(&args)
            .env_remove("ANCHOR_PDP_TOKEN")
            .output()
            .expect("run anchor-pdp");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .expect("cli task")
}

async fn backup(server: &TestServer, to: &Path) -> Backup {
    let (ok, said) = cli(vec![
        "backup".into(),
        "--server".into(),
        format!("http://{}", server.addr),
        "--to".into(),
        to.display().to_string(),
        "--with-decision-log".into(),
    ])
    .await;
    assert!(ok, "backup: {said}");
    Backup::decode(&std::fs::read(to).expect("backup file")).expect("a backup that reads back")
}

async fn restore(from: &Path, target: &[&str]) -> (bool, String) {
    restore_cut_short(from, target, None).await
}

/// A restore that crashes (the process aborts) once it has written `abort_after` keys.
async fn restore_cut_short(
    from: &Path,
    target: &[&str],
    abort_after: Option<u64>,
) -> (bool, String) {
    let mut args = vec![
        "restore".to_owned(),
        "--from".into(),
        from.display().to_string(),
    ];
    args.extend(target.iter().map(|s| s.to_string()));
    cli_with(args, abort_after).await
}

/// Why a server refuses to open the store `args` select (panics if it opens).
async fn refusal(args: anchor_pdp::config::ServeArgs) -> String {
    let clock = std::sync::Arc::new(anchor_pdp::clock::ManualClock::new(T0));
    match anchor_pdp::server::open(&args, clock).await {
        Ok(_) => panic!("a server opened a half-restored store"),
        Err(e) => e.to_string(),
    }
}

fn merchant(id: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(Record::Merchant(proto::Merchant {
            id: id.into(),
            tier: proto::MerchantTier::Other as i32,
            display_name: id.into(),
        })),
        expected_revision: None,
    }
}

/// A server with state of every kind: filings, a session, a freeze and its events.
async fn populated() -> TestServer {
    let mut s = TestServer::admitted().await;
    let session = s.start_session().await;
    s.report(&session, "R6").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_writes_restores_to_an_equal_store_and_a_damaged_one_is_refused() {
    let temp = tempfile::tempdir().expect("temp");
    let server = populated().await;

    // Writers all along; each write's acknowledged revision is kept.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (acknowledged, stop, mut pdp) =
            (acknowledged.clone(), stop.clone(), server.pdp.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let id = format!("w{w}-{i}");
                let revision = pdp
                    .register(merchant(&id))
                    .await
                    .expect("register")
                    .into_inner()
                    .store_revision;
                acknowledged.lock().expect("acked").push((id, revision));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = temp.path().join("pdp.backup");
    let first = backup(&server, &file).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    for writer in writers {
        writer.await.expect("writer");
    }
    let acknowledged = acknowledged.lock().expect("acked").clone();
    let keys: std::collections::HashSet<&str> =
        first.entries.iter().map(|(k, _)| k.as_str()).collect();
    let before: Vec<_> = acknowledged
        .iter()
        .filter(|(_, revision)| *revision <= first.header.revision)
        .collect();
    assert!(
        before.len() > 10,
        "{} writes before the backup",
        before.len()
    );
    assert!(
        before.len() < acknowledged.len(),
        "the backup should have been taken while writes ran"
    );
    for (id, revision) in &before {
        assert!(
            keys.contains(format!("reg/merchant/{id}").as_str()),
            "{id}, acknowledged at revision {revision}, is not in the backup at {}",
            first.header.revision
        );
    }
    assert_eq!(first.header.backend, "sled");
    assert!(first.log.iter().any(|r| r.action == "ReportViolation"));

    // A restore that crashes halfway leaves a store no server opens; run again, it resumes.
    let restored_dir = temp.path().join("restored");
    let target = ["--data-dir", &restored_dir.display().to_string()];
    let (ok, said) = restore_cut_short(&file, &target, Some(first.header.keys / 2)).await;
    assert!(
        !ok && said.contains("fault injected: restore aborted"),
        "{said}"
    );
    let mut args = common::serve_defaults();
    args.data_dir = restored_dir.clone();
    args.policies = common::repo_policies();
    let refused = refusal(args).await;
    assert!(
        refused.contains("a restore into this store began and did not finish")
            && refused.contains(&format!("{} keys", first.header.keys)),
        "{refused}"
    );
    // Restored into that directory, it is the same store.
    let (ok, said) = restore(&file, &target).await;
    assert!(ok, "restore: {said}");
    assert!(
        said.contains(&format!(
            "an unfinished restore resumed: restored {} keys",
            first.header.keys
        )),
        "{said}"
    );
    let restored =
        TestServer::start_on(&restored_dir, anchor_pdp::clock::ManualClock::new(T0)).await;
    let again = backup(&restored, &temp.path().join("again.backup")).await;
    assert_eq!(again.entries, first.entries, "the restored store differs");
    let log_ids: std::collections::HashSet<&str> =
        again.log.iter().map(|r| r.id.as_str()).collect();
    for record in &first.log {
        assert!(
            log_ids.contains(record.id.as_str()),
            "log record {} lost",
            record.id
        );
    }

    // Into a store that holds data: refused, nothing written.
    restored.stop().await;
    let (ok, said) = restore(&file, &["--data-dir", &restored_dir.display().to_string()]).await;
    assert!(!ok, "{said}");
    assert!(said.contains("already holds"), "{said}");

    // A damaged file: refused before anything is created.
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let damaged = temp.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).expect("write");
    let untouched = temp.path().join("untouched");
    let (ok, said) = restore(&damaged, &["--data-dir", &untouched.display().to_string()]).await;
    assert!(!ok, "{said}");
    assert!(said.contains("checksum mismatch"), "{said}");
    assert!(
        !untouched.exists(),
        "a refused restore created {}",
        untouched.display()
    );
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&damaged, &bytes).expect("write");
    let (ok, said) = restore(&damaged, &["--data-dir", &untouched.display().to_string()]).await;
    assert!(!ok && said.contains("checksum mismatch"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sled_store_moves_to_etcd_and_back_with_every_record() {
    let temp = tempfile::tempdir().expect("temp");
    let cluster = EtcdCluster::start(1).await;
    let prefix = format!("/migrate-{}/", uuid::Uuid::now_v7());
    let on_sled = populated().await;
    let first = backup(&on_sled, &temp.path().join("sled.backup")).await;
    on_sled.stop().await;

    let endpoints = cluster.endpoints().join(",");
    let etcd_target = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-prefix",
        &prefix,
        "--replica-id",
        "restore",
    ];
    // Cut short halfway: no replica serves the prefix until the restore is run again.
    let (ok, said) = restore_cut_short(
        &temp.path().join("sled.backup"),
        &etcd_target,
        Some((first.header.keys + first.header.log_records) / 2),
    )
    .await;
    assert!(
        !ok && said.contains("fault injected: restore aborted"),
        "{said}"
    );
    let mut args = common::serve_defaults();
    args.data_dir = temp.path().join("replica-data");
    args.policies = common::repo_policies();
    args.store = anchor_pdp::config::StoreKind::Etcd;
    args.etcd_endpoints = cluster.endpoints();
    args.etcd_prefix = prefix.clone();
    args.replica_id = Some("early".into());
    let refused = refusal(args).await;
    assert!(
        refused.contains("a restore into this store began and did not finish"),
        "{refused}"
    );
    let (ok, said) = restore(&temp.path().join("sled.backup"), &etcd_target).await;
    assert!(
        ok && said.contains("an unfinished restore resumed"),
        "restore into etcd: {said}"
    );
    // Once more into the same prefix: refused.
    let (ok, said) = restore(&temp.path().join("sled.backup"), &etcd_target).await;
    assert!(!ok && said.contains("already holds"), "{said}");

    let on_etcd = TestServer::start_with_options(Options {
        etcd: cluster.endpoints(),
        etcd_prefix: Some(prefix.clone()),
        replica_id: Some("A".into()),
        ..Options::default()
    })
    .await;
    let second = backup(&on_etcd, &temp.path().join("etcd.backup")).await;
    assert_eq!(second.header.backend, "etcd");
    assert_eq!(
        second.entries, first.entries,
        "sled → etcd changed the state"
    );
    let carried: std::collections::HashSet<&str> =
        second.log.iter().map(|r| r.id.as_str()).collect();
    for record in &first.log {
        assert!(
            carried.contains(record.id.as_str()),
            "record {} not carried to etcd",
            record.id
        );
    }

    let back = temp.path().join("back");
    let (ok, said) = restore(
        &temp.path().join("etcd.backup"),
        &["--data-dir", &back.display().to_string()],
    )
    .await;
    assert!(ok, "restore into sled: {said}");
    let on_sled_again = TestServer::start_on(&back, anchor_pdp::clock::ManualClock::new(T0)).await;
    let third = backup(&on_sled_again, &temp.path().join("back.backup")).await;
    assert_eq!(
        third.entries, first.entries,
        "etcd → sled changed the state"
    );
}
