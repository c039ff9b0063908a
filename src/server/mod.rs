//! Wiring: opens the store, loads the policies, and serves every gRPC service until told to
//! stop, then flushes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::api::auth::AuthLayer;
use crate::api::{AdminService, DecisionService};
use crate::clock::Clock;
use crate::config::{ServeArgs, StoreKind};
use crate::decision_log::{DecisionLog, Retention};
use crate::error::PdpError;
use crate::policy::{PolicyHandle, PolicyLoadError};
use crate::proto::policy_admin_server::PolicyAdminServer;
use crate::proto::policy_decision_point_server::PolicyDecisionPointServer;
use crate::service::Pdp;
use crate::store::Store;

mod reload;
mod trust;

use reload::{reload_on_sighup, watch_policies};
pub use trust::check_exposure;
use trust::{
    auth_mode, authenticator, check_exposure_quietly, console_tls, crypto, hook_secrets, tls_config,
};

/// Calls in flight on one connection; past this latency only grows (see DESIGN.md).
const CONCURRENCY_PER_CONNECTION: usize = 64;
/// HTTP/2 streams one connection may hold open (watch streams included).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policies(#[from] PolicyLoadError),
    #[error("store: {0}")]
    Store(#[from] PdpError),
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source, flag))]
    Bind {
        addr: std::net::SocketAddr,
        /// The flag that set the address, for the hint.
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot watch the policy directory: {0}")]
    Watch(#[from] notify::Error),
    #[error("--nginx-control: {0}")]
    NginxControl(String),
    #[error("hook listener: {0}")]
    Hooks(std::io::Error),
    #[error("{0}")]
    Auth(String),
    #[error("cannot write the built-in policy set: {0}")]
    BuiltInPolicies(String),
    #[error("--console-image-prefix: {0}")]
    Console(String),
}

fn bind_hint(source: &std::io::Error, flag: &str) -> String {
    match source.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            " (another process, perhaps another anchor-pdp, listens there: stop it, or give \
             this one another address with {flag})"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!(" (no interface here has that address: fix {flag})")
        }
        _ => String::new(),
    }
}

/// Serves the console: over TLS (its sign-in then also takes client certificates) when the
/// server has a certificate, else plain HTTP on loopback or behind a TLS proxy.
async fn serve_console(
    addr: std::net::SocketAddr,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    console: Arc<crate::console::Console>,
    limits: crate::net::HookLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    let app = crate::console::router(console);
    match tls {
        Some(tls) => {
            tracing::info!(%addr, "console listening (HTTPS)");
            crate::net::serve_https(listener, app, limits, tls, stop).await;
        }
        None => {
            tracing::info!(%addr, "console listening (HTTP)");
            crate::net::serve_http(listener, app, limits, stop).await;
        }
    }
}

/// The sockets a server answers on: gRPC always, gateway hooks if configured.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    /// Prometheus `/metrics`, if configured.
    pub metrics: Option<TcpListener>,
    /// The browser console, if configured.
    pub console: Option<TcpListener>,
}

/// Envoy's ext_authz service, described for reflection (its code comes from envoy-types).
const ENVOY_EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));

/// Loads policies and opens the store. Refuses an invalid policy set before touching the store.
pub async fn open(args: &ServeArgs, clock: Arc<dyn Clock>) -> Result<Arc<Pdp>, StartError> {
    crypto();
    let (policy_dir, policy_source) = policy_dir(args)?;
    let policies = PolicyHandle::load(&policy_dir, clock.now_ms())?
        .allowing_rule_removal(args.allow_rule_removal);
    let segment_bytes = args.decision_log_segment_mib << 20;
    let store = match args.store {
        StoreKind::Sled => Store::open_with(&args.data_dir, segment_bytes, args.disk_options())?,
        StoreKind::Etcd => {
            Store::open_etcd(
                &args.data_dir,
                segment_bytes,
                args.disk_options(),
                args.etcd_options(),
            )
            .await?
        }
    };
    if let Some(restore) = store.unfinished_restore().await? {
        return Err(StartError::Store(PdpError::FailedPrecondition(format!(
            "a restore into this store began and did not finish (the backup of a {} store at \
             revision {}, {} keys): it holds only part of it and will not serve. Run the same \
             `anchor-pdp restore --from FILE` against it again: it resumes",
            restore.backend, restore.revision, restore.keys
        ))));
    }
    let current = policies.current();
    tracing::info!(
        policies = %policy_source,
        policy_version = %current.version(),
        rules = current.rules().count(),
        data_dir = %args.data_dir.display(),
        store = %store.backend_name(),
        replica = %store.replica(),
        "loaded"
    );
    let store = Arc::new(store);
    let log = DecisionLog::start(
        store.clone(),
        args.decision_log_queue,
        args.decision_log_overflow,
    );
    let images = crate::images::ImageSource::new(&args.console_image_prefixes)
        .map_err(StartError::Console)?;
    Ok(Arc::new(
        Pdp::new(
            store,
            Arc::new(policies),
            clock,
            Duration::from_secs(args.recheck_secs),
            log,
        )
        .with_images(images),
    ))
}

/// The policy directory to serve, and how to name it in the log: `--policies` when given or
/// present; the built-in set (written under the data directory) when the default is missing.
fn policy_dir(args: &ServeArgs) -> Result<(std::path::PathBuf, String), StartError> {
    let default = std::path::Path::new(crate::policy::builtin::DEFAULT_DIR);
    if args.policies != default || args.policies.is_dir() {
        return Ok((args.policies.clone(), args.policies.display().to_string()));
    }
    let dir = args.data_dir.join("built-in-policies");
    crate::policy::builtin::materialize(&dir).map_err(StartError::BuiltInPolicies)?;
    Ok((dir, "built-in".to_owned()))
}

/// Serves on `listener` until `shutdown` resolves, then waits for calls in flight and flushes
/// the store.
pub async fn serve(
    listeners: Listeners,
    pdp: Arc<Pdp>,
    args: &ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    crypto();
    crate::net::raise_open_file_limit();
    let controls = crate::gateway::nginx_control::parse_controls(&args.nginx_control)
        .map_err(StartError::NginxControl)?;
    let auth = Arc::new(authenticator(args)?);
    let secrets = Arc::new(hook_secrets(args)?);
    let gateway_options = Arc::new(trust::gateway_options(args)?);
    check_exposure(args, &auth, &secrets)?;
    let tls = tls_config(args)?;
    let max_message = usize::try_from(args.max_message_bytes).unwrap_or(usize::MAX);
    // One shutdown signal, fanned out to the gRPC and hook listeners and to open streams.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let retention = tokio::spawn(crate::decision_log::run_retention(
        pdp.store_handle(),
        pdp.clock(),
        Retention {
            max_age_days: args.decision_log_max_age_days,
            max_records: args.decision_log_max_records,
            history_max_age: (args.store == StoreKind::Etcd)
                .then(|| Duration::from_secs(args.etcd_history_mins * 60)),
        },
        Duration::from_secs(60),
    ));
    let published = tokio::spawn(
        pdp.clone()
            .follow_published_policies(args.data_dir.join("published-policies")),
    );
    let streams = crate::api::calls::StreamSlots::new(
        usize::try_from(args.max_streams).unwrap_or(usize::MAX),
    );
    let decision = PolicyDecisionPointServer::new(DecisionService::new(
        pdp.clone(),
        stopped.clone(),
        streams.clone(),
    ))
    .max_decoding_message_size(max_message);
    let admin = PolicyAdminServer::new(AdminService::new(pdp.clone(), stopped.clone(), streams))
        .max_decoding_message_size(max_message);
    let ext_authz = crate::gateway::envoy::AuthorizationServer::new(
        crate::gateway::envoy::EnvoyAuthorization::new(pdp.clone()),
    )
    .max_decoding_message_size(max_message);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PolicyDecisionPointServer<DecisionService>>()
        .await;
    health_reporter
        .set_serving::<PolicyAdminServer<AdminService>>()
        .await;

    let store_health = tokio::spawn(follow_store_health(pdp.clone(), health_reporter.clone()));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let watcher = if args.watch_policies {
        Some(watch_policies(pdp.clone())?)
    } else {
        None
    };
    let sighup = reload_on_sighup(
        pdp.clone(),
        reload::Live {
            auth: auth.clone(),
            hook_secrets: secrets.clone(),
            gateway: gateway_options.clone(),
        },
    );

    let stop_when = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let hooks = match listeners.http {
        Some(listener) => {
            let addr = listener.local_addr().map_err(StartError::Hooks)?;
            tracing::info!(%addr, "gateway hooks listening (HTTP)");
            let app =
                crate::gateway::hooks_router(pdp.clone(), secrets.clone(), gateway_options.clone());
            let until = stop_when(stopped.clone());
            let limits = args.hook_limits();
            Some(tokio::spawn(crate::net::serve_http(
                listener, app, limits, until,
            )))
        }
        None => None,
    };
    // Without a metrics listener no recorder is installed, and every metric is a no-op.
    let metrics = match listeners
        .metrics
        .and_then(|listener| Some((listener, crate::metrics::install()?)))
    {
        Some((listener, handle)) => {
            let addr = listener.local_addr().map_err(StartError::Hooks)?;
            tracing::info!(%addr, "metrics listening (HTTP: /metrics, /healthz, /readyz)");
            let app = crate::metrics::router(pdp.clone(), handle)
                .merge(crate::metrics::probes(pdp.clone()));
            Some(tokio::spawn(crate::net::serve_http(
                listener,
                app,
                args.hook_limits(),
                stop_when(stopped.clone()),
            )))
        }
        None => None,
    };
    let console = match listeners.console {
        Some(listener) => Some(tokio::spawn(serve_console(
            listener.local_addr().map_err(StartError::Hooks)?,
            listener,
            console_tls(args)?,
            crate::console::Console::new(pdp.clone(), auth.clone(), args.tls_cert.is_some()),
            args.hook_limits(),
            stop_when(stopped.clone()),
        ))),
        None => None,
    };
    let image_check = pdp.images().is_some().then(|| {
        tokio::spawn(crate::service::image_check::run(
            pdp.clone(),
            Duration::from_secs(args.image_recheck_secs),
        ))
    });
    let dropper = (!controls.is_empty())
        .then(|| tokio::spawn(crate::gateway::nginx_control::run(pdp.clone(), controls)));
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });

    let incoming = crate::net::grpc_incoming(listeners.grpc, args.grpc_limits());
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder =
            builder.tls_config(tls.timeout(Duration::from_secs(args.handshake_timeout_secs)))?;
    }
    let served = builder
        .http2_keepalive_interval(Some(Duration::from_secs(args.keepalive_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(args.keepalive_timeout_secs)))
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(crate::api::calls::CallLayer::new(
            crate::api::calls::CALL_LIMIT,
        ))
        .layer(AuthLayer::new(auth))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(decision)
        .add_service(admin)
        .add_service(ext_authz)
        .serve_with_incoming_shutdown(incoming, stop_when(stopped))
        .await;
    signal.abort();
    if let Some(hooks) = hooks
        && let Err(e) = hooks.await
    {
        tracing::error!(error = %e, "hook listener task failed");
    }
    if let Some(metrics) = metrics
        && let Err(e) = metrics.await
    {
        tracing::error!(error = %e, "metrics listener task failed");
    }
    if let Some(console) = console
        && let Err(e) = console.await
    {
        tracing::error!(error = %e, "console listener task failed");
    }
    if let Some(image_check) = image_check {
        image_check.abort();
    }
    if let Some(dropper) = dropper {
        dropper.abort();
    }
    retention.abort();
    published.abort();
    store_health.abort();
    // The log's writer stops last, after the servers have answered everything in flight.
    pdp.decision_log().close().await;
    if let Some((watcher, task)) = watcher {
        drop(watcher);
        task.abort();
    }
    if let Some(task) = sighup {
        task.abort();
    }
    served?;
    pdp.store().flush_blocking()?;
    tracing::info!("stopped; store flushed");
    Ok(())
}

/// Binds the configured address and serves until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs, clock: Arc<dyn Clock>) -> Result<(), StartError> {
    let shutdown = shutdown_signal();
    let auth = authenticator(&args)?;
    check_exposure_quietly(&args, &auth, &hook_secrets(&args)?)?;
    tls_config(&args)?;
    let pdp = open(&args, clock).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.listen,
            flag: "--listen",
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: args.listen,
        flag: "--listen",
        source,
    })?;
    tracing::info!(
        %addr,
        auth = %auth_mode(&args),
        tls = args.tls_cert.is_some(),
        "anchor-pdp listening (gRPC)"
    );
    let http = match args.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    flag: "--http-listen",
                    source,
                })?,
        ),
        None => None,
    };
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    flag: "--metrics-listen",
                    source,
                })?,
        ),
        None => None,
    };
    let console = match args.console_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    flag: "--console-listen",
                    source,
                })?,
        ),
        None => None,
    };
    serve(
        Listeners {
            grpc: listener,
            http,
            metrics,
            console,
        },
        pdp,
        &args,
        shutdown,
    )
    .await
}

/// SIGTERM or SIGINT, as a future. The handlers are registered when this is called, not when
/// it is first awaited: `run` calls it before any listener is bound, so a signal that arrives
/// once the server can be reached stops it gracefully instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            let (mut terminate, mut interrupt) = match (terminate, interrupt) {
                (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
                    return std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// How often a store that failed a write is probed.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Health follows the store: the server (service `""`, what load balancers and Envoy probe by
/// default) and the PDP services are NOT_SERVING while writes or decision-log appends fail (a
/// disk at its reserve, an I/O error), so an orchestrator can route around or restart the
/// server, and SERVING again once a probe write is durable (the store reopens itself if it
/// must, and only once there is room). Decisions fail closed meanwhile on their own, since
/// nothing can be recorded.
async fn follow_store_health(pdp: Arc<Pdp>, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let store = pdp.store_handle();
    let mut failures = store.subscribe_write_failure();
    let set_all = |status: ServingStatus| {
        let reporter = reporter.clone();
        async move {
            reporter.set_service_status("", status).await;
            for service in [
                <PolicyDecisionPointServer<DecisionService> as tonic::server::NamedService>::NAME,
                <PolicyAdminServer<AdminService> as tonic::server::NamedService>::NAME,
            ] {
                reporter.set_service_status(service, status).await;
            }
            metrics::gauge!("anchor_pdp_store_writable").set(if status == ServingStatus::Serving {
                1.0
            } else {
                0.0
            });
        }
    };
    loop {
        let failure = failures.borrow_and_update().clone();
        let Some(reason) = failure else {
            set_all(ServingStatus::Serving).await;
            if failures.changed().await.is_err() {
                return;
            }
            continue;
        };
        set_all(ServingStatus::NotServing).await;
        tracing::error!(%reason, "NOT_SERVING: the store cannot write; probing it every second");
        loop {
            tokio::time::sleep(STORE_PROBE_INTERVAL).await;
            let probe = store.clone();
            let now = pdp.now();
            match tokio::task::spawn_blocking(move || probe.recover(now)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => tracing::warn!(error = %e, "the store still cannot write"),
                Err(e) => tracing::error!(error = %e, "store probe task failed"),
            }
        }
    }
}
