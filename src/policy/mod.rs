//! The rules as Cedar policies: loading and validating a policy directory (`load`) and deciding
//! with it (`decide`).

mod decide;
mod load;

pub use decide::{Decision, Observation, PDP_RULE_ID, Phase, Violation};
pub use load::{PolicyBundle, PolicyLoadError, PolicyProblem, RuleInfo, load};
