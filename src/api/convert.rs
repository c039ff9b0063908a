//! Request validation and proto ⇄ domain conversion. Every check names the field as the proto
//! spells it, so a caller sees exactly what to fix.

use prost_types::Timestamp;

use crate::domain::{self, Kind, Millis};
use crate::error::PdpError;
use crate::proto;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 256;
pub const MAX_NOTE_LEN: usize = 512;
pub const MAX_REFERENCE_LEN: usize = 1024;
pub const MAX_AI_FEATURES: usize = 32;

/// An optional write id (`request_id`): none when empty, else an id as `id` takes it.
pub fn request_id(value: &str) -> Result<Option<String>, PdpError> {
    if value.is_empty() {
        Ok(None)
    } else {
        id("request_id", value).map(Some)
    }
}

/// A required id: 1-128 characters of `[A-Za-z0-9._:-]`, not starting with `.`, `:` or `-` (so
/// `.`, `..` and `-x` are not ids: they read as paths and flags wherever ids end up; SRS's
/// `__defaultVhost__` is one).
pub fn id(field: &str, value: &str) -> Result<String, PdpError> {
    if value.is_empty() {
        return Err(PdpError::invalid(field, "required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(PdpError::invalid(
            field,
            format!("{} bytes; at most {MAX_ID_LEN}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(PdpError::invalid(
            field,
            format!("character {bad:?} not allowed; ids use [A-Za-z0-9._:-]"),
        ));
    }
    if value.starts_with(['.', ':', '-']) {
        return Err(PdpError::invalid(
            field,
            format!(
                "{value:?} starts with {:?}; ids start with a letter, digit or _",
                &value[..1]
            ),
        ));
    }
    Ok(value.to_owned())
}

/// An id that may be left empty.
pub fn optional_id(field: &str, value: &str) -> Result<Option<String>, PdpError> {
    if value.is_empty() {
        Ok(None)
    } else {
        id(field, value).map(Some)
    }
}

/// A SHA-256 in lower-case hex (64 characters), as `Review.image_sha256` gives it.
pub fn sha256_hex_field(field: &str, value: &str) -> Result<String, PdpError> {
    if value.len() != 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(PdpError::invalid(
            field,
            "a SHA-256 in lower-case hex (64 characters of 0-9a-f)",
        ));
    }
    Ok(value.to_owned())
}

/// Free text: bounded, no control characters (they end up in logs and terminals).
pub fn text(field: &str, value: &str, max: usize) -> Result<String, PdpError> {
    if value.len() > max {
        return Err(PdpError::invalid(
            field,
            format!("{} bytes; at most {max}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(PdpError::invalid(
            field,
            "control characters are not allowed",
        ));
    }
    if let Some(c) = crate::domain::bidi_control(value) {
        return Err(PdpError::invalid(
            field,
            format!(
                "bidirectional control character U+{:04X} is not allowed (it makes text display \
                 as something else)",
                c as u32
            ),
        ));
    }
    Ok(value.to_owned())
}

pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, PdpError> {
    if value.trim().is_empty() {
        return Err(PdpError::invalid(field, "required"));
    }
    text(field, value, max)
}

/// A proto enum field: unknown numbers and UNSPECIFIED are both rejected.
pub fn enum_field<E>(field: &str, raw: i32) -> Result<E, PdpError>
where
    E: TryFrom<i32>,
{
    if raw == 0 {
        return Err(PdpError::invalid(field, "required (UNSPECIFIED given)"));
    }
    E::try_from(raw).map_err(|_| PdpError::invalid(field, format!("unknown value {raw}")))
}

/// An enum that may be left UNSPECIFIED.
pub fn optional_enum<E>(field: &str, raw: i32) -> Result<Option<E>, PdpError>
where
    E: TryFrom<i32>,
{
    if raw == 0 {
        Ok(None)
    } else {
        enum_field(field, raw).map(Some)
    }
}

pub fn timestamp(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn millis(field: &str, ts: &Timestamp) -> Result<Millis, PdpError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(PdpError::invalid(field, "nanos must be in 0..1e9"));
    }
    ts.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .filter(|ms| *ms >= 0)
        .ok_or_else(|| PdpError::invalid(field, "out of range"))
}

pub fn kind_from_proto(field: &str, raw: i32) -> Result<Kind, PdpError> {
    let kind: proto::RegistrationKind = enum_field(field, raw)?;
    Ok(match kind {
        proto::RegistrationKind::Unspecified => {
            return Err(PdpError::invalid(field, "required (UNSPECIFIED given)"));
        }
        proto::RegistrationKind::Merchant => Kind::Merchant,
        proto::RegistrationKind::Provider => Kind::Provider,
        proto::RegistrationKind::Anchor => Kind::Anchor,
        proto::RegistrationKind::Driver => Kind::Driver,
        proto::RegistrationKind::Room => Kind::Room,
        proto::RegistrationKind::AiFeature => Kind::AiFeature,
        proto::RegistrationKind::Consent => Kind::Consent,
    })
}

fn kind_to_proto(kind: Kind) -> proto::RegistrationKind {
    match kind {
        Kind::Merchant => proto::RegistrationKind::Merchant,
        Kind::Provider => proto::RegistrationKind::Provider,
        Kind::Anchor => proto::RegistrationKind::Anchor,
        Kind::Driver => proto::RegistrationKind::Driver,
        Kind::Room => proto::RegistrationKind::Room,
        Kind::AiFeature => proto::RegistrationKind::AiFeature,
        Kind::Consent => proto::RegistrationKind::Consent,
    }
}

pub fn tier_from_proto(field: &str, raw: i32) -> Result<domain::Tier, PdpError> {
    Ok(match enum_field::<proto::MerchantTier>(field, raw)? {
        proto::MerchantTier::ChineseGoldSupplier => domain::Tier::ChineseGoldSupplier,
        proto::MerchantTier::GlobalGoldSupplier => domain::Tier::GlobalGoldSupplier,
        proto::MerchantTier::Other => domain::Tier::Other,
        proto::MerchantTier::Unspecified => {
            return Err(PdpError::invalid(field, "required (UNSPECIFIED given)"));
        }
    })
}

fn tier_to_proto(tier: domain::Tier) -> proto::MerchantTier {
    match tier {
        domain::Tier::ChineseGoldSupplier => proto::MerchantTier::ChineseGoldSupplier,
        domain::Tier::GlobalGoldSupplier => proto::MerchantTier::GlobalGoldSupplier,
        domain::Tier::Other => proto::MerchantTier::Other,
    }
}

fn image_style_from_proto(field: &str, raw: i32) -> Result<domain::ImageStyle, PdpError> {
    use domain::ImageStyle as D;
    use proto::ImageStyle as P;
    Ok(match enum_field::<P>(field, raw)? {
        P::RealisticHuman => D::RealisticHuman,
        P::Cartoon => D::Cartoon,
        P::Anime => D::Anime,
        P::Animal => D::Animal,
        P::Other => D::Other,
        P::Unspecified => return Err(PdpError::invalid(field, "required (UNSPECIFIED given)")),
    })
}

fn image_style_to_proto(style: domain::ImageStyle) -> proto::ImageStyle {
    use domain::ImageStyle as D;
    use proto::ImageStyle as P;
    match style {
        D::RealisticHuman => P::RealisticHuman,
        D::Cartoon => P::Cartoon,
        D::Anime => P::Anime,
        D::Animal => P::Animal,
        D::Other => P::Other,
    }
}

pub fn livestream_type_from_proto(
    field: &str,
    raw: i32,
) -> Result<Option<domain::LivestreamType>, PdpError> {
    use domain::LivestreamType as D;
    use proto::LivestreamType as P;
    Ok(match optional_enum::<P>(field, raw)? {
        None | Some(P::Unspecified) => None,
        Some(P::WorkstationReception) => Some(D::WorkstationReception),
        Some(P::DailyMarketing) => Some(D::DailyMarketing),
        Some(P::EventLivestream) => Some(D::EventLivestream),
        Some(P::Other) => Some(D::Other),
    })
}

fn livestream_type_to_proto(t: domain::LivestreamType) -> proto::LivestreamType {
    use domain::LivestreamType as D;
    use proto::LivestreamType as P;
    match t {
        D::WorkstationReception => P::WorkstationReception,
        D::DailyMarketing => P::DailyMarketing,
        D::EventLivestream => P::EventLivestream,
        D::Other => P::Other,
    }
}

pub fn drive_mode_from_proto(field: &str, raw: i32) -> Result<Option<domain::DriveMode>, PdpError> {
    use domain::DriveMode as D;
    use proto::DriveMode as P;
    Ok(match optional_enum::<P>(field, raw)? {
        None | Some(P::Unspecified) => None,
        Some(P::RealPerson) => Some(D::RealPerson),
        Some(P::Autonomous) => Some(D::Autonomous),
        Some(P::TextToVideo) => Some(D::TextToVideo),
        Some(P::PreRecorded) => Some(D::PreRecorded),
    })
}

fn drive_mode_to_proto(m: domain::DriveMode) -> proto::DriveMode {
    use domain::DriveMode as D;
    use proto::DriveMode as P;
    match m {
        D::RealPerson => P::RealPerson,
        D::Autonomous => P::Autonomous,
        D::TextToVideo => P::TextToVideo,
        D::PreRecorded => P::PreRecorded,
    }
}

fn review_status_to_proto(s: domain::ReviewStatus) -> proto::ReviewStatus {
    use domain::ReviewStatus as D;
    use proto::ReviewStatus as P;
    match s {
        D::NotRequired => P::NotRequired,
        D::PendingReview => P::PendingReview,
        D::Approved => P::Approved,
        D::Rejected => P::Rejected,
        D::Revoked => P::Revoked,
    }
}

pub fn penalty_to_proto(p: domain::Penalty) -> proto::Penalty {
    match p {
        domain::Penalty::None => proto::Penalty::None,
        domain::Penalty::E1 => proto::Penalty::E1ShutDownAndFreeze,
        domain::Penalty::E2 => proto::Penalty::E2WarnShutDownAndFreeze,
        domain::Penalty::WarningOnly => proto::Penalty::WarningOnly,
    }
}

/// Validates the AI-content label observations of an Authorize request.
pub fn labels_from_proto(
    labels: Option<&proto::LabelReport>,
) -> Result<Option<domain::LabelReport>, PdpError> {
    let Some(labels) = labels else {
        return Ok(None);
    };
    // Not reported is a value here: a label nobody says is shown anywhere (L1 decides).
    let label_kind =
        match optional_enum::<proto::LabelKind>("labels.label_kind", labels.label_kind)? {
            None | Some(proto::LabelKind::Unspecified) => domain::LabelKind::None,
            Some(proto::LabelKind::Overlay) => domain::LabelKind::Overlay,
            Some(proto::LabelKind::Interface) => domain::LabelKind::Interface,
        };
    let provider = optional_id(
        "labels.implicit_label_provider",
        &labels.implicit_label_provider,
    )?;
    if provider.is_some() && !labels.implicit_label {
        return Err(PdpError::invalid(
            "labels.implicit_label_provider",
            "names a provider, but implicit_label is false: report the implicit label it belongs to",
        ));
    }
    Ok(Some(domain::LabelReport {
        label_shown: labels.label_shown,
        label_kind,
        implicit_label: labels.implicit_label,
        implicit_label_provider: provider.unwrap_or_default(),
    }))
}

pub fn labels_to_proto(labels: &domain::LabelReport) -> proto::LabelReport {
    proto::LabelReport {
        label_shown: labels.label_shown,
        label_kind: match labels.label_kind {
            domain::LabelKind::None => proto::LabelKind::Unspecified,
            domain::LabelKind::Overlay => proto::LabelKind::Overlay,
            domain::LabelKind::Interface => proto::LabelKind::Interface,
        } as i32,
        implicit_label: labels.implicit_label,
        implicit_label_provider: labels.implicit_label_provider.clone(),
    }
}

/// The penalty a decision applied, UNSPECIFIED when none.
pub fn applied_penalty(p: Option<domain::Penalty>) -> i32 {
    p.map_or(proto::Penalty::Unspecified, penalty_to_proto) as i32
}

/// Validates a Register request's record into an id and a domain body.
pub fn record_from_proto(
    record: Option<proto::register_request::Record>,
) -> Result<(String, domain::RecordBody), PdpError> {
    use proto::register_request::Record;
    let record = record.ok_or_else(|| {
        PdpError::invalid(
            "record",
            "required: one of merchant, provider, anchor, driver, room, ai_feature, consent",
        )
    })?;
    Ok(match record {
        Record::Merchant(m) => (
            id("merchant.id", &m.id)?,
            domain::RecordBody::Merchant {
                tier: tier_from_proto("merchant.tier", m.tier)?,
                display_name: text("merchant.display_name", &m.display_name, MAX_NAME_LEN)?,
            },
        ),
        Record::Provider(p) => (
            id("provider.id", &p.id)?,
            domain::RecordBody::Provider {
                display_name: text("provider.display_name", &p.display_name, MAX_NAME_LEN)?,
            },
        ),
        Record::Anchor(a) => (id("anchor.id", &a.id)?, {
            let likeness_of = text("anchor.likeness_of", &a.likeness_of, MAX_REFERENCE_LEN)?;
            if !likeness_of.is_empty() && likeness_of.trim().is_empty() {
                return Err(PdpError::invalid(
                    "anchor.likeness_of",
                    "only whitespace: name the person, or leave it empty",
                ));
            }
            let consent_id = optional_id("anchor.consent_id", &a.consent_id)?.unwrap_or_default();
            if !consent_id.is_empty() && likeness_of.is_empty() {
                return Err(PdpError::invalid(
                    "anchor.consent_id",
                    "set without likeness_of: a consent is for the real person the anchor is cloned from; name them in likeness_of",
                ));
            }
            domain::RecordBody::Anchor {
                owner_merchant_id: id("anchor.owner_merchant_id", &a.owner_merchant_id)?,
                provider_id: id("anchor.provider_id", &a.provider_id)?,
                image_style: image_style_from_proto("anchor.image_style", a.image_style)?,
                image_reference: required_text(
                    "anchor.image_reference",
                    &a.image_reference,
                    MAX_REFERENCE_LEN,
                )?,
                display_name: text("anchor.display_name", &a.display_name, MAX_NAME_LEN)?,
                likeness_of,
                consent_id,
            }
        }),
        Record::Driver(d) => (
            id("driver.id", &d.id)?,
            domain::RecordBody::Driver {
                owner_merchant_id: id("driver.owner_merchant_id", &d.owner_merchant_id)?,
                identity_reference: required_text(
                    "driver.identity_reference",
                    &d.identity_reference,
                    MAX_REFERENCE_LEN,
                )?,
                display_name: text("driver.display_name", &d.display_name, MAX_NAME_LEN)?,
            },
        ),
        Record::Room(r) => (
            id("room.id", &r.id)?,
            domain::RecordBody::Room {
                owner_merchant_id: id("room.owner_merchant_id", &r.owner_merchant_id)?,
                display_name: text("room.display_name", &r.display_name, MAX_NAME_LEN)?,
            },
        ),
        Record::AiFeature(f) => (
            id("ai_feature.id", &f.id)?,
            domain::RecordBody::AiFeature {
                display_name: text("ai_feature.display_name", &f.display_name, MAX_NAME_LEN)?,
            },
        ),
        Record::Consent(c) => (
            id("consent.id", &c.id)?,
            domain::RecordBody::Consent {
                owner_merchant_id: id("consent.owner_merchant_id", &c.owner_merchant_id)?,
                person_reference: required_text(
                    "consent.person_reference",
                    &c.person_reference,
                    MAX_REFERENCE_LEN,
                )?,
                consent_reference: required_text(
                    "consent.consent_reference",
                    &c.consent_reference,
                    MAX_REFERENCE_LEN,
                )?,
                display_name: text("consent.display_name", &c.display_name, MAX_NAME_LEN)?,
            },
        ),
    })
}

fn record_to_proto(id: &str, body: &domain::RecordBody) -> proto::registration::Record {
    use proto::registration::Record;
    let id = id.to_owned();
    match body.clone() {
        domain::RecordBody::Merchant { tier, display_name } => Record::Merchant(proto::Merchant {
            id,
            tier: tier_to_proto(tier) as i32,
            display_name,
        }),
        domain::RecordBody::Provider { display_name } => {
            Record::Provider(proto::ServiceProvider { id, display_name })
        }
        domain::RecordBody::Anchor {
            owner_merchant_id,
            provider_id,
            image_style,
            image_reference,
            display_name,
            likeness_of,
            consent_id,
        } => Record::Anchor(proto::VirtualAnchor {
            id,
            owner_merchant_id,
            provider_id,
            image_style: image_style_to_proto(image_style) as i32,
            image_reference,
            display_name,
            likeness_of,
            consent_id,
        }),
        domain::RecordBody::Driver {
            owner_merchant_id,
            identity_reference,
            display_name,
        } => Record::Driver(proto::Driver {
            id,
            owner_merchant_id,
            identity_reference,
            display_name,
        }),
        domain::RecordBody::Room {
            owner_merchant_id,
            display_name,
        } => Record::Room(proto::LivestreamRoom {
            id,
            owner_merchant_id,
            display_name,
        }),
        domain::RecordBody::AiFeature { display_name } => {
            Record::AiFeature(proto::AiFeature { id, display_name })
        }
        domain::RecordBody::Consent {
            owner_merchant_id,
            person_reference,
            consent_reference,
            display_name,
        } => Record::Consent(proto::LikenessConsent {
            id,
            owner_merchant_id,
            person_reference,
            consent_reference,
            display_name,
        }),
    }
}

pub fn registration_to_proto(r: &domain::Registration) -> proto::Registration {
    proto::Registration {
        kind: kind_to_proto(r.kind()) as i32,
        id: r.id.clone(),
        revision: r.revision,
        review_status: review_status_to_proto(r.review_status) as i32,
        last_review: r.last_review.as_ref().map(|review| proto::Review {
            reviewer: review.reviewer.clone(),
            note: review.note.clone(),
            reviewed_at: Some(timestamp(review.reviewed_at)),
            approval_expires_at: review.approval_expires_at.map(timestamp),
            image_sha256: review.image_sha256.clone().unwrap_or_default(),
        }),
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        record: Some(record_to_proto(&r.id, &r.body)),
        provider_listing: r.provider_listing.as_ref().map(|l| proto::ProviderListing {
            listed: l.listed,
            changed_at: l.changed_at.map(timestamp),
        }),
        ai_feature_clearance: r
            .ai_feature_clearance
            .as_ref()
            .map(|c| proto::AiFeatureClearance {
                security_assessment_passed: c.security_assessment_passed,
                filing_number: c.filing_number.clone(),
                changed_at: c.changed_at.map(timestamp),
            }),
    }
}

pub fn account_to_proto(
    merchant: &domain::Registration,
    account: &domain::Account,
    now: Millis,
) -> proto::Account {
    let tier = match &merchant.body {
        domain::RecordBody::Merchant { tier, .. } => tier_to_proto(*tier),
        _ => proto::MerchantTier::Unspecified,
    };
    proto::Account {
        merchant_id: account.merchant_id.clone(),
        tier: tier as i32,
        warnings: account.warnings,
        frozen_until: account.frozen_at(now).map(timestamp),
        penalties: account.penalties,
        last_penalty: account.last_penalty.as_ref().map(|p| proto::PenaltyRecord {
            penalty: penalty_to_proto(p.penalty) as i32,
            rule_ids: p.rule_ids.clone(),
            session_id: p.session_id.clone(),
            applied_at: Some(timestamp(p.applied_at)),
            frozen_until: Some(timestamp(p.frozen_until)),
            discovered_by: p.discovered_by.clone(),
        }),
    }
}

pub fn session_to_proto(s: &domain::Session) -> proto::Session {
    let state = match s.state {
        domain::SessionState::Active => proto::SessionState::Active,
        domain::SessionState::ShutDown => proto::SessionState::ShutDown,
        domain::SessionState::Ended => proto::SessionState::Ended,
    };
    proto::Session {
        id: s.id.clone(),
        state: state as i32,
        merchant_id: s.merchant_id.clone(),
        room_id: s.room_id.clone(),
        anchor_id: s.anchor_id.clone(),
        driver_id: s.driver_id.clone(),
        livestream_type: livestream_type_to_proto(s.livestream_type) as i32,
        drive_mode: drive_mode_to_proto(s.drive_mode) as i32,
        ai_features: s.ai_features.iter().cloned().collect(),
        gateway_id: s.gateway_id.clone(),
        started_at: Some(timestamp(s.started_at)),
        closed_at: s.closed_at.map(timestamp),
        close_reason: s.close_reason.clone(),
        penalty_applied: applied_penalty(s.penalty_applied),
        stream: s.stream.as_ref().map(stream_to_proto),
        last_checked_at: None,
        labels: s.labels.as_ref().map(labels_to_proto),
    }
}

pub fn stream_to_proto(s: &domain::StreamRef) -> proto::StreamRef {
    proto::StreamRef {
        protocol: s.protocol.clone(),
        app: s.app.clone(),
        name: s.name.clone(),
        client_id: s.client_id.clone(),
    }
}

pub fn event_to_proto(e: &domain::EnforcementEvent) -> proto::EnforcementEvent {
    let trigger = match e.trigger {
        domain::Trigger::LiveCheck => proto::EnforcementTrigger::LiveCheck,
        domain::Trigger::ViolationReport => proto::EnforcementTrigger::ViolationReport,
        domain::Trigger::Recheck => proto::EnforcementTrigger::Recheck,
        domain::Trigger::Superseded => proto::EnforcementTrigger::Superseded,
    };
    proto::EnforcementEvent {
        sequence: e.sequence,
        session_id: e.session_id.clone(),
        merchant_id: e.merchant_id.clone(),
        gateway_id: e.gateway_id.clone(),
        stream: e.stream.as_ref().map(stream_to_proto),
        trigger: trigger as i32,
        reason: e.reason.clone(),
        violations: e.violations.iter().map(violation_to_proto).collect(),
        penalty_applied: applied_penalty(e.penalty_applied),
        at: Some(timestamp(e.at)),
        replica: e.replica.clone(),
    }
}

pub fn violation_to_proto(v: &crate::policy::Violation) -> proto::Violation {
    proto::Violation {
        rule_id: v.rule_id.clone(),
        message_en: v.message_en.clone(),
        message_zh: v.message_zh.clone(),
        penalty: penalty_to_proto(v.penalty) as i32,
    }
}

pub fn explanation_to_proto(e: &crate::policy::Explanation) -> proto::Explanation {
    let fact = |f: &crate::policy::Fact| proto::Fact {
        entity: f.entity.clone(),
        attribute: f.attribute.clone(),
        value: f.value.clone(),
    };
    proto::Explanation {
        facts: e.facts.iter().map(fact).collect(),
        context: e.context.iter().map(fact).collect(),
        determining_policies: e.determining_policies.clone(),
        errors: e.errors.clone(),
    }
}

pub fn problem_to_proto(p: &crate::policy::PolicyProblem) -> proto::PolicyProblem {
    proto::PolicyProblem {
        file: p.file.display().to_string(),
        line: u32::try_from(p.line).unwrap_or(u32::MAX),
        column: u32::try_from(p.column).unwrap_or(u32::MAX),
        message: p.message.clone(),
    }
}

pub fn log_record_to_proto(r: &domain::LogRecord) -> proto::DecisionLogRecord {
    proto::DecisionLogRecord {
        id: r.id.clone(),
        at: Some(timestamp(r.at)),
        action: r.action.clone(),
        caller: r.caller.clone(),
        merchant_id: r.merchant_id.clone(),
        session_id: r.session_id.clone(),
        // Records from before structured requests hold their `Debug` text as a JSON string.
        request: match &r.request {
            serde_json::Value::String(text) => text.clone(),
            value => value.to_string(),
        },
        decision: match r.allowed {
            Some(true) => proto::Decision::Allow,
            Some(false) => proto::Decision::Deny,
            None => proto::Decision::Unspecified,
        } as i32,
        rule_ids: r.rule_ids.clone(),
        warning_rule_ids: r.warning_rule_ids.clone(),
        enforcement: r.enforcement.clone(),
        policy_version: r.policy_version.clone(),
        outcome: r.outcome.clone(),
        explanation: r.explanation.as_ref().map(explanation_to_proto),
        entry_point: r.entry_point.clone(),
        gateway_id: r.gateway_id.clone(),
        penalty_applied: applied_penalty(r.penalty_applied),
        warning_issued: r.warning_issued,
        cause_id: r.cause_id.clone(),
        change: r.change.clone(),
    }
}

/// The public API's descriptors, for rendering requests as proto3 JSON in the decision log.
static DESCRIPTORS: std::sync::LazyLock<Option<prost_reflect::DescriptorPool>> =
    std::sync::LazyLock::new(|| {
        prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .inspect_err(|e| tracing::error!(error = %e, "cannot read the API's descriptors"))
            .ok()
    });

/// A request as proto3 JSON (the form grpcurl shows), for the decision log. `message` is the
/// full name, e.g. `anchorpdp.v1.AuthorizeRequest`.
pub fn request_json<M: prost::Message>(message: &str, request: &M) -> serde_json::Value {
    let Some(descriptor) = DESCRIPTORS
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(message))
    else {
        return serde_json::json!({ "unrendered": message });
    };
    match prost_reflect::DynamicMessage::decode(descriptor, request.encode_to_vec().as_slice())
        .map(serde_json::to_value)
    {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => serde_json::json!({ "unrendered": message, "error": e.to_string() }),
        Err(e) => serde_json::json!({ "unrendered": message, "error": e.to_string() }),
    }
}
