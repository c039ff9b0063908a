//! Who may call what. Callers present `authorization: Bearer TOKEN`; the server knows each
//! token only by its SHA-256 and the role it is bound to. A tower layer in front of every gRPC
//! service authenticates the caller and checks the method against the role; the `Register`
//! handler narrows registrars to merchant-owned filings. Health and reflection stay open.
//! With no token configured every caller is an anonymous admin, which is why the server then
//! refuses any address but loopback.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tonic::Status;

use crate::domain::MerchantScope;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Authorize, EndSession, WatchEnforcements, Envoy's Check.
    Gateway,
    /// Register of merchant-owned filings (anchors, drivers, rooms).
    Registrar,
    /// Review verdicts, and the admin reads.
    Reviewer,
    /// Violation reports, and the admin reads.
    Inspector,
    /// Everything.
    Admin,
}

impl Role {
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "gateway" => Some(Role::Gateway),
            "registrar" => Some(Role::Registrar),
            "reviewer" => Some(Role::Reviewer),
            "inspector" => Some(Role::Inspector),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Registrar => "registrar",
            Role::Reviewer => "reviewer",
            Role::Inspector => "inspector",
            Role::Admin => "admin",
        }
    }
}

/// The authenticated caller, put in each request's extensions for handlers and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The merchants it may file for (registrars); `All` for every other role.
    pub merchants: MerchantScope,
}

impl Caller {
    /// Every caller when no token is configured (loopback only).
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            role: Role::Admin,
            merchants: MerchantScope::All,
        }
    }
}

/// A role as configured: `gateway`, `reviewer`, `inspector`, `admin`, or a registrar bound to
/// its merchants, `registrar@m1+m2`, or to all of them, `registrar@*` (a platform service).
pub fn parse_role(spec: &str) -> Result<(Role, MerchantScope), String> {
    let (name, scope) = match spec.split_once('@') {
        Some((name, scope)) => (name, Some(scope)),
        None => (spec, None),
    };
    let role = Role::parse(name).ok_or_else(|| {
        format!(
            "unknown role {name:?}; use gateway, registrar@MERCHANTS, reviewer, inspector or admin"
        )
    })?;
    let merchants = match (role, scope) {
        (Role::Registrar, None) => {
            return Err(
                "a registrar is bound to its merchants: registrar@m1+m2, or registrar@* for a \
                 platform service that files for every merchant"
                    .into(),
            );
        }
        (Role::Registrar, Some("*")) => MerchantScope::All,
        (Role::Registrar, Some(list)) => {
            let mut merchants = std::collections::BTreeSet::new();
            for merchant in list.split('+') {
                merchants.insert(
                    crate::api::convert::id("merchant", merchant).map_err(|e| e.to_string())?,
                );
            }
            MerchantScope::Only(merchants)
        }
        (_, Some(_)) => {
            return Err(format!(
                "only a registrar is bound to merchants, not {name}"
            ));
        }
        (_, None) => MerchantScope::All,
    };
    Ok((role, merchants))
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role.name())
    }
}

/// Tokens shorter than this are refused: a token is a secret, not a password to remember
/// (`openssl rand -hex 32` gives 64 characters).
pub const MIN_TOKEN_LEN: usize = 32;

/// Whether `token` is fit to be a caller token or hook secret.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "a token must be at least {MIN_TOKEN_LEN} characters (this one has {}); make one with `openssl rand -hex 32`",
            token.chars().count()
        ));
    }
    if token.chars().any(char::is_whitespace) {
        return Err("a token cannot contain whitespace".into());
    }
    Ok(())
}

/// `sha256:<hex>` of a token: the only form a token is configured in.
pub fn hash_token(token: &str) -> String {
    format!("sha256:{}", crate::domain::sha256_hex(token))
}

struct TokenEntry {
    caller: Caller,
    digest: [u8; 32],
}

/// A credential a console sign-in was made with.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    Token(&'a str),
    Certificate(&'a str),
}

const ANONYMOUS_CREDENTIAL: &str = "anonymous";

/// The configured tokens and certificate subjects.
#[derive(Default)]
pub struct Authenticator {
    /// Replaced whole by a SIGHUP after the config file's tokens changed (`replace_tokens`).
    tokens: std::sync::RwLock<Vec<TokenEntry>>,
    /// Client-certificate subject CN → caller (mTLS).
    subjects: std::collections::HashMap<String, Caller>,
}

pub(crate) fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// Equal without an early exit, so the time taken says nothing about where they differ.
pub(crate) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// From `NAME:ROLE:sha256:HEX` entries (`anchor-pdp token hash` prints the hash).
    pub fn from_specs(specs: &[String]) -> Result<Authenticator, String> {
        let mut tokens = Vec::new();
        for spec in specs {
            let mut parts = spec.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "--token {spec:?}: expected NAME:ROLE:sha256:HEX (never the token itself)"
                ));
            };
            let (role, merchants) = parse_role(role).map_err(|e| format!("--token {name}: {e}"))?;
            let digest = hash
                .strip_prefix("sha256:")
                .and_then(parse_digest)
                .ok_or_else(|| {
                    format!("--token {name}: the hash must be sha256:<64 hex digits>")
                })?;
            if name.is_empty() {
                return Err("--token: the caller name is empty".into());
            }
            if let Some(first) = tokens.iter().find(|t: &&TokenEntry| t.digest == digest) {
                return Err(format!(
                    "--token {name} has the same hash as --token {}: a token names one caller",
                    first.caller.name
                ));
            }
            tokens.push(TokenEntry {
                caller: Caller {
                    name: name.to_owned(),
                    role,
                    merchants,
                },
                digest,
            });
        }
        Ok(Authenticator {
            tokens: std::sync::RwLock::new(tokens),
            subjects: Default::default(),
        })
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, Vec<TokenEntry>> {
        // A writer never panics while holding it (it only swaps the vector in).
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the tokens with `specs` (a SIGHUP after the config file's changed); returns how
    /// many there are now. Refused, the old ones kept, if `specs` is invalid or would leave the
    /// server with no caller authentication while it has some: it may listen beyond loopback,
    /// which only a restart re-checks.
    pub fn replace_tokens(&self, specs: &[String]) -> Result<usize, String> {
        let new = Authenticator::from_specs(specs)?
            .tokens
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        if new.is_empty() && self.subjects.is_empty() && self.enabled() {
            return Err(
                "no token would be left, so every caller would be an admin: refused \
                        (restart to run without authentication)"
                    .into(),
            );
        }
        let count = new.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(count)
    }

    /// Adds `CN:ROLE` mappings for verified client certificates.
    pub fn with_subjects(mut self, specs: &[String]) -> Result<Authenticator, String> {
        for spec in specs {
            // Merchant ids may hold ':', so a registrar's scope is found by its role first.
            let (cn, role) = match spec.find(":registrar@") {
                Some(at) => (&spec[..at], &spec[at + 1..]),
                None => spec
                    .rsplit_once(':')
                    .ok_or_else(|| format!("--mtls-role {spec:?}: expected CN:ROLE"))?,
            };
            let (role, merchants) =
                parse_role(role).map_err(|e| format!("--mtls-role {spec:?}: {e}"))?;
            if cn.is_empty() {
                return Err(format!("--mtls-role {spec:?}: empty subject"));
            }
            self.subjects.insert(
                cn.to_owned(),
                Caller {
                    name: cn.to_owned(),
                    role,
                    merchants,
                },
            );
        }
        Ok(self)
    }

    /// The caller a verified client certificate's subject CN maps to (`--mtls-role`).
    pub fn certificate_caller(&self, common_name: &str) -> Option<Caller> {
        self.subjects.get(common_name).cloned()
    }

    /// How a console sign-in names the credential it was made with, to check later that the
    /// configuration still accepts it: `sha256:HEX` for a token, `cn:SUBJECT` for a client
    /// certificate, `anonymous` when no authentication is configured.
    pub fn credential(&self, via: Credential<'_>) -> String {
        match via {
            // As `authenticate`: without authentication any token is the anonymous admin.
            Credential::Token(_) if !self.enabled() => ANONYMOUS_CREDENTIAL.to_owned(),
            Credential::Token(token) => hash_token(token),
            Credential::Certificate(common_name) => format!("cn:{common_name}"),
        }
    }

    /// The caller a credential named by `credential` is configured as now, if it still is.
    pub fn caller_of_credential(&self, credential: &str) -> Option<Caller> {
        if !self.enabled() {
            return (credential == ANONYMOUS_CREDENTIAL).then(Caller::anonymous);
        }
        if let Some(common_name) = credential.strip_prefix("cn:") {
            return self.certificate_caller(common_name);
        }
        let digest = credential.strip_prefix("sha256:").and_then(parse_digest)?;
        self.token_caller(&digest)
    }

    /// The caller of the token whose SHA-256 is `digest`, compared in constant time.
    fn token_caller(&self, digest: &[u8; 32]) -> Option<Caller> {
        self.tokens()
            .iter()
            .find(|entry| same(&entry.digest, digest))
            .map(|entry| entry.caller.clone())
    }

    pub fn enabled(&self) -> bool {
        !self.tokens().is_empty() || !self.subjects.is_empty()
    }

    /// The caller a verified client certificate (its subject CN) or, failing that, an
    /// `authorization` header value proves.
    pub fn authenticate_peer(
        &self,
        certificate_cn: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Caller, Status> {
        if let Some(caller) = certificate_cn.and_then(|cn| self.subjects.get(cn)) {
            return Ok(caller.clone());
        }
        match (certificate_cn, authorization) {
            (Some(cn), None) if self.tokens().is_empty() => Err(Status::unauthenticated(format!(
                "client certificate subject {cn:?} has no role"
            ))),
            _ => self.authenticate(authorization),
        }
    }

    /// The caller an `authorization` header value proves.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Status> {
        if !self.enabled() {
            return Ok(Caller::anonymous());
        }
        // RFC 7235: the scheme is case-insensitive.
        let token = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.token_caller(&digest)
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.",
    "/grpc.reflection.v1.",
    "/grpc.reflection.v1alpha.",
];

/// Whether `role` may call the gRPC method at `path` at all. (`Register` is narrowed further
/// by record kind in its handler.)
pub fn may_call(role: Role, path: &str) -> bool {
    if role == Role::Admin {
        return true;
    }
    let method = path.rsplit('/').next().unwrap_or("");
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match (service, method) {
        ("anchorpdp.v1.PolicyDecisionPoint", "Authorize" | "EndSession" | "WatchEnforcements")
        | ("envoy.service.auth.v3.Authorization", "Check") => role == Role::Gateway,
        ("anchorpdp.v1.PolicyDecisionPoint", "Register") => role == Role::Registrar,
        ("anchorpdp.v1.PolicyAdmin", "ReviewFiling") => role == Role::Reviewer,
        ("anchorpdp.v1.PolicyAdmin", "ReportViolation") => role == Role::Inspector,
        (
            "anchorpdp.v1.PolicyAdmin",
            "GetRegistration" | "ListRegistrations" | "GetAccount" | "GetSession"
            | "ListLiveSessions" | "GetPolicyStatus",
        ) => matches!(role, Role::Reviewer | Role::Inspector),
        _ => false,
    }
}

/// The subject CN of the client certificate TLS verified for this connection, if any.
fn peer_common_name<B>(request: &http::Request<B>) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certificates = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    common_name(certificates.first()?)
}

/// A DER certificate's subject common name.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(common_name)
}

/// The caller a handler runs for (set by the layer; anonymous admin when auth is off).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous)
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        let header = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let certificate_cn = peer_common_name(&request);
        let verdict = self
            .auth
            .authenticate_peer(certificate_cn.as_deref(), header)
            .and_then(|caller| {
                if may_call(caller.role, &path) {
                    Ok(caller)
                } else {
                    Err(Status::permission_denied(format!(
                        "{caller} may not call {path}"
                    )))
                }
            });
        match verdict {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::warn!(
                    %path,
                    code = ?status.code(),
                    reason = status.message(),
                    "call refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_only_by_its_hash() {
        let hash = hash_token("s3cret-gw");
        let auth = Authenticator::from_specs(&[format!("edge-1:gateway:{hash}")])
            .unwrap_or_else(|e| panic!("{e}"));
        let caller = auth
            .authenticate(Some("Bearer s3cret-gw"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(caller.name, "edge-1");
        assert_eq!(caller.role, Role::Gateway);
        for scheme in ["bearer", "BEARER"] {
            let caller = auth
                .authenticate(Some(&format!("{scheme} s3cret-gw")))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(caller.name, "edge-1");
        }
        let twice = Authenticator::from_specs(&[
            format!("edge-1:gateway:{hash}"),
            format!("ops:admin:{hash}"),
        ]);
        assert!(twice.is_err_and(|e| e.contains("same hash")));
        for bad in [
            None,
            Some("Basic s3cret-gw"),
            Some("Bearer wrong"),
            Some("s3cret-gw"),
            Some("Bearer "),
        ] {
            let refused = auth.authenticate(bad).map(|_| ()).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
        assert!(Authenticator::from_specs(&["x:gateway:s3cret".into()]).is_err());
        assert!(Authenticator::from_specs(&[format!("x:root:{hash}")]).is_err());
    }

    #[test]
    fn roles_map_to_methods() {
        let pdp = "/anchorpdp.v1.PolicyDecisionPoint/";
        let admin = "/anchorpdp.v1.PolicyAdmin/";
        assert!(may_call(Role::Gateway, &format!("{pdp}Authorize")));
        assert!(!may_call(Role::Gateway, &format!("{pdp}Register")));
        assert!(may_call(Role::Registrar, &format!("{pdp}Register")));
        assert!(!may_call(
            Role::Registrar,
            &format!("{admin}SetProviderListing")
        ));
        assert!(!may_call(Role::Registrar, &format!("{admin}ReviewFiling")));
        assert!(may_call(Role::Reviewer, &format!("{admin}ReviewFiling")));
        assert!(!may_call(
            Role::Reviewer,
            &format!("{admin}ReportViolation")
        ));
        assert!(may_call(
            Role::Inspector,
            &format!("{admin}ReportViolation")
        ));
        assert!(!may_call(Role::Inspector, &format!("{admin}LiftFreeze")));
        assert!(may_call(Role::Admin, &format!("{admin}LiftFreeze")));
        assert!(may_call(
            Role::Gateway,
            "/envoy.service.auth.v3.Authorization/Check"
        ));
    }
}
