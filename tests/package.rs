//! The Debian package, installed for real (CI runs as root on a fresh machine): `scripts/deb`
//! builds it around this build's binary, `dpkg -i` installs it (user, exported policies,
//! state directory, conffile), the server is started as the unit starts it (its user, its
//! ExecStart, its config file) and answers grpcurl and /readyz, then `dpkg -r` keeps the
//! config and `dpkg -P` removes everything the package made.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "anchor-pdp"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

fn user_exists() -> bool {
    Command::new("getent")
        .args(["passwd", "anchor-pdp"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// The unit's `KEY=` value.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_owned()
}

#[test]
fn the_debian_package_installs_serves_as_its_unit_and_purges_cleanly() {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "installing a package needs root (CI runs as root)"
    );
    let out = tempfile::tempdir().expect("dir");
    let built = run(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deb"))
            .env("ANCHOR_PDP_BIN", env!("CARGO_BIN_EXE_anchor-pdp"))
            .env("CARGO_TARGET_DIR", out.path()),
    );
    let deb = PathBuf::from(built.lines().last().expect("the .deb's path").trim());
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for file in [
        "./usr/bin/anchor-pdp",
        "./lib/systemd/system/anchor-pdp.service",
        "./etc/anchor-pdp/config.toml",
        "./usr/share/doc/anchor-pdp/anchor-pdp.cdx.json",
    ] {
        assert!(
            contents.contains(file),
            "{file} is not in the package:\n{contents}"
        );
    }
    if installed() {
        run(Command::new("dpkg").args(["-P", "anchor-pdp"]));
    }

    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(user_exists(), "the anchor-pdp user");
    let policies = std::fs::read_dir("/etc/anchor-pdp/policies")
        .expect("policies exported")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cedar"))
        .count();
    assert!(
        policies > 0,
        "the built-in rules are in /etc/anchor-pdp/policies"
    );
    // The SBOM: CycloneDX, the binary's dependencies with their purls, no dev-only crates.
    let sbom: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("/usr/share/doc/anchor-pdp/anchor-pdp.cdx.json").expect("SBOM"),
    )
    .expect("SBOM JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let components: Vec<&str> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    for shipped in [
        "pkg:cargo/sled@",
        "pkg:cargo/tonic@",
        "pkg:cargo/cedar-policy@",
    ] {
        assert!(
            components.iter().any(|p| p.starts_with(shipped)),
            "{shipped}"
        );
    }
    for dev_only in ["pkg:cargo/fantoccini@", "pkg:cargo/plotters@"] {
        assert!(
            !components.iter().any(|p| p.starts_with(dev_only)),
            "{dev_only}"
        );
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "anchor-pdp"]));
    assert!(
        conffiles.contains("/etc/anchor-pdp/config.toml"),
        "{conffiles}"
    );
    // The unit is valid as systemd reads it.
    let unit = std::fs::read_to_string("/lib/systemd/system/anchor-pdp.service").expect("unit");
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "StateDirectory=anchor-pdp",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
    let verified = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/anchor-pdp.service"])
        .output();
    if let Ok(verified) = verified {
        let said = String::from_utf8_lossy(&verified.stderr);
        assert!(
            !said.contains("anchor-pdp.service:"),
            "systemd-analyze finds fault with the unit:\n{said}"
        );
    }

    // As the unit starts it: its user, its ExecStart (the config file), ports moved aside by
    // flags (a flag beats the file).
    let user = unit_value(&unit, "User");
    let exec: Vec<String> = unit_value(&unit, "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let (port, metrics) = (free_port(), free_port());
    // setpriv execs the server itself (runuser would stand between it and the signal).
    let mut server = Command::new("setpriv")
        .args(["--reuid", &user, "--regid", &user, "--init-groups", "--"])
        .args(&exec)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start as the unit would");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the packaged server never listened"
        );
        assert!(
            server.try_wait().expect("wait").is_none(),
            "the packaged server exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let grpcurl =
        std::env::var_os("GRPCURL").map_or_else(|| PathBuf::from("grpcurl"), PathBuf::from);
    let services = run(Command::new(grpcurl).args(["-plaintext", &addr.to_string(), "list"]));
    assert!(
        services.contains("anchorpdp.v1.PolicyDecisionPoint"),
        "{services}"
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (status, ready) = runtime.block_on(common::hooks::http(
        format!("127.0.0.1:{metrics}").parse().expect("addr"),
        "GET",
        "/readyz",
        "text/plain",
        "",
    ));
    assert_eq!(status, 200, "{ready}");
    run(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    let stopped = server.wait_with_output().expect("stop");
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    // It kept its state where the unit says, owned by its user.
    assert!(
        Path::new("/var/lib/anchor-pdp")
            .read_dir()
            .expect("state")
            .next()
            .is_some()
    );

    // Removed: the binary goes, the edited config stays; purged: nothing of it stays.
    run(Command::new("dpkg").args(["-r", "anchor-pdp"]));
    assert!(!Path::new("/usr/bin/anchor-pdp").exists());
    assert!(
        Path::new("/etc/anchor-pdp/config.toml").exists(),
        "a conffile survives remove"
    );
    run(Command::new("dpkg").args(["-P", "anchor-pdp"]));
    for gone in [
        "/etc/anchor-pdp",
        "/var/lib/anchor-pdp",
        "/lib/systemd/system/anchor-pdp.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} survived the purge");
    }
    assert!(!user_exists(), "the user survived the purge");
}
