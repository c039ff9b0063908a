//! The decision: a pure function of (store facts, the gateway's observations, the policy set,
//! the time). No I/O and no clock: everything it needs is an argument.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Request, RestrictedExpression,
};

use super::load::PolicyBundle;
use crate::domain::{DriveMode, Facts, LivestreamType, Millis, Penalty, RecordBody, Registration};

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

/// Entity type names, parsed once.
pub(crate) struct EntityTypes {
    merchant: EntityTypeName,
    provider: EntityTypeName,
    anchor: EntityTypeName,
    driver: EntityTypeName,
    room: EntityTypeName,
    broadcast: EntityUid,
}

impl EntityTypes {
    pub(crate) fn new() -> Result<Self, String> {
        let name = |n: &str| EntityTypeName::from_str(n).map_err(|e| format!("{n}: {e}"));
        Ok(EntityTypes {
            merchant: name("AnchorPdp::Merchant")?,
            provider: name("AnchorPdp::Provider")?,
            anchor: name("AnchorPdp::Anchor")?,
            driver: name("AnchorPdp::Driver")?,
            room: name("AnchorPdp::Room")?,
            broadcast: EntityUid::from_type_name_and_id(
                name("AnchorPdp::Action")?,
                EntityId::new("Broadcast"),
            ),
        })
    }
}

fn uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

pub use crate::domain::{Explanation, Fact};

/// Builds one entity's attributes and, when explaining, records each as a fact.
struct Attrs {
    entity: String,
    map: HashMap<String, RestrictedExpression>,
    facts: Vec<Fact>,
    explain: bool,
}

impl Attrs {
    fn new(entity: impl ToString, explain: bool) -> Attrs {
        Attrs {
            entity: entity.to_string(),
            map: HashMap::new(),
            facts: Vec::new(),
            explain,
        }
    }

    fn put(&mut self, name: &str, value: RestrictedExpression, shown: impl FnOnce() -> String) {
        if self.explain {
            self.facts.push(Fact {
                entity: self.entity.clone(),
                attribute: name.to_owned(),
                value: shown(),
            });
        }
        self.map.insert(name.to_owned(), value);
    }

    fn bool(&mut self, name: &str, value: bool) {
        self.put(name, RestrictedExpression::new_bool(value), || {
            value.to_string()
        });
    }

    fn string(&mut self, name: &str, value: &str) {
        self.put(
            name,
            RestrictedExpression::new_string(value.to_owned()),
            || format!("{value:?}"),
        );
    }

    fn long(&mut self, name: &str, value: i64) {
        self.put(name, RestrictedExpression::new_long(value), || {
            value.to_string()
        });
    }

    fn entity(&mut self, name: &str, value: &EntityUid) {
        self.put(
            name,
            RestrictedExpression::new_entity_uid(value.clone()),
            || value.to_string(),
        );
    }

    fn strings(&mut self, name: &str, values: &[&String]) {
        let set = RestrictedExpression::new_set(
            values
                .iter()
                .map(|v| RestrictedExpression::new_string((*v).clone())),
        );
        self.put(name, set, || {
            let shown: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
            format!("[{}]", shown.join(", "))
        });
    }
}

/// The review attributes shared by anchors, drivers and rooms.
fn filing_attrs(attrs: &mut Attrs, types: &EntityTypes, record: Option<&Registration>) {
    attrs.bool("filed", record.is_some());
    if let Some(record) = record {
        if let Some(owner) = record.body.owner() {
            attrs.entity("owner", &uid(&types.merchant, owner));
        }
        attrs.string("review", record.review_status.policy_name());
        if let Some(expires) = record.approval_expires_at() {
            attrs.long("approval_expires_ms", expires);
        }
    }
}

fn entity(attrs: Attrs, uid: EntityUid, facts: &mut Vec<Fact>) -> Result<Entity, String> {
    facts.extend(attrs.facts);
    Entity::new(uid, attrs.map, HashSet::new()).map_err(|e| format!("cannot build entity: {e}"))
}

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
        let explain_errors = explain || explain_denies;
        match self.evaluate(facts, observation, now, explain, explain_denies) {
            Ok(decision) => decision,
            Err(detail) => Decision {
                allowed: false,
                violations: vec![Violation::pdp_failure(&detail)],
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
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
        explain: bool,
        explain_denies: bool,
    ) -> Result<Decision, String> {
        let inputs = self.inputs(facts, observation, now, explain)?;
        let response =
            Authorizer::new().is_authorized(&inputs.request, &self.set, &inputs.entities);
        let mut violations: Vec<(usize, Violation)> = Vec::new();
        for policy_id in response.diagnostics().reason() {
            if let Some(rule) = self.rules.get(policy_id) {
                violations.push((
                    rule.order,
                    Violation {
                        rule_id: rule.id.clone(),
                        message_en: rule.message_en.clone(),
                        message_zh: rule.message_zh.clone(),
                        penalty: rule.penalty,
                    },
                ));
            }
        }
        violations.sort_by_key(|(order, _)| *order);
        let mut violations: Vec<Violation> = violations.into_iter().map(|(_, v)| v).collect();
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
                let rendered = self.inputs(facts, observation, now, true)?;
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
                    .collect(),
            })
        } else {
            None
        };
        Ok(Decision {
            allowed,
            violations,
            policy_version: self.version().to_owned(),
            explanation,
        })
    }

    /// The entities and request Cedar decides on, and (with `explain`) how they read.
    fn inputs(
        &self,
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
        explain: bool,
    ) -> Result<Inputs, String> {
        let types = &self.types;
        let merchant_uid = uid(&types.merchant, &facts.merchant_id);
        let room_uid = uid(&types.room, &facts.room_id);
        let anchor_uid = uid(&types.anchor, &facts.anchor_id);
        let driver_uid = uid(&types.driver, &facts.driver_id);
        let mut fact_log = Vec::new();

        let mut merchant = Attrs::new(&merchant_uid, explain);
        merchant.bool("filed", facts.merchant.is_some());
        let tier = match facts.merchant.as_ref().map(|m| &m.body) {
            Some(RecordBody::Merchant { tier, .. }) => tier.policy_name(),
            _ => "UNREGISTERED",
        };
        merchant.string("tier", tier);
        if let Some(until) = facts.account.as_ref().and_then(|a| a.frozen_until) {
            merchant.long("frozen_until_ms", until);
        }
        let mut entities = vec![entity(merchant, merchant_uid.clone(), &mut fact_log)?];
        let mut room = Attrs::new(&room_uid, explain);
        filing_attrs(&mut room, types, facts.room.as_ref());
        entities.push(entity(room, room_uid.clone(), &mut fact_log)?);
        let mut driver = Attrs::new(&driver_uid, explain);
        filing_attrs(&mut driver, types, facts.driver.as_ref());
        entities.push(entity(driver, driver_uid.clone(), &mut fact_log)?);
        let mut anchor = Attrs::new(&anchor_uid, explain);
        filing_attrs(&mut anchor, types, facts.anchor.as_ref());
        if let Some(RecordBody::Anchor {
            provider_id,
            image_style,
            ..
        }) = facts.anchor.as_ref().map(|a| &a.body)
        {
            let provider_uid = uid(&types.provider, provider_id);
            anchor.entity("provider", &provider_uid);
            anchor.string("image_style", image_style.policy_name());
            // A provider the store does not know is, by definition, not listed.
            let listed = facts
                .provider
                .as_ref()
                .and_then(|p| p.provider_listing.as_ref())
                .is_some_and(|l| l.listed);
            let mut provider = Attrs::new(&provider_uid, explain);
            provider.bool("filed", facts.provider.is_some());
            provider.bool("listed", listed);
            entities.push(entity(provider, provider_uid, &mut fact_log)?);
        }
        entities.push(entity(anchor, anchor_uid.clone(), &mut fact_log)?);
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| format!("cannot build entities: {e}"))?;

        let cleared = |test: &dyn Fn(&Registration) -> bool| -> Vec<&String> {
            facts
                .ai_features
                .iter()
                .filter(|(_, record)| record.as_ref().is_some_and(test))
                .map(|(id, _)| id)
                .collect()
        };
        let assessed = cleared(&|r| {
            r.ai_feature_clearance
                .as_ref()
                .is_some_and(|c| c.security_assessment_passed)
        });
        let filed = cleared(&|r| r.ai_feature_clearance.as_ref().is_some_and(|c| c.filed()));
        let in_use: Vec<&String> = observation.ai_features.iter().collect();
        let mut context = Attrs::new("context", explain);
        context.string("phase", observation.phase.policy_name());
        context.long("now_ms", now);
        context.string("livestream_type", observation.livestream_type.policy_name());
        context.string("drive_mode", observation.drive_mode.policy_name());
        context.entity("anchor", &anchor_uid);
        context.entity("driver", &driver_uid);
        context.strings("ai_features", &in_use);
        context.strings("ai_features_assessed", &assessed);
        context.strings("ai_features_filed", &filed);
        let context_facts = std::mem::take(&mut context.facts);
        let context =
            Context::from_pairs(context.map).map_err(|e| format!("cannot build context: {e}"))?;
        // Not schema-checked per request (~5 µs of ~38): the policies are validated against the
        // schema at load, this function is the only producer of requests, and a request of the
        // wrong shape fails evaluation, which denies.
        let request = Request::new(
            merchant_uid,
            types.broadcast.clone(),
            room_uid,
            context,
            None,
        )
        .map_err(|e| format!("request does not match the schema: {e}"))?;

        Ok(Inputs {
            entities,
            request,
            fact_log,
            context_facts,
        })
    }
}

/// What Cedar decides on, and how it reads to a person.
struct Inputs {
    entities: Entities,
    request: Request,
    fact_log: Vec<Fact>,
    context_facts: Vec<Fact>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{self, Account, Kind, Tier};
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
        }
    }

    const OBSERVED: Observation<'static> = Observation {
        phase: Phase::Start,
        livestream_type: LivestreamType::DailyMarketing,
        drive_mode: DriveMode::RealPerson,
        ai_features: &[],
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
