//! The rules as Cedar policies: loading and validating a policy directory (`load`), deciding
//! with it (`decide`), and swapping it while serving (`handle`).

pub mod builtin;
mod decide;
mod handle;
mod inputs;
mod load;
mod memo;
pub mod packs;
mod published;
mod values;

pub use decide::{Decision, Explanation, Fact, Observation, PDP_RULE_ID, Phase, Violation};
pub use handle::{PolicyHandle, ReloadOutcome, ReloadStatus};
pub use load::{PolicyBundle, PolicyLoadError, PolicyProblem, RuleInfo, load};
pub use published::{pack, unpack};
