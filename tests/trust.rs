//! Caller authentication and roles: bearer tokens known by their hash, each bound to one role;
//! health and reflection open; loopback only without authentication.

mod common;

use std::process::Command;

use anchor_pdp::api::auth::hash_token;
use anchor_pdp::proto::{self, register_request::Record};
use common::bearer::{Admin, Pdp};
use common::*;
use tonic::Code;
use tonic::transport::Channel;

async fn clients(s: &TestServer, token: Option<&str>) -> (Pdp, Admin) {
    common::bearer::clients(s.addr, token).await
}

const ROLES: [&str; 5] = ["gateway", "registrar", "reviewer", "inspector", "admin"];

fn token(role: &str) -> String {
    format!("token-for-{role}-0123456789abcdef")
}

async fn secured() -> TestServer {
    TestServer::start_with_options(Options {
        tokens: ROLES
            .iter()
            .map(|role| {
                // The registrar files for m1 only.
                let bound = if *role == "registrar" {
                    "registrar@m1"
                } else {
                    role
                };
                format!("{role}-1:{bound}:{}", hash_token(&token(role)))
            })
            .collect(),
        ..Options::default()
    })
    .await
}

fn register(record: Record) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    }
}

fn merchant() -> Record {
    Record::Merchant(proto::Merchant {
        id: "m1".into(),
        tier: proto::MerchantTier::ChineseGoldSupplier as i32,
        display_name: String::new(),
    })
}

fn room() -> Record {
    Record::Room(proto::LivestreamRoom {
        id: "r1".into(),
        owner_merchant_id: "m1".into(),
        display_name: String::new(),
    })
}

fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_unauthenticated_but_health_is_open() {
    let s = secured().await;
    for token in [None, Some("not-a-token"), Some("")] {
        let (mut pdp, mut admin) = clients(&s, token).await;
        assert_eq!(code_of(pdp.authorize(start()).await), Code::Unauthenticated);
        assert_eq!(
            code_of(pdp.register(register(merchant())).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code_of(
                admin
                    .get_policy_status(proto::GetPolicyStatusRequest {})
                    .await
            ),
            Code::Unauthenticated
        );
    }
    let channel = Channel::from_shared(format!("http://{}", s.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "anchorpdp.v1.PolicyDecisionPoint".into(),
        })
        .await
        .expect("health is open")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn each_role_may_call_only_its_methods() {
    let s = secured().await;
    let (mut admin_pdp, mut admin) = clients(&s, Some(&token("admin"))).await;
    let (mut gateway, mut gateway_admin) = clients(&s, Some(&token("gateway"))).await;
    let (mut registrar, mut registrar_admin) = clients(&s, Some(&token("registrar"))).await;
    let (_, mut reviewer) = clients(&s, Some(&token("reviewer"))).await;
    let (_, mut inspector) = clients(&s, Some(&token("inspector"))).await;

    // A registrar files merchant-owned filings, but not merchants, providers or AI features,
    // and cannot list providers or approve anything.
    assert_eq!(
        code_of(registrar.register(register(merchant())).await),
        Code::PermissionDenied
    );
    admin_pdp
        .register(register(merchant()))
        .await
        .expect("admin registers merchants");
    admin_pdp
        .register(register(Record::Provider(proto::ServiceProvider {
            id: "p1".into(),
            display_name: String::new(),
        })))
        .await
        .expect("provider");
    assert_eq!(
        code_of(
            registrar
                .register(register(Record::Provider(proto::ServiceProvider {
                    id: "p2".into(),
                    display_name: String::new(),
                })))
                .await
        ),
        Code::PermissionDenied
    );
    let listing = proto::SetProviderListingRequest {
        request_id: String::new(),
        provider_id: "p1".into(),
        listed: true,
        operator: "ops".into(),
        expected_revision: None,
    };
    assert_eq!(
        code_of(registrar_admin.set_provider_listing(listing.clone()).await),
        Code::PermissionDenied
    );
    admin
        .set_provider_listing(listing)
        .await
        .expect("admin lists");
    registrar
        .register(register(room()))
        .await
        .expect("registrar files a room");
    registrar
        .register(register(Record::Anchor(anchor_record(
            "a1",
            "m1",
            "p1",
            proto::ImageStyle::RealisticHuman,
        ))))
        .await
        .expect("registrar files an anchor");
    registrar
        .register(register(Record::Driver(proto::Driver {
            id: "d1".into(),
            owner_merchant_id: "m1".into(),
            identity_reference: "kyc://d1".into(),
            display_name: String::new(),
        })))
        .await
        .expect("registrar files a driver");

    // Reviewers review; nobody else but admins.
    let approve = |kind: proto::RegistrationKind, id: &str| proto::ReviewFilingRequest {
        kind: kind as i32,
        id: id.into(),
        verdict: proto::Verdict::Approve as i32,
        reviewer: "reviewer-1".into(),
        ..Default::default()
    };
    for client in [&mut registrar_admin, &mut gateway_admin, &mut inspector] {
        assert_eq!(
            code_of(
                client
                    .review_filing(approve(proto::RegistrationKind::Room, "r1"))
                    .await
            ),
            Code::PermissionDenied
        );
    }
    for (kind, id) in [
        (proto::RegistrationKind::Room, "r1"),
        (proto::RegistrationKind::Anchor, "a1"),
        (proto::RegistrationKind::Driver, "d1"),
    ] {
        reviewer
            .review_filing(approve(kind, id))
            .await
            .expect("reviewer approves");
    }

    // Gateways authorize; a gateway cannot register.
    assert_eq!(
        code_of(gateway.register(register(room())).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(registrar.authorize(start()).await),
        Code::PermissionDenied
    );
    let session = gateway
        .authorize(start())
        .await
        .expect("gateway authorizes")
        .into_inner();
    assert_eq!(decision(&session), proto::Decision::Allow);

    // Inspectors report; reviewers and gateways cannot; only admins lift freezes and reload.
    let report = proto::ReportViolationRequest {
        request_id: String::new(),
        session_id: session.session_id.clone(),
        rule_id: "R2".into(),
        inspector: "inspector-1".into(),
        note: String::new(),
    };
    assert_eq!(
        code_of(reviewer.report_violation(report.clone()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(gateway_admin.report_violation(report.clone()).await),
        Code::PermissionDenied
    );
    inspector
        .report_violation(report)
        .await
        .expect("inspector reports");
    let lift = proto::LiftFreezeRequest {
        request_id: String::new(),
        merchant_id: "m1".into(),
        operator: "appeals".into(),
        reason: String::new(),
    };
    assert_eq!(
        code_of(inspector.lift_freeze(lift.clone()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(reviewer.lift_freeze(lift.clone()).await),
        Code::PermissionDenied
    );
    admin.lift_freeze(lift).await.expect("admin lifts");
    let reload = proto::ReloadPoliciesRequest {
        operator: "ops".into(),
        ..Default::default()
    };
    assert_eq!(
        code_of(inspector.reload_policies(reload.clone()).await),
        Code::PermissionDenied
    );
    admin.reload_policies(reload).await.expect("admin reloads");
    // Reads are open to reviewers and inspectors, not to gateways or registrars.
    let read = proto::GetAccountRequest {
        merchant_id: "m1".into(),
    };
    reviewer
        .get_account(read.clone())
        .await
        .expect("reviewer reads");
    inspector
        .get_account(read.clone())
        .await
        .expect("inspector reads");
    assert_eq!(
        code_of(gateway_admin.get_account(read.clone()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(registrar_admin.get_account(read).await),
        Code::PermissionDenied
    );
}

#[test]
fn without_authentication_only_loopback_is_allowed_and_refusals_are_logged() {
    let bin = env!("CARGO_BIN_EXE_anchor-pdp");
    let temp = tempfile::tempdir().expect("temp");
    // Refused before it binds anything.
    let output = Command::new(bin)
        .args(["serve", "--listen", "0.0.0.0:50999", "--data-dir"])
        .arg(temp.path().join("data"))
        .arg("--policies")
        .arg(repo_policies())
        .env_remove("ANCHOR_PDP_TOKENS")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:50999 without caller authentication"),
        "{stderr}"
    );
    assert!(!temp.path().join("data").exists());

    // A token hash from the CLI; the token itself is never configured.
    let hash_of = |token: &str| {
        let mut hasher = Command::new(bin)
            .args(["token", "hash"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        {
            use std::io::Write;
            let mut stdin = hasher.stdin.take().expect("stdin");
            stdin
                .write_all(format!("{token}\n").as_bytes())
                .expect("write");
        }
        hasher.wait_with_output().expect("hash")
    };
    let token = "7f3a9c1e5b2d8f4a6c0e9b3d7a1f5c2e";
    let hashed = hash_of(token);
    assert_eq!(
        String::from_utf8_lossy(&hashed.stdout).trim(),
        hash_token(token)
    );
    assert!(!String::from_utf8_lossy(&hashed.stdout).contains(token));
    // Short or blank tokens are refused.
    for weak in ["short", "", "     ", "correct horse battery staple"] {
        let refused = hash_of(weak);
        assert!(!refused.status.success(), "{weak:?} accepted");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("at least 32 characters"),
            "{weak:?}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
        assert!(refused.stdout.is_empty());
    }
}

#[tokio::test]
async fn refused_calls_are_logged_with_their_reason() {
    // The refusal path is the layer's; its log line names the method and the code.
    let s = secured().await;
    let (mut gateway, _) = clients(&s, Some(&token("gateway"))).await;
    let refused = gateway
        .register(register(room()))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains(
            "gateway-1 (gateway) may not call /anchorpdp.v1.PolicyDecisionPoint/Register"
        ),
        "{}",
        refused.message()
    );
    let (mut nobody, _) = clients(&s, None).await;
    let refused = nobody.authorize(start()).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("Bearer"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_files_only_for_its_merchants_and_moves_nothing() {
    let s = secured().await;
    let (mut admin_pdp, mut admin) = clients(&s, Some(&token("admin"))).await;
    let (mut registrar, _) = clients(&s, Some(&token("registrar"))).await;
    for id in ["m1", "m2"] {
        admin_pdp
            .register(register(Record::Merchant(proto::Merchant {
                id: id.into(),
                tier: proto::MerchantTier::ChineseGoldSupplier as i32,
                display_name: String::new(),
            })))
            .await
            .expect("merchant");
    }
    admin_pdp
        .register(register(Record::Provider(proto::ServiceProvider {
            id: "p1".into(),
            display_name: String::new(),
        })))
        .await
        .expect("provider");
    // m2's anchor and room, filed and approved by the platform.
    let m2_anchor = anchor_record("a2", "m2", "p1", proto::ImageStyle::RealisticHuman);
    admin_pdp
        .register(register(Record::Anchor(m2_anchor.clone())))
        .await
        .expect("m2's anchor");
    let m2_room = proto::LivestreamRoom {
        id: "r2".into(),
        owner_merchant_id: "m2".into(),
        display_name: String::new(),
    };
    admin_pdp
        .register(register(Record::Room(m2_room.clone())))
        .await
        .expect("m2's room");
    for (kind, id) in [
        (proto::RegistrationKind::Anchor, "a2"),
        (proto::RegistrationKind::Room, "r2"),
    ] {
        admin
            .review_filing(proto::ReviewFilingRequest {
                kind: kind as i32,
                id: id.into(),
                verdict: proto::Verdict::Approve as i32,
                reviewer: "rev".into(),
                ..Default::default()
            })
            .await
            .expect("approve");
    }

    // The m1 registrar: its own filings yes; m2's, or moving m2's to m1, no.
    registrar
        .register(register(room()))
        .await
        .expect("its own merchant's room");
    let mut restyled = m2_anchor.clone();
    restyled.image_style = proto::ImageStyle::Anime as i32;
    let mut moved = m2_room.clone();
    moved.owner_merchant_id = "m1".into();
    let new_for_m2 = proto::LivestreamRoom {
        id: "r3".into(),
        owner_merchant_id: "m2".into(),
        display_name: String::new(),
    };
    for (what, record) in [
        ("a new filing for m2", Record::Room(new_for_m2)),
        ("m2's approved anchor, changed", Record::Anchor(restyled)),
        ("m2's room, moved to m1", Record::Room(moved)),
    ] {
        let refused = registrar
            .register(register(record))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{what}: {refused:?}"
        );
    }
    for (kind, id) in [
        (proto::RegistrationKind::Anchor, "a2"),
        (proto::RegistrationKind::Room, "r2"),
    ] {
        let stored = admin
            .get_registration(proto::GetRegistrationRequest {
                kind: kind as i32,
                id: id.into(),
            })
            .await
            .expect("get")
            .into_inner()
            .registration
            .expect("registration");
        assert_eq!(
            (stored.revision, stored.review_status),
            // Revision 2 is the approval.
            (2, proto::ReviewStatus::Approved as i32),
            "{id} changed"
        );
    }
}

#[test]
fn a_registrar_must_be_bound_to_merchants() {
    use anchor_pdp::api::auth::Authenticator;
    let hash = hash_token("registrar-token-0123456789abcdef0123");
    let unbound = Authenticator::from_specs(&[format!("crm:registrar:{hash}")]);
    assert!(
        unbound.is_err_and(|e| e.contains("registrar@m1+m2, or registrar@*")),
        "a registrar without merchants was accepted"
    );
    assert!(Authenticator::from_specs(&[format!("crm:registrar@*:{hash}")]).is_ok());
    assert!(Authenticator::from_specs(&[format!("crm:registrar@m1+m2:{hash}")]).is_ok());
    assert!(Authenticator::from_specs(&[format!("ops:admin@m1:{hash}")]).is_err());
}
