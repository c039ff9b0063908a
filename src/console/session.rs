//! Console sign-in: a caller token or client certificate (the gRPC credentials and roles) is
//! exchanged for a session, named by a random id in an HttpOnly, SameSite=Strict cookie that
//! expires. The session is kept in the store under a hash of the id, so every replica honours
//! it, a restart keeps it, and the store never holds a usable cookie; it holds only while the
//! configuration still accepts the credential it was made with. Every form carries the
//! session's CSRF token, checked before anything changes.

use std::time::Duration;

use crate::api::auth::{Authenticator, Caller, Role};
use crate::domain::ConsoleSignIn;
use crate::error::PdpError;
use crate::store::Store;

pub const COOKIE: &str = "pdp_console";
/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

#[derive(Clone, Debug)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
}

impl Session {
    /// How the decision log names whoever acts through this session.
    pub fn caller_name(&self) -> String {
        format!(
            "{} ({}, console)",
            self.caller.name,
            self.caller.role.name()
        )
    }
}

/// 32 random bytes, hex: unguessable.
fn random_id() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The roles the console serves: the people behind the rules.
pub fn may_sign_in(role: Role) -> bool {
    matches!(role, Role::Reviewer | Role::Inspector | Role::Admin)
}

/// What the store knows a session by: its id, hashed.
fn id_hash(id: &str) -> String {
    crate::domain::sha256_hex(id)
}

/// A cookie's parts: the session id, and the store revision its sign-in was written at
/// (`ID.REVISION`), so that a replica that has not seen the sign-in yet waits for it.
fn parse_cookie(value: &str) -> Option<(&str, u64)> {
    let (id, revision) = value.split_once('.')?;
    let well_formed = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then_some((id, revision.parse().ok()?))
}

/// Starts a session for `caller`, signed in with `credential` (see
/// `Authenticator::credential`) at `now`; returns the cookie's value.
pub async fn start(
    store: &Store,
    caller: &Caller,
    credential: String,
    now: crate::domain::Millis,
) -> Result<String, PdpError> {
    let id = random_id().map_err(PdpError::Storage)?;
    let sign_in = ConsoleSignIn {
        credential,
        caller: caller.name.clone(),
        csrf: random_id().map_err(PdpError::Storage)?,
        expires_at: now.saturating_add(LIFETIME.as_millis() as i64),
    };
    let revision = store
        .put_console_sign_in(&id_hash(&id), &sign_in, now)
        .await?;
    Ok(format!("{id}.{revision}"))
}

/// The live session a cookie's value names, if any: known to the store, not expired, and
/// made with a credential that still names a console caller.
pub async fn find(
    store: &Store,
    auth: &Authenticator,
    cookie: &str,
    now: crate::domain::Millis,
) -> Option<Session> {
    let (id, revision) = parse_cookie(cookie)?;
    let hash = id_hash(id);
    let mut found = store.console_sign_in(&hash).ok()?;
    if found.is_none() && revision > store.revision() {
        // Signed in on another replica a moment ago.
        store.at_least(revision).await.ok()?;
        found = store.console_sign_in(&hash).ok()?;
    }
    let sign_in = found?;
    if sign_in.expires_at <= now {
        return None;
    }
    let caller = auth
        .caller_of_credential(&sign_in.credential)
        .filter(|caller| may_sign_in(caller.role))?;
    Some(Session {
        caller,
        csrf: sign_in.csrf,
    })
}

/// Ends the session a cookie's value names.
pub async fn end(store: &Store, cookie: &str) -> Result<(), PdpError> {
    match parse_cookie(cookie) {
        Some((id, _)) => store.remove_console_sign_in(&id_hash(id)).await,
        None => Ok(()),
    }
}

/// The `Set-Cookie` value for a new session (`secure` when the console is reached over TLS).
pub fn cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cookie_removal(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Compares CSRF tokens in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_name_a_well_formed_id_and_a_revision_and_say_how_to_keep_them() {
        let id = "ab".repeat(32);
        assert_eq!(parse_cookie(&format!("{id}.17")), Some((id.as_str(), 17)));
        for forged in [
            "forged",
            "ab.1",
            id.as_str(),
            &format!("{id}.x"),
            &format!("{}.1", "zz".repeat(32)),
        ] {
            assert_eq!(parse_cookie(forged), None, "{forged}");
        }
        assert_ne!(id_hash(&id), id);
        assert_eq!(id_hash(&id).len(), 64);
        let value = format!("{id}.17");
        let set = cookie(&value, true);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=28800",
            "Secure",
            "Path=/",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!cookie(&value, false).contains("Secure"));
        assert_eq!(cookie_value("x=1; pdp_console=abc", COOKIE), Some("abc"));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
    }
}
