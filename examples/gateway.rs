//! A streaming gateway's side of anchor-pdp, with nothing but the client (the crate built
//! without its `server` feature works too):
//!
//! 1. follow `WatchEnforcements` for this gateway, resuming after the last event seen whenever
//!    the stream drops, to cut a broadcast the moment the PDP shuts it down;
//! 2. `Authorize` START before the broadcast goes out;
//! 3. `Authorize` LIVE every `recheck_after` while it runs, stopping at the first deny;
//! 4. `EndSession` when it ends.
//!
//!     cargo run --example gateway -- http://127.0.0.1:50051 3
//!
//! (3 re-checks, for merchant m1 in room r1 with anchor a1 and driver d1, as the README's
//! walkthrough files them.)

use std::time::Duration;

use anchor_pdp::PolicyDecisionPointClient;
use anchor_pdp::proto::{
    AuthorizeRequest, Decision, DriveMode, EndSessionRequest, LivestreamType, Phase,
    WatchEnforcementsRequest,
};
use tonic::transport::Channel;

const GATEWAY: &str = "edge-1";

/// Prints every enforcement for this gateway, for as long as the process runs; a dropped
/// stream is opened again after the last sequence received, so nothing is missed or repeated.
async fn follow_enforcements(mut pdp: PolicyDecisionPointClient<Channel>, mut after: u64) {
    loop {
        let request = WatchEnforcementsRequest {
            after_sequence: after,
            gateway_id: GATEWAY.into(),
        };
        match pdp.watch_enforcements(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Ok(Some(event)) = stream.message().await {
                    after = event.sequence;
                    println!(
                        "enforcement #{}: cut session {} ({})",
                        event.sequence, event.session_id, event.reason
                    );
                }
            }
            Err(status) => eprintln!("watch failed ({status}); resuming after #{after}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let rechecks: u32 = args.next().map_or(Ok(3), |n| n.parse())?;
    let mut pdp = PolicyDecisionPointClient::connect(endpoint).await?;
    // From the oldest event kept: a gateway that restarts sees what it may have missed (and
    // cuts nothing twice: an event names a session that has already ended).
    tokio::spawn(follow_enforcements(pdp.clone(), 0));

    let start = pdp
        .authorize(AuthorizeRequest {
            phase: Phase::Start as i32,
            merchant_id: "m1".into(),
            room_id: "r1".into(),
            anchor_id: "a1".into(),
            driver_id: "d1".into(),
            livestream_type: LivestreamType::DailyMarketing as i32,
            drive_mode: DriveMode::RealPerson as i32,
            gateway_id: GATEWAY.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if start.decision != Decision::Allow as i32 {
        for violation in &start.violations {
            println!(
                "START refused: {} {}",
                violation.rule_id, violation.message_en
            );
        }
        std::process::exit(1);
    }
    println!("START allowed: session {}", start.session_id);

    let mut recheck_after = start.recheck_after.unwrap_or_default();
    for _ in 0..rechecks {
        let wait = Duration::new(
            recheck_after.seconds.max(0) as u64,
            recheck_after.nanos.max(0) as u32,
        );
        tokio::time::sleep(wait).await;
        let live = pdp
            .authorize(AuthorizeRequest {
                phase: Phase::Live as i32,
                session_id: start.session_id.clone(),
                gateway_id: GATEWAY.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        if live.decision != Decision::Allow as i32 {
            let rules: Vec<&str> = live.violations.iter().map(|v| v.rule_id.as_str()).collect();
            println!("LIVE denied ({}): cut the broadcast", rules.join(", "));
            return Ok(());
        }
        println!("LIVE allowed");
        recheck_after = live.recheck_after.unwrap_or(recheck_after);
    }

    pdp.end_session(EndSessionRequest {
        request_id: String::new(),
        session_id: start.session_id.clone(),
        reason: "publisher disconnected".into(),
    })
    .await?;
    println!("ended: session {}", start.session_id);
    Ok(())
}
