//! What the policies decide on, as plain values: the attributes of each entity and the
//! context, computed from the store's facts, the gateway's observation and the time. Cedar's
//! entities and request are built from these values and nothing else, so equal inputs give
//! equal decisions, and they are the key decisions are memoized on.
//!
//! The time reaches the policies as the conditions that depend on it (`frozen`,
//! `approval_expired`), computed here, so that a decision can be reused for as long as they
//! hold. A policy set that reads `context.now_ms` itself gets the time too, and then it is part
//! of the key (such decisions are, in effect, not reused).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};

use super::decide::{Fact, Observation};
use super::load::Reads;
use crate::domain::{Facts, LabelReport, Millis, RecordBody, Registration};

/// Entity type names, parsed once.
pub(crate) struct EntityTypes {
    merchant: EntityTypeName,
    provider: EntityTypeName,
    anchor: EntityTypeName,
    driver: EntityTypeName,
    room: EntityTypeName,
    consent: EntityTypeName,
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
            consent: name("AnchorPdp::Consent")?,
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

/// A room's, anchor's or driver's review attributes; `None`s when it is not filed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Filing {
    id: String,
    filed: bool,
    owner: Option<String>,
    review: Option<&'static str>,
    approval_expires_ms: Option<Millis>,
    /// The approval's expiry has come (`approval_expires_ms <= now`); absent when not filed.
    approval_expired: Option<bool>,
}

impl Filing {
    fn new(id: &str, record: Option<&Registration>, now: Millis) -> Filing {
        let expires = record.and_then(Registration::approval_expires_at);
        Filing {
            id: id.to_owned(),
            filed: record.is_some(),
            owner: record.and_then(|r| r.body.owner()).map(str::to_owned),
            review: record.map(|r| r.review_status.policy_name()),
            approval_expires_ms: expires,
            approval_expired: record.map(|_| expires.is_some_and(|e| e <= now)),
        }
    }
}

/// An anchor's likeness consent filing, and whom it is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ConsentInputs {
    filing: Filing,
    person: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ProviderInputs {
    id: String,
    filed: bool,
    listed: bool,
}

/// Everything one decision reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DecisionInputs {
    merchant_id: String,
    merchant_filed: bool,
    tier: &'static str,
    frozen_until_ms: Option<Millis>,
    /// A recorded freeze has not ended (`now < frozen_until_ms`).
    frozen: bool,
    room: Filing,
    anchor: Filing,
    driver: Filing,
    provider: Option<ProviderInputs>,
    image_style: Option<&'static str>,
    phase: &'static str,
    livestream_type: &'static str,
    drive_mode: &'static str,
    ai_features: Vec<String>,
    ai_features_assessed: Vec<String>,
    ai_features_filed: Vec<String>,
    /// The time itself, only for a policy set that reads it.
    now_ms: Option<Millis>,
    /// The label observations, only for a policy set that reads them.
    labels: Option<LabelReport>,
    /// The anchor's likeness (`Some(None)`: of no real person), only for a set that reads it.
    likeness_of: Option<Option<String>>,
    /// The anchor's consent filing, when it names one and the set reads it.
    consent: Option<ConsentInputs>,
}

impl DecisionInputs {
    pub(crate) fn new(
        facts: &Facts,
        observation: &Observation<'_>,
        now: Millis,
        reads: Reads,
    ) -> DecisionInputs {
        let tier = match facts.merchant.as_ref().map(|m| &m.body) {
            Some(RecordBody::Merchant { tier, .. }) => tier.policy_name(),
            _ => "UNREGISTERED",
        };
        let frozen_until_ms = facts.account.as_ref().and_then(|a| a.frozen_until);
        let (provider, image_style, likeness_of) = match facts.anchor.as_ref().map(|a| &a.body) {
            Some(RecordBody::Anchor {
                provider_id,
                image_style,
                likeness_of,
                ..
            }) => (
                Some(ProviderInputs {
                    id: provider_id.clone(),
                    filed: facts.provider.is_some(),
                    // A provider the store does not know is, by definition, not listed.
                    listed: facts
                        .provider
                        .as_ref()
                        .and_then(|p| p.provider_listing.as_ref())
                        .is_some_and(|l| l.listed),
                }),
                Some(image_style.policy_name()),
                (!likeness_of.is_empty()).then(|| likeness_of.clone()),
            ),
            _ => (None, None, None),
        };
        let consent = facts
            .anchor
            .as_ref()
            .and_then(Registration::consent_id)
            .filter(|_| reads.consent)
            .map(|id| ConsentInputs {
                filing: Filing::new(id, facts.consent.as_ref(), now),
                person: match facts.consent.as_ref().map(|c| &c.body) {
                    Some(RecordBody::Consent {
                        person_reference, ..
                    }) => Some(person_reference.clone()),
                    _ => None,
                },
            });
        let cleared = |test: &dyn Fn(&Registration) -> bool| -> Vec<String> {
            facts
                .ai_features
                .iter()
                .filter(|(_, record)| record.as_ref().is_some_and(test))
                .map(|(id, _)| id.clone())
                .collect()
        };
        DecisionInputs {
            merchant_id: facts.merchant_id.clone(),
            merchant_filed: facts.merchant.is_some(),
            tier,
            frozen_until_ms,
            frozen: frozen_until_ms.is_some_and(|until| now < until),
            room: Filing::new(&facts.room_id, facts.room.as_ref(), now),
            anchor: Filing::new(&facts.anchor_id, facts.anchor.as_ref(), now),
            driver: Filing::new(&facts.driver_id, facts.driver.as_ref(), now),
            provider,
            image_style,
            phase: observation.phase.policy_name(),
            livestream_type: observation.livestream_type.policy_name(),
            drive_mode: observation.drive_mode.policy_name(),
            ai_features: observation.ai_features.to_vec(),
            ai_features_assessed: cleared(&|r| {
                r.ai_feature_clearance
                    .as_ref()
                    .is_some_and(|c| c.security_assessment_passed)
            }),
            ai_features_filed: cleared(&|r| {
                r.ai_feature_clearance.as_ref().is_some_and(|c| c.filed())
            }),
            now_ms: reads.now.then_some(now),
            labels: reads
                .labels
                .then(|| observation.labels.cloned().unwrap_or_default()),
            likeness_of: reads.consent.then_some(likeness_of),
            consent,
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.phase == "LIVE"
    }

    /// The entities and request Cedar decides on, and (with `explain`) how they read.
    pub(crate) fn to_cedar(&self, types: &EntityTypes, explain: bool) -> Result<Inputs, String> {
        let merchant_uid = uid(&types.merchant, &self.merchant_id);
        let room_uid = uid(&types.room, &self.room.id);
        let anchor_uid = uid(&types.anchor, &self.anchor.id);
        let driver_uid = uid(&types.driver, &self.driver.id);
        let mut fact_log = Vec::new();

        let mut merchant = Attrs::new(&merchant_uid, explain);
        merchant.bool("filed", self.merchant_filed);
        merchant.string("tier", self.tier);
        if let Some(until) = self.frozen_until_ms {
            merchant.long("frozen_until_ms", until);
        }
        merchant.bool("frozen", self.frozen);
        let mut entities = vec![entity(merchant, merchant_uid.clone(), &mut fact_log)?];
        let mut room = Attrs::new(&room_uid, explain);
        filing_attrs(&mut room, types, &self.room);
        entities.push(entity(room, room_uid.clone(), &mut fact_log)?);
        let mut driver = Attrs::new(&driver_uid, explain);
        filing_attrs(&mut driver, types, &self.driver);
        entities.push(entity(driver, driver_uid.clone(), &mut fact_log)?);
        let mut anchor = Attrs::new(&anchor_uid, explain);
        filing_attrs(&mut anchor, types, &self.anchor);
        if let Some(provider) = &self.provider {
            let provider_uid = uid(&types.provider, &provider.id);
            anchor.entity("provider", &provider_uid);
            let mut attrs = Attrs::new(&provider_uid, explain);
            attrs.bool("filed", provider.filed);
            attrs.bool("listed", provider.listed);
            entities.push(entity(attrs, provider_uid, &mut fact_log)?);
        }
        if let Some(style) = self.image_style {
            anchor.string("image_style", style);
        }
        if let Some(Some(person)) = &self.likeness_of {
            anchor.string("likeness_of", person);
        }
        if let Some(consent) = &self.consent {
            let consent_uid = uid(&types.consent, &consent.filing.id);
            anchor.entity("consent", &consent_uid);
            let mut attrs = Attrs::new(&consent_uid, explain);
            filing_attrs(&mut attrs, types, &consent.filing);
            if let Some(person) = &consent.person {
                attrs.string("person", person);
            }
            entities.push(entity(attrs, consent_uid, &mut fact_log)?);
        }
        entities.push(entity(anchor, anchor_uid.clone(), &mut fact_log)?);
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| format!("cannot build entities: {e}"))?;

        let mut context = Attrs::new("context", explain);
        context.string("phase", self.phase);
        if let Some(now) = self.now_ms {
            context.long("now_ms", now);
        }
        context.string("livestream_type", self.livestream_type);
        context.string("drive_mode", self.drive_mode);
        context.entity("anchor", &anchor_uid);
        context.entity("driver", &driver_uid);
        context.strings("ai_features", &self.ai_features);
        context.strings("ai_features_assessed", &self.ai_features_assessed);
        context.strings("ai_features_filed", &self.ai_features_filed);
        if let Some(labels) = &self.labels {
            context.bool("label_shown", labels.label_shown);
            context.string("label_kind", labels.label_kind.policy_name());
            context.bool("implicit_label", labels.implicit_label);
            context.string("implicit_label_provider", &labels.implicit_label_provider);
        }
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
pub(crate) struct Inputs {
    pub(crate) entities: Entities,
    pub(crate) request: Request,
    pub(crate) fact_log: Vec<Fact>,
    pub(crate) context_facts: Vec<Fact>,
}

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

    fn strings(&mut self, name: &str, values: &[String]) {
        let set = RestrictedExpression::new_set(
            values
                .iter()
                .map(|v| RestrictedExpression::new_string(v.clone())),
        );
        self.put(name, set, || {
            let shown: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
            format!("[{}]", shown.join(", "))
        });
    }
}

/// The review attributes shared by anchors, drivers and rooms.
fn filing_attrs(attrs: &mut Attrs, types: &EntityTypes, filing: &Filing) {
    attrs.bool("filed", filing.filed);
    if let Some(owner) = &filing.owner {
        attrs.entity("owner", &uid(&types.merchant, owner));
    }
    if let Some(review) = filing.review {
        attrs.string("review", review);
    }
    if let Some(expires) = filing.approval_expires_ms {
        attrs.long("approval_expires_ms", expires);
    }
    if let Some(expired) = filing.approval_expired {
        attrs.bool("approval_expired", expired);
    }
}

fn entity(attrs: Attrs, uid: EntityUid, facts: &mut Vec<Fact>) -> Result<Entity, String> {
    facts.extend(attrs.facts);
    Entity::new(uid, attrs.map, HashSet::new()).map_err(|e| format!("cannot build entity: {e}"))
}
