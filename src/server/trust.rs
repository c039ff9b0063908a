//! Who may reach the server, and over what: caller authentication, TLS for gRPC and the
//! console, hook secrets, and the refusal to listen beyond loopback without them.

use std::sync::Arc;

use super::StartError;
use crate::api::auth::Authenticator;
use crate::config::ServeArgs;
use crate::gateway::secrets::HookSecrets;

/// Says which callers are let in, for the start-up line.
pub(super) fn auth_mode(args: &ServeArgs) -> String {
    let tokens = args.tokens.len();
    match (tokens, args.client_ca.is_some()) {
        (0, false) => "none (every caller is an admin; loopback only)".to_owned(),
        (n, false) => format!("tokens ({n})"),
        (0, true) => "mTLS client certificates".to_owned(),
        (n, true) => format!("tokens ({n}) and mTLS client certificates"),
    }
}

pub(super) fn authenticator(args: &ServeArgs) -> Result<Authenticator, StartError> {
    Authenticator::from_specs(&args.tokens)
        .and_then(|auth| auth.with_subjects(&args.mtls_roles))
        .map_err(StartError::Auth)
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, StartError> {
    std::fs::read(path)
        .map_err(|e| StartError::Auth(format!("cannot read the {what} {}: {e}", path.display())))
}

/// TLS for the gRPC listener, with client-certificate verification when a client CA is set.
pub(super) fn tls_config(
    args: &ServeArgs,
) -> Result<Option<tonic::transport::ServerTlsConfig>, StartError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read_pem(cert, "TLS certificate")?,
        read_pem(key, "TLS key")?,
    ));
    if let Some(ca) = &args.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read_pem(ca, "client CA")?))
            .client_auth_optional(false);
    }
    Ok(Some(config))
}

/// The console's TLS: the gRPC listener's certificate and client CA, when it has them.
pub(super) fn console_tls(
    args: &ServeArgs,
) -> Result<Option<Arc<rustls::ServerConfig>>, StartError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let client_ca = match &args.client_ca {
        Some(ca) => Some(read_pem(ca, "client CA")?),
        None => None,
    };
    crate::net::https_config(
        &read_pem(cert, "TLS certificate")?,
        &read_pem(key, "TLS key")?,
        client_ca.as_deref(),
    )
    .map(|config| Some(Arc::new(config)))
    .map_err(|e| StartError::Auth(format!("console TLS: {e}")))
}

pub(super) fn hook_secrets(args: &ServeArgs) -> Result<HookSecrets, StartError> {
    HookSecrets::from_specs(&args.hook_secrets).map_err(StartError::Auth)
}

/// What the JSON-posting ingest servers' hooks need: OME's secrets and the playback choice.
pub(super) fn gateway_options(
    args: &ServeArgs,
) -> Result<crate::gateway::GatewayOptions, StartError> {
    Ok(crate::gateway::GatewayOptions {
        allow_playback: !args.deny_playback,
        ome_lifetime: args.ome_lifetime_secs.map(std::time::Duration::from_secs),
        ome_secrets: crate::gateway::ome::OmeSecrets::from_specs(&args.ome_secrets)
            .map_err(StartError::Auth)?,
    })
}

/// With no caller authentication, every caller is an admin, and without hook secrets anyone
/// who reaches the hooks is a gateway: refuse to listen beyond loopback in either case.
pub fn check_exposure(
    args: &ServeArgs,
    auth: &Authenticator,
    secrets: &HookSecrets,
) -> Result<(), StartError> {
    check_exposure_quietly(args, auth, secrets)?;
    if !auth.enabled() {
        tracing::warn!(
            "no caller authentication configured: every caller is an admin; listening on loopback only"
        );
    }
    Ok(())
}

/// `check_exposure` without the warning: for the check before the store opens.
pub(super) fn check_exposure_quietly(
    args: &ServeArgs,
    auth: &Authenticator,
    secrets: &HookSecrets,
) -> Result<(), StartError> {
    if let Some(addr) = args.console_listen
        && !addr.ip().is_loopback()
        && !auth.enabled()
    {
        return Err(StartError::Auth(format!(
            "refusing to open the console on {addr} without caller authentication: configure \
             --token for its reviewers, inspectors and admins, or listen on a loopback address"
        )));
    }
    if let Some(addr) = args.http_listen
        && !addr.ip().is_loopback()
        && !secrets.enabled()
    {
        return Err(StartError::Auth(format!(
            "refusing to open the gateway hooks on {addr} without hook secrets: configure \
             --hook-secret GATEWAY:sha256:HEX (hash a secret with `anchor-pdp token hash`) and \
             add ?pdp_secret=SECRET to that gateway's hook URLs, or listen on a loopback address"
        )));
    }
    if auth.enabled() {
        return Ok(());
    }
    if !args.listen.ip().is_loopback() {
        return Err(StartError::Auth(format!(
            "refusing to listen on {} without caller authentication: configure --token \
             (see `anchor-pdp token hash`), or listen on a loopback address",
            args.listen
        )));
    }
    Ok(())
}

/// Names rustls' crypto provider for the process: ring, as tonic's `tls-ring`. rustls picks one
/// by itself only when exactly one is compiled in, and a dependency (a test's WebDriver client,
/// say) can bring in a second; then every TLS handshake would panic. Installing it twice is
/// harmless.
pub(super) fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
