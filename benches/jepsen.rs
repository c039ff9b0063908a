//! The long Jepsen-style run (see `tests/common/jepsen.rs`): fault rounds against two
//! replicas over a real 3-member etcd, then against one server on sled, with the rounds,
//! operations, faults and violations printed. Exits non-zero if any promise was broken.
//!
//!     cargo bench --bench jepsen                   # 200 rounds on etcd, 100 on sled
//!     cargo bench --bench jepsen -- --rounds 20    # 20 on each
//!
//! Needs Debian's etcd-server (`scripts/test` installs it). Each round runs clients for 3 s
//! with one fault (an etcd member paused, the etcd leader killed, a member's disk wiped, a
//! replica paused or killed; they take turns) held for 1-3 s, then heals it and checks.

#[path = "../tests/common/mod.rs"]
mod common;

use common::jepsen::{Options, run};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let mut violations = 0;
    for (label, options) in [
        ("etcd", Options::etcd(rounds.unwrap_or(200))),
        ("sled", Options::sled(rounds.unwrap_or(100))),
    ] {
        let options = Options {
            progress: true,
            ..options
        };
        let report = runtime.block_on(run(options));
        report.print(label);
        violations += report.violations.len();
    }
    if violations > 0 {
        std::process::exit(1);
    }
}
