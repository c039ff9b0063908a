//! anchor-pdp: the policy decision point for virtual-anchor livestreams.
//!
//! Layers, outermost first: `api` (tonic transport, validation, proto conversion) →
//! `service` (orchestrates a decision and its enforcement) → `policy` (pure Cedar decision) and
//! `store` (sled, or etcd for replicas).
//!
//! # As a client
//!
//! Services and gateways written in Rust depend on this crate for the generated client,
//! [`PolicyDecisionPointClient`] and [`PolicyAdminClient`], and the message types in
//! [`proto`]. Without the default `server` feature that is all it compiles (no sled, Cedar,
//! axum, Envoy types, etcd client or file watcher):
//!
//! ```toml
//! anchor-pdp = { git = "...", default-features = false }
//! ```
//!
//! A gateway asks before a broadcast starts, and again every `recheck_after` while it runs:
//!
//! ```no_run
//! use anchor_pdp::PolicyDecisionPointClient;
//! use anchor_pdp::proto::{AuthorizeRequest, Decision, DriveMode, LivestreamType, Phase};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut pdp = PolicyDecisionPointClient::connect("http://127.0.0.1:50051").await?;
//! let start = pdp
//!     .authorize(AuthorizeRequest {
//!         phase: Phase::Start as i32,
//!         merchant_id: "m1".into(),
//!         room_id: "r1".into(),
//!         anchor_id: "a1".into(),
//!         driver_id: "d1".into(),
//!         livestream_type: LivestreamType::DailyMarketing as i32,
//!         drive_mode: DriveMode::RealPerson as i32,
//!         gateway_id: "edge-1".into(),
//!         ..Default::default()
//!     })
//!     .await?
//!     .into_inner();
//! if start.decision != Decision::Allow as i32 {
//!     for violation in &start.violations {
//!         eprintln!("refused: {} {}", violation.rule_id, violation.message_en);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/gateway.rs` is a whole gateway loop: START, LIVE re-checks at `recheck_after`,
//! EndSession, and `WatchEnforcements` resumed after a dropped stream.

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod backup;
#[cfg(feature = "server")]
pub mod clock;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod config_file;
#[cfg(feature = "server")]
pub mod console;
#[cfg(feature = "server")]
pub mod decision_log;
#[cfg(feature = "server")]
pub mod domain;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod gateway;
#[cfg(feature = "server")]
pub mod images;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod net;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod policy_suite;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;

/// Generated protobuf types and gRPC stubs for `anchorpdp.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("anchorpdp.v1");

    /// Encoded `FileDescriptorSet` of the public API (served by reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/anchorpdp_descriptor.bin"));
}

pub use proto::policy_admin_client::PolicyAdminClient;
pub use proto::policy_decision_point_client::PolicyDecisionPointClient;
