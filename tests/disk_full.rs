//! A full disk, a few rounds (see `tests/common/disk_full.rs`; `cargo bench --bench disk_full`
//! runs twenty): the free-space guard refuses writes before sled meets ENOSPC, health says so
//! for every service, the server recovers in place once space is freed, and kill -9 in either
//! state loses no acknowledged write and corrupts nothing. Needs root to mount a tmpfs (CI
//! runs as root); elsewhere it says so and skips.

mod common;

use common::disk_full::{is_root, round};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_before_the_store_meets_it_and_recovers_losing_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: mounting the tmpfs this test fills needs root (CI runs as root)");
        return;
    }
    // Even rounds are killed while full, odd ones recover in place first.
    for n in 0..3 {
        let seen = round(n).await;
        println!("round {n}: {seen:?}");
        assert!(seen.acknowledged > 100, "{seen:?}");
        assert_eq!(seen.refused, 4, "{seen:?}");
    }
}
