//! Connections: what a peer may hold and for how long. gRPC connections must start their
//! handshake within a time limit (half-open sockets are closed, not kept), are capped in
//! number and kept alive by HTTP/2 pings; hook connections have header-read and request time
//! limits and a cap of their own; the process raises its open-file limit so that a flood on
//! one port does not starve the other. Every limit logs when it is hit.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The HTTP/2 connection preface every plaintext gRPC client sends first.
const H2_PREFACE_LEN: usize = 24;

/// How long a full accept queue backs off when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Raises the open-file limit to the hard limit: each connection is a descriptor, and the
/// default soft limit (often 1024) is what a connection flood exhausts first.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Counts how often a limit was hit, and logs the first time and then at powers of two, so a
/// flood is visible without flooding the log.
#[derive(Default)]
pub struct HitCounter(AtomicU64);

impl HitCounter {
    pub fn hit(&self, what: &'static str, limit: u64) {
        let hits = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        if hits.is_power_of_two() {
            tracing::warn!(limit, hits, "{what}");
        }
    }
}

/// A connection holding its slot under a connection cap until it closes.
pub struct Limited<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Limited<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts a connection and holds a slot for it, or says why not (the cap is reached).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    cap: usize,
    full: &HitCounter,
    what: &'static str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let (stream, peer) = match listener.accept().await {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::warn!(error = %e, "{what}: accept failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            return None;
        }
    };
    match slots.clone().try_acquire_owned() {
        Ok(slot) => Some((stream, peer, slot)),
        Err(_) => {
            full.hit(what, cap as u64);
            None
        }
    }
}

/// Whether `stream` sends `want` bytes (peeked, not consumed) before it closes.
async fn sends_first_bytes(stream: &TcpStream, want: usize) -> bool {
    let mut buf = [0u8; H2_PREFACE_LEN];
    let want = want.min(H2_PREFACE_LEN);
    loop {
        match stream.peek(&mut buf[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n >= want => return true,
            // Part of it: wait for the rest without spinning.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The gRPC listener's limits.
#[derive(Clone, Copy, Debug)]
pub struct GrpcLimits {
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// TLS: the first bytes are a ClientHello, not the HTTP/2 preface.
    pub tls: bool,
}

/// The gRPC connections to serve: each under the cap, and each having started its handshake
/// within the time limit. Ends when the server stops taking connections.
pub fn grpc_incoming(
    listener: TcpListener,
    limits: GrpcLimits,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Limited<TcpStream>>> {
    let (ready, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let full = Arc::new(HitCounter::default());
        let slow = Arc::new(HitCounter::default());
        let want = if limits.tls { 1 } else { H2_PREFACE_LEN };
        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener, &slots, limits.max_connections, &full, "gRPC connection cap reached: connection closed") => accepted,
                () = ready.closed() => return,
            };
            let Some((stream, _peer, slot)) = accepted else {
                continue;
            };
            // Delays of 40 ms come from Nagle otherwise (see DESIGN.md).
            let _ = stream.set_nodelay(true);
            let ready = ready.clone();
            let slow = slow.clone();
            tokio::spawn(async move {
                let started = tokio::time::timeout(
                    limits.handshake_timeout,
                    sends_first_bytes(&stream, want),
                )
                .await;
                match started {
                    Ok(true) => {
                        let _ = ready
                            .send(Ok(Limited {
                                io: stream,
                                _slot: slot,
                            }))
                            .await;
                    }
                    Ok(false) => {}
                    Err(_) => slow.hit(
                        "gRPC connection closed: no handshake within the time limit",
                        limits.handshake_timeout.as_secs(),
                    ),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// The hook listener's limits.
#[derive(Clone, Copy, Debug)]
pub struct HookLimits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

/// Serves plain HTTP routes (the gateway hooks, and metrics) under the hook listener's limits:
/// one request per connection (nginx-rtmp and SRS open one per hook, scrapers are content with
/// it), its headers within `header_timeout`, all of it within `request_timeout`, at most
/// `max_connections` at once. Returns when `stop` resolves, after the requests in flight.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: HookLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    serve(listener, app, limits, None, stop).await;
}

/// The verified client certificate's subject common name, on each request of a TLS
/// connection that presented one.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub String);

/// The address a request's connection came from (the console counts failed sign-ins by it).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// `serve_http` over TLS: the handshake must finish within `header_timeout`, and a client
/// certificate the configuration verified reaches every request as a `ClientCertificate`.
pub async fn serve_https(
    listener: TcpListener,
    app: axum::Router,
    limits: HookLimits,
    tls: Arc<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()>,
) {
    serve(
        listener,
        app,
        limits,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        stop,
    )
    .await;
}

async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HookLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let full = HitCounter::default();
    let slow = Arc::new(HitCounter::default());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &slots, limits.max_connections, &full, "hook connection cap reached: connection closed") => accepted,
            () = &mut stop => break,
        };
        let Some((stream, peer, slot)) = accepted else {
            continue;
        };
        let app = app.clone();
        let slow = slow.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(limits.request_timeout, async {
                match tls {
                    None => serve_connection(stream, app, None, peer, limits).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                        let stream = match handshake.await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                            Err(_) => {
                                slow.hit(
                                    "connection closed: no TLS handshake within the time limit",
                                    limits.header_timeout.as_secs(),
                                );
                                return Ok(());
                            }
                        };
                        let subject = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| crate::api::auth::common_name(leaf))
                            .map(ClientCertificate);
                        serve_connection(stream, app, subject, peer, limits).await
                    }
                }
            });
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_timeout() => slow.hit(
                    "hook connection closed: no request headers within the time limit",
                    limits.header_timeout.as_secs(),
                ),
                Ok(Err(e)) => tracing::debug!(error = %e, "hook connection ended"),
                Err(_) => slow.hit(
                    "hook connection closed: the request took longer than the time limit",
                    limits.request_timeout.as_secs(),
                ),
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    // Requests in flight finish (each is bounded by the request timeout).
    while connections.join_next().await.is_some() {}
}

/// One HTTP/1.1 request on `io`, answered by `app`, with `subject` on it if there is one.
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    subject: Option<ClientCertificate>,
    peer: std::net::SocketAddr,
    limits: HookLimits,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service =
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            if let Some(subject) = &subject {
                request.extensions_mut().insert(subject.clone());
            }
            request.extensions_mut().insert(PeerAddr(peer));
            // A Router is always ready: it is called without polling readiness first.
            tower::Service::call(&mut app.clone(), request)
        });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await
}

/// TLS for an HTTPS listener (the console): this certificate chain and key, and, when a client
/// CA is given, client certificates verified against it but not required, so that a browser
/// without one can still sign in with a token.
pub fn https_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate: {e}"))?;
    if chain.is_empty() {
        return Err("the TLS certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the TLS key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem) {
                let ca = ca.map_err(|e| format!("the client CA: {e}"))?;
                roots.add(ca).map_err(|e| format!("the client CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("the client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the TLS certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
