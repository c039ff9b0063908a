//! Prometheus metrics, on a listener of their own (`--metrics-listen`, off by default). Names
//! start `anchor_pdp_`; what each counts is in its description at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Buckets for call and flush latencies, in seconds: 100 µs to 5 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls get the same handle).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .and_then(|builder| builder.install_recorder());
            match recorder {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .clone()
}

/// `/healthz` (liveness) and `/readyz` (readiness) for Kubernetes-style HTTP probes, beside
/// `/metrics`. Liveness: the process answers (restart it only if this fails). Readiness: what
/// gRPC health reports SERVING for (`follow_store_health` in the server): the store can write,
/// which on etcd includes being current with a quorum; the policies are loaded by then (a
/// server does not start without them). 503 with the reason while not ready.
pub fn probes(pdp: std::sync::Arc<crate::service::Pdp>) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let pdp = pdp.clone();
                async move {
                    let store = pdp.store();
                    let policies = pdp.policies();
                    let problem = store.write_failure();
                    let status = if problem.is_none() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = serde_json::json!({
                        "ready": problem.is_none(),
                        "problem": problem,
                        "store": store.backend_name(),
                        "replica": store.replica(),
                        "revision": store.revision(),
                        "policies": policies.version(),
                    });
                    (status, axum::Json(body))
                }
            }),
        )
}

/// The `/metrics` route: the live-session gauge is read when scraped, the rest as recorded.
pub fn router(pdp: std::sync::Arc<crate::service::Pdp>, handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let pdp = pdp.clone();
            let handle = handle.clone();
            async move {
                match pdp.live_sessions() {
                    Ok(live) => metrics::gauge!("anchor_pdp_live_sessions").set(live.len() as f64),
                    Err(e) => tracing::warn!(error = %e, "cannot count live sessions for metrics"),
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "anchor_pdp_authorize_seconds",
        metrics::Unit::Seconds,
        "Authorize decisions, from request to recorded outcome, by phase and decision"
    );
    describe_counter!(
        "anchor_pdp_violations_total",
        "Rules found broken in decisions, by rule id"
    );
    describe_counter!(
        "anchor_pdp_penalties_total",
        "Penalties applied to accounts, by kind (E1, E2)"
    );
    describe_counter!(
        "anchor_pdp_registrations_total",
        "Registrations that changed the store, by kind"
    );
    describe_histogram!(
        "anchor_pdp_store_commit_seconds",
        metrics::Unit::Seconds,
        "Group commits: sled flush plus fdatasync"
    );
    describe_gauge!(
        "anchor_pdp_decision_log_queue_depth",
        "Decision-log records waiting to be written"
    );
    describe_counter!(
        "anchor_pdp_decision_log_bytes_total",
        metrics::Unit::Bytes,
        "Bytes appended to the decision log's segment files"
    );
    describe_histogram!(
        "anchor_pdp_decision_log_sync_seconds",
        metrics::Unit::Seconds,
        "Group commits of the decision log: one fdatasync of its segment per batch"
    );
    describe_counter!(
        "anchor_pdp_policy_reloads_total",
        "Policy reload attempts, by result (reloaded, unchanged, rejected)"
    );
    describe_gauge!("anchor_pdp_live_sessions", "Sessions live now");
    describe_counter!(
        "anchor_pdp_decision_memo_total",
        "Decisions looked up in the memo, by result (hit: reused; miss: Cedar evaluated)"
    );
}
