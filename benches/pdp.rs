//! Prints how fast anchor-pdp decides and how fast it stores, on this machine.
//!
//!     cargo bench --bench pdp                # 5 s per gRPC scenario, 64 calls in flight
//!     cargo bench --bench pdp -- 10 128      # 10 s per scenario, 128 in flight
//!     cargo bench --bench pdp -- 4 64 figures.json chart.png   # also JSON rows and a chart
//!
//! Scenarios: the pure decision (memoized and not), then over gRPC on loopback with client and
//! server sharing the machine, against the server binary in a process of its own filled with
//! `ANCHOR_PDP_BENCH_MERCHANTS` merchants (64 by default; every fourth breaks R1, R4 or R7): a
//! LIVE re-check of each passing merchant's live session in turn, a START allow in turn over
//! the passing ones (a durable session write), a START deny over the breaking ones, and a
//! Register (a durable write). Durable = fdatasync'ed before the reply, group-committed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anchor_pdp::clock::SystemClock;
use anchor_pdp::policy::{Observation, Phase};
use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient, domain, server};
use clap::Parser;
use common::load::{RESULTS, Result, ServerProcess, drive, fixtures, percentile};
use common::{process_usage, resident_kib};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A population of `n` merchants, each with an anchor (provider p1), a driver and two rooms
/// (one for START churn, one for its LIVE session). Every fourth breaks a rule, in turn R1
/// (tier), R4 (cartoon image) and R7 (room never reviewed). Returns the merchants that pass
/// and those that break.
async fn population(
    pdp: &mut PolicyDecisionPointClient<Channel>,
    admin: &mut PolicyAdminClient<Channel>,
    n: usize,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let (mut passing, mut breaking) = (Vec::new(), Vec::new());
    for i in 0..n {
        let broken = (i % 4 == 3).then_some((i / 4) % 3);
        let m = format!("pm{i}");
        let register = |record| proto::RegisterRequest {
            request_id: String::new(),
            record: Some(record),
            expected_revision: None,
        };
        let tier = match broken {
            Some(0) => proto::MerchantTier::Other,
            _ => proto::MerchantTier::ChineseGoldSupplier,
        };
        pdp.register(register(Record::Merchant(proto::Merchant {
            id: m.clone(),
            tier: tier as i32,
            display_name: String::new(),
        })))
        .await?;
        let style = match broken {
            Some(1) => proto::ImageStyle::Cartoon,
            _ => proto::ImageStyle::RealisticHuman,
        };
        pdp.register(register(Record::Anchor(proto::VirtualAnchor {
            id: format!("pa{i}"),
            owner_merchant_id: m.clone(),
            provider_id: "p1".into(),
            image_style: style as i32,
            image_reference: format!("oss://pa{i}"),
            display_name: String::new(),
            likeness_of: String::new(),
            consent_id: String::new(),
        })))
        .await?;
        pdp.register(register(Record::Driver(proto::Driver {
            id: format!("pd{i}"),
            owner_merchant_id: m.clone(),
            identity_reference: format!("kyc://pd{i}"),
            display_name: String::new(),
        })))
        .await?;
        let mut approve = vec![
            (proto::RegistrationKind::Anchor, format!("pa{i}")),
            (proto::RegistrationKind::Driver, format!("pd{i}")),
        ];
        for room in [format!("pr{i}"), format!("pl{i}")] {
            pdp.register(register(Record::Room(proto::LivestreamRoom {
                id: room.clone(),
                owner_merchant_id: m.clone(),
                display_name: String::new(),
            })))
            .await?;
            if broken != Some(2) {
                approve.push((proto::RegistrationKind::Room, room));
            }
        }
        for (kind, id) in approve {
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
        if broken.is_some() {
            breaking.push(i);
        } else {
            passing.push(i);
        }
    }
    Ok((passing, breaking))
}

/// Merchant `i` of the population starting a broadcast in `room` (`pr` or `pl`).
fn population_start(i: usize, room: &str) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        merchant_id: format!("pm{i}"),
        room_id: format!("{room}{i}"),
        anchor_id: format!("pa{i}"),
        driver_id: format!("pd{i}"),
        ..start_request()
    }
}

fn start_request() -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        phase: proto::Phase::Start as i32,
        merchant_id: "m1".into(),
        room_id: "r1".into(),
        anchor_id: "a1".into(),
        driver_id: "d1".into(),
        livestream_type: proto::LivestreamType::DailyMarketing as i32,
        drive_mode: proto::DriveMode::RealPerson as i32,
        ..Default::default()
    }
}

/// Draws p50 latency against throughput, one line per scenario, each point labelled with its
/// calls in flight, as a PNG.
/// A scenario's name and its points: (calls per second, p50 ms, calls in flight).
type Curve<'a> = (&'a str, Vec<(f64, f64, usize)>);

fn draw_chart(path: &str, curves: &[Curve<'_>]) -> Result<()> {
    use plotters::prelude::*;
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let font =
        std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (apt install fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| "cannot read the chart font")?;
    let failed = |e: &dyn std::fmt::Display| format!("cannot draw {path}: {e}");
    let points = curves.iter().flat_map(|(_, p)| p.iter());
    let (max_rate, max_ms) = points.fold((1.0f64, 0.1f64), |(r, l), p| (r.max(p.0), l.max(p.1)));
    let (min_rate, min_ms) = curves
        .iter()
        .flat_map(|(_, p)| p.iter())
        .fold((f64::MAX, f64::MAX), |(r, l), p| (r.min(p.0), l.min(p.1)));
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "anchor-pdp {}: p50 latency vs throughput, 1-256 calls in flight ({} cores, loopback)",
                env!("CARGO_PKG_VERSION"),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (min_rate * 0.7..max_rate * 1.4).log_scale(),
            (min_ms * 0.7..max_ms * 1.5).log_scale(),
        )
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("calls per second (log)")
        .y_desc("p50 latency, ms (log)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| failed(&e))?;
    for ((name, points), color) in curves.iter().zip([BLACK, BLUE, RED]) {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(|e| failed(&e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
            )
            .map_err(|e| failed(&e))?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Text::new(format!("{}", p.2), (p.0, p.1 * 1.12), ("sans-serif", 12))),
            )
            .map_err(|e| failed(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let in_flight: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let json_out = args.get(2).cloned();
    let chart_out = args.get(3).cloned();
    // Merchants in the population the load runs over (64 by default).
    let merchants: usize = std::env::var("ANCHOR_PDP_BENCH_MERCHANTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    // With ANCHOR_PDP_BENCH_IDLE_SECONDS, the server's CPU and memory are watched that long
    // with no traffic, after the load.
    let idle_seconds: u64 = std::env::var("ANCHOR_PDP_BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let duration = Duration::from_secs(seconds);

    let temp = tempfile::tempdir()?;
    // A copy of the shipped policies, edited by the reload scenario.
    let policy_dir = temp.path().join("policies");
    std::fs::create_dir_all(&policy_dir)?;
    for entry in
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))?
    {
        let path = entry?.path();
        if path.is_file()
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, policy_dir.join(name))?;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut serve_args =
        match anchor_pdp::config::Cli::try_parse_from(["anchor-pdp", "serve"]).map(|c| c.command) {
            Ok(anchor_pdp::config::Command::Serve(args)) => *args,
            _ => return Err("cannot build the default settings".into()),
        };
    serve_args.listen = addr;
    serve_args.data_dir = temp.path().join("data");
    serve_args.policies = policy_dir.clone();
    let service = server::open(&serve_args, Arc::new(SystemClock)).await?;
    let direct = service.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(async move {
        let listeners = server::Listeners {
            grpc: listener,
            http: None,
            metrics: None,
            console: None,
        };
        server::serve(listeners, service, &serve_args, async {
            let _ = stopped.await;
        })
        .await
    });

    let endpoint = format!("http://{addr}");
    let mut pdp = PolicyDecisionPointClient::connect(endpoint.clone()).await?;
    let mut admin = PolicyAdminClient::connect(endpoint).await?;
    fixtures(&mut pdp, &mut admin).await?;

    println!(
        "anchor-pdp {} | {} cores | policy {} ({} rules) | {seconds} s per gRPC scenario, {in_flight} in flight",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        direct.policies().version(),
        direct.policies().rules().count(),
    );

    // The pure decision, facts already in hand.
    let facts = direct.store().facts("m1", "r1", "a1", "d1", &[])?;
    let observation = Observation {
        phase: Phase::Live,
        livestream_type: domain::LivestreamType::DailyMarketing,
        drive_mode: domain::DriveMode::RealPerson,
        ai_features: &[],
        labels: None,
    };
    let now = direct.now();
    let iterations = 20_000u32;
    let policies = direct.policies();
    let memoized = |facts: &domain::Facts| policies.decide(facts, &observation, now);
    let uncached = |facts: &domain::Facts| policies.decide_uncached(facts, &observation, now);
    // The same decision with the label rule pack enabled and a compliant label report: what
    // the pack costs a decision Cedar makes (its LIVE checks evaluate a second, warning set).
    let pack_dir = tempfile::tempdir()?;
    anchor_pdp::policy::builtin::materialize(pack_dir.path())?;
    std::fs::write(pack_dir.path().join("packs.toml"), "packs = [\"labels\"]\n")?;
    let with_pack = anchor_pdp::policy::load(pack_dir.path())?;
    let labels = domain::LabelReport {
        label_shown: true,
        label_kind: domain::LabelKind::Overlay,
        implicit_label: true,
        implicit_label_provider: "p1".into(),
    };
    let labelled = Observation {
        labels: Some(&labels),
        ..observation.clone()
    };
    let uncached_pack = |facts: &domain::Facts| with_pack.decide_uncached(facts, &labelled, now);
    for (name, decide) in [
        (
            "decide (memoized, facts seen)",
            &memoized as &dyn Fn(&domain::Facts) -> anchor_pdp::policy::Decision,
        ),
        ("decide (Cedar, not memoized)", &uncached),
        ("decide (Cedar, label pack on)", &uncached_pack),
    ] {
        let mut took = Vec::with_capacity(iterations as usize);
        for _ in 0..iterations {
            let t = Instant::now();
            let decision = decide(&facts);
            took.push(t.elapsed());
            if !decision.allowed {
                return Err(format!("fixture denied: {:?}", decision.violations).into());
            }
        }
        took.sort_unstable();
        let mean = took.iter().sum::<Duration>() / iterations;
        println!(
            "{:<34} {:>9.0} calls/s   {:>8.2} µs per decision, p50 {:.2} µs, p99 {:.2} µs (1 thread)",
            name,
            1.0 / mean.as_secs_f64(),
            mean.as_secs_f64() * 1e6,
            took[took.len() / 2].as_secs_f64() * 1e6,
            took[took.len() * 99 / 100].as_secs_f64() * 1e6,
        );
    }
    let t = Instant::now();
    for _ in 0..iterations {
        direct.store().facts("m1", "r1", "a1", "d1", &[])?;
    }
    let per_read = t.elapsed() / iterations;
    println!(
        "{:<34} {:>9.0} calls/s   {:>8.2} µs per snapshot (1 thread)",
        "store facts (in-memory view)",
        1.0 / per_read.as_secs_f64(),
        per_read.as_secs_f64() * 1e6
    );

    // The load scenarios run against the server binary in a process of its own; the in-process
    // server stays for the reload scenario, which edits its policy directory.
    let in_process = pdp.clone();
    let process = ServerProcess::start().await?;
    let server = process.proc();
    let endpoint = format!("http://{}", process.addr);
    let mut pdp = PolicyDecisionPointClient::connect(endpoint.clone()).await?;
    let mut admin = PolicyAdminClient::connect(endpoint).await?;
    fixtures(&mut pdp, &mut admin).await?;
    let addr = process.addr;
    let (passing, breaking) = population(&mut pdp, &mut admin, merchants).await?;
    if passing.is_empty() || breaking.is_empty() {
        return Err("the population needs at least 4 merchants".into());
    }
    // One live session per passing merchant, in its second room: the STARTs below churn the
    // first room and supersede each other, not these.
    let mut sessions = Vec::new();
    for &i in &passing {
        let opened = pdp.authorize(population_start(i, "pl")).await?.into_inner();
        if opened.decision != proto::Decision::Allow as i32 {
            return Err(format!("merchant pm{i} was refused: {:?}", opened.violations).into());
        }
        sessions.push(opened.session_id);
    }
    println!(
        "population: {merchants} merchants, {} passing (each live), {} breaking R1, R4 or R7",
        passing.len(),
        breaking.len()
    );
    let sessions = Arc::new(sessions);
    let passing = Arc::new(passing);
    let breaking = Arc::new(breaking);
    println!(
        "{:<40} {:>10} {:>8}   latency (ms)                            server (its own process) and client CPU, server's disk writes",
        "scenario @in-flight", "rate", "÷ health"
    );
    let health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    );
    let health_call = move |_| {
        let mut health = health.clone();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "anchorpdp.v1.PolicyDecisionPoint".into(),
                })
                .await?;
            Ok(())
        }
    };
    let client = pdp.clone();
    let live_call = move |n: u64| {
        let mut client = client.clone();
        let session = sessions[n as usize % sessions.len()].clone();
        async move {
            let response = client
                .authorize(proto::AuthorizeRequest {
                    phase: proto::Phase::Live as i32,
                    session_id: session,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if response.decision != proto::Decision::Allow as i32 {
                return Err(format!("denied: {:?}", response.violations).into());
            }
            Ok(())
        }
    };
    let client = pdp.clone();
    let start_call = move |n: u64| {
        let mut client = client.clone();
        let request = population_start(passing[n as usize % passing.len()], "pr");
        async move {
            let response = client.authorize(request).await?.into_inner();
            if response.decision != proto::Decision::Allow as i32 {
                return Err(format!("denied: {:?}", response.violations).into());
            }
            Ok(())
        }
    };
    let client = pdp.clone();
    let deny_call = move |n: u64| {
        let mut client = client.clone();
        let request = population_start(breaking[n as usize % breaking.len()], "pr");
        async move {
            let response = client.authorize(request).await?.into_inner();
            if response.decision != proto::Decision::Deny as i32 {
                return Err("allowed a merchant that breaks a rule".into());
            }
            Ok(())
        }
    };
    let client = pdp.clone();
    let merchants = Arc::new(AtomicU64::new(0));
    let register_call = move |_| {
        let mut client = client.clone();
        let n = merchants.fetch_add(1, Ordering::Relaxed);
        async move {
            client
                .register(proto::RegisterRequest {
                    request_id: String::new(),
                    record: Some(Record::Merchant(proto::Merchant {
                        id: format!("bench-{n}"),
                        tier: proto::MerchantTier::ChineseGoldSupplier as i32,
                        display_name: String::new(),
                    })),
                    expected_revision: None,
                })
                .await?;
            Ok(())
        }
    };
    const HEALTH: &str = "Health/Check (no-op baseline)";
    const LIVE: &str = "Authorize LIVE allow";
    const START: &str = "Authorize START allow (durable)";
    // The server's memory with the population in place and no load, then its peak under the
    // scenarios below (sampled every 100 ms).
    let rss_idle = resident_kib(&server);
    let rss_peak = Arc::new(AtomicU64::new(rss_idle));
    let sampler = {
        let (server, rss_peak) = (server.clone(), rss_peak.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                rss_peak.fetch_max(resident_kib(&server), Ordering::Relaxed);
            }
        })
    };
    for flight in [1, in_flight] {
        let baseline = drive(HEALTH, &server, flight, duration, None, health_call.clone()).await?;
        let base = Some(baseline);
        drive(LIVE, &server, flight, duration, base, live_call.clone()).await?;
        drive(START, &server, flight, duration, base, start_call.clone()).await?;
        let deny = "Authorize START deny (R1/R4/R7, logged)";
        drive(deny, &server, flight, duration, base, deny_call.clone()).await?;
        let register = "Register merchant (durable)";
        drive(
            register,
            &server,
            flight,
            duration,
            base,
            register_call.clone(),
        )
        .await?;
    }
    sampler.abort();
    let rss_peak = rss_peak.load(Ordering::Relaxed);
    println!(
        "server RSS: {} MiB idle with the population, {} MiB at most under the load above ({:.2}x)",
        rss_idle >> 10,
        rss_peak >> 10,
        rss_peak as f64 / rss_idle.max(1) as f64,
    );
    if let Some(path) = &chart_out {
        // Latency against throughput as more calls are in flight, for the chart.
        println!("sweep for the chart: 1 to 256 in flight");
        let short = (duration / 2).max(Duration::from_secs(1));
        let mut curves: Vec<Curve<'_>> = vec![
            (HEALTH, Vec::new()),
            (LIVE, Vec::new()),
            (START, Vec::new()),
        ];
        for flight in [1, 2, 4, 8, 16, 32, 64, 128, 256] {
            let baseline = drive(HEALTH, &server, flight, short, None, health_call.clone()).await?;
            let live = drive(
                LIVE,
                &server,
                flight,
                short,
                Some(baseline),
                live_call.clone(),
            );
            let live = live.await?;
            let start = drive(
                START,
                &server,
                flight,
                short,
                Some(baseline),
                start_call.clone(),
            );
            let start = start.await?;
            for (curve, figures) in curves.iter_mut().zip([baseline, live, start]) {
                curve.1.push((figures.per_second, figures.p50_ms, flight));
            }
        }
        draw_chart(path, &curves)?;
        println!("chart written to {path}");
    }

    if idle_seconds > 0 {
        let status = admin
            .get_decision_log_status(proto::GetDecisionLogStatusRequest {})
            .await?
            .into_inner();
        let (cpu_before, _) = process_usage(&server);
        let rss_before = resident_kib(&server);
        let mut rss_max = rss_before;
        let idle_started = Instant::now();
        while idle_started.elapsed() < Duration::from_secs(idle_seconds) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            rss_max = rss_max.max(resident_kib(&server));
        }
        let (cpu_after, _) = process_usage(&server);
        let rss_after = resident_kib(&server);
        println!(
            "idle {idle_seconds} s with {} log records, {} MiB of segments: server cpu {:.3}% of one core, RSS {} -> {} MiB (max {} MiB)",
            status.records,
            status.bytes >> 20,
            (cpu_after - cpu_before).as_secs_f64() / idle_started.elapsed().as_secs_f64() * 100.0,
            rss_before >> 10,
            rss_after >> 10,
            rss_max >> 10,
        );
    }

    drop(process);
    let mut pdp = in_process;

    // Hot reload: edit a policy file, then count until a decision is made under the new
    // version (file watch, debounce, load + validate, swap).
    let rules = policy_dir.join("rules.cedar");
    let original = std::fs::read_to_string(&rules)?;
    let mut latencies = Vec::new();
    for round in 0..10 {
        let before = pdp
            .authorize(start_request())
            .await?
            .into_inner()
            .policy_version;
        let edited = format!("{original}\n// bench edit {round}\n");
        let staged = policy_dir.join(".rules.cedar.tmp");
        std::fs::write(&staged, edited)?;
        let edited_at = Instant::now();
        std::fs::rename(&staged, &rules)?;
        loop {
            let version = pdp
                .authorize(start_request())
                .await?
                .into_inner()
                .policy_version;
            if version != before {
                latencies.push(edited_at.elapsed());
                break;
            }
            if edited_at.elapsed() > Duration::from_secs(10) {
                return Err("the edit was not picked up within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    latencies.sort();
    println!(
        "{:<34} median {:>6.1} ms   min {:>6.1} ms   max {:>6.1} ms   (10 edits; watch debounce 100 ms)",
        "reload: edit -> first new decision",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        latencies.first().copied().unwrap_or_default().as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );

    drop(direct);
    let _ = stop.send(());
    server_task.await??;
    if let Some(path) = json_out {
        let rows = RESULTS.rows.lock().map(|r| r.clone()).unwrap_or_default();
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("figures written to {path}");
    }
    Ok(())
}
