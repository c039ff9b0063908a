//! The decision log's own operations: appending records that go with no state change, reading
//! and pruning. Records that go with a change are written by that change's transaction (see
//! the outbox in `mod.rs`); all of them end up in the segments (`segments.rs`).

use super::Store;
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;

impl Store {
    /// Appends decision-log records in one batch and waits until they are durable.
    pub async fn append_log(&self, records: Vec<LogRecord>) -> Result<(), PdpError> {
        self.shared.room_to_write()?;
        self.shared
            .segments
            .append(records)
            .await
            .map_err(|e| self.shared.write_failed(e))
    }

    /// Decision-log records in the order they were logged, starting after the record `after`,
    /// that `keep` accepts; stops after `limit` matches or `scan_limit` records looked at.
    /// Returns them and the id of the last record looked at.
    pub fn read_log(
        &self,
        after: Option<&str>,
        keep: impl Fn(&LogRecord) -> bool,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<LogRecord>, Option<String>), PdpError> {
        self.shared.segments.read(after, keep, limit, scan_limit)
    }

    /// The latest `limit` kept records in `during` that `keep` accepts, newest first, and
    /// whether the search stopped after `scan_limit` records. `contains` are texts every
    /// record `keep` accepts holds in a string field; they let most records be passed over
    /// undecoded (see `SegmentLog::newest`).
    pub fn newest_log(
        &self,
        during: std::ops::RangeInclusive<Millis>,
        contains: &[&str],
        keep: impl Fn(&LogRecord) -> bool,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<LogRecord>, bool), PdpError> {
        self.shared
            .segments
            .newest(during, contains, keep, limit, scan_limit)
    }

    pub fn log_record(&self, id: &str) -> Result<Option<LogRecord>, PdpError> {
        self.shared.segments.get(id)
    }

    /// Deletes the segments holding only records older than `older_than`, then the oldest
    /// while more than `max_records` are kept. Returns (deleted, kept).
    pub fn prune_log(
        &self,
        older_than: Millis,
        max_records: usize,
    ) -> Result<(u64, u64), PdpError> {
        self.shared.segments.prune(older_than, max_records)
    }

    /// Records kept: summed from each segment's summary, never by reading them.
    pub fn log_len(&self) -> u64 {
        self.shared.segments.records()
    }

    /// The decision log's bytes on disk, and its segment files.
    pub fn log_size(&self) -> (u64, usize) {
        self.shared.segments.size()
    }
}
