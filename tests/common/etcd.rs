//! A real etcd cluster on loopback (Debian's `etcd-server`, installed by `scripts/test`): its
//! members are child processes that can be paused, killed, restarted and replaced with an
//! empty disk; all are killed when the cluster drops.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::programs::{free_port, require};

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Joins a running cluster (after `wipe`) rather than forming a new one.
    joining: Option<String>,
    /// How many times it was wiped and replaced.
    generation: u32,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers writes.
    pub async fn start(size: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("etcd dir");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("e{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                joining: None,
                generation: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("anchor-pdp-test-{}", uuid::Uuid::now_v7());
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_writable(Duration::from_secs(30)).await;
        cluster
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let log = self.log_path(i);
        let member = &self.members[i];
        let data = self.data_dir(i);
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("etcd log");
        let child = Command::new(require("etcd"))
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args([
                "--initial-cluster",
                member.joining.as_ref().unwrap_or(&self.initial_cluster),
            ])
            .args(["--initial-cluster-token", &self.token])
            .args([
                "--initial-cluster-state",
                if member.joining.is_some() {
                    "existing"
                } else {
                    "new"
                },
            ])
            // Loopback: elections in half a second, not the WAN-sized default of one.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// Client URLs of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `kill -9` one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process ids of the running members (for measuring their CPU).
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// Pauses member `i` (SIGSTOP): it keeps its connections open and answers nothing, as a
    /// hung process does.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Resumes a paused member (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let Some(child) = &self.members[i].child else {
            return;
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} member {i}");
    }

    /// The member that leads now, if one answers that it does.
    pub async fn leader(&self) -> Option<usize> {
        for (i, endpoint) in self.endpoints().iter().enumerate() {
            if self.members[i].child.is_none() {
                continue;
            }
            let status = async {
                let mut client = etcd_client::Client::connect([endpoint], None).await?;
                client.status().await
            };
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), status).await
                && status
                    .header()
                    .is_some_and(|h| h.member_id() == status.leader())
            {
                return Some(i);
            }
        }
        None
    }

    /// Starts a killed member again on its data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Kills member `i` and loses its disk, as a replaced machine does: the member is removed
    /// from the cluster and a new one (new name, peer address and data directory; the same
    /// client address, which the replicas know) is added and started with
    /// `--initial-cluster-state existing`, the way an operator replaces one (etcd's runtime
    /// reconfiguration); it copies the data from the leader. Panics if the cluster refuses.
    pub async fn wipe(&mut self, i: usize) {
        self.kill(i);
        let _ = std::fs::remove_dir_all(self.data_dir(i));
        let old_peer = format!("http://127.0.0.1:{}", self.members[i].peer_port);
        let generation = self.members[i].generation + 1;
        self.members[i].generation = generation;
        self.members[i].name = format!("e{i}g{generation}");
        self.members[i].peer_port = free_port();
        let name = self.members[i].name.clone();
        let peer = format!("http://127.0.0.1:{}", self.members[i].peer_port);
        let others: Vec<String> = self
            .endpoints()
            .into_iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, e)| e)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        // One step at a time, each until it has taken: etcd refuses a reconfiguration while
        // the cluster is not healthy (a member just back from a fault), and a step whose
        // answer was lost may have taken anyway.
        let joining = loop {
            let step = async {
                let mut client = etcd_client::Client::connect(&others, None).await?;
                let listed = client.member_list().await?;
                if let Some(old) = listed
                    .members()
                    .iter()
                    .find(|m| m.peer_urls().contains(&old_peer))
                {
                    client.member_remove(old.id()).await?;
                    return Ok(None);
                }
                let Some(added) = listed
                    .members()
                    .iter()
                    .find(|m| m.peer_urls().contains(&peer))
                else {
                    client.member_add([peer.clone()], None).await?;
                    return Ok(None);
                };
                let added = added.id();
                // A joining member learns the membership from the peer it asks, which serves
                // its own applied copy: every peer must list the new member, and not the old.
                let mut joining = String::new();
                for endpoint in &others {
                    let mut one = etcd_client::Client::connect([endpoint], None).await?;
                    let listed = one.member_list().await?;
                    let members = listed.members();
                    let agreed = members.iter().any(|m| m.id() == added)
                        && !members.iter().any(|m| m.peer_urls().contains(&old_peer));
                    if !agreed {
                        return Ok(None);
                    }
                    joining = members
                        .iter()
                        .map(|m| {
                            // The member just added has no name until it starts.
                            let member_name = if m.id() == added { &name } else { m.name() };
                            format!("{member_name}={}", m.peer_urls().join(","))
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                }
                Ok::<_, etcd_client::Error>(Some(joining))
            };
            let outcome = tokio::time::timeout(Duration::from_secs(5), step).await;
            if let Ok(Ok(Some(joining))) = outcome {
                break joining;
            }
            assert!(
                Instant::now() < deadline,
                "cannot replace member {i}: {outcome:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.members[i].joining = Some(joining);
        self.spawn(i);
        // Back once it answers a linearizable read itself: it has caught up with the leader.
        let own = self.endpoints()[i].clone();
        loop {
            let read = async {
                let mut client = etcd_client::Client::connect([&own], None).await?;
                client.get("/anchor-pdp-test/ready", None).await
            };
            match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok(_)) => return,
                outcome => {
                    assert!(
                        Instant::now() < deadline,
                        "replaced member {i} did not catch up: {outcome:?}\n{}",
                        self.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a write through any member succeeds.
    pub async fn wait_writable(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let attempt = async {
                let mut client = etcd_client::Client::connect(self.endpoints(), None).await?;
                client.put("/anchor-pdp-test/ready", "1", None).await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(_)) => return,
                outcome => {
                    assert!(
                        Instant::now() < deadline,
                        "etcd cluster not writable: {outcome:?}\n{}",
                        self.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A paused process ignores nothing but SIGKILL; resume it anyway, for its log.
            self.resume(i);
            self.kill(i);
        }
    }
}
