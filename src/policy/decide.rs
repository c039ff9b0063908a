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
    fn policy_name(self) -> &'static str {
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule_id: String,
    pub message_en: String,
    pub message_zh: String,
    pub penalty: Penalty,
}

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

type Attrs = HashMap<String, RestrictedExpression>;

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// The review attributes shared by anchors, drivers and rooms.
fn filing_attrs(types: &EntityTypes, record: Option<&Registration>) -> Attrs {
    let mut attrs = Attrs::new();
    attrs.insert(
        "filed".into(),
        RestrictedExpression::new_bool(record.is_some()),
    );
    if let Some(record) = record {
        if let Some(owner) = record.body.owner() {
            attrs.insert(
                "owner".into(),
                RestrictedExpression::new_entity_uid(uid(&types.merchant, owner)),
            );
        }
        attrs.insert("review".into(), string(record.review_status.policy_name()));
        if let Some(expires) = record.approval_expires_at() {
            attrs.insert(
                "approval_expires_ms".into(),
                RestrictedExpression::new_long(expires),
            );
        }
    }
    attrs
}

impl PolicyBundle {
    /// Decides one broadcast. Any failure on the way (an entity that cannot be built, an
    /// evaluation error in any policy) is a deny that says so.
    pub fn decide(&self, facts: &Facts, observation: &Observation<'_>, now: Millis) -> Decision {
        match self.evaluate(facts, observation, now) {
            Ok(decision) => decision,
            Err(detail) => Decision {
                allowed: false,
                violations: vec![Violation::pdp_failure(&detail)],
                policy_version: self.version().to_owned(),
            },
        }
    }

    fn evaluate(
        &self,
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
    ) -> Result<Decision, String> {
        let types = &self.types;
        let merchant_uid = uid(&types.merchant, &facts.merchant_id);
        let room_uid = uid(&types.room, &facts.room_id);
        let anchor_uid = uid(&types.anchor, &facts.anchor_id);
        let driver_uid = uid(&types.driver, &facts.driver_id);

        let mut merchant = Attrs::new();
        merchant.insert(
            "filed".into(),
            RestrictedExpression::new_bool(facts.merchant.is_some()),
        );
        let tier = match facts.merchant.as_ref().map(|m| &m.body) {
            Some(RecordBody::Merchant { tier, .. }) => tier.policy_name(),
            _ => "UNREGISTERED",
        };
        merchant.insert("tier".into(), string(tier));
        if let Some(until) = facts.account.as_ref().and_then(|a| a.frozen_until) {
            merchant.insert(
                "frozen_until_ms".into(),
                RestrictedExpression::new_long(until),
            );
        }

        let mut entities = vec![
            Entity::new(merchant_uid.clone(), merchant, HashSet::new()),
            Entity::new(
                room_uid.clone(),
                filing_attrs(types, facts.room.as_ref()),
                HashSet::new(),
            ),
            Entity::new(
                driver_uid.clone(),
                filing_attrs(types, facts.driver.as_ref()),
                HashSet::new(),
            ),
        ];
        let mut anchor = filing_attrs(types, facts.anchor.as_ref());
        if let Some(RecordBody::Anchor {
            provider_id,
            image_style,
            ..
        }) = facts.anchor.as_ref().map(|a| &a.body)
        {
            let provider_uid = uid(&types.provider, provider_id);
            anchor.insert(
                "provider".into(),
                RestrictedExpression::new_entity_uid(provider_uid.clone()),
            );
            anchor.insert("image_style".into(), string(image_style.policy_name()));
            // A provider the store does not know is, by definition, not listed.
            let listed = facts
                .provider
                .as_ref()
                .and_then(|p| p.provider_listing.as_ref())
                .is_some_and(|l| l.listed);
            let mut provider = Attrs::new();
            provider.insert(
                "filed".into(),
                RestrictedExpression::new_bool(facts.provider.is_some()),
            );
            provider.insert("listed".into(), RestrictedExpression::new_bool(listed));
            entities.push(Entity::new(provider_uid, provider, HashSet::new()));
        }
        entities.push(Entity::new(anchor_uid.clone(), anchor, HashSet::new()));
        let entities: Vec<Entity> = entities
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot build entity: {e}"))?;
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| format!("cannot build entities: {e}"))?;

        let features = |cleared: &dyn Fn(&Registration) -> bool| {
            RestrictedExpression::new_set(
                facts
                    .ai_features
                    .iter()
                    .filter(|(_, record)| record.as_ref().is_some_and(cleared))
                    .map(|(id, _)| string(id)),
            )
        };
        let assessed = features(&|r| {
            r.ai_feature_clearance
                .as_ref()
                .is_some_and(|c| c.security_assessment_passed)
        });
        let filed = features(&|r| r.ai_feature_clearance.as_ref().is_some_and(|c| c.filed()));
        let context = Context::from_pairs([
            ("phase".to_owned(), string(observation.phase.policy_name())),
            ("now_ms".to_owned(), RestrictedExpression::new_long(now)),
            (
                "livestream_type".to_owned(),
                string(observation.livestream_type.policy_name()),
            ),
            (
                "drive_mode".to_owned(),
                string(observation.drive_mode.policy_name()),
            ),
            (
                "anchor".to_owned(),
                RestrictedExpression::new_entity_uid(anchor_uid),
            ),
            (
                "driver".to_owned(),
                RestrictedExpression::new_entity_uid(driver_uid),
            ),
            (
                "ai_features".to_owned(),
                RestrictedExpression::new_set(observation.ai_features.iter().map(|f| string(f))),
            ),
            ("ai_features_assessed".to_owned(), assessed),
            ("ai_features_filed".to_owned(), filed),
        ])
        .map_err(|e| format!("cannot build context: {e}"))?;
        let request = Request::new(
            merchant_uid,
            types.broadcast.clone(),
            room_uid,
            context,
            Some(&self.schema),
        )
        .map_err(|e| format!("request does not match the schema: {e}"))?;

        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
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
        Ok(Decision {
            allowed,
            violations,
            policy_version: self.version().to_owned(),
        })
    }
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
