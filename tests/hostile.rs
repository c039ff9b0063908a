//! Hostile input, by property: request validation and the gateway hook parsers never panic,
//! and garbage is never allowed.

use std::sync::Arc;
use std::time::Duration;

use anchor_pdp::api::authorize_command;
use anchor_pdp::clock::ManualClock;
use anchor_pdp::decision_log::{DecisionLog, Overflow};
use anchor_pdp::domain::{self, RecordBody, ReviewStatus};
use anchor_pdp::gateway::{nginx, srs};
use anchor_pdp::policy::PolicyHandle;
use anchor_pdp::proto;
use anchor_pdp::service::{Origin, Pdp};
use anchor_pdp::store::Store;
use proptest::prelude::*;

fn any_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("m1".to_owned()),
        Just("r1".to_owned()),
        Just("a1".to_owned()),
        Just("d1".to_owned()),
        Just(String::new()),
        "[a-z0-9]{1,4}",
        ".{0,150}",
    ]
}

fn any_request() -> impl Strategy<Value = proto::AuthorizeRequest> {
    (
        -2i32..5,
        any_id(),
        any_id(),
        any_id(),
        any_id(),
        -2i32..7,
        -2i32..7,
        proptest::collection::vec(any_id(), 0..40),
        any_id(),
        ".{0,200}",
        proptest::option::of((any::<bool>(), -2i32..4, any::<bool>(), any_id())),
    )
        .prop_map(
            |(
                phase,
                merchant,
                room,
                anchor,
                driver,
                livestream_type,
                drive_mode,
                ai_features,
                session,
                gateway,
                labels,
            )| {
                proto::AuthorizeRequest {
                    phase,
                    merchant_id: merchant,
                    room_id: room,
                    anchor_id: anchor,
                    driver_id: driver,
                    livestream_type,
                    drive_mode,
                    ai_features,
                    session_id: session,
                    gateway_id: gateway,
                    explain: false,
                    idempotency_key: String::new(),
                    min_revision: 0,
                    labels: labels.map(|(shown, kind, implicit, provider)| proto::LabelReport {
                        label_shown: shown,
                        label_kind: kind,
                        implicit_label: implicit,
                        implicit_label_provider: provider,
                    }),
                }
            },
        )
}

/// A PDP whose only admissible broadcast is m1/r1/a1/d1, real-person, allowed type, no AI.
fn admitted_pdp(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> Pdp {
    let store = Store::open(&dir.join("data")).expect("store");
    let now = 1_767_225_600_000;
    let mut records = Vec::new();
    let approved = |id: &str, body: RecordBody| {
        let mut r = domain::apply_register(None, id, body, None, now)
            .expect("register")
            .registration;
        if r.kind().needs_review() {
            r.review_status = ReviewStatus::Approved;
        }
        r
    };
    records.push(approved(
        "m1",
        RecordBody::Merchant {
            tier: domain::Tier::ChineseGoldSupplier,
            display_name: String::new(),
        },
    ));
    let mut provider = approved(
        "p1",
        RecordBody::Provider {
            display_name: String::new(),
        },
    );
    provider.provider_listing = Some(domain::ProviderListing {
        listed: true,
        changed_at: None,
        changed_by: String::new(),
    });
    records.push(provider);
    records.push(approved(
        "a1",
        RecordBody::Anchor {
            owner_merchant_id: "m1".into(),
            provider_id: "p1".into(),
            image_style: domain::ImageStyle::RealisticHuman,
            image_reference: "x".into(),
            display_name: String::new(),
            likeness_of: String::new(),
            consent_id: String::new(),
        },
    ));
    records.push(approved(
        "d1",
        RecordBody::Driver {
            owner_merchant_id: "m1".into(),
            identity_reference: "x".into(),
            display_name: String::new(),
        },
    ));
    records.push(approved(
        "r1",
        RecordBody::Room {
            owner_merchant_id: "m1".into(),
            display_name: String::new(),
        },
    ));
    runtime
        .block_on(store.import(&records, &[]))
        .expect("import");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let handle = PolicyHandle::load(&policies, now).expect("policies");
    let store = Arc::new(store);
    let log = {
        let _inside = runtime.enter();
        DecisionLog::start(store.clone(), 64, Overflow::Wait)
    };
    Pdp::new(
        store,
        Arc::new(handle),
        Arc::new(ManualClock::new(now)),
        Duration::from_secs(30),
        log,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn validation_never_panics_and_accepts_only_clean_ids(request in any_request()) {
        if let Ok(command) = authorize_command(&request) {
            let ids = [&command.merchant_id, &command.room_id, &command.anchor_id, &command.driver_id, &command.session_id];
            for id in ids.into_iter().flatten().chain(command.ai_features.iter()) {
                prop_assert!(!id.is_empty() && id.len() <= 128);
                prop_assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c)));
            }
            if let Some(labels) = &command.labels {
                let provider = &labels.implicit_label_provider;
                prop_assert!(provider.is_empty() || labels.implicit_label);
                prop_assert!(provider.len() <= 128);
            }
        }
    }

    #[test]
    fn nginx_hook_parsing_never_panics(form in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(request) = nginx::HookRequest::parse(&form) {
            let _ = request.stream("publish");
        }
    }

    #[test]
    fn appended_arguments_never_change_an_nginx_stream_identity(
        appended in proptest::collection::vec(("[a-z_]{1,10}", "[ -~]{0,12}"), 0..8),
    ) {
        let mut form = "app=live&flashver=FMLE&swfurl=&tcurl=rtmp://x/live&pageurl=&addr=127.0.0.1&clientid=7&call=publish&name=r1&type=live".to_owned();
        for (key, value) in &appended {
            form.push('&');
            form.push_str(&form_urlencoded::Serializer::new(String::new()).append_pair(key, value).finish());
        }
        if let Ok(request) = nginx::HookRequest::parse(form.as_bytes()) {
            let stream = request.stream("publish").expect("nginx's own fields are intact");
            prop_assert_eq!(stream.name, "r1");
            prop_assert_eq!(stream.client_id, "7");
            prop_assert_eq!(request.field("addr").ok(), Some("127.0.0.1"));
        }
    }

    #[test]
    fn srs_hook_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600), param in ".{0,200}") {
        if let Ok(request) = srs::HookRequest::parse(&body) {
            let _ = request.stream("on_publish");
            let _ = request.claims();
        }
        let json = serde_json::json!({"action": "on_publish", "client_id": 1, "app": "live", "stream": "r1", "param": param});
        if let Ok(request) = srs::HookRequest::parse(json.to_string().as_bytes()) {
            let _ = request.claims();
        }
    }
}

#[test]
fn garbage_is_never_allowed() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let temp = tempfile::tempdir().expect("temp");
    let pdp = admitted_pdp(&runtime, temp.path());
    let allowed_types = [1, 2, 3];
    proptest!(ProptestConfig { cases: 400, ..ProptestConfig::default() }, |(request in any_request())| {
        let Ok(command) = authorize_command(&request) else { return Ok(()) };
        let origin = Origin {
            request_id: None,
            entry_point: "test",
            gateway_id: String::new(),
            caller: "proptest".into(),
            request: serde_json::Value::Null,
        };
        let Ok(outcome) = runtime.block_on(pdp.authorize(&origin, command)) else { return Ok(()) };
        if outcome.decision.allowed {
            prop_assert_eq!(request.phase, proto::Phase::Start as i32);
            prop_assert_eq!(
                (request.merchant_id.as_str(), request.room_id.as_str(), request.anchor_id.as_str(), request.driver_id.as_str()),
                ("m1", "r1", "a1", "d1")
            );
            prop_assert!(allowed_types.contains(&request.livestream_type));
            prop_assert_eq!(request.drive_mode, proto::DriveMode::RealPerson as i32);
            prop_assert!(request.ai_features.is_empty());
        } else {
            prop_assert!(!outcome.decision.violations.is_empty());
        }
    });
}
