//! A Python client generated from `proto/` with grpcio-tools runs Register and Authorize
//! against a real server: the proto is a clean contract for other languages.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_registers_and_authorizes() {
    let s = TestServer::start().await;
    let out = tempfile::tempdir().expect("temp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos: Vec<_> = ["types", "pdp", "admin"]
        .iter()
        .map(|p| format!("proto/anchorpdp/v1/{p}.proto"))
        .collect();
    let generated = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .args(&protos)
        .current_dir(root)
        .output()
        .expect("run python3");
    assert!(
        generated.status.success(),
        "grpc_tools.protoc failed (./scripts/test installs grpcio-tools):\n{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let addr = s.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(root.join("tests/python/pdp_client.py"))
            .arg(addr)
            .env("PYTHONPATH", out.path())
            .output()
            .expect("run client")
    })
    .await
    .expect("client task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "anchor REVIEW_STATUS_PENDING_REVIEW",
            "start DECISION_ALLOW True",
            "deny DECISION_DENY R3 平台仅支持由真人驱动的数字人虚拟主播;不允许自主驱动、文生视频或预录制的数字人。",
            "invalid INVALID_ARGUMENT merchant_id",
        ]
    );
}
