//! Console sign-in: a caller token (the gRPC tokens and roles) is exchanged for a session held
//! in memory, named by a random id in an HttpOnly, SameSite=Strict cookie that expires. Every
//! form carries the session's CSRF token, checked before anything changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::auth::{Caller, Role};

pub const COOKIE: &str = "pdp_console";
/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

#[derive(Clone, Debug)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    expires: Instant,
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

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
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

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `caller`; returns its id.
    pub fn start(&self, caller: Caller) -> Result<String, String> {
        let id = random_id()?;
        let session = Session {
            caller,
            csrf: random_id()?,
            expires: Instant::now() + LIFETIME,
        };
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    /// The live session `id` names, if any.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut sessions = self.lock();
        match sessions.get(id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.lock().remove(id);
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
    use crate::domain::MerchantScope;

    #[test]
    fn sessions_are_random_end_on_sign_out_and_cookies_say_how_to_keep_them() {
        let sessions = Sessions::default();
        let caller = Caller {
            name: "rev".into(),
            role: Role::Reviewer,
            merchants: MerchantScope::All,
        };
        let a = sessions
            .start(caller.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let b = sessions.start(caller).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(sessions.get(&a).is_some());
        sessions.end(&a);
        assert!(sessions.get(&a).is_none());
        assert!(sessions.get("forged").is_none());
        let set = cookie(&b, true);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=28800",
            "Secure",
            "Path=/",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!cookie(&b, false).contains("Secure"));
        assert_eq!(cookie_value("x=1; pdp_console=abc", COOKIE), Some("abc"));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
    }
}
