//! The decision: a pure function of (store facts, the gateway's observations, the policy set,
//! the time). No I/O and no clock: everything it needs is an argument.

use cedar_policy::{Authorizer, Decision as CedarDecision};

use super::inputs::DecisionInputs;
use super::load::PolicyBundle;
use crate::domain::{DriveMode, Facts, LabelReport, LivestreamType, Millis, Penalty};

/// The pseudo rule id of a failure to decide (fail closed).
pub const PDP_RULE_ID: &str = "PDP";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Start,
    Live,
}

impl Phase {
    pub fn policy_name(self) -> &'static str {
        match self {
            Phase::Start => "START",
            Phase::Live => "LIVE",
        }
    }
}

/// What the gateway observes about the broadcast; ids are resolved into `Facts` beforehand.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub phase: Phase,
    pub livestream_type: LivestreamType,
    pub drive_mode: DriveMode,
    pub ai_features: &'a [String],
    /// The AI-content labels reported; `None`: no report (no label shown, none in the
    /// metadata).
    pub labels: Option<&'a LabelReport>,
}

pub use crate::domain::Violation;

impl Violation {
    pub fn pdp_failure(detail: &str) -> Violation {
        Violation {
            rule_id: PDP_RULE_ID.into(),
            message_en: format!(
                "The policy decision point could not decide, so it denies: {detail}"
            ),
            message_zh: format!("策略决策点无法作出决定,因此拒绝:{detail}"),
            penalty: Penalty::None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Broken rules in policy order; a deny always has at least one.
    pub violations: Vec<Violation>,
    /// At LIVE: broken warning-only rules, which let the broadcast go on.
    pub warnings: Vec<Violation>,
    pub policy_version: String,
    /// Present when asked for.
    pub explanation: Option<Explanation>,
}

impl Decision {
    /// The heaviest penalty among the violations: E2 covers E1 (both freeze; E2 also warns).
    pub fn penalty(&self) -> Penalty {
        self.violations
            .iter()
            .map(|v| v.penalty)
            .max()
            .unwrap_or(Penalty::None)
    }

    pub fn rule_ids(&self) -> Vec<String> {
        self.violations.iter().map(|v| v.rule_id.clone()).collect()
    }
}

pub use crate::domain::{Explanation, Fact};

impl PolicyBundle {
    /// Decides one broadcast. Any failure on the way (an entity that cannot be built, an
    /// evaluation error in any policy) is a deny that says so.
    pub fn decide(&self, facts: &Facts, observation: &Observation<'_>, now: Millis) -> Decision {
        self.decide_explained(facts, observation, now, false)
    }

    /// As `decide`; with `explain`, the decision also carries the facts and context it used
    /// and the policies that determined it.
    pub fn decide_explained(
        &self,
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
        explain: bool,
    ) -> Decision {
        self.decide_with(facts, observation, now, explain, explain)
    }

    /// As `decide_explained`, and every deny explained whatever `explain` says: the decision
    /// log keeps the explanation of each deny. Cedar evaluates once either way; a deny's facts
    /// are rendered after the fact, from the same inputs.
    pub fn decide_for_the_record(
        &self,
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
        explain: bool,
    ) -> Decision {
        self.decide_with(facts, observation, now, explain, true)
    }

    fn decide_with(
        &self,
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
        explain: bool,
        explain_denies: bool,
    ) -> Decision {
        let inputs = DecisionInputs::new(facts, observation, now, self.reads);
        if explain {
            // Explaining an allow renders what the memo does not keep; rare, so not memoized.
            return self.decide_inputs(&inputs, true, true);
        }
        let mut decision = self.memo.get_or_decide(inputs, |inputs| {
            // What is kept serves every caller: a deny with its explanation, an allow without.
            self.decide_inputs(inputs, false, true)
        });
        if !explain_denies {
            decision.explanation = None;
        }
        decision
    }

    /// Decides on `inputs` with Cedar, never from the memo. For the memo's own tests and the
    /// benchmark of an unmemoized decision.
    pub fn decide_uncached(
        &self,
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
    ) -> Decision {
        let inputs = DecisionInputs::new(facts, observation, now, self.reads);
        self.decide_inputs(&inputs, false, true)
    }

    /// Memoized decisions kept, and lookups that found one / did not since this set loaded.
    pub fn memo_stats(&self) -> (usize, u64, u64) {
        self.memo.stats()
    }

    fn decide_inputs(
        &self,
        inputs: &DecisionInputs,
        explain: bool,
        explain_denies: bool,
    ) -> Decision {
        let explain_errors = explain || explain_denies;
        match self.evaluate(inputs, explain, explain_denies) {
            Ok(decision) => decision,
            Err(detail) => Decision {
                allowed: false,
                violations: vec![Violation::pdp_failure(&detail)],
                warnings: Vec::new(),
                policy_version: self.version().to_owned(),
                explanation: explain_errors.then(|| Explanation {
                    errors: vec![detail],
                    ..Explanation::default()
                }),
            },
        }
    }

    fn evaluate(
        &self,
        decision_inputs: &DecisionInputs,
        explain: bool,
        explain_denies: bool,
    ) -> Result<Decision, String> {
        let inputs = decision_inputs.to_cedar(&self.types, explain)?;
        // At LIVE, warning-only rules are decided apart: breaking one warns, the rest decide.
        let split = decision_inputs.is_live() && self.has_warning_rules;
        let set = if split { &self.live_set } else { &self.set };
        let response = Authorizer::new().is_authorized(&inputs.request, set, &inputs.entities);
        let mut violations = self.broken(&response);
        let mut warnings = Vec::new();
        let mut warning_errors = Vec::new();
        if split {
            let warned = Authorizer::new().is_authorized(
                &inputs.request,
                &self.warning_set,
                &inputs.entities,
            );
            warnings = self.broken(&warned);
            // A warning rule that cannot be evaluated might have been broken: fail closed.
            warning_errors = warned
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect();
            violations.extend(warning_errors.iter().map(|e| Violation::pdp_failure(e)));
        }
        // Cedar skips a policy whose condition errors; a skipped forbid might have denied.
        for error in response.diagnostics().errors() {
            violations.push(Violation::pdp_failure(&error.to_string()));
        }
        let allowed = response.decision() == CedarDecision::Allow && violations.is_empty();
        if !allowed && violations.is_empty() {
            violations.push(Violation::pdp_failure("no policy permits this broadcast"));
        }
        let explanation = if explain || (explain_denies && !allowed) {
            // Rendering the facts costs more than deciding on them: an allow nobody asked to
            // explain skips it, and an unexplained deny renders them now from the same inputs.
            let (fact_log, context_facts) = if explain {
                (inputs.fact_log, inputs.context_facts)
            } else {
                let rendered = decision_inputs.to_cedar(&self.types, true)?;
                (rendered.fact_log, rendered.context_facts)
            };
            let mut determining: Vec<String> = response
                .diagnostics()
                .reason()
                .map(|id| id.to_string())
                .collect();
            determining.sort();
            Some(Explanation {
                facts: fact_log,
                context: context_facts,
                determining_policies: determining,
                errors: response
                    .diagnostics()
                    .errors()
                    .map(|e| e.to_string())
                    .chain(warning_errors)
                    .collect(),
            })
        } else {
            None
        };
        Ok(Decision {
            allowed,
            violations,
            warnings,
            policy_version: self.version().to_owned(),
            explanation,
        })
    }

    /// The rules a response's satisfied forbids enforce, in policy order.
    fn broken(&self, response: &cedar_policy::Response) -> Vec<Violation> {
        let mut broken: Vec<(usize, Violation)> = response
            .diagnostics()
            .reason()
            .filter_map(|policy_id| self.rules.get(policy_id))
            .map(|rule| {
                (
                    rule.order,
                    Violation {
                        rule_id: rule.id.clone(),
                        message_en: rule.message_en.clone(),
                        message_zh: rule.message_zh.clone(),
                        penalty: rule.penalty,
                    },
                )
            })
            .collect();
        broken.sort_by_key(|(order, _)| *order);
        broken.into_iter().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{self, Account, Kind, RecordBody, Registration, Tier};
    use std::path::Path;

    fn registration(id: &str, body: RecordBody) -> Registration {
        let mut r = domain::apply_register(None, id, body, None, 0)
            .map(|o| o.registration)
            .unwrap_or_else(|e| panic!("{e}"));
        if r.kind().needs_review() {
            r.review_status = domain::ReviewStatus::Approved;
        }
        if r.kind() == Kind::Provider {
            r.provider_listing = Some(domain::ProviderListing {
                listed: true,
                changed_at: Some(0),
                changed_by: "ops".into(),
            });
        }
        r
    }

    fn admitted_facts() -> Facts {
        Facts {
            merchant_id: "m1".into(),
            room_id: "r1".into(),
            anchor_id: "a1".into(),
            driver_id: "d1".into(),
            merchant: Some(registration(
                "m1",
                RecordBody::Merchant {
                    tier: Tier::ChineseGoldSupplier,
                    display_name: String::new(),
                },
            )),
            account: None,
            room: Some(registration(
                "r1",
                RecordBody::Room {
                    owner_merchant_id: "m1".into(),
                    display_name: String::new(),
                },
            )),
            anchor: Some(registration(
                "a1",
                RecordBody::Anchor {
                    owner_merchant_id: "m1".into(),
                    provider_id: "p1".into(),
                    image_style: domain::ImageStyle::RealisticHuman,
                    image_reference: "img".into(),
                    display_name: String::new(),
                    likeness_of: String::new(),
                    consent_id: String::new(),
                },
            )),
            provider: Some(registration(
                "p1",
                RecordBody::Provider {
                    display_name: String::new(),
                },
            )),
            driver: Some(registration(
                "d1",
                RecordBody::Driver {
                    owner_merchant_id: "m1".into(),
                    identity_reference: "kyc".into(),
                    display_name: String::new(),
                },
            )),
            ai_features: vec![],
            consent: None,
        }
    }

    const OBSERVED: Observation<'static> = Observation {
        phase: Phase::Start,
        livestream_type: LivestreamType::DailyMarketing,
        drive_mode: DriveMode::RealPerson,
        ai_features: &[],
        labels: None,
    };

    fn shipped() -> PolicyBundle {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        super::super::load(&dir).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_decision_depends_on_the_time_it_is_given() {
        let policies = shipped();
        let mut facts = admitted_facts();
        let mut account = Account::new("m1");
        account.frozen_until = Some(1_000);
        facts.account = Some(account);
        let frozen = policies.decide(&facts, &OBSERVED, 999);
        assert!(!frozen.allowed);
        assert_eq!(frozen.rule_ids(), ["E3"]);
        assert!(policies.decide(&facts, &OBSERVED, 1_000).allowed);
    }

    #[test]
    fn an_evaluation_error_in_any_policy_denies() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let shipped_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        std::fs::copy(
            shipped_dir.join("anchor.cedarschema"),
            temp.path().join("anchor.cedarschema"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Type-correct, so it validates; overflows at evaluation, so Cedar skips it.
        std::fs::write(
            temp.path().join("rules.cedar"),
            r#"@id("OVERFLOW") @penalty("none") @message_en("x") @message_zh("x")
forbid (principal, action == AnchorPdp::Action::"Broadcast", resource)
when { context.now_ms + 9223372036854775807 > 0 };
@id("ALLOW")
permit (principal, action == AnchorPdp::Action::"Broadcast", resource);
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let policies = super::super::load(temp.path()).unwrap_or_else(|e| panic!("{e}"));
        let decision = policies.decide(&admitted_facts(), &OBSERVED, 1);
        assert!(!decision.allowed);
        assert_eq!(decision.rule_ids(), [PDP_RULE_ID]);
        assert!(
            decision.violations[0].message_en.contains("OVERFLOW"),
            "{:?}",
            decision.violations
        );
    }
}
