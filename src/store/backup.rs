//! Backups: the store's state at one revision (and, if asked, the decision log) as one
//! versioned, checksummed file, and its restore into an empty store of either backend. A
//! backup of a sled store restored with `--store etcd` is the way from one machine to
//! replicas; the other way round works the same.
//!
//! The file: `ANCHOR-PDP-BACKUP\n`, a length-prefixed JSON header, each state key and value
//! (length-prefixed), each decision-log record (length-prefixed, as the store encodes it),
//! then the SHA-256 of everything before it. A restore checks the magic, the format and the
//! checksum before it writes anything.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Backend, Store, tx};
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;

const MAGIC: &[u8] = b"ANCHOR-PDP-BACKUP\n";
/// This build writes and reads backup format 1.
pub const BACKUP_FORMAT: u32 = 1;
const CHECKSUM_LEN: usize = 32;
/// How long a backup on etcd waits for the view to catch up first.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// What a backup file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub format: u32,
    /// The store's record format (`tx::FORMAT_VERSION`) the values are in.
    pub store_format: u8,
    /// The revision of the store it was taken from: every write acknowledged with a
    /// `store_revision` at or below it is in the backup.
    pub revision: u64,
    /// `sled` or `etcd`.
    pub backend: String,
    pub taken_at: Millis,
    pub keys: u64,
    pub log_records: u64,
}

/// A backup in memory.
#[derive(Debug, Clone)]
pub struct Backup {
    pub header: BackupHeader,
    /// State keys and values, in key order.
    pub entries: Vec<(String, Vec<u8>)>,
    pub log: Vec<LogRecord>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads what `put_bytes` wrote; `what` names it in the error.
fn take_bytes<'a>(input: &mut &'a [u8], what: &str) -> Result<&'a [u8], PdpError> {
    let damaged = || PdpError::invalid("backup", format!("the file ends inside {what}"));
    let (len, rest) = input.split_first_chunk::<8>().ok_or_else(damaged)?;
    let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| damaged())?;
    if rest.len() < len {
        return Err(damaged());
    }
    let (bytes, rest) = rest.split_at(len);
    *input = rest;
    Ok(bytes)
}

impl Backup {
    /// The file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, PdpError> {
        let mut out = MAGIC.to_vec();
        let header = serde_json::to_vec(&self.header)
            .map_err(|e| PdpError::Storage(format!("cannot encode the backup header: {e}")))?;
        put_bytes(&mut out, &header);
        for (key, value) in &self.entries {
            put_bytes(&mut out, key.as_bytes());
            put_bytes(&mut out, value);
        }
        for record in &self.log {
            put_bytes(&mut out, &tx::encode(&record.id, record)?);
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        Ok(out)
    }

    /// Reads a backup file, refusing a damaged, truncated or foreign one with a precise
    /// reason (`INVALID_ARGUMENT` on field `backup`).
    pub fn decode(bytes: &[u8]) -> Result<Backup, PdpError> {
        let bad = |reason: String| PdpError::invalid("backup", reason);
        if !bytes.starts_with(MAGIC) {
            return Err(bad(
                "not an anchor-pdp backup (no ANCHOR-PDP-BACKUP header)".into(),
            ));
        }
        if bytes.len() < MAGIC.len() + CHECKSUM_LEN {
            return Err(bad("the file is truncated".into()));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if Sha256::digest(body).as_slice() != checksum {
            return Err(bad(
                "checksum mismatch: the file is damaged or truncated; nothing was restored".into(),
            ));
        }
        let mut input = &body[MAGIC.len()..];
        let header: BackupHeader = serde_json::from_slice(take_bytes(&mut input, "the header")?)
            .map_err(|e| bad(format!("unreadable header: {e}")))?;
        if header.format != BACKUP_FORMAT {
            return Err(bad(format!(
                "backup format {}; this build reads format {BACKUP_FORMAT}",
                header.format
            )));
        }
        if header.store_format != tx::FORMAT_VERSION {
            return Err(bad(format!(
                "records in store format {}; this build reads format {}",
                header.store_format,
                tx::FORMAT_VERSION
            )));
        }
        let mut entries = Vec::with_capacity(header.keys.min(1 << 20) as usize);
        for _ in 0..header.keys {
            let key = take_bytes(&mut input, "a key")?;
            let key = std::str::from_utf8(key)
                .map_err(|_| bad("a key is not UTF-8".into()))?
                .to_owned();
            let value = take_bytes(&mut input, "a value")?.to_vec();
            entries.push((key, value));
        }
        let mut log = Vec::with_capacity(header.log_records.min(1 << 20) as usize);
        for _ in 0..header.log_records {
            let bytes = take_bytes(&mut input, "a decision-log record")?;
            log.push(tx::decode::<LogRecord>("backup log record", bytes)?);
        }
        if !input.is_empty() {
            return Err(bad(format!("{} bytes after the last record", input.len())));
        }
        Ok(Backup {
            header,
            entries,
            log,
        })
    }
}

impl Store {
    /// A consistent backup of the state, at one revision, while the store serves; with the
    /// decision log this replica holds if asked.
    pub async fn backup(&self, with_log: bool, now: Millis) -> Result<Backup, PdpError> {
        let (revision, entries) = match &self.backend {
            Backend::Sled(sled) => sled.state().await?,
            Backend::Etcd(etcd) => etcd.state(CATCH_UP).await?,
        };
        let mut log = Vec::new();
        if with_log {
            let mut after: Option<String> = None;
            loop {
                let (records, last) = self.read_log(after.as_deref(), |_| true, 4096, 4096)?;
                log.extend(records);
                match last {
                    Some(last) => after = Some(last),
                    None => break,
                }
            }
        }
        Ok(Backup {
            header: BackupHeader {
                format: BACKUP_FORMAT,
                store_format: tx::FORMAT_VERSION,
                revision,
                backend: self.backend_name().into(),
                taken_at: now,
                keys: entries.len() as u64,
                log_records: log.len() as u64,
            },
            entries,
            log,
        })
    }

    /// The header of the backup a restore into this store began and did not finish, if one
    /// did. A store holding only part of a backup must not serve: `server::open` refuses it.
    pub async fn unfinished_restore(&self) -> Result<Option<BackupHeader>, PdpError> {
        let marker = match &self.backend {
            Backend::Sled(sled) => sled.restore_marker()?,
            Backend::Etcd(etcd) => etcd.restore_marker().await?,
        };
        marker
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| PdpError::Corrupt {
                    key: "restoring".into(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Writes a backup into this store, which must hold no state yet (refused otherwise,
    /// before anything is written), or only what an unfinished restore of the same backup
    /// wrote: it resumes. A marker naming the backup is written first and removed last, so
    /// a restore cut short (a crash, a lost connection) leaves a store that refuses to serve
    /// until the restore is run again. For a stopped deployment: `anchor-pdp restore`.
    /// Returns whether it resumed an unfinished one.
    pub async fn restore(&self, backup: &Backup) -> Result<bool, PdpError> {
        let resumed = match self.unfinished_restore().await? {
            Some(header) if header == backup.header => true,
            Some(header) => {
                return Err(PdpError::FailedPrecondition(format!(
                    "an unfinished restore of another backup (of a {} store at revision {}, \
                     taken at {} ms) holds this store: run that restore again to finish it, \
                     or restore into an empty store",
                    header.backend, header.revision, header.taken_at
                )));
            }
            None => {
                let held = match &self.backend {
                    Backend::Sled(sled) => sled.state_len()?,
                    Backend::Etcd(etcd) => etcd.state_len(),
                };
                if held > 0 {
                    return Err(PdpError::FailedPrecondition(format!(
                        "the target store already holds {held} keys: restore writes only into \
                         an empty one"
                    )));
                }
                false
            }
        };
        let marker = serde_json::to_vec(&backup.header)
            .map_err(|e| PdpError::Storage(format!("cannot encode the restore marker: {e}")))?;
        match &self.backend {
            Backend::Sled(sled) => {
                sled.set_restore_marker(Some(&marker))?;
                sled.put_state(&backup.entries)?;
                // Their commit numbers are the source store's, not this one's.
                let mut log = Vec::new();
                for record in &backup.log {
                    if self.shared.segments.get(&record.id)?.is_none() {
                        log.push(LogRecord {
                            commit: 0,
                            ..record.clone()
                        });
                    }
                }
                if !log.is_empty() {
                    self.shared.segments.append_blocking(&log)?;
                }
                self.shared.segments.sync_blocking()?;
                sled.set_restore_marker(None)?;
            }
            Backend::Etcd(etcd) => {
                etcd.set_restore_marker(Some(marker)).await?;
                etcd.put_state(&backup.entries, &backup.log).await?;
                etcd.set_restore_marker(None).await?;
            }
        }
        Ok(resumed)
    }
}
