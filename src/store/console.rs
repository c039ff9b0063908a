//! Console sign-ins: written once at sign-in and removed at sign-out or expiry, in the same
//! store as everything else, so that every replica honours them and a restart keeps them.

use super::Store;
use super::tx::{console_key, tx_put};
use crate::domain::{ConsoleSignIn, Millis};
use crate::error::PdpError;

/// Expired sign-ins removed per sign-in, at most: the clean-up stays small.
const PRUNE_BATCH: usize = 256;

impl Store {
    /// Records a sign-in under the hash of its cookie; returns the store revision it is at, so
    /// that another replica can wait for it.
    pub async fn put_console_sign_in(
        &self,
        cookie_hash: &str,
        sign_in: &ConsoleSignIn,
    ) -> Result<u64, PdpError> {
        let key = console_key(cookie_hash);
        self.transact(&|tx| tx_put(tx, &key, sign_in)).await?;
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

    /// Removes sign-ins that expired before `now` (up to a batch); returns how many.
    pub async fn prune_console_sign_ins(&self, now: Millis) -> Result<usize, PdpError> {
        let expired: Vec<String> = self
            .scan("console/", "console0", usize::MAX)?
            .into_iter()
            .filter(|(key, bytes)| {
                super::tx::decode::<ConsoleSignIn>(key, bytes).map_or(true, |s| s.expires_at <= now)
            })
            .map(|(key, _)| key)
            .take(PRUNE_BATCH)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.transact(&|tx| {
            for key in &expired {
                tx.remove(key)?;
            }
            Ok(())
        })
        .await?;
        Ok(expired.len())
    }
}
