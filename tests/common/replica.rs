//! anchor-pdp replicas as real processes over a real etcd cluster, and the fixtures the
//! replica tests share.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use tonic::transport::Channel;

use super::etcd::EtcdCluster;
use super::programs::{Guard, free_port, hook_secret_spec, wait_listening};
use super::repo_policies;

pub struct Replica {
    pub guard: Guard,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// Where a replica keeps its state.
#[derive(Clone, Debug)]
pub enum StoreArgs {
    /// A replica over etcd under `prefix`.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
    /// The embedded store in the data directory.
    Sled,
}

/// `anchor-pdp serve --store etcd` as its own process, named `name`.
pub fn spawn(cluster: &EtcdCluster, prefix: &str, name: &str, data: &Path) -> Replica {
    let store = StoreArgs::Etcd {
        endpoints: cluster.endpoints(),
        prefix: prefix.to_owned(),
    };
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    spawn_on(&store, name, data, grpc, http, &[])
}

/// `anchor-pdp serve` as its own process, named `name`, on these addresses (a restart after a
/// kill takes the same ones), with `env` set (fault injection, say).
pub fn spawn_on(
    store: &StoreArgs,
    name: &str,
    data: &Path,
    grpc: SocketAddr,
    http: SocketAddr,
    env: &[(&str, &str)],
) -> Replica {
    std::fs::create_dir_all(data).expect("data dir");
    let log = data.join(format!("{name}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_anchor-pdp"));
    command
        .args(["serve", "--watch-policies", "false"])
        .args(["--listen", &grpc.to_string()])
        .args(["--http-listen", &http.to_string()])
        .args(["--hook-secret", &hook_secret_spec("edge-1")]);
    if let StoreArgs::Etcd { endpoints, prefix } = store {
        command
            .args(["--store", "etcd"])
            .args(["--etcd-endpoints", &endpoints.join(",")])
            .args(["--etcd-prefix", prefix, "--replica-id", name]);
    }
    let child = command
        .arg("--data-dir")
        .arg(data)
        .arg("--policies")
        .arg(repo_policies())
        .env_remove("ANCHOR_PDP_TOKENS")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("log"),
        )
        .spawn()
        .expect("spawn anchor-pdp");
    let mut guard = Guard {
        child,
        log,
        dir: None,
    };
    wait_listening(grpc, name, &mut guard.child, &guard.log);
    Replica { guard, grpc, http }
}

pub async fn clients(
    addr: SocketAddr,
) -> (
    PolicyDecisionPointClient<Channel>,
    PolicyAdminClient<Channel>,
) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    (
        PolicyDecisionPointClient::new(channel.clone()),
        PolicyAdminClient::new(channel),
    )
}

pub fn register(record: Record) -> proto::RegisterRequest {
    proto::RegisterRequest {
        request_id: String::new(),
        record: Some(record),
        expected_revision: None,
    }
}

pub fn approve(kind: proto::RegistrationKind, id: &str) -> proto::ReviewFilingRequest {
    proto::ReviewFilingRequest {
        request_id: String::new(),
        kind: kind as i32,
        id: id.into(),
        verdict: proto::Verdict::Approve as i32,
        reviewer: "reviewer-1".into(),
        note: String::new(),
        expected_revision: None,
        approval_expires_at: None,
        image_sha256: None,
    }
}

/// m1 with an approved anchor a1, driver d1 and rooms r1..=rooms.
pub async fn fixtures(addr: SocketAddr, rooms: usize) {
    let (mut pdp, mut admin) = clients(addr).await;
    let records = [
        Record::Merchant(proto::Merchant {
            id: "m1".into(),
            tier: proto::MerchantTier::ChineseGoldSupplier as i32,
            display_name: "m1".into(),
        }),
        Record::Provider(proto::ServiceProvider {
            id: "p1".into(),
            display_name: "p1".into(),
        }),
        Record::Anchor(super::anchor_record(
            "a1",
            "m1",
            "p1",
            proto::ImageStyle::RealisticHuman,
        )),
        Record::Driver(proto::Driver {
            id: "d1".into(),
            owner_merchant_id: "m1".into(),
            identity_reference: "kyc://d1".into(),
            display_name: String::new(),
        }),
    ];
    for record in records {
        pdp.register(register(record)).await.expect("register");
    }
    admin
        .set_provider_listing(proto::SetProviderListingRequest {
            request_id: String::new(),
            provider_id: "p1".into(),
            listed: true,
            operator: "ops".into(),
            expected_revision: None,
        })
        .await
        .expect("listing");
    admin
        .review_filing(approve(proto::RegistrationKind::Anchor, "a1"))
        .await
        .expect("approve");
    admin
        .review_filing(approve(proto::RegistrationKind::Driver, "d1"))
        .await
        .expect("approve");
    for room in 1..=rooms {
        let id = format!("r{room}");
        pdp.register(register(Record::Room(proto::LivestreamRoom {
            id: id.clone(),
            owner_merchant_id: "m1".into(),
            display_name: id.clone(),
        })))
        .await
        .expect("room");
        admin
            .review_filing(approve(proto::RegistrationKind::Room, &id))
            .await
            .expect("approve room");
    }
}
