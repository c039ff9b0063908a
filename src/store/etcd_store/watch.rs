//! The read side of a replica after its snapshot (`snapshot.rs`): the watch that keeps the
//! mirror current, in revision order, feeding the view as it goes.
//!
//! A watch that falls behind the quorum reads (its member paused, say) is moved to another
//! member. The watch is not asked for progress notifications: etcd 3.4 answers such a request
//! with the current revision even while the watch is still catching up, ahead of events it has
//! not delivered yet (fixed in later etcd releases); a view that took that revision would call
//! itself current without the writes before it. The heartbeat writes a nudge key under the
//! prefix instead, whose event the watch delivers in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};

use super::{EtcdBackend, POLICY_KEY, Shared, decode, prefix_end};
use crate::domain::LogRecord;
use crate::store::tx::Writes;

/// Keys under the prefix that are not state: decision records travelling to every replica's
/// log, and the markers that tell a retried commit whether its first attempt landed.
pub(super) fn is_state_key(key: &str) -> bool {
    !(key.starts_with("log/")
        || key.starts_with(super::MARKER_PREFIX)
        || key.starts_with(super::NUDGE_PREFIX)
        || key == super::RESTORING_KEY
        || key == POLICY_KEY)
}

impl EtcdBackend {
    /// Follows every change under the prefix, from the mirror's revision on, for as long as
    /// the process runs; reconnects (to another member when the last one stalled), and
    /// reloads the snapshot when the revision it needs was compacted away.
    pub(super) async fn watch(self: Arc<Self>, shared: Arc<Shared>) {
        let mut backoff = Duration::from_millis(100);
        let mut member = self.members.pick();
        loop {
            self.watch_member.store(member, Ordering::Release);
            let from = self.mirror().revision + 1;
            let options = WatchOptions::new()
                .with_range(prefix_end(self.options.prefix.as_bytes()))
                .with_start_revision(from)
                .with_progress_notify();
            let stream = match self.members.client(member).await {
                Ok(client) => {
                    let mut watch = client.watch_client();
                    tokio::time::timeout(
                        super::ATTEMPT_TIMEOUT,
                        watch.watch(self.options.prefix.clone(), Some(options)),
                    )
                    .await
                    .map_err(|_| "no answer".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                }
                Err(e) => Err(e.to_string()),
            };
            let mut responses = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    self.watch_lost(&format!(
                        "cannot watch through {}: {e}",
                        self.members.url(member)
                    ));
                    self.members.failed(member);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    member = self.members.pick();
                    continue;
                }
            };
            *self.watch_started.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            let stalled = loop {
                let response = tokio::select! {
                    response = responses.message() => response,
                    () = self.watch_stalled.notified() => break true,
                };
                match response {
                    Ok(Some(response)) => {
                        if response.compact_revision() > 0 {
                            tracing::warn!(
                                compacted = response.compact_revision(),
                                "etcd: the watch's revision was compacted; reloading the snapshot"
                            );
                            if let Err(e) = self.load_snapshot(&shared).await {
                                self.watch_lost(&format!("reloading the snapshot: {e}"));
                            }
                            break false;
                        }
                        if response.canceled() {
                            self.watch_lost(&format!(
                                "watch canceled: {}",
                                response.cancel_reason()
                            ));
                            break false;
                        }
                        if response.created() {
                            self.health().watch_connected = true;
                            backoff = Duration::from_millis(100);
                        }
                        // A creation's header is etcd's revision now, not how far the watch
                        // has come; a periodic progress notification's (sent only to a watch
                        // that has caught up) is both.
                        let progress = if response.created() {
                            0
                        } else {
                            response.header().map_or(0, |h| h.revision())
                        };
                        self.apply(&shared, response.events(), progress).await;
                    }
                    Ok(None) => {
                        self.watch_lost("the watch stream ended");
                        break false;
                    }
                    Err(e) => {
                        self.watch_lost(&format!("the watch failed: {e}"));
                        break false;
                    }
                }
            };
            if stalled {
                let next = self.members.pick_other(member);
                tracing::warn!(
                    from = self.members.url(member),
                    to = self.members.url(next),
                    revision = self.mirror().revision,
                    "etcd: the watch fell behind the quorum; moving it to another member"
                );
                metrics::counter!("anchor_pdp_etcd_watch_moves_total").increment(1);
                self.members.failed(member);
                self.watch_lost("the watch fell behind the quorum");
                member = next;
                continue;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            member = self.members.pick();
        }
    }

    fn watch_lost(&self, why: &str) {
        let mut health = self.health();
        if health.watch_connected {
            tracing::warn!(reason = why, "etcd: watch lost; reconnecting");
        }
        health.watch_connected = false;
    }

    /// Applies one watch response: mirror and view in revision order, then the revision, the
    /// events it made durable, the policy it published and the records it logged.
    async fn apply(&self, shared: &Shared, events: &[etcd_client::Event], header: i64) {
        let mut changes: Writes = Vec::new();
        let mut logged = Vec::new();
        let mut policy = None;
        let revision = {
            let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            for event in events {
                let Some(kv) = event.kv() else { continue };
                let Some(key) = self.unprefixed(kv.key()) else {
                    continue;
                };
                mirror.revision = mirror.revision.max(kv.mod_revision());
                let put = event.event_type() == EventType::Put;
                if let Some(id) = key.strip_prefix("log/") {
                    if put {
                        match decode::<LogRecord>(id, kv.value()) {
                            Ok(record) => logged.push(record),
                            Err(e) => tracing::error!(%e, "etcd: undecodable log record"),
                        }
                    }
                } else if key == POLICY_KEY {
                    if put {
                        policy = Some((kv.value().to_vec(), kv.mod_revision()));
                    }
                } else if !is_state_key(key) {
                } else if put {
                    mirror
                        .kv
                        .insert(key.to_owned(), (kv.value().to_vec(), kv.mod_revision()));
                    changes.push((key.to_owned(), Some(kv.value().to_vec())));
                } else {
                    mirror.kv.remove(key);
                    changes.push((key.to_owned(), None));
                }
            }
            if events.is_empty() {
                // A progress notification: nothing under the prefix changed up to `header`.
                mirror.revision = mirror.revision.max(header);
            }
            // Under the mirror's lock, so the view takes changes in the mirror's order.
            shared.apply_to_view(&changes);
            mirror.revision
        };
        self.revision.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
        self.settle(revision);
        shared.publish_events(&changes);
        if policy.is_some() {
            self.policy.send_replace(policy);
        }
        self.append_missing(shared, logged).await;
    }
}
