//! A real anchor-pdp server on an ephemeral loopback port with a temp data dir and a manual
//! clock, and the generated clients connected to it.
#![allow(dead_code)]

pub mod bearer;
pub mod console;
pub mod disk_full;
pub mod etcd;
pub mod hooks;
pub mod images;
pub mod jepsen;
pub mod programs;
pub mod replica;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anchor_pdp::clock::ManualClock;
use anchor_pdp::config::ServeArgs;
use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient, server};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;
pub const FREEZE_MS: i64 = 7 * DAY_MS;

pub fn serve_defaults() -> ServeArgs {
    use clap::Parser;
    match anchor_pdp::config::Cli::try_parse_from(["anchor-pdp", "serve"]).map(|c| c.command) {
        Ok(anchor_pdp::config::Command::Serve(args)) => *args,
        other => panic!("defaults: {other:?}"),
    }
}

pub fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// How a test server differs from the defaults.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Its own policy directory (default: the repo's).
    pub policies: Option<PathBuf>,
    pub watch_policies: bool,
    /// Open the gateway-hook HTTP listener on an ephemeral port.
    pub http: bool,
    pub nginx_control: Vec<String>,
    /// `NAME:ROLE:sha256:HEX` caller tokens; none = authentication off.
    pub tokens: Vec<String>,
    /// `GATEWAY:sha256:HEX` hook secrets; none = hooks open (on loopback).
    pub hook_secrets: Vec<String>,
    /// Open the Prometheus metrics listener on an ephemeral port.
    pub metrics: bool,
    /// Open the browser console on an ephemeral port.
    pub console: bool,
    /// etcd endpoints: a replica over etcd instead of the embedded store.
    pub etcd: Vec<String>,
    /// The etcd key prefix replicas of one deployment share.
    pub etcd_prefix: Option<String>,
    pub replica_id: Option<String>,
    /// Any other setting, applied last.
    pub configure: Option<fn(&mut anchor_pdp::config::ServeArgs)>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The gateway-hook listener, when `Options::http`.
    pub http_addr: Option<SocketAddr>,
    /// The metrics listener, when `Options::metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// The console listener, when `Options::console`.
    pub console_addr: Option<SocketAddr>,
    pub clock: ManualClock,
    pub pdp: PolicyDecisionPointClient<Channel>,
    pub admin: PolicyAdminClient<Channel>,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), server::StartError>>>,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut server = Self::start_on(&data_dir, ManualClock::new(T0)).await;
        server._temp = Some(temp);
        server
    }

    /// Starts on an existing data dir (the caller owns the dir).
    pub async fn start_on(data_dir: &Path, clock: ManualClock) -> TestServer {
        Self::start_with(data_dir, clock, Options::default()).await
    }

    /// Starts with a fresh temp data dir and these options.
    pub async fn start_with_options(options: Options) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut server = Self::start_with(&data_dir, ManualClock::new(T0), options).await;
        server._temp = Some(temp);
        server
    }

    pub async fn start_with(data_dir: &Path, clock: ManualClock, options: Options) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let http = if options.http {
            Some(TcpListener::bind("127.0.0.1:0").await.expect("bind http"))
        } else {
            None
        };
        let http_addr = http.as_ref().map(|l| l.local_addr().expect("http addr"));
        let metrics = if options.metrics {
            Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind metrics"),
            )
        } else {
            None
        };
        let metrics_addr = metrics
            .as_ref()
            .map(|l| l.local_addr().expect("metrics addr"));
        let console = if options.console {
            Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind console"),
            )
        } else {
            None
        };
        let console_addr = console
            .as_ref()
            .map(|l| l.local_addr().expect("console addr"));
        // The embedded defaults, as `anchor-pdp serve` has them, then this test's settings.
        let mut args = serve_defaults();
        args.listen = addr;
        args.data_dir = data_dir.to_owned();
        args.policies = options.policies.clone().unwrap_or_else(repo_policies);
        args.http_listen = http_addr;
        args.nginx_control = options.nginx_control.clone();
        args.tokens = options.tokens.clone();
        args.hook_secrets = options.hook_secrets.clone();
        if !options.etcd.is_empty() {
            args.store = anchor_pdp::config::StoreKind::Etcd;
            args.etcd_endpoints = options.etcd.clone();
            if let Some(prefix) = &options.etcd_prefix {
                args.etcd_prefix = prefix.clone();
            }
            args.replica_id = options.replica_id.clone();
        }
        if let Some(configure) = options.configure {
            configure(&mut args);
        }
        args.watch_policies = options.watch_policies;
        let pdp = server::open(&args, Arc::new(clock.clone()))
            .await
            .expect("open server");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let listeners = server::Listeners {
                grpc: listener,
                http,
                metrics,
                console,
            };
            server::serve(listeners, pdp, &args, async {
                let _ = rx.await;
            })
            .await
        });
        let endpoint = format!("http://{addr}");
        let pdp = PolicyDecisionPointClient::connect(endpoint.clone())
            .await
            .expect("connect pdp");
        let admin = PolicyAdminClient::connect(endpoint)
            .await
            .expect("connect admin");
        TestServer {
            addr,
            http_addr,
            metrics_addr,
            console_addr,
            clock,
            pdp,
            admin,
            data_dir: data_dir.to_owned(),
            shutdown: Some(tx),
            handle: Some(handle),
            _temp: None,
        }
    }

    /// Graceful stop: waits for the server to flush and release the store.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        self.shutdown_and_wait().await;
        self._temp.take()
    }

    async fn shutdown_and_wait(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
    }

    pub async fn register(&mut self, record: Record) -> proto::Registration {
        self.pdp
            .register(proto::RegisterRequest {
                request_id: String::new(),
                record: Some(record),
                expected_revision: None,
            })
            .await
            .expect("register")
            .into_inner()
            .registration
            .expect("registration")
    }

    pub async fn review(
        &mut self,
        kind: proto::RegistrationKind,
        id: &str,
        verdict: proto::Verdict,
    ) {
        self.admin
            .review_filing(proto::ReviewFilingRequest {
                request_id: String::new(),
                kind: kind as i32,
                id: id.into(),
                verdict: verdict as i32,
                reviewer: "reviewer-1".into(),
                note: String::new(),
                expected_revision: None,
                approval_expires_at: None,
                image_sha256: None,
            })
            .await
            .expect("review");
    }

    pub async fn approve(&mut self, kind: proto::RegistrationKind, id: &str) {
        self.review(kind, id, proto::Verdict::Approve).await;
    }

    pub async fn merchant(&mut self, id: &str, tier: proto::MerchantTier) {
        self.register(Record::Merchant(proto::Merchant {
            id: id.into(),
            tier: tier as i32,
            display_name: format!("Merchant {id}"),
        }))
        .await;
    }

    pub async fn provider(&mut self, id: &str, listed: bool) {
        self.register(Record::Provider(proto::ServiceProvider {
            id: id.into(),
            display_name: format!("Provider {id}"),
        }))
        .await;
        self.admin
            .set_provider_listing(proto::SetProviderListingRequest {
                request_id: String::new(),
                provider_id: id.into(),
                listed,
                operator: "ops".into(),
                expected_revision: None,
            })
            .await
            .expect("listing");
    }

    pub async fn anchor(
        &mut self,
        id: &str,
        owner: &str,
        provider: &str,
        style: proto::ImageStyle,
    ) {
        self.register(Record::Anchor(anchor_record(id, owner, provider, style)))
            .await;
    }

    pub async fn driver(&mut self, id: &str, owner: &str) {
        self.register(Record::Driver(proto::Driver {
            id: id.into(),
            owner_merchant_id: owner.into(),
            identity_reference: format!("kyc://{id}"),
            display_name: String::new(),
        }))
        .await;
    }

    pub async fn room(&mut self, id: &str, owner: &str) {
        self.register(Record::Room(proto::LivestreamRoom {
            id: id.into(),
            owner_merchant_id: owner.into(),
            display_name: String::new(),
        }))
        .await;
    }

    pub async fn ai_feature(&mut self, id: &str, assessed: bool, filing_number: &str) {
        self.register(Record::AiFeature(proto::AiFeature {
            id: id.into(),
            display_name: String::new(),
        }))
        .await;
        self.admin
            .set_ai_feature_filing(proto::SetAiFeatureFilingRequest {
                request_id: String::new(),
                feature_id: id.into(),
                security_assessment_passed: assessed,
                filing_number: filing_number.into(),
                operator: "ops".into(),
                expected_revision: None,
            })
            .await
            .expect("ai feature filing");
    }

    /// Merchant m1 (CGS) with listed provider p1, and approved anchor a1, driver d1, room r1,
    /// and an assessed and filed AI feature voice-clone: every rule holds.
    pub async fn admitted() -> TestServer {
        Self::admitted_with(Options::default()).await
    }

    /// As `admitted`, with these options.
    pub async fn admitted_with(options: Options) -> TestServer {
        let mut s = TestServer::start_with_options(options).await;
        s.merchant("m1", proto::MerchantTier::ChineseGoldSupplier)
            .await;
        s.provider("p1", true).await;
        s.anchor("a1", "m1", "p1", proto::ImageStyle::RealisticHuman)
            .await;
        s.driver("d1", "m1").await;
        s.room("r1", "m1").await;
        s.approve(proto::RegistrationKind::Anchor, "a1").await;
        s.approve(proto::RegistrationKind::Driver, "d1").await;
        s.approve(proto::RegistrationKind::Room, "r1").await;
        s.ai_feature("voice-clone", true, "AI-FILING-001").await;
        s
    }

    pub async fn authorize(
        &mut self,
        request: proto::AuthorizeRequest,
    ) -> proto::AuthorizeResponse {
        self.pdp
            .authorize(request)
            .await
            .expect("authorize")
            .into_inner()
    }

    /// The decision-log records the request picks, in order.
    pub async fn log(
        &mut self,
        request: proto::ReadDecisionLogRequest,
    ) -> Vec<proto::DecisionLogRecord> {
        use tokio_stream::StreamExt;
        let mut stream = self
            .admin
            .read_decision_log(request)
            .await
            .expect("read log")
            .into_inner();
        let mut records = Vec::new();
        while let Some(record) = stream.next().await {
            records.push(record.expect("record"));
        }
        records
    }

    /// The one record with this decision id.
    pub async fn log_record(&mut self, decision_id: &str) -> proto::DecisionLogRecord {
        let mut found = self
            .log(proto::ReadDecisionLogRequest {
                decision_id: decision_id.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(found.len(), 1, "records with id {decision_id}: {found:?}");
        found.remove(0)
    }

    pub async fn account(&mut self, merchant: &str) -> proto::Account {
        self.admin
            .get_account(proto::GetAccountRequest {
                merchant_id: merchant.into(),
            })
            .await
            .expect("account")
            .into_inner()
            .account
            .expect("account")
    }

    pub async fn session(&mut self, session_id: &str) -> proto::Session {
        self.admin
            .get_session(proto::GetSessionRequest {
                session_id: session_id.into(),
            })
            .await
            .expect("session")
            .into_inner()
            .session
            .expect("session")
    }

    /// Starts an admitted broadcast and returns its session id.
    pub async fn start_session(&mut self) -> String {
        let response = self.authorize(start()).await;
        assert_eq!(decision(&response), proto::Decision::Allow, "{response:?}");
        response.session_id
    }

    /// Starts an admitted broadcast of m1 in `room` (filed and approved here if new) and
    /// returns its session id. A room has one live broadcast, so parallel broadcasts need rooms
    /// of their own.
    pub async fn start_session_in(&mut self, room: &str) -> String {
        let filed = self
            .admin
            .get_registration(proto::GetRegistrationRequest {
                kind: proto::RegistrationKind::Room as i32,
                id: room.into(),
            })
            .await
            .is_ok();
        if !filed {
            self.room(room, "m1").await;
            self.approve(proto::RegistrationKind::Room, room).await;
        }
        let mut request = start();
        request.room_id = room.into();
        let response = self.authorize(request).await;
        assert_eq!(decision(&response), proto::Decision::Allow, "{response:?}");
        response.session_id
    }

    pub async fn report(
        &mut self,
        session_id: &str,
        rule_id: &str,
    ) -> proto::ReportViolationResponse {
        self.admin
            .report_violation(proto::ReportViolationRequest {
                request_id: String::new(),
                session_id: session_id.into(),
                rule_id: rule_id.into(),
                inspector: "inspector-7".into(),
                note: "seen on stream".into(),
            })
            .await
            .expect("report")
            .into_inner()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn anchor_record(
    id: &str,
    owner: &str,
    provider: &str,
    style: proto::ImageStyle,
) -> proto::VirtualAnchor {
    proto::VirtualAnchor {
        id: id.into(),
        owner_merchant_id: owner.into(),
        provider_id: provider.into(),
        image_style: style as i32,
        image_reference: format!("oss://anchors/{id}.png"),
        display_name: format!("Anchor {id}"),
        likeness_of: String::new(),
        consent_id: String::new(),
    }
}

/// A START request for m1 / r1 / a1 / d1, daily marketing, real-person driven.
pub fn start() -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        phase: proto::Phase::Start as i32,
        merchant_id: "m1".into(),
        room_id: "r1".into(),
        anchor_id: "a1".into(),
        driver_id: "d1".into(),
        livestream_type: proto::LivestreamType::DailyMarketing as i32,
        drive_mode: proto::DriveMode::RealPerson as i32,
        ai_features: vec![],
        session_id: String::new(),
        gateway_id: "test-gw".into(),
        explain: false,
        idempotency_key: String::new(),
        min_revision: 0,
        labels: None,
    }
}

/// A policy directory holding the built-in set with `packs = ["labels"]`.
pub fn labels_enabled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    anchor_pdp::policy::builtin::materialize(dir.path()).expect("built-in set");
    std::fs::write(dir.path().join("packs.toml"), "packs = [\"labels\"]\n").expect("packs.toml");
    dir
}

/// A label report the label rule pack admits: a label burned into the video, and an
/// implicit label naming provider p1.
pub fn labelled() -> proto::LabelReport {
    proto::LabelReport {
        label_shown: true,
        label_kind: proto::LabelKind::Overlay as i32,
        implicit_label: true,
        implicit_label_provider: "p1".into(),
    }
}

/// A LIVE re-check of `session_id`.
pub fn live(session_id: &str) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        phase: proto::Phase::Live as i32,
        session_id: session_id.into(),
        gateway_id: "test-gw".into(),
        ..Default::default()
    }
}

pub fn decision(response: &proto::AuthorizeResponse) -> proto::Decision {
    proto::Decision::try_from(response.decision).unwrap_or(proto::Decision::Unspecified)
}

pub fn enforcement(response: &proto::AuthorizeResponse) -> proto::Enforcement {
    proto::Enforcement::try_from(response.enforcement).unwrap_or(proto::Enforcement::Unspecified)
}

pub fn rule_ids(response: &proto::AuthorizeResponse) -> Vec<String> {
    response
        .violations
        .iter()
        .map(|v| v.rule_id.clone())
        .collect()
}

pub fn millis(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    ts.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Asserts a deny at START with exactly these rules, refused, and nothing applied.
#[track_caller]
pub fn assert_refused(response: &proto::AuthorizeResponse, rules: &[&str]) {
    assert_eq!(decision(response), proto::Decision::Deny, "{response:?}");
    assert_eq!(rule_ids(response), rules, "{response:?}");
    assert_eq!(enforcement(response), proto::Enforcement::RefuseStart);
    assert_eq!(response.penalty_applied, proto::Penalty::Unspecified as i32);
    assert!(!response.warning_issued);
    assert!(response.session_id.is_empty());
    for v in &response.violations {
        assert!(
            !v.message_en.is_empty() && !v.message_zh.is_empty(),
            "{v:?}"
        );
    }
}

/// Asserts an allow with an open session.
#[track_caller]
pub fn assert_allowed(response: &proto::AuthorizeResponse) {
    assert_eq!(decision(response), proto::Decision::Allow, "{response:?}");
    assert!(response.violations.is_empty());
    assert_eq!(enforcement(response), proto::Enforcement::None);
    assert!(!response.session_id.is_empty());
    assert!(response.recheck_after.is_some());
    assert!(response.policy_version.starts_with("sha256:"));
    assert!(!response.decision_id.is_empty());
}

/// The gRPC code of a failed call.
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (tonic::Code, String) {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// `anchor-pdp serve` on the embedded store as its own process on `port`, with `extra` flags,
/// its log in `log`; stopped (TERM, then KILL) when dropped, a failed assertion included.
pub fn serve_sled(data: &Path, port: u16, log: &Path, extra: &[&str]) -> programs::Guard {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_anchor-pdp"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--watch-policies", "false"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .arg("--policies")
        .arg(repo_policies())
        .env_remove("ANCHOR_PDP_TOKENS")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    programs::wait_listening(addr, "anchor-pdp", &mut child, log);
    programs::Guard {
        child,
        log: log.to_owned(),
        dir: None,
    }
}
