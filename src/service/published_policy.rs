//! Replicas decide under one policy set: on etcd, the set in force is published under one key.
//! A replica that reloads its directory publishes the set; every replica (itself included)
//! loads each set published. One that cannot load a published set keeps its previous set and
//! says so in the policy status, the metrics and the log.

use std::path::PathBuf;
use std::sync::Arc;

use super::Pdp;
use crate::policy::{self, ReloadOutcome};

impl Pdp {
    /// On etcd, publishes the policy directory's set to every replica; a no-op on sled.
    pub async fn publish_policies(&self) {
        if self.store.subscribe_policy().is_none() {
            return;
        }
        match policy::pack(self.policies.dir()) {
            Ok(bytes) => match self.store.publish_policy(bytes, false).await {
                Ok(_) => tracing::info!(
                    policy_version = self.policies.current().version(),
                    "policy set published to every replica"
                ),
                Err(e) => tracing::error!(error = %e, "cannot publish the policy set"),
            },
            Err(e) => tracing::error!(error = %e, "cannot read the policy set to publish it"),
        }
    }

    /// On etcd: publishes this replica's set if none is yet, then loads every set published,
    /// unpacked under `copies`. Runs for as long as the store does.
    pub async fn follow_published_policies(self: Arc<Self>, copies: PathBuf) {
        let Some(mut published) = self.store.subscribe_policy() else {
            return;
        };
        match policy::pack(self.policies.dir()) {
            Ok(bytes) => match self.store.publish_policy(bytes, true).await {
                Ok(true) => tracing::info!("no policy set was published: published this one"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot publish the policy set"),
            },
            Err(e) => tracing::error!(error = %e, "cannot read the policy set to publish it"),
        }
        loop {
            let current = published.borrow_and_update().clone();
            if let Some((bytes, revision)) = current {
                let pdp = self.clone();
                let copies = copies.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    policy::unpack(&bytes, &copies).map(|()| {
                        // The publisher already refused sets that drop rules by accident.
                        pdp.policies.reload_from(&copies, pdp.now(), "etcd", true)
                    })
                })
                .await;
                let failed = match loaded {
                    Ok(Ok(ReloadOutcome::Rejected { error, .. })) => Some(error.to_string()),
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e),
                    Err(e) => Some(e.to_string()),
                };
                metrics::gauge!("anchor_pdp_policy_published_rejected").set(if failed.is_some() {
                    1.0
                } else {
                    0.0
                });
                if let Some(why) = failed {
                    tracing::error!(
                        revision,
                        error = %why,
                        policy_version = self.policies.current().version(),
                        "cannot load the policy set published through etcd; keeping the previous set"
                    );
                }
            }
            if published.changed().await.is_err() {
                return;
            }
        }
    }
}
