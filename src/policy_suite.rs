//! Policy test suites (`policies/tests/*.yaml`): fixtures as they would be in the store, a
//! fixed time, and Authorize cases with their expected outcome. Each case runs through the
//! server's own code path (a fresh sled store loaded with the fixtures, the service's
//! `authorize`), so a suite tests exactly what the server would decide.
//!
//! Format (every key is listed; see `policies/tests/` for examples):
//!
//! ```yaml
//! name: R1 merchant tier            # optional; defaults to the file name
//! now: 2026-01-01T00:00:00Z         # RFC 3339; the time of every case unless it sets its own
//! fixtures:
//!   merchants:   [{id: m1, tier: CHINESE_GOLD_SUPPLIER}]          # tier as in the policies
//!   providers:   [{id: p1, listed: true}]
//!   anchors:     [{id: a1, owner: m1, provider: p1, image_style: REALISTIC_HUMAN,
//!                  review: APPROVED, approval_expires: 2026-02-01T00:00:00Z,   # expiry optional
//!                  likeness_of: person-1, consent: c1}]   # optional: a cloned likeness
//!   consents:    [{id: c1, owner: m1, person: person-1, review: APPROVED}]  # expiry optional
//!   drivers:     [{id: d1, owner: m1, review: APPROVED}]
//!   rooms:       [{id: r1, owner: m1, review: APPROVED}]
//!   ai_features: [{id: voice-clone, security_assessment_passed: true, filing_number: GAI-1}]
//!   accounts:    [{merchant: m1, frozen_until: 2026-01-05T00:00:00Z, warnings: 1}]
//! defaults:                         # request fields every case starts from
//!   {phase: START, merchant: m1, room: r1, anchor: a1, driver: d1,
//!    livestream_type: DAILY_MARKETING, drive_mode: REAL_PERSON, ai_features: [],
//!    label_shown: true, label_kind: OVERLAY,          # labels: any of the four sends a
//!    implicit_label: true, implicit_label_provider: p1}   # report; none sends none
//! cases:
//!   - name: GGS is denied
//!     now: 2026-01-02T00:00:00Z     # optional
//!     request: {merchant: m2}       # overrides defaults; phase LIVE re-checks a session
//!                                   # opened for these ids just before
//!     expect:
//!       decision: DENY              # ALLOW | DENY (required)
//!       rules: [R1]                 # exactly these rules broken (any order); default []
//!       warnings: []                # exactly these warning-only rules broken at LIVE
//!       penalty: none               # heaviest penalty the broken rules carry:
//!                                   # warning | none | E1 | E2
//!       enforcement: REFUSE_START   # optional: NONE | REFUSE_START | SHUT_DOWN
//!       penalty_applied: none       # optional, LIVE: the penalty this decision applied
//!       frozen_until: 2026-01-08T00:00:00Z   # optional: the freeze end the response states
//! ```
//!
//! A policy directory's suites are its `tests/*.yaml` and the suites of the rule packs its
//! `packs.toml` enables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Deserialize;

use crate::clock::ManualClock;
use crate::domain::{
    self, Account, DriveMode, ImageStyle, LabelKind, LabelReport, LivestreamType, Millis, Penalty,
    RecordBody, Registration, ReviewStatus, Session, SessionState, Tier,
};
use crate::policy::{Phase, PolicyBundle, PolicyHandle};
use crate::service::{AuthorizeCommand, Enforcement, Pdp};
use crate::store::Store;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    name: Option<String>,
    now: String,
    #[serde(default)]
    fixtures: Fixtures,
    #[serde(default)]
    defaults: RequestSpec,
    cases: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixtures {
    #[serde(default)]
    merchants: Vec<MerchantFixture>,
    #[serde(default)]
    providers: Vec<ProviderFixture>,
    #[serde(default)]
    anchors: Vec<AnchorFixture>,
    #[serde(default)]
    drivers: Vec<FilingFixture>,
    #[serde(default)]
    rooms: Vec<FilingFixture>,
    #[serde(default)]
    ai_features: Vec<AiFeatureFixture>,
    #[serde(default)]
    accounts: Vec<AccountFixture>,
    #[serde(default)]
    consents: Vec<ConsentFixture>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentFixture {
    id: String,
    owner: String,
    person: String,
    review: String,
    approval_expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MerchantFixture {
    id: String,
    tier: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFixture {
    id: String,
    listed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorFixture {
    id: String,
    owner: String,
    provider: String,
    image_style: String,
    review: String,
    approval_expires: Option<String>,
    #[serde(default)]
    likeness_of: String,
    #[serde(default)]
    consent: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilingFixture {
    id: String,
    owner: String,
    review: String,
    approval_expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AiFeatureFixture {
    id: String,
    security_assessment_passed: bool,
    #[serde(default)]
    filing_number: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountFixture {
    merchant: String,
    frozen_until: Option<String>,
    #[serde(default)]
    warnings: u32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    phase: Option<String>,
    merchant: Option<String>,
    room: Option<String>,
    anchor: Option<String>,
    driver: Option<String>,
    livestream_type: Option<String>,
    drive_mode: Option<String>,
    ai_features: Option<Vec<String>>,
    label_shown: Option<bool>,
    label_kind: Option<String>,
    implicit_label: Option<bool>,
    implicit_label_provider: Option<String>,
}

impl RequestSpec {
    fn over(&self, defaults: &RequestSpec) -> RequestSpec {
        RequestSpec {
            phase: self.phase.clone().or_else(|| defaults.phase.clone()),
            merchant: self.merchant.clone().or_else(|| defaults.merchant.clone()),
            room: self.room.clone().or_else(|| defaults.room.clone()),
            anchor: self.anchor.clone().or_else(|| defaults.anchor.clone()),
            driver: self.driver.clone().or_else(|| defaults.driver.clone()),
            livestream_type: self
                .livestream_type
                .clone()
                .or_else(|| defaults.livestream_type.clone()),
            drive_mode: self
                .drive_mode
                .clone()
                .or_else(|| defaults.drive_mode.clone()),
            ai_features: self
                .ai_features
                .clone()
                .or_else(|| defaults.ai_features.clone()),
            label_shown: self.label_shown.or(defaults.label_shown),
            label_kind: self
                .label_kind
                .clone()
                .or_else(|| defaults.label_kind.clone()),
            implicit_label: self.implicit_label.or(defaults.implicit_label),
            implicit_label_provider: self
                .implicit_label_provider
                .clone()
                .or_else(|| defaults.implicit_label_provider.clone()),
        }
    }

    /// The label report, when any label observation is given.
    fn labels(&self) -> Result<Option<LabelReport>, String> {
        if self.label_shown.is_none()
            && self.label_kind.is_none()
            && self.implicit_label.is_none()
            && self.implicit_label_provider.is_none()
        {
            return Ok(None);
        }
        Ok(Some(LabelReport {
            label_shown: self.label_shown.unwrap_or(false),
            label_kind: self
                .label_kind
                .as_deref()
                .map(|v| parse("request.label_kind", v, LabelKind::from_policy_name))
                .transpose()?
                .unwrap_or_default(),
            implicit_label: self.implicit_label.unwrap_or(false),
            implicit_label_provider: self.implicit_label_provider.clone().unwrap_or_default(),
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    now: Option<String>,
    #[serde(default)]
    request: RequestSpec,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: String,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    warnings: Vec<String>,
    penalty: Option<String>,
    enforcement: Option<String>,
    penalty_applied: Option<String>,
    frozen_until: Option<String>,
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub suite: String,
    pub file: PathBuf,
    pub case: String,
    /// `None` when it passed; otherwise why not.
    pub failure: Option<String>,
    pub elapsed: Duration,
    /// Rules the case expected broken (for coverage).
    pub expected_rules: Vec<String>,
    pub expected_allow: bool,
}

/// Every case of every suite, plus suites that could not be read.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.failure.is_none()).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Rules of `policies` that no case expects broken.
    pub fn rules_never_broken(&self, policies: &PolicyBundle) -> Vec<String> {
        let exercised: BTreeSet<&str> = self
            .results
            .iter()
            .flat_map(|r| r.expected_rules.iter().map(String::as_str))
            .collect();
        let mut missing: Vec<String> = policies
            .rules()
            .filter(|r| !exercised.contains(r.id.as_str()))
            .map(|r| r.id.clone())
            .collect();
        missing.sort();
        missing
    }

    /// JUnit XML, one `testsuite` per suite file.
    pub fn junit_xml(&self) -> String {
        let mut suites: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
        for result in &self.results {
            suites
                .entry(result.suite.as_str())
                .or_default()
                .push(result);
        }
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml.push_str(&format!(
            "<testsuites name=\"anchor-pdp policy tests\" tests=\"{}\" failures=\"{}\">\n",
            self.results.len(),
            self.failed()
        ));
        for (suite, cases) in suites {
            let failures = cases.iter().filter(|c| c.failure.is_some()).count();
            let time: f64 = cases.iter().map(|c| c.elapsed.as_secs_f64()).sum();
            xml.push_str(&format!(
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{time:.3}\">\n",
                escape(suite),
                cases.len()
            ));
            for case in cases {
                xml.push_str(&format!(
                    "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" time=\"{:.3}\"",
                    escape(suite),
                    escape(&case.case),
                    escape(&case.file.display().to_string()),
                    case.elapsed.as_secs_f64()
                ));
                match &case.failure {
                    None => xml.push_str("/>\n"),
                    Some(failure) => xml.push_str(&format!(
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                        escape(failure),
                        escape(failure)
                    )),
                }
            }
            xml.push_str("  </testsuite>\n");
        }
        xml.push_str("</testsuites>\n");
        xml
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn time(field: &str, value: &str) -> Result<Millis, String> {
    let at = humantime::parse_rfc3339_weak(value)
        .map_err(|e| format!("{field}: {value:?} is not an RFC 3339 time ({e})"))?;
    let since = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{field}: {value:?} is before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| format!("{field}: {value:?} is out of range"))
}

fn parse<T>(field: &str, value: &str, from: impl Fn(&str) -> Option<T>) -> Result<T, String> {
    from(value).ok_or_else(|| format!("{field}: unknown value {value:?}"))
}

fn filing(
    id: &str,
    body: RecordBody,
    review: &str,
    approval_expires: Option<&String>,
    now: Millis,
) -> Result<Registration, String> {
    let status = parse("review", review, ReviewStatus::from_policy_name)?;
    let expires = approval_expires
        .map(|t| time("approval_expires", t))
        .transpose()?;
    let mut registration = domain::apply_register(None, id, body, None, now)
        .map_err(|e| e.to_string())?
        .registration;
    registration.review_status = status;
    if status != ReviewStatus::PendingReview {
        let verdict = match status {
            ReviewStatus::Rejected => domain::Verdict::Reject,
            ReviewStatus::Revoked => domain::Verdict::Revoke,
            _ => domain::Verdict::Approve,
        };
        registration.last_review = Some(domain::ReviewInfo {
            verdict,
            reviewer: "fixture".into(),
            note: String::new(),
            reviewed_at: now,
            approval_expires_at: expires,
            image_sha256: None,
        });
    }
    Ok(registration)
}

fn fixtures(f: &Fixtures, now: Millis) -> Result<(Vec<Registration>, Vec<Account>), String> {
    let mut records = Vec::new();
    for m in &f.merchants {
        let tier = parse("merchants.tier", &m.tier, Tier::from_policy_name)?;
        let body = RecordBody::Merchant {
            tier,
            display_name: String::new(),
        };
        records.push(filing(&m.id, body, "NOT_REQUIRED", None, now)?);
    }
    for p in &f.providers {
        let mut record = filing(
            &p.id,
            RecordBody::Provider {
                display_name: String::new(),
            },
            "NOT_REQUIRED",
            None,
            now,
        )?;
        record.provider_listing = Some(domain::ProviderListing {
            listed: p.listed,
            changed_at: Some(now),
            changed_by: "fixture".into(),
        });
        records.push(record);
    }
    for a in &f.anchors {
        let body = RecordBody::Anchor {
            owner_merchant_id: a.owner.clone(),
            provider_id: a.provider.clone(),
            image_style: parse(
                "anchors.image_style",
                &a.image_style,
                ImageStyle::from_policy_name,
            )?,
            image_reference: format!("fixture://{}", a.id),
            display_name: String::new(),
            likeness_of: a.likeness_of.clone(),
            consent_id: a.consent.clone(),
        };
        records.push(filing(
            &a.id,
            body,
            &a.review,
            a.approval_expires.as_ref(),
            now,
        )?);
    }
    for d in &f.drivers {
        let body = RecordBody::Driver {
            owner_merchant_id: d.owner.clone(),
            identity_reference: format!("fixture://{}", d.id),
            display_name: String::new(),
        };
        records.push(filing(
            &d.id,
            body,
            &d.review,
            d.approval_expires.as_ref(),
            now,
        )?);
    }
    for r in &f.rooms {
        let body = RecordBody::Room {
            owner_merchant_id: r.owner.clone(),
            display_name: String::new(),
        };
        records.push(filing(
            &r.id,
            body,
            &r.review,
            r.approval_expires.as_ref(),
            now,
        )?);
    }
    for a in &f.ai_features {
        let mut record = filing(
            &a.id,
            RecordBody::AiFeature {
                display_name: String::new(),
            },
            "NOT_REQUIRED",
            None,
            now,
        )?;
        record.ai_feature_clearance = Some(domain::AiFeatureClearance {
            security_assessment_passed: a.security_assessment_passed,
            filing_number: a.filing_number.clone(),
            changed_at: Some(now),
            changed_by: "fixture".into(),
        });
        records.push(record);
    }
    for c in &f.consents {
        let body = RecordBody::Consent {
            owner_merchant_id: c.owner.clone(),
            person_reference: c.person.clone(),
            consent_reference: format!("fixture://{}", c.id),
            display_name: String::new(),
        };
        records.push(filing(
            &c.id,
            body,
            &c.review,
            c.approval_expires.as_ref(),
            now,
        )?);
    }
    let mut accounts = Vec::new();
    for a in &f.accounts {
        let mut account = Account::new(&a.merchant);
        account.warnings = a.warnings;
        account.frozen_until = a
            .frozen_until
            .as_ref()
            .map(|t| time("accounts.frozen_until", t))
            .transpose()?;
        accounts.push(account);
    }
    Ok((records, accounts))
}

fn command(spec: &RequestSpec) -> Result<AuthorizeCommand, String> {
    let phase = match spec.phase.as_deref() {
        Some("START") | None => Phase::Start,
        Some("LIVE") => Phase::Live,
        Some(other) => return Err(format!("request.phase: unknown value {other:?}")),
    };
    Ok(AuthorizeCommand {
        phase,
        merchant_id: spec.merchant.clone(),
        room_id: spec.room.clone(),
        anchor_id: spec.anchor.clone(),
        driver_id: spec.driver.clone(),
        livestream_type: spec
            .livestream_type
            .as_deref()
            .map(|v| {
                parse(
                    "request.livestream_type",
                    v,
                    LivestreamType::from_policy_name,
                )
            })
            .transpose()?,
        drive_mode: spec
            .drive_mode
            .as_deref()
            .map(|v| parse("request.drive_mode", v, DriveMode::from_policy_name))
            .transpose()?,
        ai_features: spec.ai_features.clone().unwrap_or_default(),
        session_id: None,
        gateway_id: "policy-test".into(),
        explain: false,
        stream: None,
        idempotency_key: None,
        labels: spec.labels()?,
    })
}

fn enforcement_name(e: Enforcement) -> &'static str {
    match e {
        Enforcement::None => "NONE",
        Enforcement::RefuseStart => "REFUSE_START",
        Enforcement::ShutDown => "SHUT_DOWN",
    }
}

async fn run_case(
    policies: &Arc<PolicyHandle>,
    suite: &Suite,
    records: &[Registration],
    accounts: &[Account],
    case: &Case,
) -> Result<(), String> {
    let now = time("now", case.now.as_deref().unwrap_or(&suite.now))?;
    let spec = case.request.over(&suite.defaults);
    let mut cmd = command(&spec)?;
    let temp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let store = Store::open(&temp.path().join("data")).map_err(|e| e.to_string())?;
    store
        .import(records, accounts)
        .await
        .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    let log = crate::decision_log::DecisionLog::start(
        store.clone(),
        64,
        crate::decision_log::Overflow::Wait,
    );
    let pdp = Pdp::new(
        store,
        policies.clone(),
        Arc::new(ManualClock::new(now)),
        Duration::from_secs(30),
        log,
    );
    if cmd.phase == Phase::Live {
        // A session admitted earlier for these ids, now re-checked.
        let missing = |field: &str| format!("request.{field}: required to open the LIVE session");
        let session = Session {
            id: "policy-test-session".into(),
            state: SessionState::Active,
            merchant_id: cmd.merchant_id.clone().ok_or_else(|| missing("merchant"))?,
            room_id: cmd.room_id.clone().ok_or_else(|| missing("room"))?,
            anchor_id: cmd.anchor_id.clone().ok_or_else(|| missing("anchor"))?,
            driver_id: cmd.driver_id.clone().ok_or_else(|| missing("driver"))?,
            livestream_type: cmd
                .livestream_type
                .ok_or_else(|| missing("livestream_type"))?,
            drive_mode: cmd.drive_mode.ok_or_else(|| missing("drive_mode"))?,
            ai_features: BTreeSet::new(),
            gateway_id: "policy-test".into(),
            started_at: now,
            closed_at: None,
            close_reason: String::new(),
            penalty_applied: None,
            stream: None,
            idempotency_key: None,
            labels: None,
            consent_id: None,
        };
        let store = pdp.store();
        let facts = store
            .facts(
                &session.merchant_id,
                &session.room_id,
                &session.anchor_id,
                &session.driver_id,
                &[],
            )
            .map_err(|e| e.to_string())?;
        store
            .open_session(&session, &facts, "policy-test", "", &|_| Vec::new())
            .await
            .map_err(|e| e.to_string())?;
        cmd.session_id = Some(session.id);
    }
    let origin = crate::service::Origin {
        request_id: None,
        entry_point: "policy-test",
        gateway_id: String::new(),
        caller: "anchor-pdp policy test".into(),
        request: serde_json::json!({ "case": case.name }),
    };
    let outcome = pdp
        .authorize(&origin, cmd)
        .await
        .map_err(|e| e.to_string())?;
    pdp.decision_log().close().await;
    let decision = &outcome.decision;

    let expect = &case.expect;
    let mut problems = Vec::new();
    let got_decision = if decision.allowed { "ALLOW" } else { "DENY" };
    if expect.decision != got_decision {
        problems.push(format!(
            "decision: expected {}, got {got_decision}",
            expect.decision
        ));
    }
    let mut want: Vec<&str> = expect.rules.iter().map(String::as_str).collect();
    let mut got: Vec<&str> = decision
        .violations
        .iter()
        .map(|v| v.rule_id.as_str())
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        problems.push(format!("rules: expected {want:?}, got {got:?}"));
    }
    let mut want: Vec<&str> = expect.warnings.iter().map(String::as_str).collect();
    let mut got: Vec<&str> = decision
        .warnings
        .iter()
        .map(|v| v.rule_id.as_str())
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        problems.push(format!("warnings: expected {want:?}, got {got:?}"));
    }
    if let Some(penalty) = &expect.penalty {
        let want = parse("expect.penalty", penalty, Penalty::parse)?;
        if want != decision.penalty() {
            problems.push(format!(
                "penalty: expected {}, got {}",
                want.name(),
                decision.penalty().name()
            ));
        }
    }
    if let Some(enforcement) = &expect.enforcement {
        let got = enforcement_name(outcome.enforcement);
        if enforcement != got {
            problems.push(format!("enforcement: expected {enforcement}, got {got}"));
        }
    }
    if let Some(applied) = &expect.penalty_applied {
        let want = parse("expect.penalty_applied", applied, Penalty::parse)?;
        let got = outcome.penalty_applied.unwrap_or(Penalty::None);
        if want != got {
            problems.push(format!(
                "penalty_applied: expected {}, got {}",
                want.name(),
                got.name()
            ));
        }
    }
    if let Some(frozen_until) = &expect.frozen_until {
        let want = time("expect.frozen_until", frozen_until)?;
        if outcome.frozen_until != Some(want) {
            problems.push(format!(
                "frozen_until: expected {want} ms, got {:?}",
                outcome.frozen_until
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let reasons: Vec<String> = decision
            .violations
            .iter()
            .map(|v| format!("{}: {}", v.rule_id, v.message_en))
            .collect();
        Err(format!(
            "{} (violations: {})",
            problems.join("; "),
            reasons.join(" | ")
        ))
    }
}

/// A suite to run: where it comes from, and its text (`None` when it cannot be read).
pub struct SuiteSource {
    pub file: PathBuf,
    pub text: Result<String, String>,
}

/// The suites of a policy directory: its `tests/*.yaml` in name order, then those of the rule
/// packs its `packs.toml` enables.
pub fn suites(policy_dir: &Path) -> Result<Vec<SuiteSource>, String> {
    let dir = policy_dir.join("tests");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    files.sort();
    let mut suites: Vec<SuiteSource> = files
        .into_iter()
        .map(|file| SuiteSource {
            text: std::fs::read_to_string(&file).map_err(|e| e.to_string()),
            file,
        })
        .collect();
    let packs = crate::policy::packs::enabled(policy_dir).map_err(|problems| {
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        shown.join("; ")
    })?;
    for pack in packs {
        for (name, text) in pack.suites() {
            suites.push(SuiteSource {
                file: crate::policy::packs::display_path(pack, name),
                text: Ok((*text).to_owned()),
            });
        }
    }
    if suites.is_empty() {
        return Err(format!("{}: no *.yaml suite", dir.display()));
    }
    Ok(suites)
}

/// Runs every suite against `policies`; `on_result` sees each case as it finishes.
pub async fn run(
    policies: Arc<PolicyHandle>,
    suites: &[SuiteSource],
    mut on_result: impl FnMut(&CaseResult),
) -> Report {
    let mut report = Report::default();
    for SuiteSource { file, text } in suites {
        let stem = file
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let mut push = |result: CaseResult, report: &mut Report| {
            on_result(&result);
            report.results.push(result);
        };
        let loaded = text
            .clone()
            .and_then(|text| serde_norway::from_str::<Suite>(&text).map_err(|e| e.to_string()))
            .and_then(|suite| {
                let now = time("now", &suite.now)?;
                let (records, accounts) = fixtures(&suite.fixtures, now)?;
                Ok((suite, records, accounts))
            });
        let (suite, records, accounts) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                push(
                    CaseResult {
                        suite: stem.clone(),
                        file: file.clone(),
                        case: "(suite)".into(),
                        failure: Some(format!("cannot load suite: {e}")),
                        elapsed: Duration::ZERO,
                        expected_rules: vec![],
                        expected_allow: false,
                    },
                    &mut report,
                );
                continue;
            }
        };
        let name = suite.name.clone().unwrap_or(stem);
        for case in &suite.cases {
            let started = Instant::now();
            let failure = run_case(&policies, &suite, &records, &accounts, case)
                .await
                .err();
            push(
                CaseResult {
                    suite: name.clone(),
                    file: file.clone(),
                    case: case.name.clone(),
                    failure,
                    elapsed: started.elapsed(),
                    expected_rules: case.expect.rules.clone(),
                    expected_allow: case.expect.decision == "ALLOW",
                },
                &mut report,
            );
        }
    }
    report
}
