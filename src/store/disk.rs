//! The free-space guard: the store never meets a full disk. sled that fails a write part-way
//! may leave a snapshot it cannot read back, so writes are refused, before any file is
//! touched, while the data directory's filesystem has less free than a reserve (etcd's NOSPACE
//! alarm is the model). A preallocated ballast file is given up when the guard trips, so what
//! is already in flight (a commit, a flush, the decision log) has room to finish; it is taken
//! back, and writes allowed again, once there is room for it above the reserve.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::PdpError;

const MIB: u64 = 1024 * 1024;
const BALLAST_FILE: &str = "ballast";

/// How much space the guard keeps.
#[derive(Debug, Clone, Copy)]
pub struct DiskOptions {
    /// Writes are refused while the filesystem has less than this free (for unprivileged
    /// users: `statvfs`'s `f_bavail`).
    pub reserve_bytes: u64,
    /// Preallocated in the data directory and released when the guard trips. 0: none.
    pub ballast_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            reserve_bytes: 256 * MIB,
            ballast_bytes: 64 * MIB,
        }
    }
}

pub struct DiskGuard {
    dir: PathBuf,
    options: DiskOptions,
    /// Why writes are refused, while they are.
    tripped: Mutex<Option<String>>,
}

impl DiskGuard {
    /// A guard for the filesystem holding `dir` (which must exist). Lays the ballast down if
    /// there is room for it above the reserve; if not, the guard starts tripped.
    pub fn new(dir: &Path, options: DiskOptions) -> DiskGuard {
        let guard = DiskGuard {
            dir: dir.to_owned(),
            options,
            tripped: Mutex::new(None),
        };
        guard.prepare();
        if let Err(e) = guard.check() {
            tracing::error!(error = %e, "starting with too little free disk: writes are refused");
        }
        guard
    }

    fn ballast_path(&self) -> PathBuf {
        self.dir.join(BALLAST_FILE)
    }

    /// Free bytes (for this user) and total bytes of the filesystem holding the directory.
    fn space(&self) -> Result<(u64, u64), PdpError> {
        let stat = rustix::fs::statvfs(&self.dir).map_err(|e| {
            PdpError::Storage(format!(
                "disk: cannot read the free space of {}: {e}",
                self.dir.display()
            ))
        })?;
        let block = stat.f_frsize.max(1);
        Ok((
            stat.f_bavail.saturating_mul(block),
            stat.f_blocks.saturating_mul(block),
        ))
    }

    fn ballast_missing(&self) -> u64 {
        let laid = std::fs::metadata(self.ballast_path()).map_or(0, |m| m.len());
        self.options.ballast_bytes.saturating_sub(laid)
    }

    /// Before a write: `RESOURCE_EXHAUSTED` (naming the disk) while free space is below the
    /// reserve. One `statvfs` call when all is well.
    pub fn check(&self) -> Result<(), PdpError> {
        let (free, total) = self.space()?;
        metrics::gauge!("anchor_pdp_disk_free_bytes").set(free as f64);
        let mut tripped = self.tripped.lock().unwrap_or_else(|p| p.into_inner());
        if tripped.is_none() {
            if free >= self.options.reserve_bytes {
                return Ok(());
            }
            let why = format!(
                "disk full: {} has {} MiB free of {} MiB, below the {} MiB reserve; writes are \
                 refused until space is freed",
                self.dir.display(),
                free / MIB,
                total / MIB,
                self.options.reserve_bytes / MIB
            );
            // What is in flight finishes in the ballast's room.
            match std::fs::remove_file(self.ballast_path()) {
                Ok(()) => tracing::warn!("disk: ballast released for the writes in flight"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::error!(error = %e, "disk: cannot release the ballast"),
            }
            tracing::error!(reason = %why, "disk guard tripped");
            metrics::gauge!("anchor_pdp_disk_guard_tripped").set(1.0);
            *tripped = Some(why.clone());
            return Err(PdpError::ResourceExhausted(why));
        }
        // Tripped: lifts once the ballast fits back with the reserve still free, so it does
        // not trip again at once on the room the ballast gave.
        let missing = self.ballast_missing();
        if free < self.options.reserve_bytes.saturating_add(missing) {
            return Err(PdpError::ResourceExhausted(
                tripped.clone().unwrap_or_default(),
            ));
        }
        if missing > 0
            && let Err(e) = self.lay_ballast()
        {
            tracing::warn!(error = %e, "disk: cannot lay the ballast back; going on without it");
        }
        tracing::info!(
            free_mib = free / MIB,
            "disk guard lifted: space is back above the reserve"
        );
        metrics::gauge!("anchor_pdp_disk_guard_tripped").set(0.0);
        *tripped = None;
        Ok(())
    }

    fn lay_ballast(&self) -> std::io::Result<()> {
        if self.options.ballast_bytes == 0 {
            return Ok(());
        }
        let file: File = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.ballast_path())?;
        // Blocks really allocated (not a sparse file), so deleting it frees them.
        rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            self.options.ballast_bytes,
        )?;
        file.sync_all()
    }

    /// Lays the ballast down at start if it is missing and there is room for it above the
    /// reserve.
    fn prepare(&self) {
        let missing = self.ballast_missing();
        if missing == 0 {
            return;
        }
        match self.space() {
            Ok((free, _)) if free >= self.options.reserve_bytes.saturating_add(missing) => {
                if let Err(e) = self.lay_ballast() {
                    tracing::warn!(error = %e, "disk: cannot lay the ballast down");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "disk: cannot read the free space"),
        }
    }
}
