//! End to end with the real nginx-rtmp and ffmpeg: a synthetic stream published through an
//! unmodified nginx whose hooks ask a real anchor-pdp. (How fast a cut lands is measured by
//! `cargo bench --bench gateway_cut`; here only that it lands within the bound the gateway
//! promises.)

mod common;

use std::time::Duration;

use anchor_pdp::proto;
use common::programs::Nginx;
use common::*;

const ADMITTED: &str =
    "r1?anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON";

async fn pdp_for_nginx(nginx_control: Vec<String>) -> TestServer {
    TestServer::admitted_with(Options {
        http: true,
        nginx_control,
        hook_secrets: vec![programs::hook_secret_spec("edge-1")],
        ..Options::default()
    })
    .await
}

async fn live_sessions(s: &mut TestServer) -> Vec<proto::Session> {
    s.admin
        .list_live_sessions(proto::ListLiveSessionsRequest {
            merchant_id: "m1".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .sessions
}

/// Waits for the stream's session to be admitted and returns it.
async fn admitted_session(s: &mut TestServer, ffmpeg: &mut programs::Guard) -> proto::Session {
    for _ in 0..250 {
        if let Some(session) = live_sessions(s).await.into_iter().next() {
            return session;
        }
        assert!(
            ffmpeg.exited().is_none(),
            "ffmpeg stopped:\n{}",
            ffmpeg.log()
        );
        sleep(20).await;
    }
    panic!("the stream was never admitted")
}

async fn sleep(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

use common::programs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_anchor_streams_and_a_broken_rule_is_refused_at_publish() {
    let mut s = pdp_for_nginx(vec![]).await;
    let nginx = Nginx::start(s.http_addr.expect("hooks"), "edge-1", 1);
    let mut admitted = nginx.publish(ADMITTED);
    let session = admitted_session(&mut s, &mut admitted).await;
    assert_eq!(session.gateway_id, "edge-1");
    assert_eq!(session.stream.as_ref().map(|r| r.name.as_str()), Some("r1"));
    // Three update intervals, each re-check allowed: still streaming.
    sleep(3_500).await;
    assert!(
        admitted.exited().is_none(),
        "admitted stream stopped:\n{}",
        admitted.log()
    );

    let mut refused = nginx
        .publish("r1?anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=AUTONOMOUS");
    assert!(
        refused.wait_exit(Duration::from_secs(10)).is_some(),
        "the R3 stream was not refused"
    );
    assert!(!refused.exited().is_some_and(|s| s.success()));
    assert!(
        admitted.exited().is_none(),
        "the admitted stream was disturbed"
    );
    assert_eq!(live_sessions(&mut s).await.len(), 1);

    // The publisher stops: nginx's publish_done ends the session.
    drop(admitted);
    for _ in 0..250 {
        if live_sessions(&mut s).await.is_empty() {
            break;
        }
        sleep(20).await;
    }
    let ended = s.session(&session.id).await;
    assert_eq!(ended.state, proto::SessionState::Ended as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_reported_mid_stream_cuts_it_at_the_next_update() {
    let mut s = pdp_for_nginx(vec![]).await;
    let interval = 2;
    let nginx = Nginx::start(s.http_addr.expect("hooks"), "edge-1", interval);
    let mut ffmpeg = nginx.publish(ADMITTED);
    let session = admitted_session(&mut s, &mut ffmpeg).await;
    sleep(500).await;
    s.report(&session.id, "R2").await;
    // nginx's next on_update is answered 403 and it drops the publisher.
    let cut = ffmpeg.wait_exit(Duration::from_secs(u64::from(interval) + 3));
    assert!(
        cut.is_some(),
        "not cut within one update interval:\n{}",
        ffmpeg.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_drop_cuts_the_stream_without_waiting_for_an_update() {
    // A long update interval, so only the control endpoint can cut it in time.
    let control_port = programs::free_port();
    let mut s = pdp_for_nginx(vec![format!(
        "edge-1=http://127.0.0.1:{control_port}/control"
    )])
    .await;
    let nginx = Nginx::start_with_control(s.http_addr.expect("hooks"), "edge-1", 60, control_port);
    let mut ffmpeg = nginx.publish(ADMITTED);
    let session = admitted_session(&mut s, &mut ffmpeg).await;
    sleep(500).await;
    s.report(&session.id, "R6").await;
    let cut = ffmpeg.wait_exit(Duration::from_secs(5));
    assert!(
        cut.is_some(),
        "not cut by the control drop:\n{}",
        ffmpeg.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pdp_down_running_streams_are_cut_and_new_ones_refused() {
    let mut s = pdp_for_nginx(vec![]).await;
    let nginx = Nginx::start(s.http_addr.expect("hooks"), "edge-1", 1);
    let mut running = nginx.publish(ADMITTED);
    admitted_session(&mut s, &mut running).await;
    let temp = s.stop().await;
    assert!(
        running.wait_exit(Duration::from_secs(5)).is_some(),
        "the running stream outlived the PDP"
    );
    let mut refused = nginx.publish(ADMITTED);
    assert!(
        refused.wait_exit(Duration::from_secs(10)).is_some(),
        "a new stream was admitted with the PDP down"
    );
    assert!(!refused.exited().is_some_and(|s| s.success()));
    drop(temp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_publisher_arguments_cannot_change_identity() {
    let mut s = pdp_for_nginx(vec![]).await;
    let nginx = Nginx::start(s.http_addr.expect("hooks"), "edge-1", 1);
    // An unfiled stream key claiming to be room r1 from another address.
    let mut forged = nginx.publish(
        "r-unfiled?anchor=a1&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON&name=r1&addr=6.6.6.6&clientid=1",
    );
    assert!(
        forged.wait_exit(Duration::from_secs(10)).is_some(),
        "forged identity admitted"
    );
    // A claim the PDP does not know (a merchant id) is refused outright.
    let mut extra = nginx.publish(&format!("{ADMITTED}&merchant=m2"));
    assert!(
        extra.wait_exit(Duration::from_secs(10)).is_some(),
        "unknown argument admitted"
    );
    assert!(live_sessions(&mut s).await.is_empty());
}

/// The publish-URL arguments reporting a label burned into the video and an implicit label.
const LABELLED: &str =
    "&label_shown=1&label_kind=OVERLAY&implicit_label=1&implicit_label_provider=p1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_label_pack_an_unlabelled_stream_is_refused_and_one_that_drops_its_label_is_cut() {
    let policies = common::labels_enabled();
    let control_port = programs::free_port();
    let mut s = TestServer::admitted_with(Options {
        http: true,
        nginx_control: vec![format!("edge-1=http://127.0.0.1:{control_port}/control")],
        hook_secrets: vec![programs::hook_secret_spec("edge-1")],
        policies: Some(policies.path().to_owned()),
        ..Options::default()
    })
    .await;
    // A cloned likeness with no consent filed.
    let mut clone = anchor_record("a-clone", "m1", "p1", proto::ImageStyle::RealisticHuman);
    clone.likeness_of = "person-1".into();
    s.register(proto::register_request::Record::Anchor(clone))
        .await;
    s.approve(proto::RegistrationKind::Anchor, "a-clone").await;
    let nginx = Nginx::start_with_control(s.http_addr.expect("hooks"), "edge-1", 1, control_port);

    let mut unlabelled = nginx.publish(ADMITTED);
    assert!(
        unlabelled.wait_exit(Duration::from_secs(10)).is_some(),
        "a stream reporting no label was admitted"
    );
    assert!(!unlabelled.exited().is_some_and(|s| s.success()));
    let mut unconsented = nginx.publish(&format!(
        "r1?anchor=a-clone&driver=d1&livestream_type=DAILY_MARKETING&drive_mode=REAL_PERSON{LABELLED}"
    ));
    assert!(
        unconsented.wait_exit(Duration::from_secs(10)).is_some(),
        "a cloned likeness without consent was admitted"
    );
    let refusals = s
        .log(proto::ReadDecisionLogRequest {
            merchant_id: "m1".into(),
            ..Default::default()
        })
        .await;
    let refused: Vec<Vec<String>> = refusals
        .iter()
        .filter(|r| r.action == "authorize" && r.entry_point == "nginx-rtmp")
        .map(|r| r.rule_ids.clone())
        .collect();
    assert_eq!(refused, [vec!["L1", "L2"], vec!["C1"]]);

    let mut labelled = nginx.publish(&format!("{ADMITTED}{LABELLED}"));
    let session = admitted_session(&mut s, &mut labelled).await;
    let reported = session.labels.clone().expect("labels recorded");
    assert!(reported.label_shown && reported.implicit_label);
    // Update intervals pass, each re-check deciding on the publisher's report: still live.
    sleep(2_500).await;
    assert!(labelled.exited().is_none(), "cut:\n{}", labelled.log());

    // The label monitor sees the overlay gone and reports it: shut down, cut at once.
    let mut check = live(&session.id);
    check.gateway_id = "label-monitor".into();
    check.labels = Some(proto::LabelReport {
        label_shown: false,
        ..reported
    });
    let shut = s.authorize(check).await;
    assert_eq!(rule_ids(&shut), ["L1"]);
    assert_eq!(enforcement(&shut), proto::Enforcement::ShutDown);
    assert!(
        labelled.wait_exit(Duration::from_secs(5)).is_some(),
        "the stream that dropped its label was not cut:\n{}",
        labelled.log()
    );
}
