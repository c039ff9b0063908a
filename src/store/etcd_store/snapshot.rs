//! Loading a replica's mirror from a snapshot of every key under the prefix at one revision.
//!
//! etcd walks its key index from a range's start to the range's end on every request, whatever
//! the limit, to count the keys (etcd-io/etcd#11057; 3.4 and later). Pages that all end at the
//! prefix's end therefore cost the keys left after each page: quadratic in the keys under the
//! prefix, 2.5 s at 73,000 keys and over a minute past 300,000. The pages here end at the
//! next sibling of a prefix of their start key, a window that narrows while it holds more than
//! a page and widens while it holds little, so each request walks about a page of keys.

use std::time::Instant;

use etcd_client::GetOptions;

use super::watch::is_state_key;
use super::{
    EtcdBackend, Mirror, POLICY_KEY, SNAPSHOT_PAGE, Shared, decode, decode_counter, prefix_end,
    view_change,
};
use crate::domain::LogRecord;
use crate::error::PdpError;
use crate::store::tx::EVENT_COUNTER_KEY;

impl EtcdBackend {
    /// Every key under the prefix, read at one revision, replaces the mirror and the view.
    pub(super) async fn load_snapshot(&self, shared: &Shared) -> Result<(), PdpError> {
        let started = Instant::now();
        let mut windows = Windows::new(self.options.prefix.as_bytes());
        let mut at = 0;
        let mut requests = 0;
        let mut mirror = Mirror::default();
        let mut log_records = Vec::new();
        let mut policy = None;
        while let Some((start, end)) = windows.next_range() {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(SNAPSHOT_PAGE);
            if at > 0 {
                options = options.with_revision(at);
            }
            let page = self
                .request("reading the snapshot", |mut kv| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await?;
            requests += 1;
            if at == 0 {
                at = page.header().map_or(0, |h| h.revision());
            }
            for item in page.kvs() {
                let Some(key) = self.unprefixed(item.key()) else {
                    continue;
                };
                if let Some(id) = key.strip_prefix("log/") {
                    log_records.push(decode::<LogRecord>(id, item.value())?);
                } else if key == POLICY_KEY {
                    policy = Some((item.value().to_vec(), item.mod_revision()));
                } else if is_state_key(key) {
                    mirror
                        .kv
                        .insert(key.to_owned(), (item.value().to_vec(), item.mod_revision()));
                }
            }
            let first = page.kvs().first().map(|kv| kv.key());
            let more_after = match page.kvs().last() {
                Some(last) if page.more() => Some(last.key()),
                None if page.more() => {
                    return Err(super::etcd_error(
                        "reading the snapshot",
                        "a page said more keys follow but held none",
                    ));
                }
                _ => None,
            };
            windows.advance(end, first, more_after, page.count());
        }
        mirror.revision = at;
        let read_ms = started.elapsed().as_millis() as u64;
        let mut registrations = Vec::new();
        let mut accounts = Vec::new();
        let mut live = Vec::new();
        for (key, (value, _)) in &mirror.kv {
            match view_change(key, value)? {
                Some(crate::store::tx::ViewChange::Registration(r)) => registrations.push(r),
                Some(crate::store::tx::ViewChange::Account(a)) => accounts.push(a),
                Some(crate::store::tx::ViewChange::Session(s))
                    if s.state == crate::domain::SessionState::Active =>
                {
                    live.push(s)
                }
                _ => {}
            }
        }
        let last_event = match mirror.kv.get(EVENT_COUNTER_KEY) {
            Some((bytes, _)) => decode_counter(EVENT_COUNTER_KEY, bytes)?,
            None => 0,
        };
        {
            let mut current = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            shared.view.reset(registrations, accounts, live);
            *current = mirror;
        }
        self.revision.send_replace(at);
        self.settle(at);
        shared.events_durable.send_replace(last_event);
        if policy.is_some() {
            self.policy.send_replace(policy);
        }
        let view_ms = started.elapsed().as_millis() as u64 - read_ms;
        let (state_keys, log_keys) = (self.mirror().kv.len(), log_records.len());
        self.append_missing(shared, log_records).await;
        tracing::info!(
            revision = at,
            state_keys,
            requests,
            log_keys,
            read_ms,
            view_ms,
            total_ms = started.elapsed().as_millis() as u64,
            endpoints = %self.options.endpoints.join(","),
            "etcd: view loaded from snapshot"
        );
        Ok(())
    }

    /// Appends to the local decision log the records it does not have yet.
    pub(super) async fn append_missing(&self, shared: &Shared, records: Vec<LogRecord>) {
        let mut missing = Vec::new();
        for record in records {
            match shared.segments.get(&record.id) {
                Ok(Some(_)) => {}
                _ => missing.push(record),
            }
        }
        if missing.is_empty() {
            return;
        }
        if let Err(e) = shared.segments.append(missing).await {
            let _ = shared.write_failed(e);
        }
    }
}

/// The ranges a snapshot is read in: from `start`, up to the next key that does not share
/// `start`'s first `depth` bytes (or the prefix's end).
#[derive(Debug)]
struct Windows {
    start: Vec<u8>,
    end: Vec<u8>,
    depth: usize,
    min_depth: usize,
}

impl Windows {
    fn new(prefix: &[u8]) -> Windows {
        Windows {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
            depth: prefix.len(),
            min_depth: prefix.len(),
        }
    }

    /// The next request's range, `[start, end)`; `None` once the prefix has been read.
    fn next_range(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        if self.start >= self.end {
            return None;
        }
        let shared = &self.start[..self.depth.min(self.start.len())];
        let end = match prefix_end(shared) {
            end if end > self.start && end < self.end => end,
            _ => self.end.clone(),
        };
        Some((self.start.clone(), end))
    }

    /// Moves past a request over a range ending at `end` that returned a page from `first`
    /// and `count` keys in all: `more_after` is its last key if it left some unread.
    fn advance(
        &mut self,
        end: Vec<u8>,
        first: Option<&[u8]>,
        more_after: Option<&[u8]>,
        count: i64,
    ) {
        match (first, more_after) {
            (Some(first), Some(last)) => {
                // The page's keys share their first `common` bytes and part at the next one:
                // keys that share one more byte with the last are fewer than a page, likely.
                let common = first.iter().zip(last).take_while(|(a, b)| a == b).count();
                self.start = last.to_vec();
                self.start.push(0);
                self.depth = (self.depth + 1).max(common + 1);
            }
            _ => {
                self.start = end;
                if count < SNAPSHOT_PAGE / 4 && self.depth > self.min_depth {
                    self.depth -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Reads `keys` as etcd would answer the windows, and returns what was read and the
    /// number of keys etcd's index walked.
    fn read(prefix: &str, keys: &BTreeSet<Vec<u8>>) -> (Vec<Vec<u8>>, usize) {
        let mut windows = Windows::new(prefix.as_bytes());
        let (mut read, mut walked) = (Vec::new(), 0);
        while let Some((start, end)) = windows.next_range() {
            let in_range: Vec<&Vec<u8>> = keys.range(start..end.clone()).collect();
            walked += in_range.len();
            let page: Vec<Vec<u8>> = in_range
                .iter()
                .take(SNAPSHOT_PAGE as usize)
                .map(|k| k.to_vec())
                .collect();
            let more = in_range.len() > page.len();
            read.extend(page.iter().cloned());
            windows.advance(
                end,
                page.first().map(Vec::as_slice),
                page.last().map(Vec::as_slice).filter(|_| more),
                in_range.len() as i64,
            );
        }
        (read, walked)
    }

    fn keys(prefix: &str, n: usize) -> BTreeSet<Vec<u8>> {
        let mut keys = BTreeSet::new();
        for i in 0..n {
            // The shapes the store writes: time-ordered ids, zero-padded counters, names.
            keys.insert(format!("{prefix}sess/0192a{:011x}-7000-8000", i * 7919).into_bytes());
            keys.insert(format!("{prefix}evt/{i:020}").into_bytes());
            keys.insert(format!("{prefix}req/gateway-{}/{i}", i % 3).into_bytes());
        }
        keys.insert(format!("{prefix}evtseq").into_bytes());
        keys
    }

    #[test]
    fn every_key_is_read_once_in_order() {
        for n in [0, 1, 999, 1000, 1001, 12_345] {
            let keys = keys("/p/", n);
            let (read, _) = read("/p/", &keys);
            assert_eq!(
                read,
                keys.iter().cloned().collect::<Vec<_>>(),
                "{n} keys each"
            );
        }
    }

    #[test]
    fn keys_beside_the_prefix_are_not_read() {
        let mut keys = keys("/p/", 2000);
        keys.insert(b"/p".to_vec());
        keys.insert(b"/p0".to_vec());
        keys.insert(b"/o/evt/1".to_vec());
        let (read, _) = read("/p/", &keys);
        assert_eq!(read.len(), keys.len() - 3);
        assert!(read.iter().all(|k| k.starts_with(b"/p/")));
    }

    #[test]
    fn etcd_walks_a_bounded_number_of_keys_per_key_read() {
        let keys = keys("/p/", 100_000);
        let (read, walked) = read("/p/", &keys);
        assert_eq!(read.len(), keys.len());
        // Pages to the prefix's end walk keys / (2 × page) per key read: 150 here. Windows
        // walk about 8 (each key is walked by the requests that narrow and widen around it).
        let per_key = walked as f64 / keys.len() as f64;
        assert!(
            per_key < 12.0,
            "{walked} keys walked for {} read",
            keys.len()
        );
    }
}
