//! The PDP as operators watch it, each test with a server of its own in a binary apart from
//! tests/metrics.rs (whose exact counter deltas share the process's one recorder): HTTP
//! liveness and readiness probes, and a real Prometheus scraping the metrics listener.

mod common;

use common::hooks::http;
use common::programs;
use common::*;

/// Kubernetes-style probes beside /metrics: alive, and ready with what it is serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_answer_over_http() {
    let s = TestServer::admitted_with(Options {
        metrics: true,
        ..Options::default()
    })
    .await;
    let addr = s.metrics_addr.expect("metrics listener");
    assert_eq!(
        http(addr, "GET", "/healthz", "text/plain", "").await,
        (200, "ok\n".to_owned())
    );
    let (status, body) = http(addr, "GET", "/readyz", "text/plain", "").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["problem"], serde_json::Value::Null, "{ready}");
    assert_eq!(ready["store"], "sled", "{ready}");
    assert!(
        ready["policies"].as_str().is_some_and(|v| !v.is_empty()),
        "{ready}"
    );
}

/// A real Prometheus (Debian's) scrapes the metrics listener: the target is up with no scrape
/// error (the exposition is accepted by the real parser, not only by ours), and its query API
/// returns the PDP's series with the values the traffic made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_metrics_and_answers_for_them() {
    let mut s = TestServer::admitted_with(Options {
        metrics: true,
        ..Options::default()
    })
    .await;
    let session = s.start_session().await;
    assert_allowed(&s.authorize(live(&session)).await);
    let target = s.metrics_addr.expect("metrics listener");
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: anchor-pdp\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let port = programs::free_port();
    let log = dir.path().join("prometheus.log");
    let child = std::process::Command::new(programs::require("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start prometheus");
    let mut prometheus = programs::Guard {
        child,
        log: log.clone(),
        dir: None,
    };
    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    programs::wait_listening(api, "prometheus", &mut prometheus.child, &log);
    // Listening comes before ready (its storage opens meanwhile): queries answer 503 till then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http(api, "GET", "/-/ready", "text/plain", "").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never got ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let query = |q: &'static str| async move {
        let (status, body) = http(
            api,
            "GET",
            &format!("/api/v1/query?query={q}"),
            "text/plain",
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // Scraped at least once: `up` is 1 and the series are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let live_sessions = loop {
        let found = query("anchor_pdp_live_sessions").await;
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never scraped the PDP:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(live_sessions[0]["value"][1], "1", "{live_sessions:?}");
    let up = query("up").await;
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let (_, targets) = http(api, "GET", "/api/v1/targets", "text/plain", "").await;
    let targets: serde_json::Value = serde_json::from_str(&targets).expect("JSON");
    let active = &targets["data"]["activeTargets"][0];
    assert_eq!(
        (&active["health"], &active["lastError"]),
        (&serde_json::json!("up"), &serde_json::json!("")),
        "{active}"
    );
    let decisions = query("anchor_pdp_authorize_seconds_count").await;
    let counted: f64 = decisions
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 2.0, "START and LIVE counted: {decisions:?}");
}

/// An OTLP/gRPC trace receiver made from the protocol's own types: keeps every span sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Receiver
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// With --otlp-endpoint, each gRPC call is a span sent over OTLP; an Authorize's carries its
/// decision id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_calls_are_traced_over_otlp_with_their_decision_id() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    let service =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
            receiver.clone(),
        );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().expect("dir");
    let port = programs::free_port();
    let endpoint = format!("http://{collector}");
    let mut server = serve_sled(
        &dir.path().join("data"),
        port,
        &dir.path().join("pdp.log"),
        &["--otlp-endpoint", &endpoint],
    );
    let mut pdp =
        anchor_pdp::PolicyDecisionPointClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect");
    let answer = pdp
        .authorize(start())
        .await
        .expect("authorize")
        .into_inner();
    assert!(!answer.decision_id.is_empty());
    // Stopped gracefully, the server sends what it still holds before it exits.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(20))
            .is_some(),
        "the server did not stop"
    );
    let spans = receiver
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let authorize = spans
        .iter()
        .find(|s| attribute(s, "decision_id").as_deref() == Some(answer.decision_id.as_str()))
        .unwrap_or_else(|| panic!("no span with decision id {}: {spans:?}", answer.decision_id));
    assert_eq!(authorize.name, "rpc");
    assert_eq!(
        attribute(authorize, "method").as_deref(),
        Some("/anchorpdp.v1.PolicyDecisionPoint/Authorize")
    );
}
