//! How anchor-pdp holds up with a large registered population: N merchants, each with an
//! approved room, anchor and driver (4N registrations), written straight into a data dir.
//! Then the server binary is started on it and measured: time to SERVING, resident memory,
//! and LIVE re-checks at 64 in flight.
//!
//!     cargo bench --bench population                 # 1,000,000 anchors
//!     cargo bench --bench population -- 100000       # 100,000
//!     ANCHOR_PDP_BENCH_IDLE_SECONDS=300 cargo bench --bench population -- 1000 1000000
//!         # 1,000 anchors and 1,000,000 decision-log records, then the idle server watched 5 min

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anchor_pdp::domain::{
    ImageStyle, LogRecord, ProviderListing, RecordBody, Registration, ReviewStatus, Tier,
};
use anchor_pdp::proto;
use anchor_pdp::store::Store;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn registration(id: String, body: RecordBody, review_status: ReviewStatus) -> Registration {
    Registration {
        id,
        revision: 1,
        review_status,
        last_review: None,
        created_at: 0,
        updated_at: 0,
        body,
        provider_listing: None,
        ai_feature_clearance: None,
    }
}

/// Merchant `i`'s four registrations.
fn merchant(i: u64) -> [Registration; 4] {
    let m = format!("m{i}");
    [
        registration(
            m.clone(),
            RecordBody::Merchant {
                tier: Tier::ChineseGoldSupplier,
                display_name: format!("Merchant {i}"),
            },
            ReviewStatus::NotRequired,
        ),
        registration(
            format!("r{i}"),
            RecordBody::Room {
                owner_merchant_id: m.clone(),
                display_name: format!("Room {i}"),
            },
            ReviewStatus::Approved,
        ),
        registration(
            format!("a{i}"),
            RecordBody::Anchor {
                owner_merchant_id: m.clone(),
                provider_id: "p1".into(),
                image_style: ImageStyle::RealisticHuman,
                image_reference: format!("oss://anchors/{i}.png"),
                display_name: format!("Anchor {i}"),
                likeness_of: String::new(),
                consent_id: String::new(),
            },
            ReviewStatus::Approved,
        ),
        registration(
            format!("d{i}"),
            RecordBody::Driver {
                owner_merchant_id: m,
                identity_reference: format!("kyc-{i}"),
                display_name: format!("Driver {i}"),
            },
            ReviewStatus::Approved,
        ),
    ]
}

fn resident_mib(pid: u32) -> u64 {
    common::resident_kib(&pid.to_string()) >> 10
}

/// A process's CPU time (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    common::process_usage(&pid.to_string()).0.as_secs_f64()
}

/// A LIVE allow's record, as the server writes it.
fn record(merchant: u64, at: i64) -> LogRecord {
    LogRecord {
        id: uuid::Uuid::now_v7().to_string(),
        at,
        action: "authorize".into(),
        caller: "gateway gw-1 (hook)".into(),
        entry_point: "nginx-rtmp".into(),
        gateway_id: "gw-1".into(),
        merchant_id: format!("m{merchant}"),
        session_id: uuid::Uuid::now_v7().to_string(),
        request: serde_json::json!({
            "phase": "PHASE_LIVE",
            "sessionId": "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
            "gatewayId": "gw-1",
        }),
        allowed: Some(true),
        rule_ids: vec![],
        warning_rule_ids: vec![],
        enforcement: "NONE".into(),
        policy_version: "sha256:652765a64a907bd3".into(),
        outcome: "ok".into(),
        explanation: None,
        penalty_applied: None,
        warning_issued: false,
        cause_id: String::new(),
        change: String::new(),
        commit: 0,
    }
}

fn live(session_id: &str) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        phase: proto::Phase::Live as i32,
        session_id: session_id.into(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let anchors: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let log_records: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    let idle_seconds: u64 = std::env::var("ANCHOR_PDP_BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("data");

    let filled = Instant::now();
    {
        let store = Store::open(&data)?;
        let mut provider = registration(
            "p1".into(),
            RecordBody::Provider {
                display_name: "Provider".into(),
            },
            ReviewStatus::NotRequired,
        );
        provider.provider_listing = Some(ProviderListing {
            listed: true,
            changed_at: Some(0),
            changed_by: "bench".into(),
        });
        store.import(&[provider], &[]).await?;
        let batch = 2_500;
        for first in (0..anchors).step_by(batch) {
            let records: Vec<Registration> = (first..(first + batch as u64).min(anchors))
                .flat_map(merchant)
                .collect();
            store.import(&records, &[]).await?;
        }
        // Decision-log records as LIVE re-checks write them, in batches as the writer does.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let mut written = 0;
        while written < log_records {
            let batch: Vec<LogRecord> = (written..(written + 512).min(log_records))
                .map(|n| record(n % anchors.max(1), now))
                .collect();
            written += batch.len() as u64;
            store.append_log(batch).await?;
        }
        store.flush_blocking()?;
    }
    if log_records > 0 {
        println!("wrote {log_records} decision-log records");
    }
    println!(
        "filled {anchors} merchants with a room, anchor and driver each ({} registrations) in {:.1} s",
        anchors * 4 + 1,
        filled.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_anchor-pdp"))
        .args(["serve", "--listen", &addr, "--watch-policies", "false"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--policies")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .env_remove("ANCHOR_PDP_TOKENS")
        // The store's open says where the start's time went.
        .env("RUST_LOG", "warn,anchor_pdp::store::sled_store=info")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    // Stopped when dropped, also when a step below fails.
    let server = common::load::Stopping(child);
    let channel = loop {
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the server did not start within 300 s".into());
        }
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let serving = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "anchorpdp.v1.PolicyDecisionPoint".into(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if serving {
                break channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let to_serving = started.elapsed();
    println!(
        "restart to SERVING: {:.2} s; RSS {} MiB",
        to_serving.as_secs_f64(),
        resident_mib(pid)
    );

    let mut pdp = anchor_pdp::PolicyDecisionPointClient::new(channel);
    let middle = anchors / 2;
    let start = proto::AuthorizeRequest {
        phase: proto::Phase::Start as i32,
        merchant_id: format!("m{middle}"),
        room_id: format!("r{middle}"),
        anchor_id: format!("a{middle}"),
        driver_id: format!("d{middle}"),
        livestream_type: proto::LivestreamType::DailyMarketing as i32,
        drive_mode: proto::DriveMode::RealPerson as i32,
        ..Default::default()
    };
    let opened = pdp.authorize(start).await?.into_inner();
    if opened.decision != proto::Decision::Allow as i32 {
        return Err(format!("merchant {middle} was refused: {:?}", opened.violations).into());
    }
    let calls = Arc::new(AtomicU64::new(0));
    let load = Instant::now();
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let mut pdp = pdp.clone();
            let session = opened.session_id.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                while load.elapsed() < Duration::from_secs(4) {
                    let reply = pdp.authorize(live(&session)).await?.into_inner();
                    if reply.decision != proto::Decision::Allow as i32 {
                        return Err::<(), Box<dyn std::error::Error + Send + Sync>>(
                            "a LIVE re-check was denied".into(),
                        );
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    println!(
        "LIVE allow @64 in flight: {:.0}/s; RSS after {} MiB",
        calls.load(Ordering::Relaxed) as f64 / load.elapsed().as_secs_f64(),
        resident_mib(pid)
    );
    backup_under_writes(&mut pdp, &addr, pid).await?;
    if idle_seconds > 0 {
        let cpu_before = cpu_seconds(pid);
        let rss_before = resident_mib(pid);
        let mut rss_max = rss_before;
        let idle = Instant::now();
        while idle.elapsed() < Duration::from_secs(idle_seconds) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            rss_max = rss_max.max(resident_mib(pid));
        }
        println!(
            "idle {idle_seconds} s: server cpu {:.3}% of one core, RSS {rss_before} -> {} MiB (max {rss_max} MiB)",
            (cpu_seconds(pid) - cpu_before) / idle.elapsed().as_secs_f64() * 100.0,
            resident_mib(pid),
        );
    }
    drop(server);
    Ok(())
}

/// A backup of the whole store while one client registers merchants back to back: how long it
/// takes, how big it is, and how long the writes took meanwhile (on sled they go on while the
/// copy is read).
async fn backup_under_writes(
    pdp: &mut anchor_pdp::PolicyDecisionPointClient<tonic::transport::Channel>,
    addr: &str,
    pid: u32,
) -> Result<()> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (mut pdp, stop) = (pdp.clone(), stop.clone());
        tokio::spawn(async move {
            let mut writes: Vec<(Instant, Duration)> = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let asked = Instant::now();
                pdp.register(proto::RegisterRequest {
                    request_id: String::new(),
                    record: Some(proto::register_request::Record::Merchant(proto::Merchant {
                        id: format!("backup-writer-{}", writes.len()),
                        tier: proto::MerchantTier::Other as i32,
                        display_name: String::new(),
                    })),
                    expected_revision: None,
                })
                .await?;
                writes.push((asked, asked.elapsed()));
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(writes)
        })
    };
    // The writer's pace before the backup, for comparison.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut admin = anchor_pdp::PolicyAdminClient::new(channel).max_decoding_message_size(64 << 20);
    let began = Instant::now();
    let mut stream = admin
        .backup(proto::BackupRequest {
            with_decision_log: false,
        })
        .await?
        .into_inner();
    let (mut bytes, mut rss_max) = (0usize, resident_mib(pid));
    let mut first_byte = None;
    while let Some(chunk) = stream.message().await? {
        first_byte.get_or_insert_with(|| began.elapsed());
        bytes += chunk.data.len();
        rss_max = rss_max.max(resident_mib(pid));
    }
    let took = began.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let writes = writer.await??;
    // Writes in flight at any moment of the backup, and the others.
    let (during, outside): (Vec<_>, Vec<_>) = writes
        .iter()
        .partition(|(asked, latency)| *asked < began + took && *asked + *latency > began);
    let slowest_ms = |writes: &[&(Instant, Duration)]| {
        writes
            .iter()
            .map(|(_, l)| l.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max)
    };
    println!(
        "backup under writes: {:.1} MiB in {:.2} s (first byte after {:.2} s), server RSS max \
         {rss_max} MiB; Registers during it: {} (slowest {:.0} ms), outside it: {} (slowest \
         {:.0} ms)",
        bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        first_byte.unwrap_or_default().as_secs_f64(),
        during.len(),
        slowest_ms(&during),
        outside.len(),
        slowest_ms(&outside),
    );
    Ok(())
}
