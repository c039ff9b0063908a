//! One flush for every writer waiting at the time, and every waiter woken at once when it ends.
//!
//! Writers take a ticket after writing; a ticket is durable once a flush that began after it
//! has ended. The first waiter to find no flush running runs one (covering every ticket taken
//! by then); the others wait for its end, which wakes them all together. (A lock that each
//! waiter takes in turn, as before, woke them one after another: 64 callers made a convoy of
//! 64 hand-offs per flush, the largest cost of a durable write in the profile.)

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::PdpError;

pub struct GroupSync {
    /// Every ticket up to this one is durable; a change (or a failed flush) wakes the waiters.
    done: tokio::sync::watch::Sender<u64>,
    flushing: AtomicBool,
}

/// A blocking flush, and the ticket it covers once it has succeeded.
pub type Flush = (u64, Box<dyn FnOnce() -> Result<(), PdpError> + Send>);

/// Held by the waiter running a flush: whatever becomes of it (it may be cancelled), the next
/// waiter can take over.
struct Flushing<'a>(&'a GroupSync);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        self.0.flushing.store(false, Ordering::Release);
        self.0.done.send_modify(|_| {});
    }
}

impl Default for GroupSync {
    fn default() -> Self {
        GroupSync {
            done: tokio::sync::watch::Sender::new(0),
            flushing: AtomicBool::new(false),
        }
    }
}

impl GroupSync {
    /// Notes that everything up to `ticket` is durable (a flush made elsewhere, blocking).
    pub fn covered(&self, ticket: u64) {
        self.done.send_if_modified(|done| {
            let before = *done;
            *done = before.max(ticket);
            *done != before
        });
    }

    /// Returns once `ticket` is durable. `flush` is asked, when this waiter runs the flush, what
    /// to run and what it covers.
    pub async fn until(&self, ticket: u64, flush: impl Fn() -> Flush) -> Result<(), PdpError> {
        let mut done = self.done.subscribe();
        loop {
            if *done.borrow_and_update() >= ticket {
                return Ok(());
            }
            if self
                .flushing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _flushing = Flushing(self);
                if *self.done.borrow() >= ticket {
                    return Ok(());
                }
                let (covers, work) = flush();
                tokio::task::spawn_blocking(work)
                    .await
                    .map_err(|e| PdpError::Storage(format!("flush task failed: {e}")))??;
                self.covered(covers);
                return Ok(());
            }
            if done.changed().await.is_err() {
                return Err(PdpError::Storage("the store is closing".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_returns_after_a_flush_that_covers_it_and_flushes_are_shared() {
        let sync = Arc::new(GroupSync::default());
        let (requested, flushes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut waiters = Vec::new();
        for _ in 0..200 {
            let (sync, requested, flushes) = (sync.clone(), requested.clone(), flushes.clone());
            waiters.push(tokio::spawn(async move {
                let ticket = requested.fetch_add(1, Ordering::SeqCst) + 1;
                sync.until(ticket, || {
                    let covers = requested.load(Ordering::SeqCst);
                    let flushes = flushes.clone();
                    let work: Box<dyn FnOnce() -> Result<(), PdpError> + Send> =
                        Box::new(move || {
                            flushes.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            Ok(())
                        });
                    (covers, work)
                })
                .await
                .map(|()| ticket)
            }));
        }
        for waiter in waiters {
            let ticket = waiter.await.expect("join").expect("durable");
            assert!(*sync.done.borrow() >= ticket);
        }
        let flushes = flushes.load(Ordering::SeqCst);
        assert!(
            (1..200).contains(&flushes),
            "{flushes} flushes for 200 writers"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_flusher_hands_over_and_a_failed_flush_is_each_waiters_error() {
        let sync = Arc::new(GroupSync::default());
        // A flusher cancelled mid-flush: the next waiter flushes itself.
        let slow = {
            let sync = sync.clone();
            tokio::spawn(async move {
                sync.until(1, || {
                    let work: Box<dyn FnOnce() -> Result<(), PdpError> + Send> = Box::new(|| {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        Ok(())
                    });
                    (1, work)
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        slow.abort();
        let quick = || -> Flush { (2, Box::new(|| Ok(()))) };
        tokio::time::timeout(std::time::Duration::from_secs(2), sync.until(2, quick))
            .await
            .expect("not stuck behind the cancelled flusher")
            .expect("durable");
        let failing = || -> Flush { (3, Box::new(|| Err(PdpError::Storage("disk".into())))) };
        let failed = sync.until(3, failing).await;
        assert!(matches!(failed, Err(PdpError::Storage(e)) if e == "disk"));
        assert_eq!(*sync.done.borrow(), 2, "a failed flush covers nothing");
    }
}
