//! Whether a replica may answer: per-member heartbeats (quorum reads), the assessment that
//! turns their answers into health (no quorum, a stale view, a stalled watch), and catching
//! the view up before a decision or a sweep. A view is *current* once it has reached the
//! revision of a quorum read asked at a known moment; its age is the time since then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    CATCH_UP_WAIT, EtcdBackend, FRESH, HEARTBEAT, HEARTBEAT_TIMEOUT, NUDGE_AFTER, NUDGE_PREFIX,
    QUORUM_GRACE, Shared, WATCH_STALL, within,
};
use crate::error::PdpError;
use crate::store::tx::EVENT_COUNTER_KEY;
use etcd_client::GetOptions;

impl EtcdBackend {
    /// A quorum read (or nudge) asked at `asked` answered `revision`: the view is current as of
    /// `asked` once it reaches it.
    pub(super) fn probe(&self, asked: Instant, revision: i64) {
        let mut health = self.health();
        health.last_quorum = health.last_quorum.max(asked);
        health.probes.push_back((asked, revision));
        // Answers come out of order (members, nudges): keep them sorted by when they were
        // asked, and few.
        health
            .probes
            .make_contiguous()
            .sort_unstable_by_key(|(asked, _)| *asked);
        while health.probes.len() > 64 {
            health.probes.pop_front();
        }
    }

    /// The view has reached `revision`: every quorum read up to it has been caught up with.
    pub(super) fn settle(&self, revision: i64) {
        let mut health = self.health();
        while let Some(&(asked, probe)) = health.probes.front() {
            if probe > revision {
                break;
            }
            health.last_current = health.last_current.max(asked);
            health.probes.pop_front();
        }
    }

    /// Asks member `member` for a quorum read every `HEARTBEAT`. Each member has a heartbeat
    /// of its own, so one that hangs delays only its own.
    pub(super) async fn heartbeat(self: Arc<Self>, member: usize) {
        let key = self.key(EVENT_COUNTER_KEY);
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let asked = Instant::now();
            let read = match self.members.client(member).await {
                Ok(client) => {
                    let mut kv = client.kv_client();
                    within(
                        HEARTBEAT_TIMEOUT,
                        "quorum read",
                        kv.get(key.clone(), Some(GetOptions::new().with_count_only())),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match read {
                Ok(response) => {
                    self.members.answered(member, asked);
                    let revision = response.header().map_or(0, |h| h.revision());
                    self.probe(asked, revision);
                }
                Err(e) => {
                    tracing::debug!(error = %e, member = self.members.url(member), "etcd: heartbeat failed");
                    self.members.failed(member);
                }
            }
            // The mirror may be there already (nothing changed since).
            self.settle(self.mirror().revision);
        }
    }

    /// Every `HEARTBEAT`: asks the watch for progress, moves a watch that fell behind, and
    /// notes when the replica stops or starts being current (health, metrics and logs).
    pub(super) async fn assess(self: Arc<Self>, shared: Arc<Shared>) {
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let watch_age = self
                .watch_started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            let (lost, back) = {
                let mut health = self.health();
                let behind = health
                    .probes
                    .front()
                    .is_some_and(|(asked, _)| asked.elapsed() > WATCH_STALL);
                if behind && watch_age > WATCH_STALL {
                    self.watch_stalled.notify_one();
                }
                let waiting = health
                    .probes
                    .front()
                    .is_some_and(|(asked, _)| asked.elapsed() > NUDGE_AFTER);
                if waiting {
                    let backend = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = backend.nudge().await {
                            tracing::debug!(error = %e, "etcd: nudge failed");
                        }
                    });
                }
                let quorum_age = health.last_quorum.elapsed();
                let view_age = health.last_current.elapsed();
                health.no_quorum = (quorum_age > QUORUM_GRACE).then(|| {
                    format!(
                        "no etcd quorum: no member answered a linearizable read for {} ms",
                        quorum_age.as_millis()
                    )
                });
                let problem = health.no_quorum.clone().or_else(|| {
                    (view_age > self.options.max_staleness).then(|| {
                        format!(
                            "etcd: this replica's view has not caught up with the cluster for \
                             {} ms (its watch is behind)",
                            view_age.as_millis()
                        )
                    })
                });
                let lost = problem.is_some() && health.problem.is_none();
                let back = problem.is_none() && health.problem.is_some();
                let was = std::mem::replace(&mut health.problem, problem.clone());
                metrics::gauge!("anchor_pdp_etcd_view_age_seconds").set(view_age.as_secs_f64());
                (
                    lost.then(|| problem.unwrap_or_default()),
                    back.then(|| was.unwrap_or_default()),
                )
            };
            if let Some(why) = lost {
                tracing::error!(
                    reason = %why,
                    max_staleness_ms = self.options.max_staleness.as_millis() as u64,
                    "etcd: not current: refusing new broadcasts and writes while there is no \
                     quorum; LIVE re-checks answer from the view until it is too stale"
                );
                metrics::gauge!("anchor_pdp_etcd_current").set(0.0);
                let _ = shared.write_failed(PdpError::Storage(why));
            }
            if let Some(was) = back {
                tracing::info!(was = %was, "etcd: current again");
                metrics::gauge!("anchor_pdp_etcd_current").set(1.0);
                shared.write_failure.send_replace(None);
            }
        }
    }

    /// Why writes are refused now, if they are.
    pub fn write_refusal(&self) -> Option<String> {
        self.health().no_quorum.clone()
    }

    /// Why the replica is not serving now, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.health().problem.clone()
    }

    /// Why the view may not answer now: it was last known current longer ago than
    /// `max_staleness`.
    pub fn read_refusal(&self) -> Option<String> {
        let age = self.health().last_current.elapsed();
        (age > self.options.max_staleness).then(|| {
            format!(
                "this replica's view was last known current {:.1} s ago (more than the {:.1} s \
                 it may answer for): failing closed",
                age.as_secs_f64(),
                self.options.max_staleness.as_secs_f64()
            )
        })
    }

    /// Writes this replica's nudge key under the prefix: its revision is above every commit
    /// made before, on any replica, and its event reaches the view in order, so once the view
    /// has it the view has everything before it. (A quorum read's revision alone may count
    /// writes outside the prefix, which the watch never delivers.) At most one in flight, and
    /// one per `NUDGE_AFTER` unless `now` is asked. Returns the nudge's revision.
    pub(super) async fn nudge(&self) -> Result<u64, PdpError> {
        {
            let mut nudged = self.nudged.lock().unwrap_or_else(|p| p.into_inner());
            if nudged.is_some_and(|at| at.elapsed() < NUDGE_AFTER) {
                return Ok(0);
            }
            *nudged = Some(Instant::now());
        }
        self.write_nudge().await
    }

    pub(super) async fn write_nudge(&self) -> Result<u64, PdpError> {
        let asked = Instant::now();
        let key = self.key(&format!("{NUDGE_PREFIX}{}", self.options.replica));
        let put = self
            .request("nudging the watch", |mut kv| {
                let key = key.clone();
                async move { kv.put(key, Vec::new(), None).await }
            })
            .await?;
        let revision = put.header().map_or(0, |h| h.revision());
        self.probe(asked, revision);
        Ok(revision.max(0) as u64)
    }

    /// Brings the view up to everything committed before this call, on any replica. Returns
    /// the revision reached.
    pub async fn catch_up(&self, within: Duration) -> Result<u64, PdpError> {
        let asked = Instant::now();
        // The nudge's own request would ride out an election (`REQUEST_TIMEOUT`); a caller
        // about to decide has only `within`.
        let revision = tokio::time::timeout(within, self.write_nudge())
            .await
            .map_err(|_| {
                PdpError::Storage(format!(
                    "etcd: no member took this replica's nudge within {} ms",
                    within.as_millis()
                ))
            })??;
        let remaining = within.saturating_sub(asked.elapsed());
        if !self.wait_for(revision, remaining).await {
            return Err(PdpError::Storage(format!(
                "etcd: this replica's view is at revision {} and did not reach the cluster's \
                 {revision} within {} ms",
                self.revision(),
                within.as_millis()
            )));
        }
        let mut health = self.health();
        health.last_current = health.last_current.max(asked);
        Ok(revision)
    }

    /// Before a decision: a view last known current more than `FRESH` ago (a paused process,
    /// a stalled watch) catches up first. One catch-up at a time; if it fails, the view still
    /// answers until `max_staleness`, and later decisions do not wait on it for `FRESH`.
    pub async fn ensure_current(&self) -> Result<(), PdpError> {
        if self.health().last_current.elapsed() <= FRESH {
            return Ok(());
        }
        let _one = self.catching_up.lock().await;
        let (age, failed_recently) = {
            let health = self.health();
            (
                health.last_current.elapsed(),
                health
                    .catch_up_failed
                    .is_some_and(|at| at.elapsed() < FRESH),
            )
        };
        if age <= FRESH {
            return Ok(());
        }
        if !failed_recently {
            match self.catch_up(CATCH_UP_WAIT).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: the view could not catch up before a decision");
                    self.health().catch_up_failed = Some(Instant::now());
                }
            }
        }
        match self.read_refusal() {
            Some(why) => Err(PdpError::Storage(why)),
            None => Ok(()),
        }
    }
}
