//! Memoized decisions. A decision is a pure function of its inputs (`DecisionInputs`: every
//! attribute and context value the policies read, the time-dependent conditions included) and
//! the policy set. Each loaded policy set has its own memo, so a swap starts from an empty one,
//! and the key is the whole of the inputs, so a changed fact is a different key: a kept
//! decision can never be served for facts or policies it was not made on.

use std::sync::atomic::{AtomicU64, Ordering};

use super::decide::Decision;
use super::inputs::DecisionInputs;

/// Decisions kept per policy set. The key space is about one entry per live broadcast and
/// state; at roughly 1 KiB an entry this bounds the memo near 64 MiB.
const CAPACITY: usize = 65_536;

pub(crate) struct Memo {
    cache: quick_cache::sync::Cache<DecisionInputs, Decision>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            cache: quick_cache::sync::Cache::new(CAPACITY),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

impl Memo {
    /// The kept decision for `inputs`, or `decide`'s, kept.
    pub(crate) fn get_or_decide(
        &self,
        inputs: DecisionInputs,
        decide: impl FnOnce(&DecisionInputs) -> Decision,
    ) -> Decision {
        if let Some(decision) = self.cache.get(&inputs) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("anchor_pdp_decision_memo_total", "result" => "hit").increment(1);
            return decision;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("anchor_pdp_decision_memo_total", "result" => "miss").increment(1);
        let decision = decide(&inputs);
        self.cache.insert(inputs, decision.clone());
        decision
    }

    /// (kept, hits, misses).
    pub(crate) fn stats(&self) -> (usize, u64, u64) {
        (
            self.cache.len(),
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::decide::{Observation, Phase};
    use super::super::load::PolicyBundle;
    use crate::domain::{
        Account, AiFeatureClearance, DriveMode, Facts, ImageStyle, LabelKind, LabelReport,
        LivestreamType, Millis, ProviderListing, RecordBody, Registration, ReviewInfo,
        ReviewStatus, Tier, Verdict,
    };

    /// The shipped R8 and E3 as they read before they were restated on the conditions computed
    /// from the time: the reference the memoized decisions are checked against.
    const TIME_READ_DIRECTLY: [(&str, &str); 4] = [
        (
            "(resource has approval_expired && resource.approval_expired)",
            "(resource has approval_expires_ms && resource.approval_expires_ms <= context.now_ms)",
        ),
        (
            "(context.anchor has approval_expired && context.anchor.approval_expired)",
            "(context.anchor has approval_expires_ms && context.anchor.approval_expires_ms <= context.now_ms)",
        ),
        (
            "(context.driver has approval_expired && context.driver.approval_expired)",
            "(context.driver has approval_expires_ms && context.driver.approval_expires_ms <= context.now_ms)",
        ),
        (
            "principal.frozen\n",
            "principal has frozen_until_ms && context.now_ms < principal.frozen_until_ms\n",
        ),
    ];

    /// The label pack's C1 as it would read the time directly.
    const CONSENT_TIME_READ_DIRECTLY: (&str, &str) = (
        "context.anchor.consent has approval_expired && !context.anchor.consent.approval_expired",
        "!(context.anchor.consent has approval_expires_ms && context.anchor.consent.approval_expires_ms <= context.now_ms)",
    );

    const T: Millis = 1_000_000;

    /// A small deterministic generator (xorshift), so a failure reproduces.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, sides: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % sides as u64) as usize
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.roll(from.len())]
        }
    }

    fn filing(dice: &mut Dice, id: &str, body: RecordBody) -> Option<Registration> {
        if dice.roll(40) == 0 {
            return None;
        }
        let review_status = match dice.roll(40) {
            0 => ReviewStatus::PendingReview,
            1 => ReviewStatus::Rejected,
            2 => ReviewStatus::Revoked,
            _ => ReviewStatus::Approved,
        };
        Some(Registration {
            id: id.into(),
            revision: 1,
            review_status,
            last_review: Some(ReviewInfo {
                verdict: Verdict::Approve,
                reviewer: "r".into(),
                note: String::new(),
                reviewed_at: 0,
                // Around the decision times below, on both sides and exactly at them.
                approval_expires_at: match dice.roll(12) {
                    0 => Some(T - 1),
                    1 => Some(T),
                    2 => Some(T + 1),
                    _ => None,
                },
                image_sha256: None,
            }),
            created_at: 0,
            updated_at: 0,
            body,
            provider_listing: None,
            ai_feature_clearance: None,
        })
    }

    fn owner(dice: &mut Dice) -> String {
        if dice.roll(40) == 0 { "m2" } else { "m1" }.into()
    }

    fn random_facts(dice: &mut Dice) -> Facts {
        let merchant = (dice.roll(40) > 0).then(|| Registration {
            id: "m1".into(),
            revision: 1,
            review_status: ReviewStatus::NotRequired,
            last_review: None,
            created_at: 0,
            updated_at: 0,
            body: RecordBody::Merchant {
                tier: match dice.roll(20) {
                    0 => Tier::GlobalGoldSupplier,
                    1 => Tier::Other,
                    _ => Tier::ChineseGoldSupplier,
                },
                display_name: String::new(),
            },
            provider_listing: None,
            ai_feature_clearance: None,
        });
        let account = (dice.roll(4) == 0).then(|| {
            let mut account = Account::new("m1");
            account.frozen_until = dice.pick(&[None, Some(T - 1), Some(T), Some(T + 1)]);
            account
        });
        let provider_id = dice.pick(&["p1", "p2"]);
        let body = RecordBody::Anchor {
            owner_merchant_id: owner(dice),
            provider_id: provider_id.into(),
            image_style: if dice.roll(20) == 0 {
                ImageStyle::Cartoon
            } else {
                ImageStyle::RealisticHuman
            },
            image_reference: "img".into(),
            display_name: String::new(),
            // Cloned from a real person or not; naming a consent filing or not.
            likeness_of: match dice.roll(8) {
                0 => "person-1",
                1 => "person-2",
                _ => "",
            }
            .into(),
            consent_id: dice.pick(&["", "c1", "c1", "c1"]).into(),
        };
        let anchor = filing(dice, "a1", body);
        let body = RecordBody::Consent {
            owner_merchant_id: owner(dice),
            person_reference: dice.pick(&["person-1", "person-1", "person-2"]).into(),
            consent_reference: "doc".into(),
            display_name: String::new(),
        };
        let consent = match anchor.as_ref().map(|a| &a.body) {
            Some(RecordBody::Anchor { consent_id, .. }) if !consent_id.is_empty() => {
                filing(dice, consent_id, body)
            }
            _ => None,
        };
        let provider = (dice.roll(40) > 0).then(|| Registration {
            id: provider_id.into(),
            revision: 1,
            review_status: ReviewStatus::NotRequired,
            last_review: None,
            created_at: 0,
            updated_at: 0,
            body: RecordBody::Provider {
                display_name: String::new(),
            },
            provider_listing: match dice.roll(20) {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            }
            .map(|listed| ProviderListing {
                listed,
                changed_at: None,
                changed_by: String::new(),
            }),
            ai_feature_clearance: None,
        });
        let body = RecordBody::Room {
            owner_merchant_id: owner(dice),
            display_name: String::new(),
        };
        let room = filing(dice, "r1", body);
        let body = RecordBody::Driver {
            owner_merchant_id: owner(dice),
            identity_reference: "kyc".into(),
            display_name: String::new(),
        };
        let driver = filing(dice, "d1", body);
        let filed_features: Vec<&str> = ["f1", "f2"]
            .into_iter()
            .filter(|_| dice.roll(2) == 0)
            .collect();
        let ai_features = filed_features
            .iter()
            .map(|id| {
                let record = (dice.roll(20) > 0).then(|| Registration {
                    id: (*id).into(),
                    revision: 1,
                    review_status: ReviewStatus::NotRequired,
                    last_review: None,
                    created_at: 0,
                    updated_at: 0,
                    body: RecordBody::AiFeature {
                        display_name: String::new(),
                    },
                    provider_listing: None,
                    ai_feature_clearance: Some(AiFeatureClearance {
                        security_assessment_passed: dice.roll(20) > 0,
                        filing_number: if dice.roll(20) == 0 { "" } else { "F-1" }.into(),
                        changed_at: None,
                        changed_by: String::new(),
                    }),
                });
                ((*id).to_owned(), record)
            })
            .collect();
        Facts {
            merchant_id: "m1".into(),
            room_id: "r1".into(),
            anchor_id: "a1".into(),
            driver_id: "d1".into(),
            merchant,
            account,
            room,
            provider: anchor.as_ref().and(provider),
            consent,
            anchor,
            driver,
            ai_features,
        }
    }

    /// The shipped rules, with the label pack or without it, memoized; and the same rules
    /// reading the time directly, decided fresh.
    fn memoized_and_original(with_labels: bool) -> (PolicyBundle, PolicyBundle) {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let memoized_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        crate::policy::builtin::materialize(memoized_dir.path()).unwrap_or_else(|e| panic!("{e}"));
        if with_labels {
            std::fs::write(
                memoized_dir.path().join("packs.toml"),
                "packs = [\"labels\"]\n",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let memoized = super::super::load(memoized_dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!memoized.reads.now);
        assert_eq!(memoized.reads.labels, with_labels);
        assert_eq!(memoized.reads.consent, with_labels);
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut rules =
            std::fs::read_to_string(shipped.join("rules.cedar")).unwrap_or_else(|e| panic!("{e}"));
        for (restated, original) in TIME_READ_DIRECTLY {
            assert!(
                rules.contains(restated),
                "the shipped rules changed: {restated}"
            );
            rules = rules.replace(restated, original);
        }
        std::fs::write(temp.path().join("rules.cedar"), rules).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(
            shipped.join("anchor.cedarschema"),
            temp.path().join("anchor.cedarschema"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        if with_labels {
            let labels = crate::policy::packs::find("labels").unwrap_or_else(|e| panic!("{e}"));
            let (name, text) = labels
                .policies()
                .next()
                .unwrap_or_else(|| panic!("the pack has a policy file"));
            let (restated, original) = CONSENT_TIME_READ_DIRECTLY;
            assert!(text.contains(restated), "the pack's C1 changed: {restated}");
            std::fs::write(temp.path().join(name), text.replace(restated, original))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let original = super::super::load(temp.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(original.reads.now);
        (memoized, original)
    }

    /// 100,000 random cases decided both ways, on two threads sharing the memo as the server's
    /// workers do; fails on the first difference.
    fn memoized_equals_fresh(with_labels: bool, seeds: [u64; 2]) {
        let (memoized, original) = memoized_and_original(with_labels);
        let denies: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = seeds
                .into_iter()
                .map(|seed| {
                    let (memoized, original) = (&memoized, &original);
                    scope.spawn(move || differ(memoized, original, seed, 50_000))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| panic!("a worker failed")))
                .sum()
        });
        let (kept, hits, misses) = memoized.memo_stats();
        assert_eq!(hits + misses, 100_000);
        // Both outcomes, and both paths of the memo, were exercised.
        assert!(denies > 10_000 && denies < 90_000, "{denies} denies");
        assert!(
            hits > 10_000 && misses > 1_000,
            "{hits} hits, {misses} misses, {kept} kept"
        );
    }

    #[test]
    fn memoized_decisions_equal_the_original_rules_evaluated_fresh_on_100k_random_cases() {
        memoized_equals_fresh(false, [0x9e37_79b9_7f4a_7c15, 0x2545_f491_4f6c_dd1d]);
    }

    #[test]
    fn with_the_label_pack_memoized_decisions_equal_fresh_ones_on_100k_random_cases() {
        memoized_equals_fresh(true, [0x0123_4567_89ab_cdef, 0x7f4a_7c15_9e37_79b9]);
    }

    /// Decides `cases` random cases both ways and fails on the first difference; returns the
    /// denies.
    fn differ(memoized: &PolicyBundle, original: &PolicyBundle, seed: u64, cases: usize) -> usize {
        let mut dice = Dice(seed);
        let features = [
            vec![],
            vec![],
            vec!["f1".to_owned()],
            vec!["f1".into(), "f2".into()],
        ];
        let mut denies = 0;
        for case in 0..cases {
            let facts = random_facts(&mut dice);
            let in_use = &features[dice.roll(features.len())];
            // Mostly a compliant report; each part broken now and then; sometimes none at all.
            let labels = (dice.roll(40) > 0).then(|| LabelReport {
                label_shown: dice.roll(40) > 0,
                label_kind: match dice.roll(40) {
                    0 => LabelKind::None,
                    1..=10 => LabelKind::Interface,
                    _ => LabelKind::Overlay,
                },
                implicit_label: dice.roll(40) > 0,
                implicit_label_provider: if dice.roll(40) == 0 { "" } else { "p1" }.into(),
            });
            let observation = Observation {
                phase: dice.pick(&[Phase::Start, Phase::Live]),
                livestream_type: if dice.roll(20) == 0 {
                    LivestreamType::Other
                } else {
                    LivestreamType::DailyMarketing
                },
                drive_mode: if dice.roll(20) == 0 {
                    DriveMode::PreRecorded
                } else {
                    DriveMode::RealPerson
                },
                ai_features: in_use,
                labels: labels.as_ref(),
            };
            let now = dice.pick(&[T - 1, T, T + 1]);
            let cached = memoized.decide_for_the_record(&facts, &observation, now, false);
            let fresh = original.decide_uncached(&facts, &observation, now);
            let warned = |d: &super::super::Decision| -> Vec<String> {
                d.warnings.iter().map(|w| w.rule_id.clone()).collect()
            };
            assert_eq!(
                (cached.allowed, cached.rule_ids(), warned(&cached)),
                (fresh.allowed, fresh.rule_ids(), warned(&fresh)),
                "case {case} of seed {seed:#x}: {facts:#?} {observation:?} at {now}"
            );
            // A deny's explanation is always there, and comes from the decision's own inputs.
            assert_eq!(cached.explanation.is_some(), !cached.allowed, "case {case}");
            denies += usize::from(!cached.allowed);
        }
        denies
    }
}
