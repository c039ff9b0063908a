//! Prometheus metrics: scraped before and after known traffic, each counter moves by exactly
//! what the traffic did.

mod common;

use std::collections::BTreeMap;

use anchor_pdp::proto;
use common::hooks::http;
use common::*;

type Series = BTreeMap<String, f64>;

/// `name{k="v",...} value` lines, keyed with their labels sorted.
fn parse(text: &str) -> Series {
    let mut series = Series::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = match key.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => key.to_owned(),
        };
        series.insert(key, value);
    }
    series
}

async fn scrape(s: &TestServer) -> Series {
    let (status, body) = http(
        s.metrics_addr.expect("metrics listener"),
        "GET",
        "/metrics",
        "text/plain",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn delta(before: &Series, after: &Series, key: &str) -> f64 {
    after.get(key).copied().unwrap_or_default() - before.get(key).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_the_traffic_did() {
    let mut s = TestServer::admitted_with(Options {
        metrics: true,
        ..Options::default()
    })
    .await;
    let before = scrape(&s).await;

    let session = s.start_session().await;
    for _ in 0..3 {
        assert_allowed(&s.authorize(live(&session)).await);
    }
    let mut pre_recorded = start();
    pre_recorded.room_id = "r-none".into();
    pre_recorded.drive_mode = proto::DriveMode::PreRecorded as i32;
    let denied = s.authorize(pre_recorded).await;
    assert_eq!(decision(&denied), proto::Decision::Deny);
    s.room("r2", "m1").await;
    let during = scrape(&s).await;
    assert_eq!(during.get("anchor_pdp_live_sessions"), Some(&1.0));
    s.report(&session, "R6").await;
    s.admin
        .reload_policies(proto::ReloadPoliciesRequest {
            operator: "ops".into(),
            ..Default::default()
        })
        .await
        .expect("reload");

    let after = scrape(&s).await;
    for (key, moved) in [
        (
            r#"anchor_pdp_authorize_seconds_count{decision="allow",phase="START"}"#,
            1.0,
        ),
        (
            r#"anchor_pdp_authorize_seconds_count{decision="allow",phase="LIVE"}"#,
            3.0,
        ),
        (
            r#"anchor_pdp_authorize_seconds_count{decision="deny",phase="START"}"#,
            1.0,
        ),
        (r#"anchor_pdp_violations_total{rule="R3"}"#, 1.0),
        (r#"anchor_pdp_violations_total{rule="R7"}"#, 1.0),
        (r#"anchor_pdp_registrations_total{kind="room"}"#, 1.0),
        (r#"anchor_pdp_penalties_total{penalty="E2"}"#, 1.0),
        (
            r#"anchor_pdp_policy_reloads_total{result="unchanged"}"#,
            1.0,
        ),
    ] {
        assert_eq!(delta(&before, &after, key), moved, "{key}\n{after:#?}");
    }
    assert_eq!(after.get("anchor_pdp_live_sessions"), Some(&0.0));
    // START, the room's registration and the report's penalty change state.
    assert!(delta(&before, &after, "anchor_pdp_store_commit_seconds_count") >= 3.0);
    assert!(
        delta(
            &before,
            &after,
            "anchor_pdp_decision_log_sync_seconds_count"
        ) >= 1.0
    );
    assert!(delta(&before, &after, "anchor_pdp_decision_log_bytes_total") > 0.0);
}
