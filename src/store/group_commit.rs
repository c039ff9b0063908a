//! Group commit: every acknowledged write waits for a flush that started after it, and one
//! flush covers every write made before it began. sled's `flush_async` hangs under concurrent
//! callers (sled 0.34.7), so the flush runs as a blocking `flush()` on the blocking pool.
//!
//! sled's `flush()` on Linux ends in `sync_file_range`, which reaches neither the drive's cache
//! nor the file's metadata (sled fsyncs on its own only every 500 ms). So after it, the data file
//! is `fdatasync`ed: an acknowledged write survives a power cut, not only a killed process.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::group_sync::GroupSync;
use crate::error::PdpError;

/// sled 0.34 keeps its log and pages in this one file of its directory.
const SLED_DATA_FILE: &str = "db";

pub struct GroupCommit {
    db: sled::Db,
    /// The data file, opened to be synced (fdatasync works on a read-only descriptor).
    data_file: Arc<std::fs::File>,
    /// Tickets handed out: one per write that wants durability.
    requested: AtomicU64,
    flushed: GroupSync,
}

impl GroupCommit {
    pub fn new(db: sled::Db, dir: &Path) -> Result<Self, PdpError> {
        let path = dir.join(SLED_DATA_FILE);
        let data_file = std::fs::File::open(&path).map_err(|e| {
            PdpError::Storage(format!("cannot open {} to sync it: {e}", path.display()))
        })?;
        // The files sled created must be reachable after a crash too.
        if let Ok(directory) = std::fs::File::open(dir) {
            directory
                .sync_all()
                .map_err(|e| PdpError::Storage(format!("cannot sync {}: {e}", dir.display())))?;
        }
        Ok(GroupCommit {
            db,
            data_file: Arc::new(data_file),
            requested: AtomicU64::new(0),
            flushed: GroupSync::default(),
        })
    }

    /// Syncs the data file now (blocking). For probes after a write failure.
    pub fn sync_blocking(&self) -> Result<(), PdpError> {
        self.data_file
            .sync_data()
            .map_err(|e| PdpError::Storage(format!("fdatasync failed: {e}")))
    }

    /// Makes every write made before calling durable, on this thread (for the committer,
    /// which runs on a blocking thread of its own).
    pub fn durable_blocking(&self) -> Result<(), PdpError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let started = std::time::Instant::now();
        self.db
            .flush()
            .map_err(|e| PdpError::Storage(format!("flush failed: {e}")))?;
        self.sync_blocking()?;
        metrics::histogram!("anchor_pdp_store_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        self.flushed.covered(ticket);
        Ok(())
    }

    /// Returns once every write the caller made before calling is durable.
    pub async fn durable(&self) -> Result<(), PdpError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.flushed
            .until(ticket, || {
                // Everything ticketed by now was written before its ticket was taken, so this
                // flush covers it too.
                let covered = self.requested.load(Ordering::SeqCst);
                let (db, data_file) = (self.db.clone(), self.data_file.clone());
                let work: Box<dyn FnOnce() -> Result<(), PdpError> + Send> = Box::new(move || {
                    let started = std::time::Instant::now();
                    db.flush()
                        .map_err(|e| PdpError::Storage(format!("flush failed: {e}")))?;
                    data_file
                        .sync_data()
                        .map_err(|e| PdpError::Storage(format!("fdatasync failed: {e}")))?;
                    metrics::histogram!("anchor_pdp_store_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    Ok(())
                });
                (covered, work)
            })
            .await
    }
}
