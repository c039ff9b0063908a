//! The decision log: every decision (from every entry point) and every admin action, in sled,
//! findable by decision id and filterable by merchant, session, decision, entry point and time.
//!
//! A record that goes with a state change is written by the store in that change's own
//! transaction. The rest (a LIVE allow, a refused START, a rejected request) go through a bounded queue to one writer, which appends what has queued up as one
//! batch and flushes it (group commit). In `wait` mode (the default) a caller waits until its
//! record is durable, so a full queue slows callers down instead of losing records. In `drop`
//! mode a caller that finds the queue full goes on without logging, and the drop is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;
use crate::store::Store;

/// Records written per batch at most.
const BATCH: usize = 512;
const DAY_MS: Millis = 24 * 60 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Overflow {
    /// Callers wait for room in the queue (backpressure); nothing is lost.
    Wait,
    /// Callers go on; the record is dropped and counted.
    Drop,
}

#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age_days: u32,
    pub max_records: usize,
    /// Closed sessions and enforcement events go sooner than the log when set: on etcd, whose
    /// space is small and shared, the log on each replica keeps their records.
    pub history_max_age: Option<Duration>,
}

type Entry = (LogRecord, Option<oneshot::Sender<Result<(), PdpError>>>);

pub struct DecisionLog {
    queue: mpsc::Sender<Entry>,
    overflow: Overflow,
    capacity: usize,
    dropped: AtomicU64,
    written: AtomicU64,
    /// The writer `start` spawned, and how to tell it to finish.
    writer: std::sync::Mutex<Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>>,
}

impl DecisionLog {
    /// The log and the receiving end its writer drains (see `run_writer`).
    pub fn new(capacity: usize, overflow: Overflow) -> (Arc<DecisionLog>, mpsc::Receiver<Entry>) {
        let capacity = capacity.max(1);
        let (queue, receiver) = mpsc::channel(capacity);
        (
            Arc::new(DecisionLog {
                queue,
                overflow,
                capacity,
                dropped: AtomicU64::new(0),
                written: AtomicU64::new(0),
                writer: std::sync::Mutex::new(None),
            }),
            receiver,
        )
    }

    /// The log with its writer running on the current tokio runtime, writing to `store`.
    pub fn start(store: Arc<Store>, capacity: usize, overflow: Overflow) -> Arc<DecisionLog> {
        let (log, receiver) = DecisionLog::new(capacity, overflow);
        let (close, closing) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(log.clone().run_writer(store, receiver, closing));
        if let Ok(mut writer) = log.writer.lock() {
            *writer = Some((close, task));
        }
        log
    }

    /// Writes what is queued and stops the writer `start` spawned. For shutdown, after the
    /// servers have answered everything in flight.
    pub async fn close(&self) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some((close, task)) = writer {
            let _ = close.send(true);
            if let Err(e) = task.await {
                tracing::error!(error = %e, "decision log writer failed");
            }
        }
    }

    /// A fresh, time-ordered decision id.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// Records one entry. In wait mode, returns once it is durable.
    pub async fn record(&self, record: LogRecord) -> Result<(), PdpError> {
        metrics::gauge!("anchor_pdp_decision_log_queue_depth")
            .set((self.capacity - self.queue.capacity()) as f64);
        match self.overflow {
            Overflow::Wait => {
                let (done, durable) = oneshot::channel();
                self.queue
                    .send((record, Some(done)))
                    .await
                    .map_err(|_| PdpError::Storage("the decision log writer has stopped".into()))?;
                durable.await.map_err(|_| {
                    PdpError::Storage("the decision log writer stopped before writing".into())
                })?
            }
            Overflow::Drop => {
                if self.queue.try_send((record, None)).is_err() {
                    let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(dropped, "decision log queue full: records dropped");
                    }
                }
                Ok(())
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Drains the queue into the store, a batch at a time, until `closing` turns true; then
    /// writes what is still queued and ends.
    pub async fn run_writer(
        self: Arc<Self>,
        store: Arc<Store>,
        mut receiver: mpsc::Receiver<Entry>,
        mut closing: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                received = receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    self.write(&store, &mut batch).await;
                }
                () = until_true(&mut closing) => {
                    receiver.close();
                    while receiver.recv_many(&mut batch, BATCH).await > 0 {
                        self.write(&store, &mut batch).await;
                    }
                    return;
                }
            }
        }
    }

    async fn write(&self, store: &Store, batch: &mut Vec<Entry>) {
        let (records, waiters): (Vec<LogRecord>, Vec<_>) = batch.drain(..).unzip();
        let count = records.len() as u64;
        let result = store.append_log(records).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, records = count, "decision log write failed");
        } else {
            self.written.fetch_add(count, Ordering::Relaxed);
        }
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
pub async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let set = *flag.borrow_and_update();
        if set || flag.changed().await.is_err() {
            return;
        }
    }
}

/// Applies the retention now and then (and once at start).
pub async fn run_retention(
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    retention: Retention,
    every: Duration,
) {
    loop {
        let cutoff = clock.now_ms() - Millis::from(retention.max_age_days) * DAY_MS;
        let log = store.clone();
        let pruned =
            tokio::task::spawn_blocking(move || log.prune_log(cutoff, retention.max_records)).await;
        match pruned {
            Ok(Ok((deleted, kept))) if deleted > 0 => {
                tracing::info!(deleted, kept, "decision log retention applied");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "decision log retention failed"),
            Err(e) => tracing::error!(error = %e, "decision log retention task failed"),
        }
        // Closed sessions and enforcement events are kept as long as the log.
        let history_cutoff = match retention.history_max_age {
            Some(age) => cutoff.max(clock.now_ms() - age.as_millis() as Millis),
            None => cutoff,
        };
        match store.prune_history(history_cutoff).await {
            Ok((sessions, events)) if sessions + events > 0 => {
                tracing::info!(sessions, events, "session and event retention applied");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "session retention failed"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, at: Millis) -> LogRecord {
        LogRecord {
            id: id.into(),
            at,
            action: "authorize".into(),
            caller: "test".into(),
            entry_point: "grpc".into(),
            gateway_id: String::new(),
            merchant_id: "m1".into(),
            session_id: String::new(),
            request: serde_json::Value::Null,
            allowed: Some(true),
            rule_ids: vec![],
            warning_rule_ids: vec![],
            enforcement: "NONE".into(),
            policy_version: "v".into(),
            outcome: "ok".into(),
            explanation: None,
            penalty_applied: None,
            warning_issued: false,
            cause_id: String::new(),
            change: String::new(),
            commit: 0,
        }
    }

    #[tokio::test]
    async fn drop_mode_counts_what_a_full_queue_refuses() {
        let (log, mut receiver) = DecisionLog::new(2, Overflow::Drop);
        for i in 0..5 {
            log.record(record(&format!("r{i}"), i))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(log.dropped(), 3);
        let mut queued = Vec::new();
        receiver.recv_many(&mut queued, 10).await;
        assert_eq!(queued.len(), 2);
    }

    #[tokio::test]
    async fn wait_mode_waits_for_room_then_for_durability() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            Arc::new(Store::open(&temp.path().join("data")).unwrap_or_else(|e| panic!("{e}")));
        let (log, receiver) = DecisionLog::new(1, Overflow::Wait);
        // No writer yet: the second record cannot even queue.
        let first = tokio::spawn({
            let log = log.clone();
            async move { log.record(record("a", 1)).await }
        });
        let second = tokio::spawn({
            let log = log.clone();
            async move { log.record(record("b", 2)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_finished() && !second.is_finished());
        assert_eq!(log.dropped(), 0);
        let (_keep_open, closing) = tokio::sync::watch::channel(false);
        tokio::spawn(log.clone().run_writer(store.clone(), receiver, closing));
        for task in [first, second] {
            task.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(store.log_record("a").ok().flatten().is_some());
        assert!(store.log_record("b").ok().flatten().is_some());
    }

    #[test]
    fn retention_drops_whole_segments_by_age_then_by_count() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Small segments: each batch below fills one.
        let store = Store::open_with(
            &temp.path().join("data"),
            4096,
            crate::store::DiskOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        // Six segments of 20 records, at times 0, 10, ... 50.
        for segment in 0..6 {
            let records: Vec<_> = (0..20)
                .map(|i| record(&format!("id-{segment}-{i}"), segment * 10))
                .collect();
            runtime
                .block_on(store.append_log(records))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(store.log_len(), 120);
        assert_eq!(store.log_size().1, 6);
        // Records older than 20: the first two segments, whole.
        let (deleted, kept) = store.prune_log(20, 1000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((deleted, kept), (40, 80));
        // At most 50 kept: whole segments go until that holds.
        let (deleted, kept) = store.prune_log(0, 50).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((deleted, kept), (40, 40));
        assert_eq!(store.log_size().1, 2);
        assert!(store.log_record("id-3-19").ok().flatten().is_none());
        assert!(store.log_record("id-4-0").ok().flatten().is_some());
        // Everything expired: the segment being written is sealed and goes too.
        let (deleted, kept) = store
            .prune_log(1000, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((deleted, kept), (40, 0));
    }
}
