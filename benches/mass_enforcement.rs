//! Mass enforcement: one provider delisted while N merchants broadcast with its anchors. E1 says
//! "shut down at once": how long from the delisting until the last session is cut, and whether
//! each merchant got exactly one penalty and one freeze and each session one enforcement event.
//!
//!     cargo bench --bench mass_enforcement               # 10,000 sessions, on sled
//!     cargo bench --bench mass_enforcement -- 2000       # 2,000
//!     cargo bench --bench mass_enforcement -- 2000 etcd  # on a 3-member etcd (one replica)
//!
//! The server binary runs in a process of its own (fdatasync before every acknowledgement).
//! N merchants each register an anchor of provider p1, a driver and a room, all approved, and
//! start one broadcast; a client follows `WatchEnforcements`; then p1 is delisted. Printed: the
//! delisting's answer time, when the first and the last of the N shutdown events arrived, the
//! server's CPU and bytes written for the sweep, and the checks (one event per session, one
//! penalty and a freeze per merchant, no session left live). Exits non-zero if a check fails.

mod common;
#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "../tests/common/programs.rs"]
mod programs;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use common::load::{Result, ServerProcess, anchor, driver, file_approved, room};
use common::process_usage;
use tonic::transport::Channel;

/// Calls in flight while the population is built.
const FILLERS: usize = 32;

/// `call(i)` for every `i` below `n`, `FILLERS` at a time; the results in `i` order.
async fn in_parallel<T, F, Fut>(n: usize, call: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(FILLERS));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let call = call(i);
        tasks.push(tokio::spawn(async move {
            let outcome = call.await;
            drop(permit);
            outcome
        }));
    }
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await??);
    }
    Ok(out)
}

fn register(record: Record) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    }
}

/// Merchant `i`: its anchor (of p1), driver and room, filed and approved; then its broadcast.
/// Returns the session id.
async fn merchant_live(
    i: usize,
    mut pdp: PolicyDecisionPointClient<Channel>,
    mut admin: PolicyAdminClient<Channel>,
) -> Result<String> {
    let m = format!("m{i}");
    pdp.register(register(Record::Merchant(proto::Merchant {
        id: m.clone(),
        tier: proto::MerchantTier::ChineseGoldSupplier as i32,
        display_name: String::new(),
    })))
    .await?;
    for record in [
        anchor(&format!("a{i}"), &m, "p1"),
        driver(&format!("d{i}"), &m),
        room(&format!("r{i}"), &m),
    ] {
        file_approved(&mut pdp, &mut admin, record).await?;
    }
    let started = pdp
        .authorize(proto::AuthorizeRequest {
            phase: proto::Phase::Start as i32,
            merchant_id: m,
            room_id: format!("r{i}"),
            anchor_id: format!("a{i}"),
            driver_id: format!("d{i}"),
            livestream_type: proto::LivestreamType::DailyMarketing as i32,
            drive_mode: proto::DriveMode::RealPerson as i32,
            gateway_id: "edge-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if started.decision != proto::Decision::Allow as i32 {
        return Err(format!("m{i} was refused: {:?}", started.violations).into());
    }
    Ok(started.session_id)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let on_etcd = args.get(1).is_some_and(|a| a == "etcd");
    let cluster = match on_etcd {
        true => Some(etcd::EtcdCluster::start(3).await),
        false => None,
    };
    let extra: Vec<String> = match &cluster {
        Some(cluster) => vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            cluster.endpoints().join(","),
            "--etcd-prefix".into(),
            "/mass/".into(),
        ],
        None => Vec::new(),
    };
    let server = ServerProcess::start_with(&extra).await?;
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await?;
    let mut pdp = PolicyDecisionPointClient::new(channel.clone());
    let mut admin = PolicyAdminClient::new(channel.clone());
    pdp.register(register(Record::Provider(proto::ServiceProvider {
        id: "p1".into(),
        display_name: String::new(),
    })))
    .await?;
    let listing = |listed| proto::SetProviderListingRequest {
        request_id: String::new(),
        provider_id: "p1".into(),
        listed,
        operator: "bench".into(),
        expected_revision: None,
    };
    admin.set_provider_listing(listing(true)).await?;

    let filling = Instant::now();
    let sessions = in_parallel(n, |i| merchant_live(i, pdp.clone(), admin.clone())).await?;
    println!(
        "{} | {n} merchants live with p1's anchors after {:.1} s",
        if on_etcd { "etcd (3 members)" } else { "sled" },
        filling.elapsed().as_secs_f64()
    );

    let mut events = pdp
        .watch_enforcements(proto::WatchEnforcementsRequest {
            after_sequence: 0,
            gateway_id: String::new(),
        })
        .await?
        .into_inner();
    let (cpu_before, written_before) = process_usage(&server.proc());
    let delisted = Instant::now();
    let answer = tokio::spawn({
        let mut admin = admin.clone();
        async move {
            // Its answer waits for its re-checks; past the call limit the caller hears
            // DEADLINE_EXCEEDED while they run on (the cuts are what is measured).
            let late = match admin.set_provider_listing(listing(false)).await {
                Ok(_) => "",
                Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                    " (DEADLINE_EXCEEDED: the re-checks ran on)"
                }
                Err(status) => return Err(status.into()),
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((delisted.elapsed(), late))
        }
    });
    let mut per_session: HashMap<String, usize> = HashMap::new();
    let (mut first, mut last) = (None, Duration::ZERO);
    while per_session.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(120), events.message()).await;
        let Ok(Ok(Some(event))) = next else {
            return Err(format!(
                "{} of {n} sessions cut when the events stopped: {next:?}",
                per_session.len()
            )
            .into());
        };
        last = delisted.elapsed();
        first.get_or_insert(last);
        *per_session.entry(event.session_id).or_default() += 1;
    }
    let (answered, late) = answer.await??;
    // Events that arrive late are duplicates; give them a moment to show.
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(500), events.message()).await
    {
        *per_session.entry(event.session_id).or_default() += 1;
    }
    let (cpu_after, written_after) = process_usage(&server.proc());
    println!(
        "delisting answered after {:.2} s{late}; shutdown events: first at {:.3} s, last of {n} \
         at {:.2} s ({:.0} cuts/s); server CPU {:.2} s, {:.1} MiB written ({:.1} KiB per cut)",
        answered.as_secs_f64(),
        first.unwrap_or_default().as_secs_f64(),
        last.as_secs_f64(),
        n as f64 / last.as_secs_f64().max(1e-9),
        cpu_after.saturating_sub(cpu_before).as_secs_f64(),
        written_after.saturating_sub(written_before) as f64 / (1 << 20) as f64,
        written_after.saturating_sub(written_before) as f64 / 1024.0 / n as f64,
    );

    let mut broken = Vec::new();
    let twice = per_session.values().filter(|count| **count > 1).count();
    if twice > 0 {
        broken.push(format!("{twice} sessions had more than one event"));
    }
    if let Some(missing) = sessions.iter().find(|s| !per_session.contains_key(*s)) {
        broken.push(format!("session {missing} had no event"));
    }
    let live = admin
        .list_live_sessions(proto::ListLiveSessionsRequest::default())
        .await?
        .into_inner()
        .sessions
        .len();
    if live > 0 {
        broken.push(format!("{live} sessions still live"));
    }
    let accounts = in_parallel(n, |i| {
        let mut admin = admin.clone();
        async move {
            let account = admin
                .get_account(proto::GetAccountRequest {
                    merchant_id: format!("m{i}"),
                })
                .await?
                .into_inner()
                .account
                .ok_or("no account")?;
            Ok(account)
        }
    })
    .await?;
    let not_once = accounts.iter().filter(|a| a.penalties != 1).count();
    let not_frozen = accounts.iter().filter(|a| a.frozen_until.is_none()).count();
    if not_once > 0 {
        broken.push(format!("{not_once} merchants without exactly one penalty"));
    }
    if not_frozen > 0 {
        broken.push(format!("{not_frozen} merchants not frozen"));
    }
    if broken.is_empty() {
        println!(
            "checked: {n} sessions with one event each, none live; {n} merchants with one \
             penalty and a freeze each"
        );
        Ok(())
    } else {
        Err(broken.join("; ").into())
    }
}
