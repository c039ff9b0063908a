//! anchor-pdp: the policy decision point for virtual-anchor livestreams.
//!
//! Layers, outermost first: `api` (tonic transport, validation, proto conversion) →
//! `service` (orchestrates a decision and its enforcement) → `policy` (pure Cedar decision) and
//! `store` (sled). Internal Rust services depend on this crate for the generated client:
//! [`PolicyDecisionPointClient`] and [`PolicyAdminClient`].

pub mod api;
pub mod clock;
pub mod config;
pub mod decision_log;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod policy_suite;
pub mod server;
pub mod service;
pub mod store;

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
