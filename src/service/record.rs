//! What every decision-log record names: where the request came in, who asked, and what they
//! asked, as data. Built here so that every entry point records the same way.

use serde_json::json;

use super::{AuthorizeOutcome, Enforcement, Pdp};
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;

/// Entry points, as the decision log names them.
pub mod entry {
    pub const GRPC: &str = "grpc";
    pub const NGINX_RTMP: &str = "nginx-rtmp";
    pub const SRS: &str = "srs";
    pub const ENVOY: &str = "envoy";
    /// The PDP's own re-check of live sessions after something they rely on changed.
    pub const RECHECK: &str = "pdp-recheck";
    /// The PDP ending a frozen account's other live broadcasts (E3).
    pub const SWEEP: &str = "pdp-sweep";
}

/// Who asked, how, and what: the part of a record the transport knows.
#[derive(Clone, Debug)]
pub struct Origin {
    pub entry_point: &'static str,
    /// The gateway that asked, if a gateway did.
    pub gateway_id: String,
    /// The authenticated caller (`name (role)`), or the hook's gateway.
    pub caller: String,
    /// The request as structured data: proto3 JSON, or the hook's fields.
    pub request: serde_json::Value,
    /// The caller's id for this write: a retry with it gets the first attempt's answer.
    pub request_id: Option<String>,
}

impl Origin {
    /// The PDP itself, re-checking a session because of the record `cause_id`.
    pub(crate) fn pdp(
        entry_point: &'static str,
        gateway_id: &str,
        session_id: &str,
        cause: &str,
        cause_id: &str,
    ) -> Origin {
        Origin {
            request_id: None,
            entry_point,
            gateway_id: gateway_id.to_owned(),
            caller: "anchor-pdp".to_owned(),
            request: json!({
                "recheck": { "session_id": session_id, "cause": cause, "cause_id": cause_id }
            }),
        }
    }
}

pub fn enforcement_name(enforcement: Enforcement) -> &'static str {
    match enforcement {
        Enforcement::None => "NONE",
        Enforcement::RefuseStart => "REFUSE_START",
        Enforcement::ShutDown => "SHUT_DOWN",
    }
}

impl Pdp {
    /// A record of `action` by `origin`, with a fresh id; the caller fills in the rest.
    pub fn record(&self, origin: &Origin, action: &str, now: Millis) -> LogRecord {
        LogRecord {
            id: super::new_id(),
            at: now,
            action: action.to_owned(),
            caller: origin.caller.clone(),
            entry_point: origin.entry_point.to_owned(),
            gateway_id: origin.gateway_id.clone(),
            merchant_id: String::new(),
            session_id: String::new(),
            request: origin.request.clone(),
            allowed: None,
            rule_ids: Vec::new(),
            warning_rule_ids: Vec::new(),
            enforcement: String::new(),
            policy_version: self.policies().version().to_owned(),
            outcome: "ok".to_owned(),
            explanation: None,
            penalty_applied: None,
            warning_issued: false,
            cause_id: String::new(),
            change: String::new(),
            commit: 0,
        }
    }

    /// The record of a decision, as `outcome` has it.
    pub(crate) fn decision_record(
        &self,
        origin: &Origin,
        cause_id: &str,
        outcome: &AuthorizeOutcome,
        change: String,
    ) -> LogRecord {
        let decision = &outcome.decision;
        LogRecord {
            id: outcome.decision_id.clone(),
            at: outcome.decided_at,
            action: "authorize".to_owned(),
            caller: origin.caller.clone(),
            entry_point: origin.entry_point.to_owned(),
            gateway_id: origin.gateway_id.clone(),
            merchant_id: outcome.merchant_id.clone().unwrap_or_default(),
            session_id: outcome.session_id.clone().unwrap_or_default(),
            request: origin.request.clone(),
            allowed: Some(decision.allowed),
            rule_ids: decision.rule_ids(),
            warning_rule_ids: decision
                .warnings
                .iter()
                .map(|w| w.rule_id.clone())
                .collect(),
            enforcement: enforcement_name(outcome.enforcement).to_owned(),
            policy_version: decision.policy_version.clone(),
            outcome: "ok".to_owned(),
            explanation: decision.explanation.clone(),
            penalty_applied: outcome.penalty_applied,
            warning_issued: outcome.warning_issued,
            cause_id: cause_id.to_owned(),
            change,
            commit: 0,
        }
    }

    /// Logs a record that goes with no state change (group-committed through the queue).
    pub async fn log(&self, record: LogRecord) -> Result<(), PdpError> {
        self.log.record(record).await.map_err(|e| match e {
            // A full disk is the caller's to hear about as such.
            PdpError::ResourceExhausted(_) => e,
            e => PdpError::Storage(format!("the decision could not be logged: {e}")),
        })
    }

    /// Logs a request that was refused before it changed anything: a malformed request, an
    /// unknown id, a caller without the role.
    pub async fn log_action(
        &self,
        origin: &Origin,
        action: &str,
        concerns: (String, String),
        error: String,
    ) -> Result<(), PdpError> {
        let mut record = self.record(origin, action, self.now());
        record.merchant_id = concerns.0;
        record.session_id = concerns.1;
        record.outcome = error;
        self.log(record).await
    }
}

/// Runs a state-changing operation to its end even if the caller goes away: a cancelled RPC or
/// a closed hook connection must not stop it between a change and what has to follow it (a
/// revoke's re-check of live sessions, a penalty's sweep).
pub async fn to_completion<T: Send + 'static>(
    operation: impl Future<Output = Result<T, PdpError>> + Send + 'static,
) -> Result<T, PdpError> {
    tokio::spawn(operation)
        .await
        .map_err(|e| PdpError::Storage(format!("the operation's task failed: {e}")))?
}
