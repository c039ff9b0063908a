//! Console sign-ins: written once at sign-in and removed at sign-out or, once expired, by a
//! later sign-in; in the same store as everything else, so that every replica honours them
//! and a restart keeps them.

use super::Store;
use super::tx::{console_key, tx_put};
use crate::domain::{ConsoleSignIn, Millis};
use crate::error::PdpError;

/// Expired sign-ins removed per sign-in, at most: the clean-up stays small.
const PRUNE_BATCH: usize = 256;

impl Store {
    /// Records a sign-in under the hash of its cookie, and removes (up to a batch of) those
    /// expired before `now` in the same transaction; returns the store revision it is at, so
    /// that another replica can wait for it.
    pub async fn put_console_sign_in(
        &self,
        cookie_hash: &str,
        sign_in: &ConsoleSignIn,
        now: Millis,
    ) -> Result<u64, PdpError> {
        let key = console_key(cookie_hash);
        let expired: Vec<String> = self
            .scan("console/", "console0", usize::MAX)?
            .into_iter()
            .filter(|(key, bytes)| {
                super::tx::decode::<ConsoleSignIn>(key, bytes).map_or(true, |s| s.expires_at <= now)
            })
            .map(|(key, _)| key)
            .take(PRUNE_BATCH)
            .collect();
        self.transact(&|tx| {
            for key in &expired {
                tx.remove(key)?;
            }
            tx_put(tx, &key, sign_in)
        })
        .await?;
        Ok(self.revision())
    }

    /// The sign-in a cookie's hash names, if there is one (expired or not).
    pub fn console_sign_in(&self, cookie_hash: &str) -> Result<Option<ConsoleSignIn>, PdpError> {
        self.read(&console_key(cookie_hash))
    }

    pub async fn remove_console_sign_in(&self, cookie_hash: &str) -> Result<(), PdpError> {
        let key = console_key(cookie_hash);
        self.transact(&|tx| tx.remove(&key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_removes_those_expired_and_keeps_the_rest() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&temp.path().join("data")).unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let sign_in = |expires_at| ConsoleSignIn {
            credential: "cn:rev-1".into(),
            caller: "rev-1".into(),
            csrf: "c".into(),
            expires_at,
        };
        for (hash, expires_at, now) in [("early", 10, 0), ("late", 100, 0), ("new", 200, 50)] {
            runtime
                .block_on(store.put_console_sign_in(hash, &sign_in(expires_at), now))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let kept = |hash| {
            store
                .console_sign_in(hash)
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|s| s.expires_at)
        };
        assert_eq!(
            (kept("early"), kept("late"), kept("new")),
            (None, Some(100), Some(200))
        );
        runtime
            .block_on(store.remove_console_sign_in("late"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept("late"), None);
    }
}
