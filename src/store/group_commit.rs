//! Group commit: every acknowledged write waits for a flush that started after it, and one
//! flush covers every write made before it began. sled's `flush_async` hangs under concurrent
//! callers (sled 0.34.7), so the flush runs as a blocking `flush()` on the blocking pool.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::PdpError;

pub struct GroupCommit {
    db: sled::Db,
    /// Tickets handed out: one per write that wants durability.
    requested: AtomicU64,
    /// Every ticket up to this one is on disk.
    flushed: AtomicU64,
    /// Held by the one caller running a flush; the rest queue (FIFO) and usually find their
    /// ticket already covered when their turn comes.
    leader: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    pub fn new(db: sled::Db) -> Self {
        GroupCommit {
            db,
            requested: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            leader: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns once every write the caller made before calling is durable.
    pub async fn durable(&self) -> Result<(), PdpError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _leader = self.leader.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Everything ticketed by now was written before its ticket was taken, so this flush
        // covers it too.
        let covered = self.requested.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| PdpError::Storage(format!("flush task failed: {e}")))?
            .map_err(|e| PdpError::Storage(format!("flush failed: {e}")))?;
        self.flushed.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }
}
