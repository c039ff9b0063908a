//! Console sign-ins: written once at sign-in and removed at sign-out, when their credential
//! signs in more often than it may stay signed in, or, once expired, by a later sign-in; in
//! the same store as everything else, so that every replica honours them and a restart keeps
//! them.
//!
//! Two indexes keep a sign-in's cost independent of how many are stored: by expiry
//! (`console-exp/<expires at>/<hash>`) and by credential (`console-by/<credential
//! hash>/<expires at>/<hash>`). Sign-ins stored before the indexes are indexed by the first
//! sign-in after them (`console-indexed` then says so).

use std::collections::HashMap;

use super::Store;
use super::tx::{console_key, tx_get, tx_put};
use crate::domain::{ConsoleSignIn, Kind, Millis, ReviewClaim};
use crate::error::PdpError;

/// Expired sign-ins removed per sign-in, at most: the clean-up stays small.
const PRUNE_BATCH: usize = 256;
/// Sign-ins one credential may hold at once; a further one ends its oldest.
pub const SESSIONS_PER_CREDENTIAL: usize = 5;
const BY_EXPIRY: &str = "console-exp/";
const BY_CREDENTIAL: &str = "console-by/";
const INDEXED: &str = "console-indexed";
/// Reviewers' claims, `claim/<kind>/<id>`.
const CLAIMS: &str = "claim/";

/// A claim's key, `claim/` + `claimed_filing`.
fn claim_key(kind: Kind, id: &str) -> String {
    format!("{CLAIMS}{}", claimed_filing(kind, id))
}

/// How `filing_claims` names a claimed filing: `<kind>/<id>`.
pub fn claimed_filing(kind: Kind, id: &str) -> String {
    format!("{}/{id}", kind.name())
}

/// Whether a stored claim lapsed by `now` (one that cannot be read counts as lapsed).
fn lapsed_at(key: &str, bytes: &[u8], now: Millis) -> bool {
    super::tx::decode::<ReviewClaim>(key, bytes).map_or(true, |c| c.until <= now)
}

fn credential_hash(credential: &str) -> String {
    crate::domain::sha256_hex(credential)
}

fn expiry_key(sign_in: &ConsoleSignIn, cookie_hash: &str) -> String {
    format!("{BY_EXPIRY}{:020}/{cookie_hash}", sign_in.expires_at.max(0))
}

/// A credential's index key for a sign-in made now: ordered by when it was made (sign-ins in
/// the same millisecond too), so that its oldest end first.
fn new_credential_key(credential: &str, cookie_hash: &str) -> String {
    let made = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{BY_CREDENTIAL}{}/{made:030}/{cookie_hash}",
        credential_hash(credential)
    )
}

fn credential_range(credential: &str) -> (String, String) {
    let hash = credential_hash(credential);
    (
        format!("{BY_CREDENTIAL}{hash}/"),
        format!("{BY_CREDENTIAL}{hash}0"),
    )
}

/// The cookie hash an index key ends with.
fn hash_of(index_key: &str) -> &str {
    index_key.rsplit('/').next().unwrap_or_default()
}

impl Store {
    /// Records a sign-in under the hash of its cookie; in the same transaction removes (up to
    /// a batch of) those expired before `now`, and the credential's oldest ones beyond
    /// `SESSIONS_PER_CREDENTIAL`. Returns the store revision it is at, so that another replica
    /// can wait for it.
    pub async fn put_console_sign_in(
        &self,
        cookie_hash: &str,
        sign_in: &ConsoleSignIn,
        now: Millis,
    ) -> Result<u64, PdpError> {
        let mut ended: Vec<(String, Option<ConsoleSignIn>)> = Vec::new();
        let mut index: Vec<(String, ConsoleSignIn)> = Vec::new();
        let indexed = self.read_raw(INDEXED)?.is_some();
        if !indexed {
            for (key, bytes) in self.scan("console/", "console0", usize::MAX)? {
                let hash = key["console/".len()..].to_owned();
                match super::tx::decode::<ConsoleSignIn>(&key, &bytes) {
                    Ok(old) if old.expires_at > now => index.push((hash, old)),
                    Ok(old) => ended.push((hash, Some(old))),
                    Err(_) => ended.push((hash, None)),
                }
            }
        }
        let expired_before = format!("{BY_EXPIRY}{:020}", now.max(0) + 1);
        // Removed as found, also if their sign-in is gone already.
        let mut index_keys_ended = Vec::new();
        for (key, _) in self.scan(BY_EXPIRY, &expired_before, PRUNE_BATCH)? {
            let hash = hash_of(&key).to_owned();
            let old = self.console_sign_in(&hash)?;
            ended.push((hash, old));
            index_keys_ended.push(key);
        }
        let (from, to) = credential_range(&sign_in.credential);
        let held = self.scan(&from, &to, usize::MAX)?;
        let mut live: Vec<(String, String)> = held
            .iter()
            .map(|(key, _)| (hash_of(key).to_owned(), key.clone()))
            .filter(|(hash, _)| !ended.iter().any(|(e, _)| e == hash))
            .collect();
        // Sign-ins indexed only now come before the new one (they were made earlier).
        let mut indexing: Vec<(String, ConsoleSignIn, String)> = index
            .into_iter()
            .map(|(hash, old)| {
                let key = new_credential_key(&old.credential, &hash);
                (hash, old, key)
            })
            .collect();
        for (hash, old, key) in &indexing {
            if old.credential == sign_in.credential {
                live.push((hash.clone(), key.clone()));
            }
        }
        // Oldest first: the credential's index is in the order they were made.
        let surplus = (live.len() + 1).saturating_sub(SESSIONS_PER_CREDENTIAL);
        for (hash, _) in live.into_iter().take(surplus) {
            let old = self.console_sign_in(&hash)?;
            indexing.retain(|(h, _, _)| *h != hash);
            ended.push((hash, old));
        }
        // Every index key of the sign-ins that end.
        for (hash, old) in &ended {
            if let Some(old) = old {
                index_keys_ended.push(expiry_key(old, hash));
                let (from, to) = credential_range(&old.credential);
                let keys = if old.credential == sign_in.credential {
                    held.clone()
                } else {
                    self.scan(&from, &to, usize::MAX)?
                };
                index_keys_ended.extend(
                    keys.into_iter()
                        .map(|(key, _)| key)
                        .filter(|key| hash_of(key) == hash),
                );
            }
        }
        let key = console_key(cookie_hash);
        let credential_key = new_credential_key(&sign_in.credential, cookie_hash);
        self.transact(&|tx| {
            for (hash, _) in &ended {
                tx.remove(&console_key(hash))?;
            }
            for index_key in &index_keys_ended {
                tx.remove(index_key)?;
            }
            for (hash, old, credential_key) in &indexing {
                tx.put(&expiry_key(old, hash), Vec::new())?;
                tx.put(credential_key, Vec::new())?;
            }
            if !indexed {
                tx.put(INDEXED, Vec::new())?;
            }
            tx.put(&expiry_key(sign_in, cookie_hash), Vec::new())?;
            tx.put(&credential_key, Vec::new())?;
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
        let mut index_keys = Vec::new();
        if let Some(old) = self.console_sign_in(cookie_hash)? {
            index_keys.push(expiry_key(&old, cookie_hash));
            let (from, to) = credential_range(&old.credential);
            index_keys.extend(
                self.scan(&from, &to, usize::MAX)?
                    .into_iter()
                    .map(|(key, _)| key)
                    .filter(|key| hash_of(key) == cookie_hash),
            );
        }
        self.transact(&|tx| {
            tx.remove(&key)?;
            for index_key in &index_keys {
                tx.remove(index_key)?;
            }
            Ok(())
        })
        .await
    }
}

/// Who claimed a filing, when refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The claim now in force is the caller's.
    Yours(ReviewClaim),
    /// Someone else's claim is in force.
    Theirs(ReviewClaim),
}

impl Store {
    /// Claims a filing for `by` until `until`, unless another's claim is in force at `now`.
    /// Claims that lapsed are removed with it (a batch at most).
    pub async fn claim_filing(
        &self,
        kind: Kind,
        id: &str,
        by: &str,
        until: Millis,
        now: Millis,
    ) -> Result<Claimed, PdpError> {
        let lapsed: Vec<String> = self
            .scan(CLAIMS, "claim0", usize::MAX)?
            .into_iter()
            .filter(|(key, bytes)| lapsed_at(key, bytes, now))
            .map(|(key, _)| key)
            .take(PRUNE_BATCH)
            .collect();
        let key = claim_key(kind, id);
        let claim = ReviewClaim {
            by: by.to_owned(),
            until,
        };
        self.transact(&|tx| {
            if let Some(held) = tx_get::<ReviewClaim>(tx, &key)?
                && held.until > now
                && held.by != by
            {
                return Ok(Claimed::Theirs(held));
            }
            // Removed only if still lapsed: another reviewer may have claimed it meanwhile.
            for old in lapsed.iter().filter(|old| **old != key) {
                if let Some(bytes) = tx.get(old)?
                    && lapsed_at(old, &bytes, now)
                {
                    tx.remove(old)?;
                }
            }
            tx_put(tx, &key, &claim)?;
            Ok(Claimed::Yours(claim.clone()))
        })
        .await
    }

    /// The claims in force at `now`, by `kind/id`.
    pub fn filing_claims(&self, now: Millis) -> Result<HashMap<String, ReviewClaim>, PdpError> {
        let mut claims = HashMap::new();
        for (key, bytes) in self.scan(CLAIMS, "claim0", usize::MAX)? {
            // One that cannot be read is as if lapsed (the next claim removes it).
            if let Ok(claim) = super::tx::decode::<ReviewClaim>(&key, &bytes)
                && claim.until > now
            {
                claims.insert(key[CLAIMS.len()..].to_owned(), claim);
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_holds_against_others_until_it_lapses() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&temp.path().join("data")).unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let claim = |id: &str, by: &str, until, now| {
            runtime
                .block_on(store.claim_filing(Kind::Anchor, id, by, until, now))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let mine = |by: &str, until| ReviewClaim {
            by: by.into(),
            until,
        };
        assert_eq!(
            claim("a1", "rev-1", 100, 0),
            Claimed::Yours(mine("rev-1", 100))
        );
        assert_eq!(
            claim("a1", "rev-2", 150, 50),
            Claimed::Theirs(mine("rev-1", 100))
        );
        assert_eq!(
            claim("a1", "rev-1", 160, 60),
            Claimed::Yours(mine("rev-1", 160)),
            "renewed"
        );
        assert_eq!(
            claim("a2", "rev-2", 120, 60),
            Claimed::Yours(mine("rev-2", 120))
        );
        let in_force = |now| {
            let mut claims: Vec<(String, String)> = store
                .filing_claims(now)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|(filing, c)| (filing, c.by))
                .collect();
            claims.sort();
            claims
        };
        assert_eq!(
            in_force(100),
            [
                ("anchor/a1".into(), "rev-1".into()),
                ("anchor/a2".into(), "rev-2".into())
            ]
        );
        assert_eq!(in_force(130), [("anchor/a1".into(), "rev-1".into())]);
        // A lapsed claim is another's to take, and is pruned by the next claim.
        assert_eq!(
            claim("a1", "rev-2", 300, 200),
            Claimed::Yours(mine("rev-2", 300))
        );
        assert_eq!(
            claim("a3", "rev-1", 400, 200),
            Claimed::Yours(mine("rev-1", 400))
        );
        assert_eq!(
            store
                .scan(CLAIMS, "claim0", usize::MAX)
                .map(|keys| keys.len())
                .ok(),
            Some(2),
            "a2's lapsed claim is gone"
        );
    }

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
        let kept = |hash: &str| {
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
        let index_keys = || {
            store
                .scan("console-", "console.", usize::MAX)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|(key, _)| key)
                .filter(|key| key != INDEXED)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            index_keys().len(),
            2,
            "only \"new\" is indexed: {:?}",
            index_keys()
        );

        // A credential holds at most SESSIONS_PER_CREDENTIAL sign-ins: the oldest end.
        let other = |expires_at| ConsoleSignIn {
            credential: "sha256:other".into(),
            ..sign_in(expires_at)
        };
        runtime
            .block_on(store.put_console_sign_in("other", &other(300), 60))
            .unwrap_or_else(|e| panic!("{e}"));
        for i in 0..7 {
            runtime
                .block_on(store.put_console_sign_in(&format!("s{i}"), &sign_in(1000 + i), 60))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let held: Vec<bool> = std::iter::once("new".to_owned())
            .chain((0..7).map(|i| format!("s{i}")))
            .map(|hash| kept(&hash).is_some())
            .collect();
        assert_eq!(held, [false, false, false, true, true, true, true, true]);
        assert_eq!(
            kept("other"),
            Some(300),
            "another credential's sign-in stays"
        );
        assert_eq!(index_keys().len(), 2 * 6, "{:?}", index_keys());
    }

    /// Sign-ins stored before the indexes existed are indexed by the next sign-in, so they
    /// expire and count against their credential like the others.
    #[test]
    fn sign_ins_from_before_the_indexes_are_indexed_once() {
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
        runtime
            .block_on(store.transact(&|tx| {
                tx_put(tx, &console_key("old-live"), &sign_in(500))?;
                tx_put(tx, &console_key("old-expired"), &sign_in(5))
            }))
            .unwrap_or_else(|e| panic!("{e}"));
        runtime
            .block_on(store.put_console_sign_in("fresh", &sign_in(600), 10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            store
                .console_sign_in("old-expired")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        let expiring: Vec<String> = store
            .scan(BY_EXPIRY, "console-exp0", usize::MAX)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(key, _)| hash_of(&key).to_owned())
            .collect();
        assert_eq!(expiring, ["old-live", "fresh"]);
        assert!(
            store
                .read_raw(INDEXED)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some()
        );
    }
}
