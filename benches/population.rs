//! How anchor-pdp holds up with a large registered population: N merchants, each with an
//! approved room, anchor and driver (4N registrations), written straight into a data dir.
//! Then the server binary is started on it and measured: time to SERVING, resident memory,
//! and LIVE re-checks at 64 in flight.
//!
//!     cargo bench --bench population                 # 1,000,000 anchors
//!     cargo bench --bench population -- 100000       # 100,000

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anchor_pdp::domain::{
    ImageStyle, ProviderListing, RecordBody, Registration, ReviewStatus, Tier,
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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 10)
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
    let anchors: u64 = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
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
        store.flush_blocking()?;
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
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_anchor-pdp"))
        .args(["serve", "--listen", &addr, "--watch-policies", "false"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--policies")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .env_remove("ANCHOR_PDP_TOKENS")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let channel = loop {
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
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
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Ok(())
}
