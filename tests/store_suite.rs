//! One store test suite, run against each backend: the embedded sled store and a replica over
//! a real etcd (one member). Each test drives the real server through the generated client and
//! asserts the exact outcome; the same body runs twice, once per backend.

mod common;

use std::time::Duration;

use anchor_pdp::proto::{self, register_request::Record};
use common::etcd::EtcdCluster;
use common::{Options, TestServer, assert_allowed, code, decision, live, millis, rule_ids, start};

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sled,
    Etcd,
}

/// An admitted server on `backend`, and the etcd it runs on (kept alive with it).
async fn admitted(backend: Backend) -> (TestServer, Option<EtcdCluster>) {
    match backend {
        Backend::Sled => (TestServer::admitted().await, None),
        Backend::Etcd => {
            let cluster = EtcdCluster::start(1).await;
            let server = TestServer::admitted_with(Options {
                etcd: cluster.endpoints(),
                etcd_prefix: Some(format!("/suite-{}/", uuid::Uuid::now_v7())),
                replica_id: Some("suite".into()),
                ..Options::default()
            })
            .await;
            (server, Some(cluster))
        }
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sled).await;
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Etcd).await;
                }
            )*
        }
    };
}

suite!(
    registrations_keep_revisions_and_refuse_conflicts,
    sessions_open_replay_supersede_and_end,
    racing_reports_on_one_session_penalize_it_once,
    a_freeze_refuses_starts_until_lifted,
    enforcement_events_come_in_order_and_resume,
    a_retried_write_gets_the_first_answer_and_changes_nothing_more,
);

fn room(id: &str) -> Record {
    Record::Room(proto::LivestreamRoom {
        id: id.into(),
        owner_merchant_id: "m1".into(),
        display_name: format!("Room {id}"),
    })
}

async fn registrations_keep_revisions_and_refuse_conflicts(backend: Backend) {
    let (mut s, _etcd) = admitted(backend).await;
    let first = s.register(room("r9")).await;
    assert_eq!(first.revision, 1);
    let again = s
        .pdp
        .register(proto::RegisterRequest {
            request_id: String::new(),
            record: Some(room("r9")),
            expected_revision: None,
        })
        .await
        .expect("same record")
        .into_inner();
    assert!(!again.changed, "an identical record changes nothing");
    assert_eq!(again.registration.map(|r| r.revision), Some(1));
    let (conflict, _) = code(
        s.pdp
            .register(proto::RegisterRequest {
                request_id: String::new(),
                record: Some(Record::Room(proto::LivestreamRoom {
                    id: "r9".into(),
                    owner_merchant_id: "m1".into(),
                    display_name: "renamed".into(),
                })),
                expected_revision: Some(7),
            })
            .await,
    );
    assert_eq!(conflict, tonic::Code::Aborted);
    let (unknown, message) = code(
        s.pdp
            .register(proto::RegisterRequest {
                request_id: String::new(),
                record: Some(Record::Room(proto::LivestreamRoom {
                    id: "r10".into(),
                    owner_merchant_id: "nobody".into(),
                    display_name: String::new(),
                })),
                expected_revision: None,
            })
            .await,
    );
    assert_eq!(unknown, tonic::Code::FailedPrecondition, "{message}");
    let listed = s
        .admin
        .list_registrations(proto::ListRegistrationsRequest {
            kind: proto::RegistrationKind::Room as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .registrations;
    let ids: Vec<String> = listed
        .iter()
        .filter_map(|r| r.record.as_ref())
        .map(|r| match r {
            proto::registration::Record::Room(room) => room.id.clone(),
            other => panic!("not a room: {other:?}"),
        })
        .collect();
    assert_eq!(ids, ["r1", "r9"]);
}

async fn sessions_open_replay_supersede_and_end(backend: Backend) {
    let (mut s, _etcd) = admitted(backend).await;
    let mut first = start();
    first.idempotency_key = "k1".into();
    let opened = s.authorize(first.clone()).await;
    assert_allowed(&opened);
    let replayed = s.authorize(first).await;
    assert!(replayed.replayed);
    assert_eq!(replayed.session_id, opened.session_id);
    assert_allowed(&s.authorize(live(&opened.session_id)).await);

    let second = s.authorize(start()).await;
    assert_allowed(&second);
    assert_eq!(second.superseded_session_id, opened.session_id);
    let old = s.authorize(live(&opened.session_id)).await;
    assert_eq!(decision(&old), proto::Decision::Deny);

    s.pdp
        .end_session(proto::EndSessionRequest {
            request_id: String::new(),
            session_id: second.session_id.clone(),
            reason: "publisher disconnected".into(),
        })
        .await
        .expect("end");
    let ended = s.session(&second.session_id).await;
    assert_eq!(ended.state, proto::SessionState::Ended as i32);
    let live_now = s
        .admin
        .list_live_sessions(proto::ListLiveSessionsRequest {
            merchant_id: "m1".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions;
    assert!(live_now.is_empty(), "{live_now:?}");
}

async fn racing_reports_on_one_session_penalize_it_once(backend: Backend) {
    let (mut s, _etcd) = admitted(backend).await;
    let session = s.start_session().await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut admin = s.admin.clone();
        let session = session.clone();
        calls.push(tokio::spawn(async move {
            admin
                .report_violation(proto::ReportViolationRequest {
                    request_id: String::new(),
                    session_id: session,
                    rule_id: "R7".into(),
                    inspector: "inspector-7".into(),
                    note: String::new(),
                })
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut penalties = Vec::new();
    for call in calls {
        let response = call.await.expect("task").expect("report");
        if response.penalty_applied != proto::Penalty::Unspecified as i32 {
            penalties.push(response.penalty_applied);
        }
    }
    assert_eq!(penalties, [proto::Penalty::E2WarnShutDownAndFreeze as i32]);
    assert_eq!(s.account("m1").await.warnings, 1);
}

async fn a_freeze_refuses_starts_until_lifted(backend: Backend) {
    let (mut s, _etcd) = admitted(backend).await;
    let session = s.start_session().await;
    let reported = s.report(&session, "R2").await;
    assert_eq!(
        reported.penalty_applied,
        proto::Penalty::E1ShutDownAndFreeze as i32
    );
    let frozen = s.authorize(start()).await;
    assert_eq!(rule_ids(&frozen), ["E3"]);
    let until = millis(&frozen.frozen_until).expect("frozen until");
    assert_eq!(
        until - millis(&frozen.decided_at).expect("decided at"),
        7 * 24 * 3600 * 1000
    );
    let lifted = s
        .admin
        .lift_freeze(proto::LiftFreezeRequest {
            request_id: String::new(),
            merchant_id: "m1".into(),
            operator: "admin-1".into(),
            reason: "appeal upheld".into(),
        })
        .await
        .expect("lift")
        .into_inner();
    assert!(lifted.was_frozen);
    assert_allowed(&s.authorize(start()).await);
}

async fn enforcement_events_come_in_order_and_resume(backend: Backend) {
    let (mut s, _etcd) = admitted(backend).await;
    let first = s.start_session_in("r1").await;
    s.report(&first, "R3").await;
    // Lifted so that a second broadcast may start (R3's E1 froze the account).
    s.admin
        .lift_freeze(proto::LiftFreezeRequest {
            request_id: String::new(),
            merchant_id: "m1".into(),
            operator: "admin-1".into(),
            reason: "test".into(),
        })
        .await
        .expect("lift");
    let second = s.start_session_in("r1").await;
    s.report(&second, "R3").await;
    let read = |after| {
        let mut pdp = s.pdp.clone();
        async move {
            let mut stream = pdp
                .watch_enforcements(proto::WatchEnforcementsRequest {
                    after_sequence: after,
                    gateway_id: String::new(),
                })
                .await
                .expect("watch")
                .into_inner();
            tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("in time")
                .expect("stream")
                .expect("event")
        }
    };
    let one = read(0).await;
    assert_eq!((one.sequence, one.session_id.as_str()), (1, first.as_str()));
    let two = read(1).await;
    assert_eq!(
        (two.sequence, two.session_id.as_str()),
        (2, second.as_str())
    );
}

/// A write retried with its request id (its answer lost, say) is answered as the first
/// attempt was, and neither changes anything nor penalizes anyone again; another id is
/// another write.
async fn a_retried_write_gets_the_first_answer_and_changes_nothing_more(backend: Backend) {
    let (mut s, _etcd) = admitted(backend).await;
    let register = |name: &str, request_id: &str| proto::RegisterRequest {
        record: Some(Record::Merchant(proto::Merchant {
            id: "m-retry".into(),
            tier: proto::MerchantTier::ChineseGoldSupplier as i32,
            display_name: name.into(),
        })),
        expected_revision: None,
        request_id: request_id.into(),
    };
    let first = s
        .pdp
        .register(register("first", "reg-1"))
        .await
        .expect("register");
    let first = first.into_inner().registration.expect("registration");
    assert_eq!(first.revision, 1);
    // The same id with another body: the first answer, and the stored record is untouched.
    let retried = s
        .pdp
        .register(register("second", "reg-1"))
        .await
        .expect("retry");
    assert_eq!(
        retried.into_inner().registration.expect("registration"),
        first
    );
    let stored = s
        .admin
        .get_registration(proto::GetRegistrationRequest {
            kind: proto::RegistrationKind::Merchant as i32,
            id: "m-retry".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .registration
        .expect("registration");
    assert_eq!(stored, first, "the retry changed the stored record");
    let other = s
        .pdp
        .register(register("second", "reg-2"))
        .await
        .expect("new id");
    assert_eq!(
        other
            .into_inner()
            .registration
            .expect("registration")
            .revision,
        2
    );

    let session = s.start_session().await;
    let report = || proto::ReportViolationRequest {
        session_id: session.clone(),
        rule_id: "R6".into(),
        inspector: "inspector-7".into(),
        note: String::new(),
        request_id: "report-1".into(),
    };
    let first = s.admin.report_violation(report()).await.expect("report");
    let first = first.into_inner();
    let retried = s.admin.report_violation(report()).await.expect("retry");
    let retried = retried.into_inner();
    assert_eq!(
        (
            retried.penalty_applied,
            retried.warning_issued,
            &retried.session
        ),
        (first.penalty_applied, first.warning_issued, &first.session)
    );
    assert_eq!(
        first.penalty_applied,
        proto::Penalty::E2WarnShutDownAndFreeze as i32
    );
    let account = s.account("m1").await;
    assert_eq!((account.penalties, account.warnings), (1, 1));

    let lift = || proto::LiftFreezeRequest {
        merchant_id: "m1".into(),
        operator: "appeals-1".into(),
        reason: "upheld".into(),
        request_id: "lift-1".into(),
    };
    let first = s
        .admin
        .lift_freeze(lift())
        .await
        .expect("lift")
        .into_inner();
    let retried = s
        .admin
        .lift_freeze(lift())
        .await
        .expect("retry")
        .into_inner();
    assert!(
        first.was_frozen && retried.was_frozen,
        "{first:?} {retried:?}"
    );
    let bad = s
        .admin
        .lift_freeze(proto::LiftFreezeRequest {
            request_id: "no spaces".into(),
            ..lift()
        })
        .await;
    assert_eq!(code(bad).0, tonic::Code::InvalidArgument);
}
