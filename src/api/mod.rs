//! The gRPC transport: tonic services, request validation, proto conversion and the single
//! mapping from `PdpError` to `Status`. No rules live here.
//!
//! One file per service: `decision.rs` (`PolicyDecisionPoint`) and `admin.rs`
//! (`PolicyAdmin`). Here: what both share (the status mapping, where a request came from and
//! the logging of refused ones) and the START/LIVE command the gateway hooks build too.

mod admin;
pub mod auth;
pub mod calls;
pub mod convert;
mod decision;

pub use admin::AdminService;
pub use decision::DecisionService;

use std::collections::HashSet;

use tonic::{Request, Response, Status};

use crate::error::PdpError;
use crate::policy::Phase;
use crate::proto;
use crate::service::{AuthorizeCommand, Origin, Pdp, entry};
use convert::{MAX_AI_FEATURES, enum_field, id, optional_id};

/// The one place errors become gRPC statuses.
pub fn status(error: PdpError) -> Status {
    match &error {
        PdpError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
        PdpError::NotFound(_) => Status::not_found(error.to_string()),
        PdpError::Aborted(_) => Status::aborted(error.to_string()),
        PdpError::FailedPrecondition(_) => Status::failed_precondition(error.to_string()),
        PdpError::PermissionDenied(_) => {
            tracing::warn!(%error, "refused");
            Status::permission_denied(error.to_string())
        }
        PdpError::ResourceExhausted(_) => {
            tracing::warn!(%error, "refused");
            Status::resource_exhausted(error.to_string())
        }
        PdpError::Storage(_) | PdpError::Corrupt { .. } => {
            tracing::error!(%error, "store failure");
            Status::unavailable(error.to_string())
        }
    }
}

fn ai_features(raw: &[String]) -> Result<Vec<String>, PdpError> {
    if raw.len() > MAX_AI_FEATURES {
        return Err(PdpError::invalid(
            "ai_features",
            format!("{} entries; at most {MAX_AI_FEATURES}", raw.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, feature) in raw.iter().enumerate() {
        let field = format!("ai_features[{i}]");
        let feature = id(&field, feature)?;
        if !seen.insert(feature.clone()) {
            return Err(PdpError::invalid(
                field,
                format!("duplicate feature {feature}"),
            ));
        }
        out.push(feature);
    }
    Ok(out)
}

/// Validates an Authorize request into a command; every error names its field.
pub fn authorize_command(req: &proto::AuthorizeRequest) -> Result<AuthorizeCommand, PdpError> {
    let phase = match enum_field::<proto::Phase>("phase", req.phase)? {
        proto::Phase::Start => Phase::Start,
        proto::Phase::Live => Phase::Live,
        proto::Phase::Unspecified => {
            return Err(PdpError::invalid("phase", "required (UNSPECIFIED given)"));
        }
    };
    let livestream_type =
        convert::livestream_type_from_proto("livestream_type", req.livestream_type)?;
    let drive_mode = convert::drive_mode_from_proto("drive_mode", req.drive_mode)?;
    let command = AuthorizeCommand {
        phase,
        merchant_id: optional_id("merchant_id", &req.merchant_id)?,
        room_id: optional_id("room_id", &req.room_id)?,
        anchor_id: optional_id("anchor_id", &req.anchor_id)?,
        driver_id: optional_id("driver_id", &req.driver_id)?,
        livestream_type,
        drive_mode,
        ai_features: ai_features(&req.ai_features)?,
        session_id: optional_id("session_id", &req.session_id)?,
        gateway_id: optional_id("gateway_id", &req.gateway_id)?.unwrap_or_default(),
        explain: req.explain,
        stream: None,
        idempotency_key: optional_id("idempotency_key", &req.idempotency_key)?,
        labels: convert::labels_from_proto(req.labels.as_ref())?,
    };
    match phase {
        Phase::Start => {
            for (field, present) in [
                ("merchant_id", command.merchant_id.is_some()),
                ("room_id", command.room_id.is_some()),
                ("anchor_id", command.anchor_id.is_some()),
                ("driver_id", command.driver_id.is_some()),
                ("livestream_type", command.livestream_type.is_some()),
                ("drive_mode", command.drive_mode.is_some()),
            ] {
                if !present {
                    return Err(PdpError::invalid(field, "required at START"));
                }
            }
            if command.session_id.is_some() {
                return Err(PdpError::invalid(
                    "session_id",
                    "must be empty at START: the PDP opens the session",
                ));
            }
        }
        Phase::Live => {
            if command.session_id.is_none() {
                return Err(PdpError::invalid("session_id", "required at LIVE"));
            }
            if command.idempotency_key.is_some() {
                return Err(PdpError::invalid(
                    "idempotency_key",
                    "only a START opens a session; a LIVE re-check is safe to repeat",
                ));
            }
        }
    }
    Ok(command)
}

/// Where a gRPC request came from, for its decision-log record.
fn grpc_origin<T: prost::Message>(request: &Request<T>, message: &str, gateway_id: &str) -> Origin {
    Origin {
        request_id: None,
        entry_point: entry::GRPC,
        gateway_id: gateway_id.to_owned(),
        caller: auth::caller(request).to_string(),
        request: convert::request_json(message, request.get_ref()),
    }
}

/// Records a request refused before it changed anything, and returns its status (or
/// UNAVAILABLE if even that cannot be recorded: nothing passes unrecorded).
async fn refused(
    pdp: &Pdp,
    origin: &Origin,
    action: &str,
    concerns: (String, String),
    refusal: Status,
) -> Status {
    let outcome = format!("{:?}: {}", refusal.code(), refusal.message());
    match pdp.log_action(origin, action, concerns, outcome).await {
        Ok(()) => refusal,
        // The disk guard refused the write and its record alike: say so, not "unavailable".
        Err(e @ PdpError::ResourceExhausted(_)) => status(e),
        Err(e) => Status::unavailable(format!("the action could not be logged: {e}")),
    }
}

/// An admin action on its way to the decision log: who asked, what, and about whom. What the
/// service does is recorded by the service, with the change; what is refused is recorded here.
struct Audit {
    origin: Origin,
    action: &'static str,
    concerns: (String, String),
}

impl Audit {
    fn begin<T: prost::Message>(
        request: &Request<T>,
        action: &'static str,
        concerns: (String, String),
    ) -> Audit {
        let message = format!("anchorpdp.v1.{action}Request");
        Audit {
            origin: grpc_origin(request, &message, ""),
            action,
            concerns,
        }
    }

    async fn end<T>(
        self,
        pdp: &Pdp,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(response) => Ok(response),
            Err(refusal) => {
                Err(refused(pdp, &self.origin, self.action, self.concerns, refusal).await)
            }
        }
    }
}
