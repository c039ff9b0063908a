//! What guards the console before anyone is signed in: forms posted from another site are
//! refused (login CSRF: a page elsewhere signing the viewer in as someone else), and sign-in
//! guessing is slowed down per source address and per credential.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Whether a request that changes something came from the console's own pages.
///
/// Browsers say where a request comes from: `Sec-Fetch-Site` (every current browser) and
/// `Origin` (on every POST). A request carrying either must name the console itself; a client
/// that sends neither is not a browser acting for someone else (curl, a script), and is held to
/// its session's CSRF token like any other.
pub fn from_the_console(method: &Method, headers: &HeaderMap, secure: bool) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none`: typed or bookmarked by the user, not sent by a page.
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return false;
        }
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let scheme = if secure { "https" } else { "http" };
            match (origin.to_str().ok(), host) {
                (Some(origin), Some(host)) => origin == format!("{scheme}://{host}"),
                // `Origin: null` (a sandboxed or opaque page) or no Host: not the console.
                _ => false,
            }
        }
    }
}

/// The answer to a form posted from another site: nothing changes.
pub fn cross_site_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: this form was posted from another site (the console accepts its own forms only)",
    )
        .into_response()
}

/// A form's fields, refused (400) unless every name and value is valid UTF-8 once decoded
/// (axum's `Form` would turn invalid bytes into U+FFFD and store a note nobody wrote) and free
/// of bidirectional controls (see `domain::bidi_control`).
pub struct StrictForm(pub HashMap<String, String>);

/// Console forms are small; a larger body is refused.
const MAX_FORM_BYTES: usize = 64 * 1024;

impl<S: Send + Sync> FromRequest<S> for StrictForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if body.len() > MAX_FORM_BYTES {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response());
        }
        parse_form(&body)
            .map(StrictForm)
            .map_err(|e| (StatusCode::BAD_REQUEST, e).into_response())
    }
}

/// `application/x-www-form-urlencoded`, strictly: `+` is a space, `%XX` a byte, and the
/// bytes of every name and value must be UTF-8. A repeated name keeps its last value.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, String> {
    fn decode(part: &[u8]) -> Result<String, String> {
        let mut bytes = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            match part[i] {
                b'+' => bytes.push(b' '),
                b'%' => {
                    let hex = part
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or("the form has a malformed %-escape")?;
                    bytes.push(hex);
                    i += 2;
                }
                b => bytes.push(b),
            }
            i += 1;
        }
        let text = String::from_utf8(bytes).map_err(|_| "the form is not valid UTF-8")?;
        match crate::domain::bidi_control(&text) {
            Some(c) => Err(format!(
                "bidirectional control character U+{:04X} is not allowed (it makes text display \
                 as something else)",
                c as u32
            )),
            None => Ok(text),
        }
    }
    let mut fields = HashMap::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        fields.insert(decode(name)?, decode(value)?);
    }
    Ok(fields)
}

/// Failed sign-ins a source or credential may make before it has to wait.
const FREE_FAILURES: u32 = 10;
/// Failures are counted over this window; a source quiet that long starts afresh.
const WINDOW: Duration = Duration::from_secs(60);
/// The first wait after the free failures; each further failure doubles it, up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Entries kept at most; above it, those whose window and wait are over are dropped.
const TRACKED: usize = 4096;

/// Who a sign-in attempt is counted against.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Attempter {
    Source(IpAddr),
    /// The credential tried, as the configuration names it (`sha256:HEX` of a token,
    /// `cn:SUBJECT` of a certificate).
    Credential(String),
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

/// Failed sign-ins by source and by credential, in memory (a restart forgets them; each
/// replica counts its own).
#[derive(Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<Attempter, Failures>>,
}

impl SignInThrottle {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Attempter, Failures>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long these attempters must still wait before trying again, if any must.
    pub fn wait(&self, attempters: &[Attempter], now: Instant) -> Option<Duration> {
        let failures = self.failures();
        attempters
            .iter()
            .filter_map(|a| failures.get(a)?.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Notes a failed sign-in: past the free failures in the window, each one doubles the wait.
    pub fn failed(&self, attempters: &[Attempter], now: Instant) {
        let mut failures = self.failures();
        if failures.len() >= TRACKED {
            failures.retain(|_, f| {
                now.duration_since(f.first) < WINDOW || f.blocked_until.is_some_and(|u| u > now)
            });
        }
        for attempter in attempters {
            let entry = failures.entry(attempter.clone()).or_insert(Failures {
                count: 0,
                first: now,
                blocked_until: None,
            });
            let waited_out = entry.blocked_until.is_none_or(|until| until <= now);
            if now.duration_since(entry.first) >= WINDOW && waited_out {
                *entry = Failures {
                    count: 0,
                    first: now,
                    blocked_until: None,
                };
            }
            entry.count += 1;
            if entry.count > FREE_FAILURES {
                let doublings = (entry.count - FREE_FAILURES - 1).min(20);
                let wait = FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT);
                entry.blocked_until = Some(now + wait);
            }
        }
    }

    /// A successful sign-in clears its credential's failures (not its source's: one right
    /// token among many guesses does not excuse the guesses).
    pub fn succeeded(&self, credential: &Attempter) {
        self.failures().remove(credential);
    }
}

/// The answer while an attempter must wait: 429 with `Retry-After`.
pub fn throttled(wait: Duration) -> Response {
    let seconds = wait.as_secs().max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, seconds.to_string())],
        format!("too many failed sign-ins: try again in {seconds} s"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, axum::http::HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_the_consoles_own_pages_may_post() {
        let post = Method::POST;
        let host = ("host", "console.example:8443");
        for (pairs, secure, allowed) in [
            (vec![host], true, true),
            (
                vec![host, ("origin", "https://console.example:8443")],
                true,
                true,
            ),
            (
                vec![host, ("origin", "http://console.example:8443")],
                true,
                false,
            ),
            (vec![host, ("origin", "https://evil.example")], true, false),
            (vec![host, ("origin", "null")], true, false),
            (vec![host, ("sec-fetch-site", "same-origin")], true, true),
            (vec![host, ("sec-fetch-site", "none")], true, true),
            (vec![host, ("sec-fetch-site", "same-site")], true, false),
            (vec![host, ("sec-fetch-site", "cross-site")], true, false),
            (
                vec![
                    host,
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://evil.example"),
                ],
                true,
                false,
            ),
            (vec![("origin", "http://a.example")], false, false),
        ] {
            assert_eq!(
                from_the_console(&post, &headers(&pairs), secure),
                allowed,
                "{pairs:?}"
            );
        }
        let cross = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(
            from_the_console(&Method::GET, &cross, true),
            "a GET changes nothing"
        );
    }

    #[test]
    fn forms_decode_strictly_and_invalid_utf8_is_refused() {
        let parsed = parse_form(b"note=caf%C3%A9+ok&csrf=abc&empty=&flag").expect("valid");
        assert_eq!(parsed["note"], "café ok");
        assert_eq!(parsed["csrf"], "abc");
        assert_eq!(parsed["empty"], "");
        assert_eq!(parsed["flag"], "");
        assert_eq!(
            parse_form(b"note=%FF%FE").err().as_deref(),
            Some("the form is not valid UTF-8")
        );
        assert_eq!(
            parse_form(b"note=%ZZ").err().as_deref(),
            Some("the form has a malformed %-escape")
        );
        assert!(parse_form(b"note=%C3").is_err(), "a cut sequence");
        assert_eq!(
            parse_form(b"note=evil%E2%80%AEgnp.exe").err().as_deref(),
            Some(
                "bidirectional control character U+202E is not allowed (it makes text display \
                 as something else)"
            )
        );
        assert_eq!(
            parse_form("note=%D7%A9%D7%9C%D7%95%D7%9D".as_bytes()).expect("Hebrew")["note"],
            "שלום",
            "right-to-left letters are fine"
        );
    }

    #[test]
    fn failures_past_the_free_ones_double_the_wait_and_a_quiet_window_starts_afresh() {
        let throttle = SignInThrottle::default();
        let source = [Attempter::Source(IpAddr::from([127, 0, 0, 1]))];
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            throttle.failed(&source, t0);
        }
        assert_eq!(throttle.wait(&source, t0), None, "the free failures");
        throttle.failed(&source, t0);
        assert_eq!(throttle.wait(&source, t0), Some(FIRST_WAIT));
        throttle.failed(&source, t0);
        throttle.failed(&source, t0);
        assert_eq!(throttle.wait(&source, t0), Some(FIRST_WAIT * 4));
        for _ in 0..100 {
            throttle.failed(&source, t0);
        }
        assert_eq!(throttle.wait(&source, t0), Some(MAX_WAIT));
        let other = [Attempter::Source(IpAddr::from([127, 0, 0, 2]))];
        assert_eq!(
            throttle.wait(&other, t0),
            None,
            "another source is not held"
        );
        // Once the wait and the window are over, the count starts again.
        let later = t0 + MAX_WAIT + WINDOW;
        assert_eq!(throttle.wait(&source, later), None);
        throttle.failed(&source, later);
        assert_eq!(throttle.wait(&source, later), None);
        // A success clears a credential's failures.
        let credential = Attempter::Credential("h".into());
        for _ in 0..=FREE_FAILURES {
            throttle.failed(std::slice::from_ref(&credential), t0);
        }
        assert!(
            throttle
                .wait(std::slice::from_ref(&credential), t0)
                .is_some()
        );
        throttle.succeeded(&credential);
        assert_eq!(throttle.wait(std::slice::from_ref(&credential), t0), None);
    }
}
