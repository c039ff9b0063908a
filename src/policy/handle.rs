//! The policy set in force, swappable while serving. A decision takes one `Arc` of the set at
//! its start and uses only that, so no decision ever sees half of an old set and half of a new
//! one. A reload validates the new set first; an invalid one is reported and the old set keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::load::{PolicyBundle, PolicyLoadError, load};
use crate::domain::Millis;

/// What a reload attempt did.
#[derive(Clone, Debug)]
pub enum ReloadOutcome {
    /// A new set is in force.
    Reloaded { previous: String, active: String },
    /// The files hash to the set already in force.
    Unchanged { active: String },
    /// The new set is invalid; `active` keeps serving.
    Rejected {
        active: String,
        error: PolicyLoadError,
    },
}

/// The reload history an operator can read.
#[derive(Clone, Debug)]
pub struct ReloadStatus {
    pub active_version: String,
    pub loaded_at: Millis,
    pub last_attempt_at: Option<Millis>,
    pub last_trigger: String,
    /// The error of the latest attempt, if it was rejected; cleared by a later success.
    pub last_error: Option<PolicyLoadError>,
    pub reloads: u64,
    pub rejected_reloads: u64,
}

pub struct PolicyHandle {
    dir: PathBuf,
    /// Whether automatic reloads (file watch, SIGHUP) may drop rules the active set has.
    automatic_reloads_may_remove_rules: bool,
    current: RwLock<Arc<PolicyBundle>>,
    status: Mutex<ReloadStatus>,
    /// Serializes reloads so two triggers at once cannot interleave load and swap.
    reloading: Mutex<()>,
}

impl PolicyHandle {
    pub fn load(dir: &Path, now: Millis) -> Result<PolicyHandle, PolicyLoadError> {
        let bundle = load(dir)?;
        let status = ReloadStatus {
            active_version: bundle.version().to_owned(),
            loaded_at: now,
            last_attempt_at: None,
            last_trigger: "start".into(),
            last_error: None,
            reloads: 0,
            rejected_reloads: 0,
        };
        Ok(PolicyHandle {
            dir: dir.to_owned(),
            automatic_reloads_may_remove_rules: false,
            current: RwLock::new(Arc::new(bundle)),
            status: Mutex::new(status),
            reloading: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets file-watch and SIGHUP reloads drop rules (`serve --allow-rule-removal`).
    pub fn allowing_rule_removal(mut self, allowed: bool) -> Self {
        self.automatic_reloads_may_remove_rules = allowed;
        self
    }

    pub fn automatic_reloads_may_remove_rules(&self) -> bool {
        self.automatic_reloads_may_remove_rules
    }

    /// The set in force now. Hold the `Arc` for the whole of one decision.
    pub fn current(&self) -> Arc<PolicyBundle> {
        // A panic elsewhere while holding the lock cannot leave the Arc half-written, so a
        // poisoned lock still holds a whole set.
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn status(&self) -> ReloadStatus {
        match self.status.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads and validates the directory again; swaps it in only if valid and different, and
    /// if it keeps every rule the active set enforces (unless `may_remove_rules`): a rule that
    /// goes missing from a file would otherwise stop being enforced without anyone saying so.
    pub fn reload(&self, now: Millis, trigger: &str, may_remove_rules: bool) -> ReloadOutcome {
        self.reload_from(&self.dir, now, trigger, may_remove_rules)
    }

    /// `reload`, from another directory: where a replica unpacked the set published to all.
    pub fn reload_from(
        &self,
        dir: &Path,
        now: Millis,
        trigger: &str,
        may_remove_rules: bool,
    ) -> ReloadOutcome {
        let _one_at_a_time = match self.reloading.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let active = self.current();
        let previous = active.version().to_owned();
        let outcome = match load(dir) {
            Ok(bundle) if bundle.version() == previous => {
                ReloadOutcome::Unchanged { active: previous }
            }
            Ok(bundle)
                if !may_remove_rules
                    && active.rules().any(|rule| bundle.rule(&rule.id).is_none()) =>
            {
                let mut missing: Vec<&str> = active
                    .rules()
                    .filter(|rule| bundle.rule(&rule.id).is_none())
                    .map(|rule| rule.id.as_str())
                    .collect();
                missing.sort_unstable();
                ReloadOutcome::Rejected {
                    active: previous,
                    error: PolicyLoadError {
                        dir: dir.to_owned(),
                        problems: vec![super::load::PolicyProblem {
                            file: dir.to_owned(),
                            line: 0,
                            column: 0,
                            message: format!(
                                "the new set drops {} that the active set enforces; to remove \
                                 rules on purpose, reload with allow_removed_rules \
                                 (PolicyAdmin/ReloadPolicies) or serve --allow-rule-removal",
                                missing.join(", ")
                            ),
                        }],
                    },
                }
            }
            Ok(bundle) => {
                let active = bundle.version().to_owned();
                let fresh = Arc::new(bundle);
                match self.current.write() {
                    Ok(mut guard) => *guard = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                }
                ReloadOutcome::Reloaded { previous, active }
            }
            Err(error) => ReloadOutcome::Rejected {
                active: previous,
                error,
            },
        };
        let mut status = match self.status.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        status.last_attempt_at = Some(now);
        status.last_trigger = trigger.to_owned();
        let result = match &outcome {
            ReloadOutcome::Reloaded { .. } => "reloaded",
            ReloadOutcome::Unchanged { .. } => "unchanged",
            ReloadOutcome::Rejected { .. } => "rejected",
        };
        metrics::counter!("anchor_pdp_policy_reloads_total", "result" => result).increment(1);
        match &outcome {
            ReloadOutcome::Reloaded { active, .. } => {
                status.active_version = active.clone();
                status.loaded_at = now;
                status.last_error = None;
                status.reloads += 1;
                tracing::info!(trigger, policy_version = %active, "policies reloaded");
            }
            ReloadOutcome::Unchanged { active } => {
                status.last_error = None;
                tracing::debug!(trigger, policy_version = %active, "policies unchanged");
            }
            ReloadOutcome::Rejected { active, error } => {
                status.last_error = Some(error.clone());
                status.rejected_reloads += 1;
                tracing::error!(trigger, policy_version = %active, "policy reload rejected; the previous set keeps serving: {error}");
            }
        }
        outcome
    }
}
