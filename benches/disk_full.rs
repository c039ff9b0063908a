//! The long full-disk run (see `tests/common/disk_full.rs`): rounds of filling a tmpfs until
//! the free-space guard refuses writes, then kill -9 while full (even rounds) or recovery in
//! place and kill -9 after (odd rounds), each checked for lost writes and corruption. Prints
//! each round and the totals; panics on the first broken promise. Needs root.
//!
//!     cargo bench --bench disk_full                 # 20 rounds
//!     cargo bench --bench disk_full -- --rounds 50

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::disk_full::{is_root, round};

fn main() {
    if !is_root() {
        eprintln!("disk_full: needs root to mount a tmpfs");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut acknowledged, mut refused, mut recoveries) = (0, 0, Vec::new());
    for n in 0..rounds {
        let seen = runtime.block_on(round(n));
        println!("round {n:>2}: {seen:?}");
        acknowledged += seen.acknowledged;
        refused += seen.refused;
        recoveries.extend(seen.recovered_in);
    }
    let slowest = recoveries.iter().max().copied().unwrap_or(Duration::ZERO);
    println!(
        "disk_full: {rounds} rounds, {rounds} recovered, 0 corrupt, 0 of {acknowledged} \
         acknowledged writes lost, {refused} refusals all RESOURCE_EXHAUSTED; in-place \
         recovery after space was freed: {} rounds, slowest {} ms",
        recoveries.len(),
        slowest.as_millis()
    );
}
