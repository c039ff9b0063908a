//! Changing the rules while serving: file-watch and RPC reloads, a broken set that leaves the
//! previous one serving, atomic swaps under load, and explanations.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, Decision, ReloadResult};
use common::*;

const GGS_ALLOWED_R1: &str =
    r#"unless { ["CHINESE_GOLD_SUPPLIER", "GLOBAL_GOLD_SUPPLIER"].contains(principal.tier) };"#;
const CGS_ONLY_R1: &str = r#"unless { principal.tier == "CHINESE_GOLD_SUPPLIER" };"#;

fn copy_policies(to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(repo_policies()).expect("policies") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        }
    }
}

/// Rewrites R1 in `dir` the way an operator would: write a temp file, rename over the old.
fn set_r1(dir: &Path, condition: &str) {
    let rules = dir.join("rules.cedar");
    let text = std::fs::read_to_string(&rules).expect("rules");
    let current = if text.contains(CGS_ONLY_R1) {
        CGS_ONLY_R1
    } else {
        GGS_ALLOWED_R1
    };
    let staged = dir.join(".rules.cedar.tmp");
    std::fs::write(&staged, text.replace(current, condition)).expect("write");
    std::fs::rename(&staged, &rules).expect("rename");
}

/// A GGS merchant m-ggs with its own approved filings.
async fn ggs_fixture(s: &mut TestServer) {
    s.merchant("m-ggs", proto::MerchantTier::GlobalGoldSupplier)
        .await;
    s.anchor("a-ggs", "m-ggs", "p1", proto::ImageStyle::RealisticHuman)
        .await;
    s.driver("d-ggs", "m-ggs").await;
    s.room("r-ggs", "m-ggs").await;
    s.approve(proto::RegistrationKind::Anchor, "a-ggs").await;
    s.approve(proto::RegistrationKind::Driver, "d-ggs").await;
    s.approve(proto::RegistrationKind::Room, "r-ggs").await;
}

fn ggs_start() -> proto::AuthorizeRequest {
    let mut request = start();
    request.merchant_id = "m-ggs".into();
    request.room_id = "r-ggs".into();
    request.anchor_id = "a-ggs".into();
    request.driver_id = "d-ggs".into();
    request
}

async fn admitted_with_own_policies(watch: bool) -> (TestServer, tempfile::TempDir) {
    let temp = tempfile::tempdir().expect("temp");
    let policies = temp.path().join("policies");
    copy_policies(&policies);
    let mut s = TestServer::start_with(
        &temp.path().join("data"),
        ManualClock::new(T0),
        Options {
            policies: Some(policies.clone()),
            watch_policies: watch,
            ..Options::default()
        },
    )
    .await;
    s.merchant("m1", proto::MerchantTier::ChineseGoldSupplier)
        .await;
    s.provider("p1", true).await;
    ggs_fixture(&mut s).await;
    (s, temp)
}

use anchor_pdp::clock::ManualClock;

async fn status(s: &mut TestServer) -> proto::GetPolicyStatusResponse {
    s.admin
        .get_policy_status(proto::GetPolicyStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

#[tokio::test]
async fn editing_the_policies_allows_ggs_without_a_restart_and_a_broken_edit_keeps_the_old_set() {
    let (mut s, temp) = admitted_with_own_policies(true).await;
    let policies = temp.path().join("policies");
    let before = s.authorize(ggs_start()).await;
    assert_refused(&before, &["R1"]);
    let original_version = before.policy_version.clone();

    // The platform lets Global Gold Suppliers in.
    set_r1(&policies, GGS_ALLOWED_R1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let allowed = loop {
        let response = s.authorize(ggs_start()).await;
        if response.policy_version != original_version {
            break response;
        }
        assert!(Instant::now() < deadline, "the edit was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_allowed(&allowed);
    let ggs_version = allowed.policy_version.clone();
    let after_edit = status(&mut s).await;
    assert_eq!(after_edit.active_version, ggs_version);
    assert_eq!(after_edit.last_trigger, "file-watch");
    assert!(after_edit.last_reload_problems.is_empty());

    // A broken edit: reported, and the GGS set keeps serving.
    let rules = policies.join("rules.cedar");
    let mut broken = std::fs::read_to_string(&rules).expect("rules");
    broken.push_str(
        "\n@id(\"R10\")\nforbid (principal, action, resource) when { principal.nope };\n",
    );
    std::fs::write(&rules, &broken).expect("write broken");
    let deadline = Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        let status = status(&mut s).await;
        if status.rejected_reloads > 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the broken edit was not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rejected.active_version, ggs_version);
    let problem = rejected
        .last_reload_problems
        .first()
        .expect("a reported problem");
    assert!(problem.file.ends_with("rules.cedar"), "{problem:?}");
    assert!(problem.line > 0, "{problem:?}");
    let still = s.authorize(ggs_start()).await;
    assert_allowed(&still);
    assert_eq!(still.policy_version, ggs_version);

    // The RPC reports the same problem in its reply.
    let reply = s
        .admin
        .reload_policies(proto::ReloadPoliciesRequest {
            operator: "ops-1".into(),
            ..Default::default()
        })
        .await
        .expect("reload")
        .into_inner();
    assert_eq!(reply.result, ReloadResult::Rejected as i32);
    assert_eq!(reply.active_version, ggs_version);
    assert!(!reply.problems.is_empty());
    assert!(
        reply.problems.iter().any(|p| p.message.contains("nope")),
        "{:?}",
        reply.problems
    );

    // Back to the rules as shipped, by RPC: R1 denies GGS again.
    copy_policies(&policies);
    let reply = s
        .admin
        .reload_policies(proto::ReloadPoliciesRequest {
            operator: "ops-1".into(),
            ..Default::default()
        })
        .await
        .expect("reload")
        .into_inner();
    // The watcher may have won the race to the fixed files.
    assert!(
        reply.result == ReloadResult::Reloaded as i32
            || reply.result == ReloadResult::Unchanged as i32,
        "{reply:?}"
    );
    assert_eq!(reply.active_version, original_version);
    assert_refused(&s.authorize(ggs_start()).await, &["R1"]);
}

#[tokio::test]
async fn no_decision_sees_half_a_policy_set_during_reloads() {
    let (mut s, temp) = admitted_with_own_policies(false).await;
    let policies = temp.path().join("policies");
    let cgs_version = s.authorize(ggs_start()).await.policy_version;
    let mut workers = Vec::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..4 {
        let mut client = s.pdp.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client
                    .authorize(ggs_start())
                    .await
                    .expect("authorize")
                    .into_inner();
                let verdict = decision(&response);
                seen.push((response.policy_version, verdict));
            }
            seen
        }));
    }
    let mut ggs_version = String::new();
    for round in 0..20 {
        set_r1(
            &policies,
            if round % 2 == 0 {
                GGS_ALLOWED_R1
            } else {
                CGS_ONLY_R1
            },
        );
        let reply = s
            .admin
            .reload_policies(proto::ReloadPoliciesRequest {
                operator: "ops".into(),
                ..Default::default()
            })
            .await
            .expect("reload")
            .into_inner();
        assert_eq!(reply.result, ReloadResult::Reloaded as i32, "{reply:?}");
        if round % 2 == 0 {
            ggs_version = reply.active_version;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut decisions = 0;
    for worker in workers {
        for (version, decision) in worker.await.expect("worker") {
            decisions += 1;
            // Every decision is wholly one set's: allowed exactly under the GGS set.
            if version == ggs_version {
                assert_eq!(decision, Decision::Allow);
            } else {
                assert_eq!(version, cgs_version);
                assert_eq!(decision, Decision::Deny);
            }
        }
    }
    assert!(
        decisions > 20,
        "only {decisions} decisions during the reloads"
    );
}

#[tokio::test]
async fn explain_returns_the_facts_and_the_determining_policies() {
    let mut s = TestServer::admitted().await;
    let mut request = start();
    request.explain = true;
    request.ai_features = vec!["voice-clone".into()];
    let allowed = s.authorize(request.clone()).await;
    let explanation = allowed.explanation.clone().expect("explanation");
    assert_eq!(explanation.determining_policies, ["ALLOW"]);
    let fact = |entity: &str, attribute: &str| {
        explanation
            .facts
            .iter()
            .chain(&explanation.context)
            .find(|f| f.entity == entity && f.attribute == attribute)
            .map(|f| f.value.clone())
    };
    assert_eq!(
        fact(r#"AnchorPdp::Anchor::"a1""#, "review").as_deref(),
        Some(r#""APPROVED""#)
    );
    assert_eq!(
        fact(r#"AnchorPdp::Provider::"p1""#, "listed").as_deref(),
        Some("true")
    );
    assert_eq!(
        fact(r#"AnchorPdp::Merchant::"m1""#, "tier").as_deref(),
        Some(r#""CHINESE_GOLD_SUPPLIER""#)
    );
    assert_eq!(
        fact("context", "ai_features_filed").as_deref(),
        Some(r#"["voice-clone"]"#)
    );
    // The shipped rules read the conditions computed from the time, not the time itself.
    assert_eq!(
        fact(r#"AnchorPdp::Merchant::"m1""#, "frozen").as_deref(),
        Some("false")
    );
    assert_eq!(
        fact(r#"AnchorPdp::Anchor::"a1""#, "approval_expired").as_deref(),
        Some("false")
    );
    assert_eq!(fact("context", "now_ms"), None);

    // Why was I shut down? The gateway saw a pre-recorded anchor: R3, from the context.
    let session = s.start_session().await;
    let mut recheck = live(&session);
    recheck.explain = true;
    recheck.drive_mode = proto::DriveMode::PreRecorded as i32;
    let denied = s.authorize(recheck).await;
    let explanation = denied.explanation.expect("explanation");
    assert_eq!(explanation.determining_policies, ["R3"]);
    assert!(
        explanation
            .context
            .iter()
            .any(|f| f.attribute == "drive_mode" && f.value == r#""PRE_RECORDED""#)
    );

    // Why was I refused? The delisting, in the facts, and R2, in the policies. (End the first
    // broadcast: a live one would be shut down by the delisting and freeze the account.)
    s.pdp
        .end_session(proto::EndSessionRequest {
            request_id: String::new(),
            session_id: allowed.session_id.clone(),
            reason: String::new(),
        })
        .await
        .expect("end");
    s.provider("p1", false).await;
    let mut request = start();
    request.explain = true;
    let denied = s.authorize(request).await;
    let explanation = denied.explanation.expect("explanation");
    assert_eq!(explanation.determining_policies, ["R2"]);
    assert!(
        explanation
            .facts
            .iter()
            .any(|f| f.entity == r#"AnchorPdp::Provider::"p1""#
                && f.attribute == "listed"
                && f.value == "false")
    );
    assert!(explanation.errors.is_empty());

    // Not asked, not sent.
    assert!(s.authorize(start()).await.explanation.is_none());
}

async fn reload(s: &mut TestServer, allow_removed_rules: bool) -> proto::ReloadPoliciesResponse {
    s.admin
        .reload_policies(proto::ReloadPoliciesRequest {
            operator: "ops-1".into(),
            allow_removed_rules,
        })
        .await
        .expect("reload")
        .into_inner()
}

/// Writes `rules.cedar` in `dir` as `text`, the way an editor saves.
fn write_rules(dir: &Path, text: &str) {
    let temp = dir.join(".rules.cedar.tmp");
    std::fs::write(&temp, text).expect("write");
    std::fs::rename(&temp, dir.join("rules.cedar")).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_a_rule_is_rejected_unless_asked_for() {
    let (mut s, temp) = admitted_with_own_policies(false).await;
    let policies = temp.path().join("policies");
    let shipped = std::fs::read_to_string(policies.join("rules.cedar")).expect("rules");
    let start = shipped.find("@id(\"R1\")").expect("R1");
    let end = start + shipped[start..].find(CGS_ONLY_R1).expect("R1 end") + CGS_ONLY_R1.len();
    let without_r1 = format!("{}{}", &shipped[..start], &shipped[end..]);
    write_rules(&policies, &without_r1);

    let rejected = reload(&mut s, false).await;
    assert_eq!(
        rejected.result,
        ReloadResult::Rejected as i32,
        "{rejected:?}"
    );
    assert_eq!(rejected.problems.len(), 1, "{rejected:?}");
    assert!(
        rejected.problems[0]
            .message
            .starts_with("the new set drops R1 that the active set enforces"),
        "{rejected:?}"
    );
    assert_refused(&s.authorize(ggs_start()).await, &["R1"]);

    let accepted = reload(&mut s, true).await;
    assert_eq!(
        accepted.result,
        ReloadResult::Reloaded as i32,
        "{accepted:?}"
    );
    assert_allowed(&s.authorize(ggs_start()).await);

    // Only the permit: never a valid set, flag or not.
    write_rules(
        &policies,
        "@id(\"ALLOW\")\npermit (principal, action == AnchorPdp::Action::\"Broadcast\", resource);\n",
    );
    for allow in [false, true] {
        let rejected = reload(&mut s, allow).await;
        assert_eq!(
            rejected.result,
            ReloadResult::Rejected as i32,
            "{rejected:?}"
        );
        assert!(
            rejected
                .problems
                .iter()
                .any(|p| p.message.contains("no forbid policy")),
            "{rejected:?}"
        );
    }
    assert_eq!(status(&mut s).await.active_version, accepted.active_version);
}
