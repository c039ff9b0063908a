//! A new user's first hour: the server starts from any directory on its built-in policies,
//! `policy export` writes them out, a misspelled rule value is caught with its place, start-up
//! errors come once and say which flag fixes them, `--listen` takes host names, and the log can
//! be JSON.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_anchor-pdp");

fn pdp(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    for (var, _) in std::env::vars() {
        if var.starts_with("ANCHOR_PDP_") || var == "RUST_LOG" {
            command.env_remove(var);
        }
    }
    command.current_dir(cwd);
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A server killed on drop, its stderr in `log`.
struct Server {
    child: Child,
    log: std::path::PathBuf,
}

impl Server {
    fn start(command: &mut Command, log: &Path, addr: SocketAddr) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn");
        let mut server = Server {
            child,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("exited ({status}):\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "not listening:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn shipped_version() -> String {
    let output = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"))
        .output()
        .expect("validate");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.rsplit("version ")
        .next()
        .expect("version")
        .trim()
        .to_owned()
}

#[test]
fn from_an_empty_directory_it_serves_the_built_in_policies_and_exports_them() {
    let temp = tempfile::tempdir().expect("temp");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let server = Server::start(
        pdp(temp.path()).args(["serve", "--listen", &addr.to_string()]),
        &temp.path().join("serve.log"),
        addr,
    );
    let log = server.log();
    assert!(log.contains("policies=built-in"), "{log}");
    assert_eq!(
        log.matches("no caller authentication configured").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains(&format!("policy_version={}", shipped_version())),
        "{log}"
    );
    drop(server);

    let exported = temp.path().join("mine");
    let output = pdp(temp.path())
        .args(["policy", "export"])
        .arg(&exported)
        .output()
        .expect("export");
    assert!(output.status.success(), "{}", stderr(&output));
    let validated = pdp(temp.path())
        .args(["policy", "validate"])
        .arg(&exported)
        .output()
        .expect("validate");
    assert!(
        String::from_utf8_lossy(&validated.stdout).contains(&format!(
            "valid, 10 rules (R1 R2 R3 R4 R5 R6 R7 R8 R9 E3), version {}",
            shipped_version()
        )),
        "{}",
        String::from_utf8_lossy(&validated.stdout)
    );
    let tested = pdp(temp.path())
        .args(["policy", "test"])
        .arg(&exported)
        .output()
        .expect("test");
    assert!(
        tested.status.success(),
        "{}",
        String::from_utf8_lossy(&tested.stdout)
    );
    let again = pdp(temp.path())
        .args(["policy", "export"])
        .arg(&exported)
        .output()
        .expect("export again");
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
}

#[test]
fn a_misspelled_rule_value_fails_validate_and_serve_at_its_place() {
    let temp = tempfile::tempdir().expect("temp");
    let dir = temp.path().join("policies");
    let output = pdp(temp.path())
        .args(["policy", "export"])
        .arg(&dir)
        .output()
        .expect("export");
    assert!(output.status.success());
    let rules = dir.join("rules.cedar");
    let text = std::fs::read_to_string(&rules).expect("rules");
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("\"REAL_PERSON\"").map(|c| (i + 1, c + 1)))
        .expect("R3 names REAL_PERSON");
    std::fs::write(
        &rules,
        text.replacen("\"REAL_PERSON\"", "\"REAL_PERSN\"", 1),
    )
    .expect("write");
    let expected =
        format!("rules.cedar:{line}:{column}: \"REAL_PERSN\" is not a value drive_mode can take");

    let validated = pdp(temp.path())
        .args(["policy", "validate"])
        .arg(&dir)
        .output()
        .expect("validate");
    assert!(!validated.status.success());
    let printed = String::from_utf8_lossy(&validated.stdout).into_owned();
    assert!(printed.contains(&expected), "{printed}");
    assert_eq!(
        printed.lines().count(),
        1,
        "one problem, nothing that follows from it: {printed}"
    );

    let served = pdp(temp.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("serve");
    assert!(!served.status.success());
    assert!(stderr(&served).contains(&expected), "{}", stderr(&served));
}

#[test]
fn start_up_errors_are_printed_once_and_name_the_fix() {
    let temp = tempfile::tempdir().expect("temp");
    // The address is taken.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let output = pdp(temp.path())
        .args(["serve", "--listen", &addr.to_string()])
        .output()
        .expect("serve");
    assert!(!output.status.success());
    let text = stderr(&output);
    assert_eq!(text.matches("cannot listen on").count(), 1, "{text}");
    assert!(text.contains("--listen"), "{text}");
    drop(taken);

    // The data directory is in use by another server.
    let port = free_port();
    let first_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let _first = Server::start(
        pdp(temp.path()).args(["serve", "--listen", &first_addr.to_string()]),
        &temp.path().join("first.log"),
        first_addr,
    );
    let output = pdp(temp.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("second serve");
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("another anchor-pdp is using ./data"),
        "{text}"
    );
    assert!(text.contains("--data-dir"), "{text}");
    assert_eq!(
        text.matches("another anchor-pdp is using").count(),
        1,
        "{text}"
    );
}

#[test]
fn listen_takes_host_names_and_the_log_can_be_json() {
    let temp = tempfile::tempdir().expect("temp");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let server = Server::start(
        pdp(temp.path()).args([
            "serve",
            "--listen",
            &format!("localhost:{port}"),
            "--log-format",
            "json",
            "--token",
            "ops:admin:sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ]),
        &temp.path().join("serve.log"),
        addr,
    );
    let log = server.log();
    let listening = log
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{e}: {line}"))
        })
        .find(|event| event["message"] == "anchor-pdp listening (gRPC)")
        .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    assert_eq!(listening["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(listening["auth"], "tokens (1)");
}
