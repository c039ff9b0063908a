//! Crashes on purpose, for the tests that prove a store survives them. Off unless its
//! environment variable is set.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `ANCHOR_PDP_FAULT_RESTORE_ABORT_AFTER_KEYS=N`: a restore aborts the process (as a crash
/// would: nothing is cleaned up) once it has written N keys or more.
pub fn restore_written(keys: usize) {
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let limit = LIMIT.get_or_init(|| {
        std::env::var("ANCHOR_PDP_FAULT_RESTORE_ABORT_AFTER_KEYS")
            .ok()
            .and_then(|n| n.parse().ok())
    });
    if let Some(limit) = limit
        && WRITTEN.fetch_add(keys, Ordering::AcqRel) + keys >= *limit
    {
        eprintln!("anchor-pdp: fault injected: restore aborted after {limit} keys");
        std::process::abort();
    }
}
