//! The PDP's vocabulary: records, accounts, sessions and the pure state transitions between
//! them. Nothing here knows gRPC, sled or Cedar, so every transition is unit-testable and the
//! store can run it inside a transaction.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::PdpError;

/// 7 × 24 hours: the freeze E1 and E2 impose.
pub const FREEZE_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Unix time in milliseconds.
pub type Millis = i64;

/// How far the clocks of replicas may disagree (run NTP). A freeze's end is fixed once, when
/// it is written; a replica whose clock is ahead by up to this much may call it over that
/// much early. `LiftFreeze` lifts a stored freeze whose end is within this bound of the past
/// too, so a lift through any replica lifts what every replica may still enforce.
pub const MAX_CLOCK_SKEW_MS: Millis = 1_000;

/// SHA-256 of `data`, lower-case hex: how tokens, cookies and credentials are known without
/// being kept, and how an approval knows the image it approved.
pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first bidirectional control character in `text`, if any (U+061C, U+200E, U+200F,
/// U+202A–U+202E, U+2066–U+2069): they make text display as something else (an RTL override
/// turns `evil\u{202E}gnp.exe` into `evilexe.png`), so names and notes may not carry them.
/// Right-to-left letters themselves are fine.
pub fn bidi_control(text: &str) -> Option<char> {
    text.chars().find(|c| {
        matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Merchant,
    Provider,
    Anchor,
    Driver,
    Room,
    AiFeature,
    /// The separate consent of a real person whose face or voice an anchor clones (C1).
    Consent,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Merchant,
        Kind::Provider,
        Kind::Anchor,
        Kind::Driver,
        Kind::Room,
        Kind::AiFeature,
        Kind::Consent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Merchant => "merchant",
            Kind::Provider => "provider",
            Kind::Anchor => "anchor",
            Kind::Driver => "driver",
            Kind::Room => "room",
            Kind::AiFeature => "ai_feature",
            Kind::Consent => "consent",
        }
    }

    /// Anchor image, driver and room filings are the three parts of admission (R7); a
    /// likeness consent is reviewed the same way (C1).
    pub fn needs_review(self) -> bool {
        matches!(
            self,
            Kind::Anchor | Kind::Driver | Kind::Room | Kind::Consent
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    ChineseGoldSupplier,
    GlobalGoldSupplier,
    Other,
}

impl Tier {
    pub const ALL: [Tier; 3] = [
        Tier::ChineseGoldSupplier,
        Tier::GlobalGoldSupplier,
        Tier::Other,
    ];

    /// The inverse of `policy_name`.
    pub fn from_policy_name(name: &str) -> Option<Tier> {
        Self::ALL.into_iter().find(|v| v.policy_name() == name)
    }

    pub fn policy_name(self) -> &'static str {
        match self {
            Tier::ChineseGoldSupplier => "CHINESE_GOLD_SUPPLIER",
            Tier::GlobalGoldSupplier => "GLOBAL_GOLD_SUPPLIER",
            Tier::Other => "OTHER",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageStyle {
    RealisticHuman,
    Cartoon,
    Anime,
    Animal,
    Other,
}

impl ImageStyle {
    pub const ALL: [ImageStyle; 5] = [
        ImageStyle::RealisticHuman,
        ImageStyle::Cartoon,
        ImageStyle::Anime,
        ImageStyle::Animal,
        ImageStyle::Other,
    ];

    /// The inverse of `policy_name`.
    pub fn from_policy_name(name: &str) -> Option<ImageStyle> {
        Self::ALL.into_iter().find(|v| v.policy_name() == name)
    }

    pub fn policy_name(self) -> &'static str {
        match self {
            ImageStyle::RealisticHuman => "REALISTIC_HUMAN",
            ImageStyle::Cartoon => "CARTOON",
            ImageStyle::Anime => "ANIME",
            ImageStyle::Animal => "ANIMAL",
            ImageStyle::Other => "OTHER",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LivestreamType {
    WorkstationReception,
    DailyMarketing,
    EventLivestream,
    Other,
}

impl LivestreamType {
    pub const ALL: [LivestreamType; 4] = [
        LivestreamType::WorkstationReception,
        LivestreamType::DailyMarketing,
        LivestreamType::EventLivestream,
        LivestreamType::Other,
    ];

    /// The inverse of `policy_name`.
    pub fn from_policy_name(name: &str) -> Option<LivestreamType> {
        Self::ALL.into_iter().find(|v| v.policy_name() == name)
    }

    pub fn policy_name(self) -> &'static str {
        match self {
            LivestreamType::WorkstationReception => "WORKSTATION_RECEPTION",
            LivestreamType::DailyMarketing => "DAILY_MARKETING",
            LivestreamType::EventLivestream => "EVENT_LIVESTREAM",
            LivestreamType::Other => "OTHER",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriveMode {
    RealPerson,
    Autonomous,
    TextToVideo,
    PreRecorded,
}

impl DriveMode {
    pub const ALL: [DriveMode; 4] = [
        DriveMode::RealPerson,
        DriveMode::Autonomous,
        DriveMode::TextToVideo,
        DriveMode::PreRecorded,
    ];

    /// The inverse of `policy_name`.
    pub fn from_policy_name(name: &str) -> Option<DriveMode> {
        Self::ALL.into_iter().find(|v| v.policy_name() == name)
    }

    pub fn policy_name(self) -> &'static str {
        match self {
            DriveMode::RealPerson => "REAL_PERSON",
            DriveMode::Autonomous => "AUTONOMOUS",
            DriveMode::TextToVideo => "TEXT_TO_VIDEO",
            DriveMode::PreRecorded => "PRE_RECORDED",
        }
    }
}

/// Where a broadcast shows its explicit AI-content label (the label rule pack, L1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LabelKind {
    /// Not reported.
    #[default]
    None,
    /// Burned into the video itself.
    Overlay,
    /// Shown by the player or live-room interface beside the video.
    Interface,
}

impl LabelKind {
    pub const ALL: [LabelKind; 3] = [LabelKind::None, LabelKind::Overlay, LabelKind::Interface];

    /// The inverse of `policy_name`.
    pub fn from_policy_name(name: &str) -> Option<LabelKind> {
        Self::ALL.into_iter().find(|v| v.policy_name() == name)
    }

    pub fn policy_name(self) -> &'static str {
        match self {
            LabelKind::None => "NONE",
            LabelKind::Overlay => "OVERLAY",
            LabelKind::Interface => "INTERFACE",
        }
    }
}

/// What a gateway observes of a broadcast's AI-content labels: the explicit label viewers see
/// and the implicit one in the stream's metadata. Read only by a policy set that names them
/// (the label rule pack).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelReport {
    /// The explicit "AI-generated" label is shown to viewers now.
    pub label_shown: bool,
    /// Where it is shown.
    pub label_kind: LabelKind,
    /// The stream carries an implicit label (a metadata or C2PA-style manifest).
    pub implicit_label: bool,
    /// The provider id the implicit label names; empty when there is none.
    pub implicit_label_provider: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReviewStatus {
    NotRequired,
    PendingReview,
    Approved,
    Rejected,
    Revoked,
}

impl ReviewStatus {
    pub const ALL: [ReviewStatus; 5] = [
        ReviewStatus::NotRequired,
        ReviewStatus::PendingReview,
        ReviewStatus::Approved,
        ReviewStatus::Rejected,
        ReviewStatus::Revoked,
    ];

    /// The inverse of `policy_name`.
    pub fn from_policy_name(name: &str) -> Option<ReviewStatus> {
        Self::ALL.into_iter().find(|v| v.policy_name() == name)
    }

    pub fn policy_name(self) -> &'static str {
        match self {
            ReviewStatus::NotRequired => "NOT_REQUIRED",
            ReviewStatus::PendingReview => "PENDING_REVIEW",
            ReviewStatus::Approved => "APPROVED",
            ReviewStatus::Rejected => "REJECTED",
            ReviewStatus::Revoked => "REVOKED",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Approve,
    Reject,
    Revoke,
}

/// What a rule brings when it is found broken in a live broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Penalty {
    /// Denied at start; found live, the broadcast goes on and the decision carries the rule
    /// as a warning. Ranked lowest: any other broken rule outweighs it.
    WarningOnly,
    /// Denied or shut down, nothing more.
    None,
    /// Shut down + 7-day freeze.
    E1,
    /// Warning + shut down + 7-day freeze.
    E2,
}

impl Penalty {
    /// The spelling used in policy annotations and test suites: warning, none, E1, E2.
    pub fn parse(value: &str) -> Option<Penalty> {
        match value {
            "warning" => Some(Penalty::WarningOnly),
            "none" => Some(Penalty::None),
            "E1" => Some(Penalty::E1),
            "E2" => Some(Penalty::E2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Penalty::WarningOnly => "warning",
            Penalty::None => "none",
            Penalty::E1 => "E1",
            Penalty::E2 => "E2",
        }
    }

    pub fn freezes(self) -> bool {
        matches!(self, Penalty::E1 | Penalty::E2)
    }

    pub fn warns(self) -> bool {
        matches!(self, Penalty::E2)
    }
}

/// The filed content of a record. Material fields are what a reviewer approved; changing one
/// sends an approved filing back to review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordBody {
    Merchant {
        tier: Tier,
        display_name: String,
    },
    Provider {
        display_name: String,
    },
    Anchor {
        owner_merchant_id: String,
        provider_id: String,
        image_style: ImageStyle,
        image_reference: String,
        display_name: String,
        /// The real person whose face or voice the anchor is cloned from (an identity
        /// reference); empty for a likeness of no real person.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        likeness_of: String,
        /// The consent filing of that person; empty when there is none.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        consent_id: String,
    },
    Driver {
        owner_merchant_id: String,
        identity_reference: String,
        display_name: String,
    },
    Room {
        owner_merchant_id: String,
        display_name: String,
    },
    AiFeature {
        display_name: String,
    },
    /// A real person's separate consent to an anchor cloning their face or voice.
    Consent {
        owner_merchant_id: String,
        /// Who consents: an identity reference, as an anchor's `likeness_of` names them.
        person_reference: String,
        /// Where the signed consent is kept (a document reference, never the document).
        consent_reference: String,
        display_name: String,
    },
}

impl RecordBody {
    pub fn kind(&self) -> Kind {
        match self {
            RecordBody::Merchant { .. } => Kind::Merchant,
            RecordBody::Provider { .. } => Kind::Provider,
            RecordBody::Anchor { .. } => Kind::Anchor,
            RecordBody::Driver { .. } => Kind::Driver,
            RecordBody::Room { .. } => Kind::Room,
            RecordBody::AiFeature { .. } => Kind::AiFeature,
            RecordBody::Consent { .. } => Kind::Consent,
        }
    }

    /// The owner merchant of a filing, if the kind has one.
    pub fn owner(&self) -> Option<&str> {
        match self {
            RecordBody::Anchor {
                owner_merchant_id, ..
            }
            | RecordBody::Driver {
                owner_merchant_id, ..
            }
            | RecordBody::Room {
                owner_merchant_id, ..
            }
            | RecordBody::Consent {
                owner_merchant_id, ..
            } => Some(owner_merchant_id),
            _ => None,
        }
    }

    /// Records this one must point at, as (kind, id, field name).
    pub fn references(&self) -> Vec<(Kind, &str, &'static str)> {
        let mut refs = Vec::new();
        if let Some(owner) = self.owner() {
            refs.push((Kind::Merchant, owner, "owner_merchant_id"));
        }
        if let RecordBody::Anchor {
            provider_id,
            consent_id,
            ..
        } = self
        {
            refs.push((Kind::Provider, provider_id.as_str(), "provider_id"));
            if !consent_id.is_empty() {
                refs.push((Kind::Consent, consent_id.as_str(), "consent_id"));
            }
        }
        refs
    }

    /// Equal in everything a reviewer approved (display names are not material).
    pub fn materially_equal(&self, other: &RecordBody) -> bool {
        match (self, other) {
            (
                RecordBody::Anchor {
                    owner_merchant_id: o1,
                    provider_id: p1,
                    image_style: s1,
                    image_reference: i1,
                    likeness_of: l1,
                    consent_id: c1,
                    ..
                },
                RecordBody::Anchor {
                    owner_merchant_id: o2,
                    provider_id: p2,
                    image_style: s2,
                    image_reference: i2,
                    likeness_of: l2,
                    consent_id: c2,
                    ..
                },
            ) => o1 == o2 && p1 == p2 && s1 == s2 && i1 == i2 && l1 == l2 && c1 == c2,
            (
                RecordBody::Consent {
                    owner_merchant_id: o1,
                    person_reference: p1,
                    consent_reference: c1,
                    ..
                },
                RecordBody::Consent {
                    owner_merchant_id: o2,
                    person_reference: p2,
                    consent_reference: c2,
                    ..
                },
            ) => o1 == o2 && p1 == p2 && c1 == c2,
            (
                RecordBody::Driver {
                    owner_merchant_id: o1,
                    identity_reference: i1,
                    ..
                },
                RecordBody::Driver {
                    owner_merchant_id: o2,
                    identity_reference: i2,
                    ..
                },
            ) => o1 == o2 && i1 == i2,
            (
                RecordBody::Room {
                    owner_merchant_id: o1,
                    ..
                },
                RecordBody::Room {
                    owner_merchant_id: o2,
                    ..
                },
            ) => o1 == o2,
            _ => self == other,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewInfo {
    pub verdict: Verdict,
    pub reviewer: String,
    pub note: String,
    pub reviewed_at: Millis,
    pub approval_expires_at: Option<Millis>,
    /// For an approved anchor: the SHA-256 of the image approved. The same reference serving
    /// other bytes later sends the anchor back to review (`apply_image_change`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderListing {
    pub listed: bool,
    pub changed_at: Option<Millis>,
    pub changed_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiFeatureClearance {
    pub security_assessment_passed: bool,
    pub filing_number: String,
    pub changed_at: Option<Millis>,
    pub changed_by: String,
}

impl AiFeatureClearance {
    pub fn filed(&self) -> bool {
        !self.filing_number.is_empty()
    }
}

/// A broken rule, as a decision reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub rule_id: String,
    pub message_en: String,
    pub message_zh: String,
    pub penalty: Penalty,
}

/// A stored record with its platform-controlled state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: String,
    pub revision: u64,
    pub review_status: ReviewStatus,
    pub last_review: Option<ReviewInfo>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub body: RecordBody,
    pub provider_listing: Option<ProviderListing>,
    pub ai_feature_clearance: Option<AiFeatureClearance>,
}

impl Registration {
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// The consent filing an anchor names, if any.
    pub fn consent_id(&self) -> Option<&str> {
        match &self.body {
            RecordBody::Anchor { consent_id, .. } if !consent_id.is_empty() => Some(consent_id),
            _ => None,
        }
    }

    /// The image hash an approved anchor's approval is bound to, if any.
    pub fn bound_image(&self) -> Option<&str> {
        if self.review_status != ReviewStatus::Approved {
            return None;
        }
        self.last_review.as_ref()?.image_sha256.as_deref()
    }

    /// The approval's expiry, if the record is approved with one.
    pub fn approval_expires_at(&self) -> Option<Millis> {
        if self.review_status != ReviewStatus::Approved {
            return None;
        }
        self.last_review
            .as_ref()
            .and_then(|r| r.approval_expires_at)
    }
}

fn check_revision(
    expected: Option<u64>,
    current: Option<&Registration>,
    what: &str,
) -> Result<(), PdpError> {
    let actual = current.map_or(0, |r| r.revision);
    match expected {
        Some(expected) if expected != actual => Err(PdpError::Aborted(format!(
            "{what}: expected revision {expected}, stored revision is {actual}"
        ))),
        _ => Ok(()),
    }
}

/// The outcome of a write: the record as stored, and whether anything changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteOutcome {
    pub registration: Registration,
    pub changed: bool,
}

/// Register: file a new record or update a stored one.
pub fn apply_register(
    current: Option<&Registration>,
    id: &str,
    body: RecordBody,
    expected_revision: Option<u64>,
    now: Millis,
) -> Result<WriteOutcome, PdpError> {
    let what = format!("{} {id}", body.kind().name());
    if let Some(current) = current
        && current.body == body
    {
        // Idempotent re-send: a client retrying after a lost reply must not see a conflict
        // for a write that already took effect.
        return Ok(WriteOutcome {
            registration: current.clone(),
            changed: false,
        });
    }
    check_revision(expected_revision, current, &what)?;
    let registration = match current {
        None => Registration {
            id: id.to_owned(),
            revision: 1,
            review_status: if body.kind().needs_review() {
                ReviewStatus::PendingReview
            } else {
                ReviewStatus::NotRequired
            },
            last_review: None,
            created_at: now,
            updated_at: now,
            provider_listing: (body.kind() == Kind::Provider).then(|| ProviderListing {
                listed: false,
                changed_at: None,
                changed_by: String::new(),
            }),
            ai_feature_clearance: (body.kind() == Kind::AiFeature).then(|| AiFeatureClearance {
                security_assessment_passed: false,
                filing_number: String::new(),
                changed_at: None,
                changed_by: String::new(),
            }),
            body,
        },
        Some(current) => {
            let mut next = current.clone();
            let material = !current.body.materially_equal(&body);
            if material && current.kind().needs_review() {
                next.review_status = ReviewStatus::PendingReview;
            }
            next.body = body;
            next.revision += 1;
            next.updated_at = now;
            next
        }
    };
    Ok(WriteOutcome {
        registration,
        changed: true,
    })
}

/// A reviewer's verdict on an anchor, driver or room filing.
#[derive(Clone, Debug)]
pub struct ReviewCommand {
    pub kind: Kind,
    pub id: String,
    pub verdict: Verdict,
    pub reviewer: String,
    pub note: String,
    pub expected_revision: Option<u64>,
    pub approval_expires_at: Option<Millis>,
    /// The hash of the image the reviewer saw (a console page, `ReviewFilingRequest`): the
    /// approval is refused if the image fetched for it hashes otherwise.
    pub seen_image_sha256: Option<String>,
    /// The image an approval of an anchor is bound to, as the server fetched it (set by the
    /// service, not by callers).
    pub image: Option<ImageBinding>,
}

/// An anchor image as fetched when it was approved: the approval holds only while the anchor
/// still names `reference` (checked in the approval's transaction) and it serves `sha256`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageBinding {
    pub reference: String,
    pub sha256: String,
}

pub fn apply_review(
    current: Option<&Registration>,
    cmd: &ReviewCommand,
    now: Millis,
) -> Result<Registration, PdpError> {
    let what = format!("{} {}", cmd.kind.name(), cmd.id);
    let current = current.ok_or_else(|| PdpError::NotFound(format!("{what} is not registered")))?;
    if !cmd.kind.needs_review() {
        return Err(PdpError::FailedPrecondition(format!(
            "{what}: only anchor, driver, room and consent filings are reviewed"
        )));
    }
    check_revision(cmd.expected_revision, Some(current), &what)?;
    let from = current.review_status;
    let to = match (cmd.verdict, from) {
        (Verdict::Approve, ReviewStatus::PendingReview) => ReviewStatus::Approved,
        (Verdict::Reject, ReviewStatus::PendingReview) => ReviewStatus::Rejected,
        (Verdict::Revoke, ReviewStatus::Approved) => ReviewStatus::Revoked,
        (verdict, from) => {
            return Err(PdpError::FailedPrecondition(format!(
                "{what} is {}: {verdict:?} needs {}",
                from.policy_name(),
                if verdict == Verdict::Revoke {
                    "APPROVED"
                } else {
                    "PENDING_REVIEW"
                }
            )));
        }
    };
    if let Some(expires) = cmd.approval_expires_at {
        if cmd.verdict != Verdict::Approve {
            return Err(PdpError::invalid(
                "approval_expires_at",
                "only an APPROVE verdict can carry an expiry",
            ));
        }
        if expires <= now {
            return Err(PdpError::invalid(
                "approval_expires_at",
                "must be in the future",
            ));
        }
    }
    let image_sha256 = match (&cmd.image, &current.body) {
        (
            Some(image),
            RecordBody::Anchor {
                image_reference, ..
            },
        ) if to == ReviewStatus::Approved => {
            if *image_reference != image.reference {
                return Err(PdpError::Aborted(format!(
                    "{what}: its image is now {image_reference}, not the {} fetched for the approval",
                    image.reference
                )));
            }
            Some(image.sha256.clone())
        }
        _ => None,
    };
    let mut next = current.clone();
    next.review_status = to;
    next.last_review = Some(ReviewInfo {
        verdict: cmd.verdict,
        reviewer: cmd.reviewer.clone(),
        note: cmd.note.clone(),
        reviewed_at: now,
        approval_expires_at: cmd.approval_expires_at,
        image_sha256,
    });
    next.revision += 1;
    next.updated_at = now;
    Ok(next)
}

/// An approved anchor whose image at `reference` now hashes to `seen_sha256`: if that is not
/// the image its approval is bound to, the anchor goes back to review (the verdict stays as its
/// history). Unchanged if the anchor names another image now, is not approved, or its approval
/// is bound to no image.
pub fn apply_image_change(
    current: Option<&Registration>,
    id: &str,
    reference: &str,
    seen_sha256: &str,
    now: Millis,
) -> Result<WriteOutcome, PdpError> {
    let current =
        current.ok_or_else(|| PdpError::NotFound(format!("anchor {id} is not registered")))?;
    let bound = match (&current.body, current.review_status, &current.last_review) {
        (
            RecordBody::Anchor {
                image_reference, ..
            },
            ReviewStatus::Approved,
            Some(ReviewInfo {
                image_sha256: Some(bound),
                ..
            }),
        ) if image_reference == reference => bound,
        _ => {
            return Ok(WriteOutcome {
                registration: current.clone(),
                changed: false,
            });
        }
    };
    if bound == seen_sha256 {
        return Ok(WriteOutcome {
            registration: current.clone(),
            changed: false,
        });
    }
    let mut next = current.clone();
    next.review_status = ReviewStatus::PendingReview;
    next.revision += 1;
    next.updated_at = now;
    Ok(WriteOutcome {
        registration: next,
        changed: true,
    })
}

pub fn apply_provider_listing(
    current: Option<&Registration>,
    id: &str,
    listed: bool,
    operator: &str,
    expected_revision: Option<u64>,
    now: Millis,
) -> Result<WriteOutcome, PdpError> {
    let what = format!("provider {id}");
    let current = current.ok_or_else(|| PdpError::NotFound(format!("{what} is not registered")))?;
    check_revision(expected_revision, Some(current), &what)?;
    if current.provider_listing.as_ref().map(|l| l.listed) == Some(listed) {
        return Ok(WriteOutcome {
            registration: current.clone(),
            changed: false,
        });
    }
    let mut next = current.clone();
    next.provider_listing = Some(ProviderListing {
        listed,
        changed_at: Some(now),
        changed_by: operator.to_owned(),
    });
    next.revision += 1;
    next.updated_at = now;
    Ok(WriteOutcome {
        registration: next,
        changed: true,
    })
}

pub fn apply_ai_feature_filing(
    current: Option<&Registration>,
    id: &str,
    security_assessment_passed: bool,
    filing_number: &str,
    operator: &str,
    expected_revision: Option<u64>,
    now: Millis,
) -> Result<WriteOutcome, PdpError> {
    let what = format!("ai_feature {id}");
    let current = current.ok_or_else(|| PdpError::NotFound(format!("{what} is not registered")))?;
    check_revision(expected_revision, Some(current), &what)?;
    let unchanged = current.ai_feature_clearance.as_ref().is_some_and(|c| {
        c.security_assessment_passed == security_assessment_passed
            && c.filing_number == filing_number
    });
    if unchanged {
        return Ok(WriteOutcome {
            registration: current.clone(),
            changed: false,
        });
    }
    let mut next = current.clone();
    next.ai_feature_clearance = Some(AiFeatureClearance {
        security_assessment_passed,
        filing_number: filing_number.to_owned(),
        changed_at: Some(now),
        changed_by: operator.to_owned(),
    });
    next.revision += 1;
    next.updated_at = now;
    Ok(WriteOutcome {
        registration: next,
        changed: true,
    })
}

/// The merchants a caller may file for: a registrar is bound to its merchants (or explicitly to
/// all of them, for a platform service); every other role is not narrowed here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MerchantScope {
    All,
    Only(BTreeSet<String>),
}

impl MerchantScope {
    pub fn covers(&self, merchant_id: &str) -> bool {
        match self {
            MerchantScope::All => true,
            MerchantScope::Only(merchants) => merchants.contains(merchant_id),
        }
    }

    /// Checks that a caller of this scope may file `next` over `current`: both owned by its
    /// merchants, and the owner unchanged (a filing does not move between merchants).
    pub fn check_filing(
        &self,
        current: Option<&Registration>,
        next: &RecordBody,
    ) -> Result<(), PdpError> {
        let MerchantScope::Only(_) = self else {
            return Ok(());
        };
        let owner = next.owner().unwrap_or_default();
        if !self.covers(owner) {
            return Err(PdpError::PermissionDenied(format!(
                "this caller files for {self}, not for merchant {owner}"
            )));
        }
        if let Some(current) = current {
            let held_by = current.body.owner().unwrap_or_default();
            if held_by != owner {
                return Err(PdpError::PermissionDenied(format!(
                    "{} {} belongs to merchant {held_by}; a registrar cannot move it to {owner}",
                    current.kind().name(),
                    current.id
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for MerchantScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MerchantScope::All => write!(f, "every merchant"),
            MerchantScope::Only(merchants) => {
                let list: Vec<&str> = merchants.iter().map(String::as_str).collect();
                write!(f, "merchant {}", list.join(", "))
            }
        }
    }
}

/// One penalty applied to an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PenaltyRecord {
    pub penalty: Penalty,
    pub rule_ids: Vec<String>,
    pub session_id: String,
    pub applied_at: Millis,
    pub frozen_until: Millis,
    pub discovered_by: String,
    /// The discovery that brought it: every session one discovery ends shares it, and the
    /// merchant is penalized once for them all.
    #[serde(default)]
    pub discovery_id: String,
}

/// A merchant's standing. Kept apart from the merchant registration so that re-registering a
/// merchant never races with a penalty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub merchant_id: String,
    pub warnings: u32,
    pub frozen_until: Option<Millis>,
    pub penalties: u32,
    pub last_penalty: Option<PenaltyRecord>,
    pub freeze_lifted: Option<FreezeLift>,
}

/// A reviewer's claim on a pending filing: others see it is being looked at, and the review
/// fast path passes it by. Lapses at `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewClaim {
    /// The caller who claimed it (`name (role, console)`).
    pub by: String,
    pub until: Millis,
}

/// A console sign-in. Kept in the store, so that every replica honours it and a restart keeps
/// it; found by a hash of its cookie, so that the store never holds a usable cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSignIn {
    /// The credential signed in with, as the configuration names it (`sha256:HEX` of a token,
    /// or `cn:SUBJECT` of a client certificate): the sign-in holds only while it still names a
    /// console caller.
    pub credential: String,
    /// The caller it named then (for the log of who signed in).
    pub caller: String,
    /// The token every form of this sign-in carries.
    pub csrf: String,
    pub expires_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeLift {
    pub operator: String,
    pub reason: String,
    pub lifted_at: Millis,
}

impl Account {
    pub fn new(merchant_id: &str) -> Self {
        Account {
            merchant_id: merchant_id.to_owned(),
            ..Account::default()
        }
    }

    /// The freeze end, if the account is frozen at `now`.
    pub fn frozen_at(&self, now: Millis) -> Option<Millis> {
        self.frozen_until.filter(|until| *until > now)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    Active,
    ShutDown,
    Ended,
}

/// Where a gateway carries a session: what it needs to cut the stream, and what its hooks use
/// to find the session again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRef {
    /// `nginx-rtmp`, `srs` or `envoy`.
    pub protocol: String,
    /// The application (nginx-rtmp / SRS `app`), or the route for Envoy.
    pub app: String,
    /// The stream key.
    pub name: String,
    /// The gateway's own connection id (nginx-rtmp `clientid`, SRS `client_id`).
    pub client_id: String,
}

impl StreamRef {
    /// The key a gateway hook finds the session by.
    pub fn lookup_key(&self, gateway_id: &str) -> String {
        format!(
            "{}|{gateway_id}|{}|{}|{}",
            self.protocol, self.app, self.name, self.client_id
        )
    }
}

/// A broadcast admitted at START.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub state: SessionState,
    pub merchant_id: String,
    pub room_id: String,
    pub anchor_id: String,
    pub driver_id: String,
    pub livestream_type: LivestreamType,
    pub drive_mode: DriveMode,
    pub ai_features: BTreeSet<String>,
    pub gateway_id: String,
    pub started_at: Millis,
    pub closed_at: Option<Millis>,
    pub close_reason: String,
    pub penalty_applied: Option<Penalty>,
    /// Set when the session came in through a gateway hook.
    #[serde(default)]
    pub stream: Option<StreamRef>,
    /// The START's idempotency key, if it carried one (a retry with it finds this session).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The AI-content labels last reported (by the START or a later LIVE check); a check
    /// that reports none, and the PDP's own re-checks, decide on these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelReport>,
    /// The consent filing the anchor named at START (C1): the session relies on it as on its
    /// anchor, so it cannot change materially while the session is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<String>,
}

/// The START an idempotency key admitted: a retry with the key is answered with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentStart {
    pub session_id: String,
    pub decision_id: String,
    pub policy_version: String,
    pub at: Millis,
}

/// What ended a live session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// A LIVE re-check from the gateway.
    LiveCheck,
    /// An inspector's violation report.
    ViolationReport,
    /// The PDP re-checked live sessions after a change to what they rely on (a revoked
    /// filing, a delisted provider, a freeze, ...).
    Recheck,
    /// A newer START on the same room replaced the session: no rule was broken.
    Superseded,
}

/// One enforcement that ended a live session, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementEvent {
    pub sequence: u64,
    pub session_id: String,
    pub merchant_id: String,
    pub gateway_id: String,
    pub stream: Option<StreamRef>,
    pub trigger: Trigger,
    pub reason: String,
    pub violations: Vec<Violation>,
    pub penalty_applied: Option<Penalty>,
    pub at: Millis,
    /// The replica whose transaction wrote the event (empty on the embedded store): the one
    /// that tells an nginx gateway to drop the stream, so it is told once.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
}

/// One attribute of one entity, or one context value, as the decision saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// `AnchorPdp::Anchor::"a1"`, or `context`.
    pub entity: String,
    pub attribute: String,
    /// The value in Cedar syntax: `true`, `"APPROVED"`, `AnchorPdp::Merchant::"m1"`, `[...]`.
    pub value: String,
}

/// What a decision was made from and what determined it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Entity attributes read from the store.
    pub facts: Vec<Fact>,
    /// The request context: observations and the time.
    pub context: Vec<Fact>,
    /// The policies that determined the decision: the satisfied `forbid`s of a deny, the
    /// `permit` of an allow.
    pub determining_policies: Vec<String>,
    /// Evaluation errors (each one denies).
    pub errors: Vec<String>,
}

/// One entry of the decision log: an Authorize decision or an admin action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The decision id (a UUIDv7: ids sort by time).
    pub id: String,
    pub at: Millis,
    /// `authorize`, or the admin RPC's name (`ReviewFiling`, ...).
    pub action: String,
    /// Who called, as authenticated (`name (role)`), or the hook's gateway.
    pub caller: String,
    /// `grpc`, `nginx-rtmp`, `srs`, `envoy`, `pdp-recheck`, `pdp-sweep`.
    #[serde(default)]
    pub entry_point: String,
    #[serde(default)]
    pub gateway_id: String,
    pub merchant_id: String,
    pub session_id: String,
    /// The request as structured data (records before format 1.1 hold `Debug` text).
    pub request: serde_json::Value,
    /// For decisions: allowed or not.
    pub allowed: Option<bool>,
    pub rule_ids: Vec<String>,
    /// For decisions at LIVE: the warning-only rules broken, which let the broadcast go on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warning_rule_ids: Vec<String>,
    /// `NONE`, `REFUSE_START`, `SHUT_DOWN`; empty for admin actions.
    pub enforcement: String,
    pub policy_version: String,
    /// What came of it: `ok`, or the error.
    pub outcome: String,
    /// For a deny (or an explained decision): the facts and policies it was made from, so a
    /// reviewer can answer "why was I refused / shut down?" later.
    #[serde(default)]
    pub explanation: Option<Explanation>,
    #[serde(default)]
    pub penalty_applied: Option<Penalty>,
    #[serde(default)]
    pub warning_issued: bool,
    /// For the PDP's own re-checks: the record that caused them.
    #[serde(default)]
    pub cause_id: String,
    /// The state change written in the same transaction as this record; empty if none.
    #[serde(default)]
    pub change: String,
    /// On sled, the number of the commit that wrote this record (0 on etcd, and in records
    /// restored from a backup): opening the store checks it still holds the newest.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub commit: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a live discovery (a failed LIVE re-check or an inspector's report) asks to apply.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// Shared by every session one discovery ends (a revoke that ends three broadcasts is one
    /// discovery): the merchant gets one penalty for it.
    pub id: String,
    pub session_id: String,
    pub trigger: Trigger,
    pub violations: Vec<Violation>,
    pub rule_ids: Vec<String>,
    /// The heaviest penalty among the broken rules.
    pub penalty: Penalty,
    pub discovered_by: String,
    pub reason: String,
    pub at: Millis,
    /// What the check that found it observed, recorded on the session it closes.
    pub drive_mode: Option<DriveMode>,
    pub ai_features: BTreeSet<String>,
    /// The labels it observed, if it observed any.
    pub labels: Option<LabelReport>,
}

/// What enforcing a discovery did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enforced {
    pub session: Session,
    pub account: Account,
    /// The penalty this discovery applied; `None` when the rules carry none or the session was
    /// penalized before.
    pub penalty_applied: Option<Penalty>,
    pub warning_issued: bool,
}

/// Shuts the session down and applies the penalty, at most once per session. A discovery in a
/// new broadcast extends a running freeze to 7 days from now if that is later; it never
/// shortens one.
pub fn apply_discovery(
    session: &Session,
    account: &Account,
    discovery: &Discovery,
) -> Result<Enforced, PdpError> {
    if session.state == SessionState::Ended {
        return Err(PdpError::FailedPrecondition(format!(
            "session {} has ended; violations are enforced on live broadcasts",
            session.id
        )));
    }
    let mut session = session.clone();
    let mut account = account.clone();
    if session.state == SessionState::Active {
        session.state = SessionState::ShutDown;
        session.closed_at = Some(discovery.at);
        session.close_reason = discovery.reason.clone();
        if let Some(mode) = discovery.drive_mode {
            session.drive_mode = mode;
        }
        session
            .ai_features
            .extend(discovery.ai_features.iter().cloned());
        if discovery.labels.is_some() {
            session.labels = discovery.labels.clone();
        }
    }
    let mut penalty_applied = None;
    let mut warning_issued = false;
    let penalized_for_this_discovery = account
        .last_penalty
        .as_ref()
        .is_some_and(|p| !p.discovery_id.is_empty() && p.discovery_id == discovery.id);
    if discovery.penalty.freezes()
        && session.penalty_applied.is_none()
        && !penalized_for_this_discovery
    {
        let until = discovery.at + FREEZE_MS;
        account.frozen_until = Some(account.frozen_until.map_or(until, |u| u.max(until)));
        if discovery.penalty.warns() {
            account.warnings += 1;
            warning_issued = true;
        }
        account.penalties += 1;
        account.last_penalty = Some(PenaltyRecord {
            penalty: discovery.penalty,
            rule_ids: discovery.rule_ids.clone(),
            session_id: session.id.clone(),
            applied_at: discovery.at,
            frozen_until: until,
            discovered_by: discovery.discovered_by.clone(),
            discovery_id: discovery.id.clone(),
        });
        session.penalty_applied = Some(discovery.penalty);
        penalty_applied = Some(discovery.penalty);
    }
    Ok(Enforced {
        session,
        account,
        penalty_applied,
        warning_issued,
    })
}

/// What the store knows about everything a request names: one consistent snapshot, the only
/// source of facts for a decision. `None` means the id is not registered. Comparable, so that a
/// commit can tell whether the facts it finds are still the ones the decision was made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub merchant_id: String,
    pub room_id: String,
    pub anchor_id: String,
    pub driver_id: String,
    pub merchant: Option<Registration>,
    pub account: Option<Account>,
    pub room: Option<Registration>,
    pub anchor: Option<Registration>,
    /// The anchor's provider, when the anchor is known.
    pub provider: Option<Registration>,
    /// The anchor's likeness consent filing, when the anchor names one.
    pub consent: Option<Registration>,
    pub driver: Option<Registration>,
    pub ai_features: Vec<(String, Option<Registration>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(style: ImageStyle, name: &str) -> RecordBody {
        RecordBody::Anchor {
            owner_merchant_id: "m1".into(),
            provider_id: "p1".into(),
            image_style: style,
            image_reference: "img://1".into(),
            display_name: name.into(),
            likeness_of: String::new(),
            consent_id: String::new(),
        }
    }

    fn approved(body: RecordBody) -> Registration {
        let mut r = apply_register(None, "a1", body, None, 0)
            .map(|o| o.registration)
            .unwrap_or_else(|e| panic!("{e}"));
        r.review_status = ReviewStatus::Approved;
        r
    }

    #[test]
    fn an_approval_binds_to_its_image_and_other_bytes_send_the_anchor_back() {
        let pending = apply_register(None, "a1", anchor(ImageStyle::Anime, "a"), None, 0)
            .map(|o| o.registration)
            .unwrap_or_else(|e| panic!("{e}"));
        let approve = |reference: &str| ReviewCommand {
            kind: Kind::Anchor,
            id: "a1".into(),
            verdict: Verdict::Approve,
            reviewer: "r".into(),
            note: String::new(),
            expected_revision: None,
            approval_expires_at: None,
            seen_image_sha256: None,
            image: Some(ImageBinding {
                reference: reference.into(),
                sha256: "aa".into(),
            }),
        };
        // The image fetched was another reference's (a re-filing landed meanwhile).
        assert!(matches!(
            apply_review(Some(&pending), &approve("img://0"), 1),
            Err(PdpError::Aborted(_))
        ));
        let approved =
            apply_review(Some(&pending), &approve("img://1"), 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            approved
                .last_review
                .as_ref()
                .and_then(|r| r.image_sha256.as_deref()),
            Some("aa")
        );
        let seen = |sha: &str, reference: &str| {
            apply_image_change(Some(&approved), "a1", reference, sha, 2)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(!seen("aa", "img://1").changed, "the same bytes");
        assert!(!seen("bb", "img://0").changed, "no longer its image");
        let back = seen("bb", "img://1");
        assert!(back.changed);
        assert_eq!(
            (back.registration.review_status, back.registration.revision),
            (ReviewStatus::PendingReview, approved.revision + 1)
        );
        // Pending already, or approved without a bound image: nothing to send back.
        assert!(
            !apply_image_change(Some(&back.registration), "a1", "img://1", "cc", 3)
                .unwrap_or_else(|e| panic!("{e}"))
                .changed
        );
        let unbound = approved_unbound();
        assert!(
            !apply_image_change(Some(&unbound), "a1", "img://1", "cc", 3)
                .unwrap_or_else(|e| panic!("{e}"))
                .changed
        );
    }

    fn approved_unbound() -> Registration {
        approved(anchor(ImageStyle::Anime, "a"))
    }

    #[test]
    fn display_name_change_keeps_approval_material_change_resets_it() {
        let current = approved(anchor(ImageStyle::RealisticHuman, "a"));
        let renamed = apply_register(
            Some(&current),
            "a1",
            anchor(ImageStyle::RealisticHuman, "b"),
            None,
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(renamed.registration.review_status, ReviewStatus::Approved);
        assert_eq!(renamed.registration.revision, 2);
        let restyled = apply_register(
            Some(&current),
            "a1",
            anchor(ImageStyle::Anime, "a"),
            None,
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            restyled.registration.review_status,
            ReviewStatus::PendingReview
        );
    }

    #[test]
    fn identical_resend_is_a_no_op_even_with_a_stale_revision() {
        let current = approved(anchor(ImageStyle::RealisticHuman, "a"));
        let again = apply_register(
            Some(&current),
            "a1",
            anchor(ImageStyle::RealisticHuman, "a"),
            Some(0),
            5,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!again.changed);
        assert_eq!(again.registration, current);
    }

    fn session() -> Session {
        Session {
            id: "s1".into(),
            state: SessionState::Active,
            merchant_id: "m1".into(),
            room_id: "r1".into(),
            anchor_id: "a1".into(),
            driver_id: "d1".into(),
            livestream_type: LivestreamType::DailyMarketing,
            drive_mode: DriveMode::RealPerson,
            ai_features: BTreeSet::new(),
            gateway_id: String::new(),
            started_at: 0,
            closed_at: None,
            close_reason: String::new(),
            penalty_applied: None,
            stream: None,
            idempotency_key: None,
            labels: None,
            consent_id: None,
        }
    }

    fn discovery(penalty: Penalty, at: Millis) -> Discovery {
        Discovery {
            id: format!("discovery-at-{at}"),
            session_id: "s1".into(),
            trigger: Trigger::ViolationReport,
            violations: vec![],
            rule_ids: vec!["R6".into()],
            penalty,
            discovered_by: "test".into(),
            reason: "test".into(),
            at,
            drive_mode: None,
            ai_features: BTreeSet::new(),
            labels: None,
        }
    }

    #[test]
    fn one_discovery_penalizes_the_merchant_once_across_its_sessions() {
        let first = apply_discovery(&session(), &Account::new("m1"), &discovery(Penalty::E2, 10))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut other = session();
        other.id = "s2".into();
        let mut same = discovery(Penalty::E2, 10);
        same.session_id = "s2".into();
        let second =
            apply_discovery(&other, &first.account, &same).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second.session.state, SessionState::ShutDown);
        assert_eq!(second.penalty_applied, None);
        assert_eq!((second.account.warnings, second.account.penalties), (1, 1));
        // A later, separate discovery in another session is a new penalty.
        let mut later = discovery(Penalty::E2, 20);
        later.session_id = "s3".into();
        other.id = "s3".into();
        let third =
            apply_discovery(&other, &second.account, &later).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((third.account.warnings, third.account.penalties), (2, 2));
    }

    #[test]
    fn the_closing_discovery_records_what_it_observed() {
        let mut found = discovery(Penalty::None, 10);
        found.drive_mode = Some(DriveMode::PreRecorded);
        found.ai_features = BTreeSet::from(["tts".to_owned()]);
        let closed = apply_discovery(&session(), &Account::new("m1"), &found)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(closed.session.drive_mode, DriveMode::PreRecorded);
        assert!(closed.session.ai_features.contains("tts"));
    }

    #[test]
    fn penalty_applies_once_per_session() {
        let first = apply_discovery(&session(), &Account::new("m1"), &discovery(Penalty::E2, 10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.penalty_applied, Some(Penalty::E2));
        assert_eq!(first.account.warnings, 1);
        assert_eq!(first.account.frozen_until, Some(10 + FREEZE_MS));
        let second = apply_discovery(&first.session, &first.account, &discovery(Penalty::E1, 20))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second.penalty_applied, None);
        assert_eq!(second.account, first.account);
    }

    #[test]
    fn new_discovery_extends_but_never_shortens_a_freeze() {
        let mut account = Account::new("m1");
        account.frozen_until = Some(100 + FREEZE_MS);
        let later = apply_discovery(&session(), &account, &discovery(Penalty::E1, 200))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(later.account.frozen_until, Some(200 + FREEZE_MS));
        account.frozen_until = Some(10 * FREEZE_MS);
        let earlier = apply_discovery(&session(), &account, &discovery(Penalty::E1, 200))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(earlier.account.frozen_until, Some(10 * FREEZE_MS));
    }
}
