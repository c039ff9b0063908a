//! One error type for everything below the transport. The transport maps it to a gRPC status
//! in one place (`api::status`).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PdpError {
    /// The request is malformed; `field` names the offending field as the proto spells it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    /// An optimistic-concurrency check failed (expected revision).
    #[error("{0}")]
    Aborted(String),
    /// The caller is authenticated but may not do this (to this record).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is well formed but the stored state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store failed; the write did not happen (or is not known to be durable).
    #[error("storage error: {0}")]
    Storage(String),
    /// The disk is too full to write (the free-space guard, `store/disk.rs`); nothing changed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A stored record could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl PdpError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PdpError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
