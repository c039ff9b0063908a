//! A Jepsen-style run against real processes: anchor-pdp replicas over a real 3-member etcd (or
//! one server on the embedded sled store), concurrent clients doing START / LIVE / report /
//! lift / revoke / approve / register / end on overlapping merchants, and a nemesis that pauses
//! (SIGSTOP) and kills (kill -9) etcd members, the etcd leader and the replicas, and wipes a
//! member's disk (it rejoins empty). Every
//! operation goes in a history; after each round, with every fault healed, a checker reads the
//! final state and the enforcement streams of every replica and checks the history against
//! the invariants the PDP promises (see `Violations`). `tests/jepsen.rs` runs a few rounds;
//! `cargo bench --bench jepsen -- --rounds N` runs many.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchor_pdp::proto::{self, register_request::Record};
use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use tonic::transport::Channel;

use super::etcd::EtcdCluster;
use super::programs::free_port;
use super::replica::{Replica, StoreArgs, spawn_on};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Replicas over a 3-member etcd, or one server on sled.
    pub etcd: bool,
    pub replicas: usize,
    pub rounds: usize,
    /// How long clients run in each round (a fault lands in its middle).
    pub round: Duration,
    pub clients: usize,
    pub merchants: usize,
    pub seed: u64,
    /// Each decision pauses up to this long before its commit (the server's
    /// `ANCHOR_PDP_FAULT_COMMIT_DELAY_MS`), widening the window a racing write can land in.
    pub commit_delay_ms: u64,
    /// Print a line after each round (the long run).
    pub progress: bool,
}

impl Options {
    pub fn etcd(rounds: usize) -> Options {
        Options {
            etcd: true,
            replicas: 2,
            rounds,
            round: Duration::from_secs(3),
            clients: 6,
            merchants: 3,
            seed: 7,
            commit_delay_ms: 5,
            progress: false,
        }
    }

    pub fn sled(rounds: usize) -> Options {
        Options {
            etcd: false,
            replicas: 1,
            ..Options::etcd(rounds)
        }
    }
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub rounds: usize,
    /// Operations by kind: (acknowledged, failed after every retry).
    pub operations: BTreeMap<&'static str, (usize, usize)>,
    pub faults: BTreeMap<&'static str, usize>,
    /// Each broken promise, with what shows it.
    pub violations: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn print(&self, label: &str) {
        let ops: usize = self
            .operations
            .values()
            .map(|(ok, failed)| ok + failed)
            .sum();
        println!(
            "jepsen {label}: {} rounds, {ops} operations, {} faults, {} violations, {:.1} s",
            self.rounds,
            self.faults.values().sum::<usize>(),
            self.violations.len(),
            self.elapsed.as_secs_f64()
        );
        for (kind, (ok, failed)) in &self.operations {
            println!("  {kind:<9} {ok:>6} acknowledged {failed:>4} failed");
        }
        for (fault, n) in &self.faults {
            println!("  fault {fault:<16} {n:>4}");
        }
        for violation in self.violations.iter().take(60) {
            println!("  VIOLATION {violation}");
        }
    }
}

/// A tiny deterministic generator (xorshift64*): runs repeat for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Slot {
    commit_delay_ms: String,
    name: String,
    store: StoreArgs,
    data: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
    process: Option<Replica>,
}

impl Slot {
    fn start(&mut self) {
        self.process = Some(spawn_on(
            &self.store,
            &self.name,
            &self.data,
            self.grpc,
            self.http,
            &[
                ("ANCHOR_PDP_FAULT_COMMIT_DELAY_MS", &self.commit_delay_ms),
                // A long run writes ~2,000 records a round; an hour of them in etcd slows a
                // restarted replica's snapshot load. Faults hold a replica down for seconds,
                // so a minute still covers them.
                ("ANCHOR_PDP_ETCD_LOG_RETENTION_MINS", "1"),
            ],
        ));
    }

    fn signal(&self, signal: &str) {
        if let Some(process) = &self.process {
            let _ = std::process::Command::new("kill")
                .args([signal, &process.guard.child.id().to_string()])
                .status();
        }
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.guard.child.kill();
            let _ = process.guard.child.wait();
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Allow(String),
    Deny(Vec<String>),
    Done,
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Start,
    Live,
    Freeze,
    Lift,
    Revoke,
    Approve,
    Register,
    End,
    /// STARTs racing a freeze of the same merchant.
    Burst,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::Live => "live",
            Kind::Freeze => "freeze",
            Kind::Lift => "lift",
            Kind::Revoke => "revoke",
            Kind::Approve => "approve",
            Kind::Register => "register",
            Kind::End => "end",
            Kind::Burst => "burst",
        }
    }
}

#[derive(Clone, Debug)]
struct Op {
    client: usize,
    kind: Kind,
    merchant: usize,
    /// The replica the acknowledged attempt went to.
    replica: usize,
    invoked: Instant,
    completed: Instant,
    outcome: Outcome,
    store_revision: u64,
    /// A registered id, an idempotency key, a session.
    detail: String,
}

type History = Arc<Mutex<Vec<Op>>>;

fn merchant(m: usize) -> String {
    format!("jm{m}")
}
fn anchor(m: usize) -> String {
    format!("ja{m}")
}
fn driver(m: usize) -> String {
    format!("jd{m}")
}
fn room(m: usize, r: usize) -> String {
    format!("jr{m}-{r}")
}
const ROOMS: usize = 4;

async fn connect(
    addr: SocketAddr,
) -> Option<(
    PolicyDecisionPointClient<Channel>,
    PolicyAdminClient<Channel>,
)> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .timeout(Duration::from_secs(8))
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    Some((
        PolicyDecisionPointClient::new(channel.clone()),
        PolicyAdminClient::new(channel),
    ))
}

fn start_request(m: usize, r: usize, key: &str) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        phase: proto::Phase::Start as i32,
        merchant_id: merchant(m),
        room_id: room(m, r),
        anchor_id: anchor(m),
        driver_id: driver(m),
        livestream_type: proto::LivestreamType::DailyMarketing as i32,
        drive_mode: proto::DriveMode::RealPerson as i32,
        gateway_id: "edge-1".into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn verdict(m: usize, verdict: proto::Verdict, request_id: &str) -> proto::ReviewFilingRequest {
    proto::ReviewFilingRequest {
        kind: proto::RegistrationKind::Anchor as i32,
        id: anchor(m),
        verdict: verdict as i32,
        reviewer: "jepsen".into(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// Puts merchant `m`'s anchor back in force after a revoke: a revoked filing goes back to
/// review with a changed image, and is approved again. Each step carries its own request id.
async fn reapprove(conn: &mut Conn, m: usize, request_id: &str) -> Result<u64, tonic::Status> {
    let (pdp, admin) = conn;
    let current = admin
        .get_registration(proto::GetRegistrationRequest {
            kind: proto::RegistrationKind::Anchor as i32,
            id: anchor(m),
        })
        .await?
        .into_inner()
        .registration
        .map_or(0, |r| r.review_status);
    if current == proto::ReviewStatus::Approved as i32 {
        return Ok(0);
    }
    if current != proto::ReviewStatus::PendingReview as i32 {
        let mut record = super::anchor_record(
            &anchor(m),
            &merchant(m),
            "jp",
            proto::ImageStyle::RealisticHuman,
        );
        record.image_reference = format!("oss://anchors/{}-{request_id}.png", anchor(m));
        pdp.register(proto::RegisterRequest {
            record: Some(Record::Anchor(record)),
            expected_revision: None,
            request_id: format!("{request_id}-file"),
        })
        .await?;
    }
    let approved = admin
        .review_filing(verdict(
            m,
            proto::Verdict::Approve,
            &format!("{request_id}-approve"),
        ))
        .await?;
    Ok(approved.into_inner().store_revision)
}

/// The run's processes and what it learned.
struct World {
    options: Options,
    etcd: Option<EtcdCluster>,
    slots: Vec<Slot>,
    _dir: tempfile::TempDir,
    report: Report,
}

impl World {
    async fn new(options: Options) -> World {
        let dir = tempfile::tempdir().expect("dir");
        let etcd = if options.etcd {
            Some(EtcdCluster::start(3).await)
        } else {
            None
        };
        let store = match &etcd {
            Some(cluster) => StoreArgs::Etcd {
                endpoints: cluster.endpoints(),
                prefix: format!("/jepsen-{}/", uuid::Uuid::now_v7()),
            },
            None => StoreArgs::Sled,
        };
        let mut slots: Vec<Slot> = (0..options.replicas)
            .map(|i| Slot {
                commit_delay_ms: options.commit_delay_ms.to_string(),
                name: format!("R{i}"),
                store: store.clone(),
                data: dir.path().join(format!("r{i}")),
                grpc: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
                http: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
                process: None,
            })
            .collect();
        for slot in &mut slots {
            slot.start();
        }
        let world = World {
            options,
            etcd,
            slots,
            _dir: dir,
            report: Report::default(),
        };
        world.fixtures().await;
        world
    }

    async fn fixtures(&self) {
        let (mut pdp, mut admin) = connect(self.slots[0].grpc).await.expect("connect");
        let register = |record| proto::RegisterRequest {
            record: Some(record),
            ..Default::default()
        };
        pdp.register(register(Record::Provider(proto::ServiceProvider {
            id: "jp".into(),
            display_name: "jp".into(),
        })))
        .await
        .expect("provider");
        admin
            .set_provider_listing(proto::SetProviderListingRequest {
                provider_id: "jp".into(),
                listed: true,
                operator: "jepsen".into(),
                ..Default::default()
            })
            .await
            .expect("listing");
        for m in 0..self.options.merchants {
            let mut records = vec![
                Record::Merchant(proto::Merchant {
                    id: merchant(m),
                    tier: proto::MerchantTier::ChineseGoldSupplier as i32,
                    display_name: merchant(m),
                }),
                Record::Anchor(super::anchor_record(
                    &anchor(m),
                    &merchant(m),
                    "jp",
                    proto::ImageStyle::RealisticHuman,
                )),
                Record::Driver(proto::Driver {
                    id: driver(m),
                    owner_merchant_id: merchant(m),
                    identity_reference: format!("kyc://{}", driver(m)),
                    display_name: String::new(),
                }),
            ];
            for r in 0..ROOMS {
                records.push(Record::Room(proto::LivestreamRoom {
                    id: room(m, r),
                    owner_merchant_id: merchant(m),
                    display_name: room(m, r),
                }));
            }
            for record in records {
                pdp.register(register(record)).await.expect("register");
            }
            let mut filings = vec![
                (proto::RegistrationKind::Anchor, anchor(m)),
                (proto::RegistrationKind::Driver, driver(m)),
            ];
            filings.extend((0..ROOMS).map(|r| (proto::RegistrationKind::Room, room(m, r))));
            for (kind, id) in filings {
                admin
                    .review_filing(proto::ReviewFilingRequest {
                        kind: kind as i32,
                        id,
                        verdict: proto::Verdict::Approve as i32,
                        reviewer: "jepsen".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("approve");
            }
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.slots.iter().map(|s| s.grpc).collect()
    }

    /// Lifts every freeze and approves every anchor again, so each round starts clean.
    async fn reset(&self) {
        let mut conn = connect(self.slots[0].grpc).await.expect("connect");
        for m in 0..self.options.merchants {
            for attempt in 0.. {
                let lifted = conn
                    .1
                    .lift_freeze(proto::LiftFreezeRequest {
                        merchant_id: merchant(m),
                        operator: "jepsen".into(),
                        reason: "next round".into(),
                        ..Default::default()
                    })
                    .await;
                let approved =
                    reapprove(&mut conn, m, &format!("reset-{}", uuid::Uuid::now_v7())).await;
                if lifted.is_ok() && approved.is_ok() {
                    break;
                }
                assert!(
                    attempt < 50,
                    "cannot reset {}: {lifted:?} {approved:?}",
                    merchant(m)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn round(&mut self, round: usize) {
        self.reset().await;
        let history: History = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..self.options.clients {
            let seed = self.options.seed ^ ((round as u64) << 32) ^ (client as u64 + 1);
            clients.push(tokio::spawn(run_client(
                client,
                round,
                Rng(seed.max(1)),
                self.addrs(),
                self.options.merchants,
                history.clone(),
                stop.clone(),
            )));
        }
        let mut rng = Rng((self.options.seed ^ round as u64).max(1) * 31);
        tokio::time::sleep(self.options.round / 3).await;
        self.fault(round, &mut rng).await;
        let remaining = self.options.round.saturating_sub(self.options.round / 3);
        tokio::time::sleep(remaining).await;
        stop.store(true, std::sync::atomic::Ordering::Release);
        for client in clients {
            let _ = client.await;
        }
        // Let the views of every replica settle before the final state is read.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let history = std::mem::take(&mut *history.lock().expect("history"));
        for op in &history {
            let entry = self.report.operations.entry(op.kind.name()).or_default();
            match op.outcome {
                Outcome::Failed(_) => entry.1 += 1,
                _ => entry.0 += 1,
            }
        }
        let found = self.check(round, &history).await;
        self.report.violations.extend(found);
        self.report.rounds += 1;
    }

    /// One fault, held for a second or three, then healed. Faults take turns, so a short run
    /// meets each of them.
    async fn fault(&mut self, round: usize, rng: &mut Rng) {
        let hold = Duration::from_millis(1000 + rng.below(2000) as u64);
        let choices: &[&'static str] = if self.etcd.is_some() {
            &[
                "pause member",
                "kill leader",
                "wipe member",
                "pause replica",
                "kill replica",
            ]
        } else {
            &["pause replica", "kill replica"]
        };
        let fault = choices[round % choices.len()];
        *self.report.faults.entry(fault).or_default() += 1;
        match fault {
            "pause member" => {
                let member = rng.below(3);
                let Some(cluster) = &self.etcd else { return };
                cluster.pause(member);
                tokio::time::sleep(hold).await;
                cluster.resume(member);
            }
            "kill leader" => {
                let Some(cluster) = &mut self.etcd else {
                    return;
                };
                let leader = cluster.leader().await.unwrap_or(0);
                cluster.kill(leader);
                tokio::time::sleep(hold).await;
                cluster.restart(leader);
            }
            "wipe member" => {
                // Its disk is lost: it rejoins empty, as a new member, and copies the data.
                let member = rng.below(3);
                let Some(cluster) = &mut self.etcd else {
                    return;
                };
                cluster.kill(member);
                tokio::time::sleep(hold).await;
                cluster.wipe(member).await;
            }
            "pause replica" => {
                let slot = &self.slots[rng.below(self.slots.len())];
                slot.signal("-STOP");
                tokio::time::sleep(hold).await;
                slot.signal("-CONT");
            }
            _ => {
                let i = rng.below(self.slots.len());
                self.slots[i].kill();
                tokio::time::sleep(hold).await;
                self.slots[i].start();
            }
        }
    }

    /// The invariants, over this round's history and the final state of every replica.
    async fn check(&self, round: usize, history: &[Op]) -> Vec<String> {
        let mut violations = Vec::new();
        let mut say = |what: String| violations.push(format!("round {round}: {what}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);

        // a. No live session of a frozen merchant or a revoked anchor, on any replica.
        for slot in &self.slots {
            let Some((_, mut admin)) = connect(slot.grpc).await else {
                continue;
            };
            let live = match admin
                .list_live_sessions(proto::ListLiveSessionsRequest::default())
                .await
            {
                Ok(live) => live.into_inner().sessions,
                Err(e) => {
                    say(format!("{}: cannot list live sessions: {e}", slot.name));
                    continue;
                }
            };
            for session in live {
                let account = admin
                    .get_account(proto::GetAccountRequest {
                        merchant_id: session.merchant_id.clone(),
                    })
                    .await
                    .ok()
                    .and_then(|a| a.into_inner().account);
                let frozen_until = account
                    .as_ref()
                    .and_then(|a| super::millis(&a.frozen_until))
                    .unwrap_or(0);
                if frozen_until > now {
                    say(format!(
                        "{}: session {} of frozen merchant {} is ACTIVE",
                        slot.name, session.id, session.merchant_id
                    ));
                }
                let anchor = admin
                    .get_registration(proto::GetRegistrationRequest {
                        kind: proto::RegistrationKind::Anchor as i32,
                        id: session.anchor_id.clone(),
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().registration);
                if anchor.is_some_and(|a| a.review_status == proto::ReviewStatus::Revoked as i32) {
                    say(format!(
                        "{}: session {} relies on revoked anchor {} and is ACTIVE",
                        slot.name, session.id, session.anchor_id
                    ));
                }
            }
        }

        // b. No START allowed after a freeze or revoke of its facts was acknowledged, unless
        // a lift or approval of them may have taken effect after it: one that had not finished
        // when the freeze was asked (it may be ordered after it) and had begun by the time
        // the START was answered.
        for start in history.iter().filter(|op| op.kind == Kind::Start) {
            let Outcome::Allow(session) = &start.outcome else {
                continue;
            };
            let undone = |undo: Kind, after: Instant| {
                history.iter().any(|op| {
                    op.kind == undo
                        && op.merchant == start.merchant
                        && op.completed >= after
                        && op.invoked <= start.completed
                })
            };
            for (forbid, undo) in [(Kind::Freeze, Kind::Lift), (Kind::Revoke, Kind::Approve)] {
                let forbidden = history.iter().find(|op| {
                    op.kind == forbid
                        && op.merchant == start.merchant
                        && matches!(op.outcome, Outcome::Done)
                        && op.completed < start.invoked
                        && !undone(undo, op.invoked)
                });
                if let Some(write) = forbidden {
                    // The last undo before, for whoever reads the violation.
                    let last_undo = history
                        .iter()
                        .filter(|op| op.kind == undo && op.merchant == start.merchant)
                        .filter(|op| op.invoked <= start.completed)
                        .max_by_key(|op| op.completed)
                        .map_or("none".to_owned(), |op| {
                            format!(
                                "{} on R{} answered {} ms before the {} was asked: {:?}",
                                undo.name(),
                                op.replica,
                                write
                                    .invoked
                                    .saturating_duration_since(op.completed)
                                    .as_millis(),
                                write.kind.name(),
                                op.outcome
                            )
                        });
                    say(format!(
                        "START of {} (session {session}, on R{}) allowed {} ms after a {} was \
                         acknowledged (on R{}); last {last_undo}",
                        merchant(start.merchant),
                        start.replica,
                        start.invoked.duration_since(write.completed).as_millis(),
                        write.kind.name(),
                        write.replica
                    ));
                }
            }
        }

        // c. A client's answers from one replica never go back in revision: an answer is at
        // least as recent as every answer the client had from it before asking (concurrent
        // calls, such as a burst's, are not ordered).
        let answered: Vec<&Op> = history
            .iter()
            .filter(|op| op.store_revision > 0 && !matches!(op.outcome, Outcome::Failed(_)))
            .collect();
        let mut by_invoked = answered.clone();
        by_invoked.sort_by_key(|op| op.invoked);
        let mut by_completed = answered;
        by_completed.sort_by_key(|op| op.completed);
        let mut seen: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        let mut done = by_completed.iter().peekable();
        for op in by_invoked {
            while let Some(before) = done.next_if(|before| before.completed < op.invoked) {
                let max = seen.entry((before.client, before.replica)).or_default();
                *max = (*max).max(before.store_revision);
            }
            let max = seen.get(&(op.client, op.replica)).copied().unwrap_or(0);
            if op.store_revision < max {
                say(format!(
                    "client {} on R{}: a {} answered revision {} after {}",
                    op.client,
                    op.replica,
                    op.kind.name(),
                    op.store_revision,
                    max
                ));
            }
        }

        // e. Every acknowledged registration is on every replica.
        for op in history.iter().filter(|op| op.kind == Kind::Register) {
            if op.outcome != Outcome::Done {
                continue;
            }
            for slot in &self.slots {
                let Some((_, mut admin)) = connect(slot.grpc).await else {
                    continue;
                };
                let found = admin
                    .get_registration(proto::GetRegistrationRequest {
                        kind: proto::RegistrationKind::Merchant as i32,
                        id: op.detail.clone(),
                    })
                    .await;
                if found.is_err() {
                    say(format!(
                        "{}: acknowledged registration {} is missing",
                        slot.name, op.detail
                    ));
                }
            }
        }

        // d and f. Every replica's enforcement stream is the same, gap-free, and ends each
        // session at most once.
        let mut streams = Vec::new();
        for slot in &self.slots {
            streams.push((slot.name.clone(), enforcements(slot.grpc).await));
        }
        for (name, stream) in &streams {
            let mut ended = BTreeSet::new();
            for (i, event) in stream.iter().enumerate() {
                if event.sequence != i as u64 + 1 {
                    say(format!(
                        "{name}: event {} at position {}",
                        event.sequence,
                        i + 1
                    ));
                    break;
                }
                if !ended.insert(event.session_id.clone()) {
                    say(format!(
                        "{name}: session {} ended twice (event {})",
                        event.session_id, event.sequence
                    ));
                }
            }
        }
        if let Some(((first_name, first), rest)) = streams.split_first() {
            for (name, stream) in rest {
                let key = |s: &Vec<proto::EnforcementEvent>| {
                    s.iter()
                        .map(|e| (e.sequence, e.session_id.clone(), e.trigger))
                        .collect::<Vec<_>>()
                };
                if key(stream) != key(first) {
                    say(format!(
                        "{name}'s enforcement stream ({} events) differs from {first_name}'s ({})",
                        stream.len(),
                        first.len()
                    ));
                }
            }
        }
        violations
    }
}

/// Every enforcement event a replica has, read until none comes for half a second.
async fn enforcements(addr: SocketAddr) -> Vec<proto::EnforcementEvent> {
    let Some((mut pdp, _)) = connect(addr).await else {
        return Vec::new();
    };
    let Ok(stream) = pdp
        .watch_enforcements(proto::WatchEnforcementsRequest {
            after_sequence: 0,
            gateway_id: String::new(),
        })
        .await
    else {
        return Vec::new();
    };
    let mut stream = stream.into_inner();
    let mut events = Vec::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(500), stream.message()).await
    {
        events.push(event);
    }
    events
}

/// One client: random operations on random merchants through random replicas until `stop`;
/// a write that fails is retried with its request id on the next replica, as a careful client
/// does, until it is answered or five attempts failed.
async fn run_client(
    client: usize,
    round: usize,
    mut rng: Rng,
    replicas: Vec<SocketAddr>,
    merchants: usize,
    history: History,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut conns: Vec<Conn> = Vec::new();
    for addr in &replicas {
        conns.push(connect(*addr).await.expect("client"));
    }
    let mut sessions: Vec<(usize, String)> = Vec::new();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        n += 1;
        let m = rng.below(merchants);
        let id = format!("c{client}-r{round}-{n}");
        let kind = match rng.below(100) {
            0..=39 => Kind::Start,
            40..=59 => Kind::Live,
            60..=66 => Kind::Freeze,
            67..=72 => Kind::Burst,
            73..=79 => Kind::Lift,
            80..=84 => Kind::Revoke,
            85..=89 => Kind::Approve,
            90..=94 => Kind::Register,
            _ => Kind::End,
        };
        let first = rng.below(replicas.len());
        let invoked = Instant::now();
        let live_session = |rng: &mut Rng, sessions: &Vec<(usize, String)>| {
            (!sessions.is_empty()).then(|| sessions[rng.below(sessions.len())].clone())
        };
        let (merchant_index, session) = match kind {
            Kind::Live | Kind::Freeze | Kind::End | Kind::Burst => {
                match live_session(&mut rng, &sessions) {
                    Some((m, s)) => (m, s),
                    None => continue,
                }
            }
            _ => (m, String::new()),
        };
        if kind == Kind::Burst {
            // STARTs of this merchant in every room through every replica, racing a freeze
            // of one of its sessions: each must either be ended by the freeze's sweep or see
            // the freeze.
            let mut racers = Vec::new();
            for k in 0..16 {
                let replica = (first + k) % replicas.len();
                let mut pdp = conns[replica].0.clone();
                let key = format!("{id}-{k}");
                let room = k % ROOMS;
                racers.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(200 * k as u64)).await;
                    let invoked = Instant::now();
                    let answer = pdp
                        .authorize(start_request(merchant_index, room, &key))
                        .await;
                    (replica, invoked, Instant::now(), answer, key)
                }));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let (replica, outcome, store_revision) = attempt(
                &mut conns,
                first,
                Kind::Freeze,
                merchant_index,
                &session,
                &id,
                &mut rng,
            )
            .await;
            let mut ops = vec![Op {
                client,
                kind: Kind::Freeze,
                merchant: merchant_index,
                replica,
                invoked,
                completed: Instant::now(),
                outcome,
                store_revision,
                detail: id.clone(),
            }];
            for racer in racers {
                let Ok((replica, invoked, completed, answer, key)) = racer.await else {
                    continue;
                };
                let (outcome, store_revision) = match answer {
                    Ok(a) => {
                        let a = a.into_inner();
                        if a.decision == proto::Decision::Allow as i32 {
                            (Outcome::Allow(a.session_id.clone()), a.store_revision)
                        } else {
                            (Outcome::Deny(super::rule_ids(&a)), a.store_revision)
                        }
                    }
                    Err(e) => (Outcome::Failed(e.to_string()), 0),
                };
                ops.push(Op {
                    client,
                    kind: Kind::Start,
                    merchant: merchant_index,
                    replica,
                    invoked,
                    completed,
                    outcome,
                    store_revision,
                    detail: key,
                });
            }
            history.lock().expect("history").extend(ops);
            continue;
        }
        let last = attempt(
            &mut conns,
            first,
            kind,
            merchant_index,
            &session,
            &id,
            &mut rng,
        )
        .await;
        let (replica, outcome, store_revision) = last;
        if let (Kind::Start, Outcome::Allow(session)) = (kind, &outcome) {
            sessions.push((merchant_index, session.clone()));
            if sessions.len() > 8 {
                sessions.remove(0);
            }
        }
        history.lock().expect("history").push(Op {
            client,
            kind,
            merchant: merchant_index,
            replica,
            invoked,
            completed: Instant::now(),
            outcome,
            store_revision,
            detail: id,
        });
    }
}

type Conn = (
    PolicyDecisionPointClient<Channel>,
    PolicyAdminClient<Channel>,
);

/// One operation, retried on the next replica (with its request id) while it fails, at most
/// five times. Returns the replica that answered last, the outcome and its store revision.
async fn attempt(
    conns: &mut [Conn],
    first: usize,
    kind: Kind,
    merchant_index: usize,
    session: &str,
    id: &str,
    rng: &mut Rng,
) -> (usize, Outcome, u64) {
    let replicas = conns.len();
    let id = id.to_owned();
    let session = session.to_owned();
    let mut last = (first, Outcome::Failed("not attempted".into()), 0);
    for attempt in 0..5 {
        let replica = (first + attempt) % replicas;
        let (pdp, admin) = &mut conns[replica];
        let outcome: Result<(Outcome, u64), tonic::Status> = match kind {
            Kind::Start => {
                let r = rng.below(ROOMS);
                pdp.authorize(start_request(merchant_index, r, &id))
                    .await
                    .map(|a| {
                        let a = a.into_inner();
                        let outcome = if a.decision == proto::Decision::Allow as i32 {
                            Outcome::Allow(a.session_id.clone())
                        } else {
                            Outcome::Deny(super::rule_ids(&a))
                        };
                        (outcome, a.store_revision)
                    })
            }
            Kind::Live => pdp.authorize(super::live(&session)).await.map(|a| {
                let a = a.into_inner();
                let outcome = if a.decision == proto::Decision::Allow as i32 {
                    Outcome::Allow(a.session_id.clone())
                } else {
                    Outcome::Deny(super::rule_ids(&a))
                };
                (outcome, a.store_revision)
            }),
            Kind::Freeze | Kind::Burst => admin
                .report_violation(proto::ReportViolationRequest {
                    session_id: session.clone(),
                    rule_id: "R6".into(),
                    inspector: "jepsen".into(),
                    note: String::new(),
                    request_id: id.clone(),
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    // A report on a session already shut down freezes nothing new.
                    let froze = r.penalty_applied == proto::Penalty::E2WarnShutDownAndFreeze as i32;
                    let outcome = if froze {
                        Outcome::Done
                    } else {
                        Outcome::Deny(Vec::new())
                    };
                    (outcome, r.store_revision)
                }),
            Kind::Lift => admin
                .lift_freeze(proto::LiftFreezeRequest {
                    merchant_id: merchant(merchant_index),
                    operator: "jepsen".into(),
                    reason: "appeal".into(),
                    request_id: id.clone(),
                })
                .await
                .map(|r| (Outcome::Done, r.into_inner().store_revision)),
            Kind::Revoke => admin
                .review_filing(verdict(merchant_index, proto::Verdict::Revoke, &id))
                .await
                .map(|r| (Outcome::Done, r.into_inner().store_revision)),
            Kind::Approve => reapprove(&mut conns[replica], merchant_index, &id)
                .await
                .map(|revision| (Outcome::Done, revision)),
            Kind::Register => pdp
                .register(proto::RegisterRequest {
                    record: Some(Record::Merchant(proto::Merchant {
                        id: id.clone(),
                        tier: proto::MerchantTier::Other as i32,
                        display_name: id.clone(),
                    })),
                    expected_revision: None,
                    request_id: id.clone(),
                })
                .await
                .map(|r| (Outcome::Done, r.into_inner().store_revision)),
            Kind::End => pdp
                .end_session(proto::EndSessionRequest {
                    session_id: session.clone(),
                    reason: "publisher left".into(),
                    request_id: id.clone(),
                })
                .await
                .map(|_| (Outcome::Done, 0)),
        };
        match outcome {
            Ok((outcome, revision)) => {
                last = (replica, outcome, revision);
                break;
            }
            // Refusals on the facts are answers, not failures.
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ) =>
            {
                last = (replica, Outcome::Deny(vec![format!("{:?}", e.code())]), 0);
                break;
            }
            Err(e) => {
                last = (replica, Outcome::Failed(e.to_string()), 0);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    last
}

/// Runs `options.rounds` rounds and returns what they did and found.
pub async fn run(options: Options) -> Report {
    let started = Instant::now();
    let rounds = options.rounds;
    let options_progress = options.progress;
    let mut world = World::new(options).await;
    for round in 0..rounds {
        world.round(round).await;
        if options_progress {
            // A long run that stops early still counts the rounds it checked.
            println!(
                "round {round}: {} violations so far, {:.0} s",
                world.report.violations.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    world.report.elapsed = started.elapsed();
    std::mem::take(&mut world.report)
}
