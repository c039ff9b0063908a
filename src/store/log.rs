//! The decision log's own operations: appending records that go with no state change, reading
//! and pruning. Records that go with a change are written by that change's transaction.

use std::sync::atomic::Ordering;

use super::{Store, decode, encode, storage};
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;

impl Store {
    /// Appends decision-log records in one batch and waits until they are durable.
    pub async fn append_log(&self, records: &[LogRecord]) -> Result<(), PdpError> {
        let db = self.db()?;
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        for record in records {
            let encoded = encode(&record.id, record)?;
            bytes += encoded.len();
            batch.insert(record.id.as_bytes(), encoded);
        }
        metrics::counter!("anchor_pdp_decision_log_bytes_total").increment(bytes as u64);
        db.log
            .apply_batch(batch)
            .map_err(|e| self.write_failed(storage(e)))?;
        self.log_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.durable(&db).await
    }

    /// Decision-log records in id (time) order, starting after `after`, that `keep` accepts;
    /// stops after `limit` matches or `scan_limit` records looked at.
    pub fn read_log(
        &self,
        after: Option<&str>,
        keep: impl Fn(&LogRecord) -> bool,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<LogRecord>, Option<String>), PdpError> {
        let start = after.map_or_else(Vec::new, |a| {
            let mut key = a.as_bytes().to_vec();
            key.push(0);
            key
        });
        let mut out = Vec::new();
        let mut last = None;
        for (scanned, item) in self.db()?.log.range(start..).enumerate() {
            if scanned >= scan_limit || out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(storage)?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let record: LogRecord = decode(&key, &value)?;
            last = Some(key);
            if keep(&record) {
                out.push(record);
            }
        }
        Ok((out, last))
    }

    pub fn log_record(&self, id: &str) -> Result<Option<LogRecord>, PdpError> {
        match self.db()?.log.get(id.as_bytes()).map_err(storage)? {
            Some(bytes) => decode(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes records older than `older_than`, then the oldest beyond `max_records`.
    /// Returns (deleted, kept).
    pub fn prune_log(
        &self,
        older_than: Millis,
        max_records: usize,
    ) -> Result<(usize, usize), PdpError> {
        let log = self.db()?.log.clone();
        let mut deleted = 0;
        for item in log.iter() {
            let (key, value) = item.map_err(storage)?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let record: LogRecord = decode(&name, &value)?;
            if record.at >= older_than {
                break;
            }
            if log
                .remove(&key)
                .map_err(|e| self.write_failed(storage(e)))?
                .is_some()
            {
                self.log_records.fetch_sub(1, Ordering::Relaxed);
            }
            deleted += 1;
        }
        while self.log_len() > max_records {
            match log.pop_min().map_err(|e| self.write_failed(storage(e)))? {
                Some(_) => {
                    self.log_records.fetch_sub(1, Ordering::Relaxed);
                    deleted += 1;
                }
                None => break,
            }
        }
        Ok((deleted, self.log_len()))
    }

    /// Records kept now: counted as they are written and pruned, never by walking the tree.
    pub fn log_len(&self) -> usize {
        usize::try_from(self.log_records.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }
}
