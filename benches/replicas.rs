//! anchor-pdp on etcd against anchor-pdp on sled, in one run on one machine, and how soon a
//! write on one replica is decided on by another.
//!
//!     cargo bench --bench replicas              # 5 s per scenario, 64 calls in flight
//!     cargo bench --bench replicas -- 10 128
//!
//! Starts a 3-member etcd on loopback (Debian's etcd-server; `scripts/test` installs it), one
//! server on the embedded sled store and two replicas (A, B) on the etcd, each the server
//! binary in a process of its own. For each backend: the health check (the baseline), a LIVE
//! re-check, a broadcast's life (a START allow, then EndSession: two durable writes) and a
//! Register (a durable write), with the ratio to that server's own health check, and server
//! CPU and bytes written per call. Then, one at a time: a Register on A and, as soon as A answers, a
//! LIVE re-check on B asking for A's revision (`min_revision`): the time from A's answer to
//! B's is the cross-replica delay.

mod common;
#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "../tests/common/programs.rs"]
mod programs;

use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use common::load::{
    Figures, Result, ServerProcess, anchor, drive, driver, file_approved, fixtures, percentile,
    room,
};
use common::process_usage;
use tonic::transport::Channel;

/// Rooms the START scenario turns over, so that concurrent STARTs rarely share one; each has
/// an anchor and a driver of its own (one person drives one broadcast at a time).
const ROOMS: usize = 129;

async fn clients(
    addr: std::net::SocketAddr,
) -> Result<(
    PolicyDecisionPointClient<Channel>,
    PolicyAdminClient<Channel>,
)> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok((
        PolicyDecisionPointClient::new(channel.clone()),
        PolicyAdminClient::new(channel),
    ))
}

fn start_in(room: usize) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        phase: proto::Phase::Start as i32,
        merchant_id: "m1".into(),
        room_id: format!("room{room}"),
        anchor_id: format!("anchor{room}"),
        driver_id: format!("driver{room}"),
        livestream_type: proto::LivestreamType::DailyMarketing as i32,
        drive_mode: proto::DriveMode::RealPerson as i32,
        ..Default::default()
    }
}

fn live(session_id: &str, min_revision: u64) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        phase: proto::Phase::Live as i32,
        session_id: session_id.into(),
        min_revision,
        ..Default::default()
    }
}

/// The fixtures, `ROOMS` further approved rooms with their anchors and drivers, and a live
/// session in the first.
async fn prepare(server: &ServerProcess) -> Result<String> {
    let (mut pdp, mut admin) = clients(server.addr).await?;
    fixtures(&mut pdp, &mut admin).await?;
    for room_i in 0..ROOMS {
        for record in [
            room(&format!("room{room_i}"), "m1"),
            anchor(&format!("anchor{room_i}"), "m1", "p1"),
            driver(&format!("driver{room_i}"), "m1"),
        ] {
            file_approved(&mut pdp, &mut admin, record).await?;
        }
    }
    let started = pdp.authorize(start_in(0)).await?.into_inner();
    if started.decision != proto::Decision::Allow as i32 {
        return Err(format!("fixture START refused: {started:?}").into());
    }
    Ok(started.session_id)
}

/// The etcd a server runs on, as the scenarios measure it.
struct Etcd<'a> {
    endpoints: &'a [String],
    members: Vec<String>,
}

impl Etcd<'_> {
    /// The database size of a member, and the CPU the members have used.
    async fn mark(&self) -> Result<(i64, Duration)> {
        let cpu = self.members.iter().map(|m| process_usage(m).0).sum();
        Ok((etcd_db_bytes(self.endpoints).await?, cpu))
    }
}

/// Prints how much etcd's database grew per call of a scenario (before compaction: every
/// revision kept) and the CPU its members used per call, when the server runs on etcd.
async fn growth(
    etcd: Option<&Etcd<'_>>,
    before: (i64, Duration),
    calls: f64,
    scenario: &str,
) -> Result<()> {
    if let Some(etcd) = etcd {
        let (bytes, cpu) = etcd.mark().await?;
        let calls = calls.max(1.0);
        println!(
            "    etcd per {scenario} call: database growth {:.0} B per member (before compaction), \
             CPU of the 3 members together {:.0} µs",
            (bytes - before.0) as f64 / 3.0 / calls,
            (cpu - before.1).as_secs_f64() * 1e6 / calls,
        );
    }
    Ok(())
}

/// The four scenarios against one server (on `etcd`, if given); returns its health figures.
async fn scenarios(
    name: &str,
    server: &ServerProcess,
    etcd: Option<&Etcd<'_>>,
    in_flight: usize,
    duration: Duration,
) -> Result<Figures> {
    let session = prepare(server).await?;
    let (pdp, _) = clients(server.addr).await?;
    let proc = server.proc();
    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let base = drive(
        &format!("{name}: health check"),
        &proc,
        in_flight,
        duration,
        None,
        move |_| {
            let mut health = health.clone();
            async move {
                health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                Ok(())
            }
        },
    )
    .await?;
    let client = pdp.clone();
    drive(
        &format!("{name}: Authorize LIVE"),
        &proc,
        in_flight,
        duration,
        Some(base),
        move |_| {
            let (mut pdp, session) = (client.clone(), session.clone());
            async move {
                let decided = pdp.authorize(live(&session, 0)).await?.into_inner();
                if decided.decision != proto::Decision::Allow as i32 {
                    return Err(format!("LIVE refused: {decided:?}").into());
                }
                Ok(())
            }
        },
    )
    .await?;
    let before = match etcd {
        Some(etcd) => etcd.mark().await?,
        None => (0, Duration::ZERO),
    };
    let client = pdp.clone();
    let lives = drive(
        &format!("{name}: START + EndSession"),
        &proc,
        in_flight,
        duration,
        Some(base),
        move |n| {
            let mut pdp = client.clone();
            async move {
                let room = 1 + (n as usize % (ROOMS - 1));
                let decided = pdp.authorize(start_in(room)).await?.into_inner();
                if decided.decision != proto::Decision::Allow as i32 {
                    return Err(format!("START refused: {decided:?}").into());
                }
                pdp.end_session(proto::EndSessionRequest {
                    request_id: String::new(),
                    session_id: decided.session_id,
                    reason: "bench".into(),
                })
                .await?;
                Ok(())
            }
        },
    )
    .await?;
    let calls = lives.per_second * duration.as_secs_f64();
    growth(etcd, before, calls, "START + EndSession").await?;
    let before = match etcd {
        Some(etcd) => etcd.mark().await?,
        None => (0, Duration::ZERO),
    };
    let client = pdp.clone();
    let registers = drive(
        &format!("{name}: Register"),
        &proc,
        in_flight,
        duration,
        Some(base),
        move |n| {
            let mut pdp = client.clone();
            async move {
                pdp.register(proto::RegisterRequest {
                    request_id: String::new(),
                    record: Some(Record::Merchant(proto::Merchant {
                        id: format!("bench{}", n % 1024),
                        tier: proto::MerchantTier::Other as i32,
                        display_name: format!("{n}"),
                    })),
                    expected_revision: None,
                })
                .await?;
                Ok(())
            }
        },
    )
    .await?;
    let calls = registers.per_second * duration.as_secs_f64();
    growth(etcd, before, calls, "Register").await?;
    Ok(base)
}

/// A Register on A, then a LIVE re-check on B with A's revision, `rounds` times in turn.
async fn cross_replica(
    a: &ServerProcess,
    b: &ServerProcess,
    session: &str,
    rounds: usize,
) -> Result<()> {
    let (mut on_a, _) = clients(a.addr).await?;
    let (mut on_b, _) = clients(b.addr).await?;
    let (mut delays, mut alone) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let written = on_a
            .register(proto::RegisterRequest {
                request_id: String::new(),
                record: Some(Record::Merchant(proto::Merchant {
                    id: format!("cross{round}"),
                    tier: proto::MerchantTier::Other as i32,
                    display_name: String::new(),
                })),
                expected_revision: None,
            })
            .await?
            .into_inner();
        let acked = Instant::now();
        let decided = on_b
            .authorize(live(session, written.store_revision))
            .await?
            .into_inner();
        delays.push(acked.elapsed());
        if decided.store_revision < written.store_revision {
            return Err("B answered below the revision asked for".into());
        }
        // The same call with nothing to wait for: what the RPC itself costs.
        let t = Instant::now();
        on_b.authorize(live(session, 0)).await?;
        alone.push(t.elapsed());
    }
    delays.sort();
    alone.sort();
    let ms = |v: &[Duration], p| percentile(v, p).as_secs_f64() * 1e3;
    println!(
        "A's write answered -> B's decision at that revision: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({rounds} rounds; B's LIVE call alone: p50 {:.2} ms  p99 {:.2} ms)",
        ms(&delays, 0.5),
        ms(&delays, 0.99),
        ms(&delays, 1.0),
        ms(&alone, 0.5),
        ms(&alone, 0.99),
    );
    Ok(())
}

/// etcd's database size, summed over members: what the scenarios made it grow by.
async fn etcd_db_bytes(endpoints: &[String]) -> Result<i64> {
    let mut total = 0;
    for endpoint in endpoints {
        let mut client = etcd_client::Client::connect([endpoint], None).await?;
        total += client.status().await?.db_size();
    }
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let in_flight: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let duration = Duration::from_secs(seconds);

    let cluster = etcd::EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints();
    let replica = |name: &str| {
        vec![
            "--store".to_owned(),
            "etcd".to_owned(),
            "--etcd-endpoints".to_owned(),
            endpoints.join(","),
            "--replica-id".to_owned(),
            name.to_owned(),
        ]
    };
    let sled = ServerProcess::start().await?;
    let a = ServerProcess::start_with(&replica("A")).await?;
    let b = ServerProcess::start_with(&replica("B")).await?;
    println!(
        "anchor-pdp {} | {} cores | {seconds} s per scenario, {in_flight} in flight | etcd: 3 members on loopback",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    scenarios("sled", &sled, None, in_flight, duration).await?;
    let etcd = Etcd {
        endpoints: &endpoints,
        members: cluster.pids().iter().map(u32::to_string).collect(),
    };
    scenarios(
        "etcd (replica A of 2)",
        &a,
        Some(&etcd),
        in_flight,
        duration,
    )
    .await?;
    let (mut on_a, _) = clients(a.addr).await?;
    let session = on_a.authorize(start_in(0)).await?.into_inner().session_id;
    cross_replica(&a, &b, &session, 1000).await?;
    Ok(())
}
