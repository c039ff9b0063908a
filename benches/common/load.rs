//! The load the gRPC benches put on a server, and how they report it: calls from N tasks for a
//! while, with latency percentiles, the ratio to a baseline (the health check), and CPU and
//! bytes written per call, read from /proc.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use tonic::transport::Channel;

use super::process_usage;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One scenario's figures.
#[derive(Clone, Copy, Default)]
pub struct Figures {
    pub per_second: f64,
    pub p50_ms: f64,
}

/// Where the figures go: the table on stdout, and every row for `--json`.
#[derive(Default)]
pub struct Results {
    pub rows: std::sync::Mutex<Vec<serde_json::Value>>,
}

pub static RESULTS: std::sync::LazyLock<Results> = std::sync::LazyLock::new(Results::default);

/// What one scenario used: the server's CPU and disk writes, and the client's CPU.
pub struct Usage {
    pub server_cpu: Duration,
    pub server_written: u64,
    pub client_cpu: Duration,
}

#[allow(clippy::too_many_arguments)]
pub fn report(
    name: &str,
    in_flight: usize,
    calls: u64,
    elapsed: Duration,
    mut latencies: Vec<Duration>,
    usage: Usage,
    baseline: Option<Figures>,
) -> Figures {
    latencies.sort();
    let per_second = calls as f64 / elapsed.as_secs_f64();
    let ratio = baseline.map(|b| per_second / b.per_second);
    let ms = |p: f64| percentile(&latencies, p).as_secs_f64() * 1e3;
    let per_call = |total: f64| total / calls.max(1) as f64;
    let server_cpu_us = per_call(usage.server_cpu.as_secs_f64() * 1e6);
    let client_cpu_us = per_call(usage.client_cpu.as_secs_f64() * 1e6);
    let written = per_call(usage.server_written as f64);
    println!(
        "{:<40} {per_second:>8.0}/s {}   p50 {:>7.3}   p99 {:>7.3}   p999 {:>7.3} ms   server cpu {server_cpu_us:>6.1} µs   client cpu {client_cpu_us:>6.1} µs   disk {written:>7.0} B   per call",
        format!("{name} @{in_flight}"),
        ratio.map_or_else(|| "    base".to_owned(), |r| format!("{r:>7.2}x")),
        ms(0.50),
        ms(0.99),
        ms(0.999),
    );
    if let Ok(mut rows) = RESULTS.rows.lock() {
        rows.push(serde_json::json!({
            "scenario": name,
            "in_flight": in_flight,
            "calls": calls,
            "per_second": per_second,
            "ratio_to_health": ratio,
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "server_cpu_us_per_call": server_cpu_us,
            "client_cpu_us_per_call": client_cpu_us,
            "bytes_written_per_call": written,
        }));
    }
    Figures {
        per_second,
        p50_ms: ms(0.50),
    }
}

/// The server binary in a process of its own, as in production, so that its CPU and disk
/// writes can be read apart from the load generator's.
pub struct ServerProcess {
    pub child: Stopping,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub async fn start() -> Result<ServerProcess> {
        Self::start_with(&[]).await
    }

    /// `start`, with these further `serve` arguments.
    pub async fn start_with(extra: &[String]) -> Result<ServerProcess> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_anchor-pdp"))
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--watch-policies",
                "false",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--policies")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
            .args(extra)
            .env_remove("ANCHOR_PDP_TOKENS")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let server = ServerProcess {
            child: Stopping(child),
            addr,
            _dir: dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("the server process did not start listening".into())
    }

    pub fn proc(&self) -> String {
        self.child.0.id().to_string()
    }
}

/// A server process that is stopped (TERM, then reaped) when this is dropped: at the end of a
/// bench and on every early return or panic, so no server outlives the bench that started it.
pub struct Stopping(pub std::process::Child);

impl Drop for Stopping {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Runs `call` from `in_flight` concurrent tasks for `duration`; every call must succeed.
pub async fn drive<F, Fut>(
    name: &str,
    server: &str,
    in_flight: usize,
    duration: Duration,
    baseline: Option<Figures>,
    call: F,
) -> Result<Figures>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let (server_cpu_before, written_before) = process_usage(server);
    let (client_cpu_before, _) = process_usage("self");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let call = call.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while start.elapsed() < duration {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                call(n).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let (server_cpu_after, written_after) = process_usage(server);
    let (client_cpu_after, _) = process_usage("self");
    let usage = Usage {
        server_cpu: server_cpu_after.saturating_sub(server_cpu_before),
        server_written: written_after.saturating_sub(written_before),
        client_cpu: client_cpu_after.saturating_sub(client_cpu_before),
    };
    Ok(report(
        name,
        in_flight,
        all.len() as u64,
        elapsed,
        all,
        usage,
        baseline,
    ))
}

/// A further room of m1, filed and approved.
pub async fn fixtures(
    pdp: &mut PolicyDecisionPointClient<Channel>,
    admin: &mut PolicyAdminClient<Channel>,
) -> Result<()> {
    let register = |record| proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    };
    pdp.register(register(Record::Merchant(proto::Merchant {
        id: "m1".into(),
        tier: proto::MerchantTier::ChineseGoldSupplier as i32,
        display_name: String::new(),
    })))
    .await?;
    pdp.register(register(Record::Provider(proto::ServiceProvider {
        id: "p1".into(),
        display_name: String::new(),
    })))
    .await?;
    admin
        .set_provider_listing(proto::SetProviderListingRequest {
            request_id: String::new(),
            provider_id: "p1".into(),
            listed: true,
            operator: "bench".into(),
            expected_revision: None,
        })
        .await?;
    for record in [
        anchor("a1", "m1", "p1"),
        driver("d1", "m1"),
        room("r1", "m1"),
    ] {
        file_approved(pdp, admin, record).await?;
    }
    Ok(())
}

/// An anchor of `owner`'s, made by `provider`, realistic.
pub fn anchor(id: &str, owner: &str, provider: &str) -> Record {
    Record::Anchor(proto::VirtualAnchor {
        id: id.into(),
        owner_merchant_id: owner.into(),
        provider_id: provider.into(),
        image_style: proto::ImageStyle::RealisticHuman as i32,
        image_reference: format!("oss://{id}"),
        display_name: String::new(),
        likeness_of: String::new(),
        consent_id: String::new(),
    })
}

pub fn driver(id: &str, owner: &str) -> Record {
    Record::Driver(proto::Driver {
        id: id.into(),
        owner_merchant_id: owner.into(),
        identity_reference: format!("kyc://{id}"),
        display_name: String::new(),
    })
}

pub fn room(id: &str, owner: &str) -> Record {
    Record::Room(proto::LivestreamRoom {
        id: id.into(),
        owner_merchant_id: owner.into(),
        display_name: String::new(),
    })
}

/// Files `record` and, if it is an anchor, driver or room filing, approves it.
pub async fn file_approved(
    pdp: &mut PolicyDecisionPointClient<Channel>,
    admin: &mut PolicyAdminClient<Channel>,
    record: Record,
) -> Result<()> {
    let filing = match &record {
        Record::Anchor(a) => Some((proto::RegistrationKind::Anchor, a.id.clone())),
        Record::Driver(d) => Some((proto::RegistrationKind::Driver, d.id.clone())),
        Record::Room(r) => Some((proto::RegistrationKind::Room, r.id.clone())),
        _ => None,
    };
    pdp.register(proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    })
    .await?;
    if let Some((kind, id)) = filing {
        admin
            .review_filing(proto::ReviewFilingRequest {
                kind: kind as i32,
                id,
                verdict: proto::Verdict::Approve as i32,
                reviewer: "bench".into(),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}
