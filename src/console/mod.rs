//! The browser console for reviewers, inspectors and admins: server-rendered HTML (maud, which
//! escapes every value it is given), served by the binary on `--console-listen`, with its
//! stylesheet and script embedded. Every action goes through the same service calls and role
//! table as the gRPC API and is recorded in the decision log under the signed-in caller.
//!
//! Pages: sign-in and sign-out; the review queue (pending anchors, drivers, rooms and likeness
//! consents, oldest first) with each filing's page and verdict form; the live board, each
//! session with its decisions and "report violation"; accounts with "lift freeze"; the
//! decision log; and the catalog of providers and AI features.

mod accounts;
mod catalog;
mod filing;
mod guard;
mod live;
mod page;
mod review;
pub mod session;
mod viewer;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::auth::{Authenticator, Credential, Role, may_call};
use crate::error::PdpError;
use crate::net::{ClientCertificate, PeerAddr};
use crate::service::{Origin, Pdp};
use guard::StrictForm;
use session::Session;
use viewer::Viewer;

/// What every console request can reach.
pub struct Console {
    pdp: Arc<Pdp>,
    auth: Arc<Authenticator>,
    /// The console is reached over TLS: cookies say `Secure`, responses carry HSTS.
    secure_cookies: bool,
    /// Failed sign-ins by source and credential.
    throttle: guard::SignInThrottle,
}

impl Console {
    pub fn new(pdp: Arc<Pdp>, auth: Arc<Authenticator>, secure_cookies: bool) -> Arc<Console> {
        Arc::new(Console {
            pdp,
            auth,
            secure_cookies,
            throttle: guard::SignInThrottle::default(),
        })
    }
}

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The headers every console response carries: no inline script or style, no framing, no
/// sniffing, a referrer only within the console (the language switch returns to it), and over
/// TLS, HSTS. A form posted from another site is refused before any handler sees it.
async fn security_headers(
    State(console): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Where a GET asked to go: kept through the sign-in it is sent to (a deep link).
    let asked = (request.method() == axum::http::Method::GET)
        .then(|| {
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
        })
        .flatten()
        .filter(|path| safe_next(path).is_some());
    let mut response = if guard::from_the_console(
        request.method(),
        request.headers(),
        console.secure_cookies,
    ) {
        let mut response = next.run(request).await;
        let to_sign_in = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.as_bytes())
            == Some(b"/sign-in".as_slice());
        if let Some(asked) = asked
            && to_sign_in
        {
            let location = format!("/sign-in?next={}", encode_component(&asked));
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
        }
        response
    } else {
        tracing::warn!(path = %request.uri().path(), "console: a form posted from another site was refused");
        guard::cross_site_refused()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        // A response that says its own (an image: sandboxed, cached a minute) keeps it.
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if console.secure_cookies {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// `path` if it is a console page to return to after sign-in: a local path (not `//host`, no
/// backslash, printable ASCII as a request line carries it), not the sign-in itself, of
/// reasonable length.
fn safe_next(path: &str) -> Option<&str> {
    let local = path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && path.bytes().all(|b| b.is_ascii_graphic())
        && !path.starts_with("/sign-in")
        && !path.starts_with("/sign-out")
        && path != "/"
        && path.len() <= 2048;
    local.then_some(path)
}

/// Percent-encodes everything but unreserved characters (for a path in a query value).
fn encode_component(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/lang/{lang}", get(set_lang))
        .route("/review", get(review::queue))
        .route("/live", get(live::board))
        .route("/live/{id}", get(live::session_page))
        .route("/live/{id}/report", post(live::report))
        .route("/accounts", get(accounts::account))
        .route("/accounts/{merchant}/lift", post(accounts::lift))
        .route("/log", get(accounts::log))
        .route("/catalog", get(catalog::catalog))
        .route("/catalog/provider/{id}", post(catalog::set_listing))
        .route("/catalog/ai-feature/{id}", post(catalog::set_ai_filing))
        .route("/review/bulk", post(review::bulk))
        .route(
            "/review/{kind}/{id}",
            get(filing::filing).post(filing::verdict),
        )
        .route("/review/{kind}/{id}/image", get(filing::image))
        .route("/review/{kind}/{id}/claim", post(filing::claim))
        .route(
            "/static/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }),
        )
        .route(
            "/static/console.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }),
        )
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            security_headers,
        ))
        .with_state(console)
}

/// The session cookie's value in a request, if it has one.
fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    session::cookie_value(cookies, session::COOKIE)
}

/// The signed-in session a request's cookie names.
async fn session_of(console: &Console, headers: &HeaderMap) -> Option<Session> {
    let cookie = cookie_of(headers)?;
    session::find(
        console.pdp.store(),
        &console.auth,
        cookie,
        console.pdp.now(),
    )
    .await
}

/// A page's caller: signed in, and allowed the gRPC method the page stands for; otherwise
/// the sign-in page or 403.
enum Access {
    Granted(Session),
    Refused(Response),
}

async fn access(console: &Console, headers: &HeaderMap, method: &str) -> Access {
    let viewer = Viewer::of(headers);
    let lang = viewer.lang;
    let Some(session) = session_of(console, headers).await else {
        return Access::Refused(Redirect::to("/sign-in").into_response());
    };
    if !may_call(session.caller.role, method) {
        return Access::Refused(
            (
                StatusCode::FORBIDDEN,
                page::layout(
                    &viewer,
                    Some(&session),
                    lang.t("forbidden_title"),
                    page::message(lang.t("forbidden")),
                ),
            )
                .into_response(),
        );
    }
    Access::Granted(session)
}

/// Whether the session's role may call the gRPC method a page or link stands for.
fn may(session: &Session, method: &str) -> bool {
    may_call(session.caller.role, method)
}

/// Whether a form carries its session's CSRF token.
fn csrf_ok(session: &Session, form: &HashMap<String, String>) -> bool {
    form.get("csrf")
        .is_some_and(|token| session::same_token(token, &session.csrf))
}

/// The method the decision-log pages stand for.
const READ_LOG: &str = "/anchorpdp.v1.PolicyAdmin/ReadDecisionLog";

/// Where a change asked from the console comes from: the session's caller, with `request` as
/// the decision log records it.
fn origin(session: &Session, request: serde_json::Value) -> Origin {
    Origin {
        request_id: None,
        entry_point: "console",
        gateway_id: String::new(),
        caller: session.caller_name(),
        request,
    }
}

/// The status a change that was not made answers with.
fn status_of(e: &PdpError) -> StatusCode {
    match e {
        PdpError::NotFound(_) => StatusCode::NOT_FOUND,
        PdpError::InvalidArgument { .. } | PdpError::FailedPrecondition(_) => {
            StatusCode::BAD_REQUEST
        }
        PdpError::Aborted(_) => StatusCode::CONFLICT,
        PdpError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        PdpError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// "Nothing was changed: `why`", in the viewer's language: the notice a page shows when a form
/// posted from it did not do what it asked.
fn not_done(lang: page::Lang, why: &str) -> String {
    format!("{} {why}", lang.t("not_done"))
}

/// An error as a page of the console (in the layout, translated, with a way on) rather than
/// bare text: for what has no page of its own to come back to (an unknown filing, say).
fn error_page(viewer: &Viewer, session: &Session, status: StatusCode, why: &str) -> Response {
    let lang = viewer.lang;
    (
        status,
        page::layout(
            viewer,
            Some(session),
            lang.t("error_title"),
            maud::html! { p.notice role="alert" { (why) } p { a href="/" { (lang.t("home")) } } },
        ),
    )
        .into_response()
}

/// Where each role starts: its own work.
fn landing(role: Role) -> &'static str {
    match role {
        Role::Inspector => "/live",
        Role::Admin => "/accounts",
        _ => "/review",
    }
}

async fn home(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match session_of(&console, &headers).await {
        None => Redirect::to("/sign-in").into_response(),
        Some(session) => Redirect::to(landing(session.caller.role)).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    #[serde(default)]
    failed: bool,
    /// The page to go to once signed in.
    next: Option<String>,
}

async fn sign_in_page(
    State(console): State<Arc<Console>>,
    certificate: Option<Extension<ClientCertificate>>,
    headers: HeaderMap,
    Query(query): Query<SignInQuery>,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let caller = certificate
        .as_ref()
        .and_then(|Extension(ClientCertificate(subject))| console.auth.certificate_caller(subject));
    let offer =
        certificate.as_ref().map(
            |Extension(ClientCertificate(subject))| page::CertificateOffer {
                subject,
                caller: caller.as_ref(),
            },
        );
    page::layout(
        &viewer,
        None,
        lang.t("sign_in"),
        page::sign_in(
            lang,
            query.failed,
            offer,
            query.next.as_deref().and_then(safe_next),
        ),
    )
    .into_response()
}

/// Signs in with a caller token, or (`with=certificate`) with the client certificate TLS
/// verified for this connection, mapped to a caller by `--mtls-role` as on gRPC. Failed
/// attempts are counted by source and by credential (see `guard.rs`); every attempt, failed or
/// not, is in the decision log.
async fn sign_in(
    State(console): State<Arc<Console>>,
    certificate: Option<Extension<ClientCertificate>>,
    peer: Option<Extension<PeerAddr>>,
    StrictForm(form): StrictForm,
) -> Response {
    let with = match form.get("with").map(String::as_str) {
        Some("certificate") => "certificate",
        _ => "token",
    };
    // A sign-in names its credential as the session will keep it, and is resolved the way
    // every later request re-checks it.
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    let via = match (with, &certificate) {
        ("certificate", Some(Extension(ClientCertificate(subject)))) => {
            Some(Credential::Certificate(subject))
        }
        ("certificate", None) => None,
        // An empty token proves nothing once tokens are configured (as on gRPC).
        _ if token.is_empty() && console.auth.enabled() => None,
        _ => Some(Credential::Token(token)),
    };
    let credential = via.map(|via| console.auth.credential(via));
    // Counted by the credential as the configuration names it (a token's hash, `cn:SUBJECT`).
    let tried = credential.clone().unwrap_or_default();
    let mut attempters = vec![guard::Attempter::Credential(tried)];
    if let Some(Extension(PeerAddr(peer))) = peer {
        attempters.push(guard::Attempter::Source(peer.ip()));
    }
    let source = peer.map_or_else(String::new, |Extension(PeerAddr(p))| p.ip().to_string());
    let next = form.get("next").map(String::as_str).and_then(safe_next);
    let failed_page = match next {
        Some(next) => format!("/sign-in?failed=true&next={}", encode_component(next)),
        None => "/sign-in?failed=true".to_owned(),
    };
    let clock = std::time::Instant::now();
    if let Some(wait) = console.throttle.wait(&attempters, clock) {
        // Not logged one by one: a guesser held back would fill the log with its guesses.
        tracing::debug!(%source, with, wait_s = wait.as_secs(), "console sign-in throttled");
        metrics::counter!("anchor_pdp_console_sign_ins_total", "result" => "throttled")
            .increment(1);
        return guard::throttled(wait);
    }
    let signed_in = credential.and_then(|credential| {
        let caller = console.auth.caller_of_credential(&credential)?;
        Some((caller, credential))
    });
    let (caller, credential) = match signed_in {
        Some((caller, credential)) if session::may_sign_in(caller.role) => (caller, credential),
        refused => {
            console.throttle.failed(&attempters, clock);
            let (who, why) = match &refused {
                Some((caller, _)) => (
                    format!("{} ({})", caller.name, caller.role.name()),
                    "refused: the role has no console",
                ),
                None => ("?".to_owned(), "refused: unknown credential"),
            };
            tracing::warn!(caller = %who, %source, with, why, "console sign-in refused");
            metrics::counter!("anchor_pdp_console_sign_ins_total", "result" => "refused")
                .increment(1);
            log_sign_in(&console, &who, with, &source, why).await;
            return Redirect::to(&failed_page).into_response();
        }
    };
    if let Some(credential) = attempters.first() {
        console.throttle.succeeded(credential);
    }
    match session::start(console.pdp.store(), &caller, credential, console.pdp.now()).await {
        Ok(cookie) => {
            tracing::info!(caller = %caller.name, role = caller.role.name(), with, "console sign-in");
            let who = format!("{} ({}, console)", caller.name, caller.role.name());
            metrics::counter!("anchor_pdp_console_sign_ins_total", "result" => "ok").increment(1);
            log_sign_in(&console, &who, with, &source, "ok").await;
            (
                StatusCode::SEE_OTHER,
                [
                    (
                        header::SET_COOKIE,
                        session::cookie(&cookie, console.secure_cookies),
                    ),
                    (
                        header::LOCATION,
                        next.unwrap_or(landing(caller.role)).to_owned(),
                    ),
                ],
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot sign in now: {e}"),
        )
            .into_response(),
    }
}

/// Puts a sign-in or sign-out in the decision log (never the token; the source address and
/// how the caller signed in). A log that cannot take it is logged, not the caller's problem.
async fn log_sign_in(console: &Console, caller: &str, with: &str, source: &str, outcome: &str) {
    let action = if outcome == "signed out" {
        "console.sign_out"
    } else {
        "console.sign_in"
    };
    let origin = Origin {
        request_id: None,
        entry_point: "console",
        gateway_id: String::new(),
        caller: caller.to_owned(),
        request: serde_json::json!({ "with": with, "source": source }),
    };
    let mut record = console.pdp.record(&origin, action, console.pdp.now());
    record.outcome = outcome.to_owned();
    if let Err(e) = console.pdp.log(record).await {
        tracing::error!(error = %e, action, "console: the sign-in could not be logged");
    }
}

async fn sign_out(
    State(console): State<Arc<Console>>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    StrictForm(form): StrictForm,
) -> Response {
    let Some(session) = session_of(&console, &headers).await else {
        return Redirect::to("/sign-in").into_response();
    };
    let viewer = Viewer::of(&headers);
    if !csrf_ok(&session, &form) {
        return error_page(
            &viewer,
            &session,
            StatusCode::FORBIDDEN,
            viewer.lang.t("form_expired"),
        );
    }
    if let Some(cookie) = cookie_of(&headers)
        && let Err(e) = session::end(console.pdp.store(), cookie).await
    {
        return error_page(
            &viewer,
            &session,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot sign out now: {e}"),
        );
    }
    let source = peer.map_or_else(String::new, |Extension(PeerAddr(p))| p.ip().to_string());
    log_sign_in(
        &console,
        &session.caller_name(),
        "session",
        &source,
        "signed out",
    )
    .await;
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::cookie_removal(console.secure_cookies),
            ),
            (header::LOCATION, "/sign-in".to_owned()),
        ],
    )
        .into_response()
}

/// Remembers the language in a cookie and goes back where the viewer was (a console path
/// only: never an outside URL).
async fn set_lang(
    State(console): State<Arc<Console>>,
    Path(lang): Path<String>,
    headers: HeaderMap,
) -> Response {
    let lang = match lang.as_str() {
        "zh" => "zh",
        _ => "en",
    };
    let back = headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.find("://").map(|i| &r[i + 3..]))
        .and_then(|rest| rest.find('/').map(|i| rest[i..].to_owned()))
        .filter(|path| path.starts_with('/') && !path.starts_with("//"))
        .unwrap_or_else(|| "/".to_owned());
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "lang={lang}; Path=/; SameSite=Strict; Max-Age=31536000{}",
                    if console.secure_cookies {
                        "; Secure"
                    } else {
                        ""
                    }
                ),
            ),
            (header::LOCATION, back),
        ],
    )
        .into_response()
}
