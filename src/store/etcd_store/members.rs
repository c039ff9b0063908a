//! One etcd client per member, and which member to ask.
//!
//! etcd-client balances one channel over every endpoint, and a member that hangs (paused,
//! overloaded, its disk stalled) keeps its TCP connection open: requests routed to it wait out
//! their deadline while the other two members would have answered at once, and a heartbeat
//! routed to it calls the whole cluster lost. So each member has a client of its own, the
//! heartbeat asks every member, and requests go to the member that answered most recently,
//! moving to another as soon as one fails or times out. A hung member then costs one attempt
//! (`ATTEMPT_TIMEOUT`) of one request, not a refusal of every write.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use etcd_client::{Client, ConnectOptions};

use crate::error::PdpError;

struct Member {
    url: String,
    /// `None` until a connection succeeds (with authentication, connecting asks the member).
    client: tokio::sync::Mutex<Option<Client>>,
    state: Mutex<MemberState>,
}

#[derive(Default, Clone, Copy)]
struct MemberState {
    last_ok: Option<Instant>,
    last_failed: Option<Instant>,
}

impl MemberState {
    /// Answered since it last failed.
    fn healthy(&self) -> bool {
        match (self.last_ok, self.last_failed) {
            (Some(ok), Some(failed)) => ok > failed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

pub struct Members {
    members: Vec<Member>,
    options: ConnectOptions,
    /// The member requests go to while it answers.
    preferred: AtomicUsize,
}

impl Members {
    /// Connects to each member. Those that cannot be reached now are connected later, by
    /// `client`; at least one must connect.
    pub async fn connect(
        urls: &[String],
        options: ConnectOptions,
        within: std::time::Duration,
    ) -> Result<Members, PdpError> {
        let members = Members {
            members: urls
                .iter()
                .map(|url| Member {
                    url: url.clone(),
                    client: tokio::sync::Mutex::new(None),
                    state: Mutex::new(MemberState::default()),
                })
                .collect(),
            options,
            preferred: AtomicUsize::new(0),
        };
        let mut errors = Vec::new();
        for i in 0..members.members.len() {
            match tokio::time::timeout(within, members.client(i)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push(format!("{}: timed out", members.members[i].url)),
            }
        }
        if errors.len() == members.members.len() {
            return Err(PdpError::Storage(format!(
                "etcd: connecting to {}: {}",
                urls.join(","),
                errors.join("; ")
            )));
        }
        Ok(members)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn url(&self, i: usize) -> &str {
        &self.members[i].url
    }

    /// Member `i`'s client, connecting it first if it is not yet.
    pub async fn client(&self, i: usize) -> Result<Client, PdpError> {
        let member = &self.members[i];
        let mut client = member.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let connected = Client::connect([member.url.as_str()], Some(self.options.clone()))
            .await
            .map_err(|e| PdpError::Storage(format!("etcd: connecting to {}: {e}", member.url)))?;
        *client = Some(connected.clone());
        Ok(connected)
    }

    fn state(&self, i: usize) -> MemberState {
        *self.members[i]
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The member to ask now: the preferred one while it is healthy, else the one that
    /// answered most recently (the preferred one if none has).
    pub fn pick(&self) -> usize {
        let preferred = self.preferred.load(Ordering::Acquire) % self.members.len();
        if self.state(preferred).healthy() {
            return preferred;
        }
        let best = (0..self.members.len())
            .filter(|&i| self.state(i).healthy())
            .max_by_key(|&i| self.state(i).last_ok);
        match best {
            Some(best) => {
                self.preferred.store(best, Ordering::Release);
                best
            }
            // None answers: take turns, so a member that comes back is found.
            None => {
                let next = (preferred + 1) % self.members.len();
                self.preferred.store(next, Ordering::Release);
                next
            }
        }
    }

    /// Member `i` answered a request made at `asked`.
    pub fn answered(&self, i: usize, asked: Instant) {
        let mut state = self.members[i]
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        state.last_ok = Some(state.last_ok.map_or(asked, |ok| ok.max(asked)));
    }

    /// Member `i` failed or did not answer in time: requests move to another member.
    pub fn failed(&self, i: usize) {
        let now = Instant::now();
        self.members[i]
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_failed = Some(now);
        let _ = self.preferred.compare_exchange(
            i,
            (i + 1) % self.members.len(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// A member other than `not` to move a stalled watch to: a healthy one if there is one.
    pub fn pick_other(&self, not: usize) -> usize {
        (1..self.members.len())
            .map(|step| (not + step) % self.members.len())
            .find(|&i| self.state(i).healthy())
            .unwrap_or((not + 1) % self.members.len())
    }
}
