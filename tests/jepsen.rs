//! The Jepsen-style run (see `tests/common/jepsen.rs`), short: a few fault rounds against
//! two replicas over a real 3-member etcd, and against one server on sled. Every round must
//! end with no violation. `cargo bench --bench jepsen -- --rounds N` is the long run.

mod common;

use common::jepsen::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_over_etcd_keep_every_promise_through_pauses_and_kills() {
    let report = run(Options::etcd(6)).await;
    report.print("etcd");
    assert!(
        report.rounds == 6 && report.operations.len() >= 6,
        "{report:?}"
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_store_keeps_every_promise_through_pauses_and_kills() {
    let report = run(Options::sled(4)).await;
    report.print("sled");
    assert!(
        report.rounds == 4 && report.operations.len() >= 6,
        "{report:?}"
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}
