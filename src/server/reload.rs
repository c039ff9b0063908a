//! Policy reloads the server starts by itself: on changes under the policy directory, and on
//! SIGHUP. Each publishes the new set to the other replicas.

use std::sync::Arc;
use std::time::Duration;

use crate::policy::ReloadOutcome;
use crate::service::Pdp;

/// Editors and config managers write a change in several steps; reload once they are quiet.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(100);

async fn reload_in_background(pdp: &Arc<Pdp>, trigger: &'static str) {
    let pdp = pdp.clone();
    let may_remove_rules = pdp.policy_handle().automatic_reloads_may_remove_rules();
    let reloader = pdp.clone();
    let reload = move || reloader.reload_policies(trigger, may_remove_rules);
    match tokio::task::spawn_blocking(reload).await {
        Ok(ReloadOutcome::Reloaded { .. }) => pdp.publish_policies().await,
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, trigger, "policy reload task failed"),
    }
}

/// Reloads the policies after changes under their directory. The returned watcher must be
/// kept alive for as long as watching should go on.
pub(super) fn watch_policies(
    pdp: Arc<Pdp>,
) -> Result<(notify::RecommendedWatcher, tokio::task::JoinHandle<()>), notify::Error> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reading the files (our own reload does) is not a change.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "policy directory watch error"),
        }
    })?;
    watcher.watch(pdp.policy_handle().dir(), RecursiveMode::Recursive)?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            loop {
                match tokio::time::timeout(WATCH_DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            reload_in_background(&pdp, "file-watch").await;
        }
    });
    Ok((watcher, task))
}

/// What a SIGHUP may change besides the policies: the callers' tokens, the hooks' secrets,
/// OME's secrets and the log filter, from the config file.
pub(super) struct Live {
    pub auth: Arc<crate::api::auth::Authenticator>,
    pub hook_secrets: Arc<crate::gateway::secrets::HookSecrets>,
    pub gateway: Arc<crate::gateway::GatewayOptions>,
}

impl Live {
    /// Applies the config file's live settings; each applied or refused is logged.
    fn apply(&self) {
        let settings = match crate::config_file::live_settings() {
            None => return,
            Some(Err(error)) => {
                tracing::error!(%error, "SIGHUP: the config file cannot be read; nothing changed");
                return;
            }
            Some(Ok(settings)) => settings,
        };
        for (key, values) in settings {
            let applied = match key.as_str() {
                "token" => self
                    .auth
                    .replace_tokens(&values)
                    .map(|n| format!("{n} tokens")),
                "hook-secret" => self
                    .hook_secrets
                    .replace(&values)
                    .map(|n| format!("{n} hook secrets")),
                "ome-secret" => self
                    .gateway
                    .ome_secrets
                    .replace(&values)
                    .map(|n| format!("{n} OME secrets")),
                "log-level" => {
                    let level = values.first().map_or("info", String::as_str);
                    crate::telemetry::reload_log_filter(level).map(|applied| match applied {
                        true => level.to_owned(),
                        false => "unchanged: RUST_LOG sets the filter".to_owned(),
                    })
                }
                _ => continue,
            };
            match applied {
                Ok(now) => tracing::info!(key, now = %now, "SIGHUP: applied from the config file"),
                Err(error) => {
                    tracing::error!(key, %error, "SIGHUP: not applied; the old setting stays")
                }
            }
        }
    }
}

#[cfg(unix)]
pub(super) fn reload_on_sighup(pdp: Arc<Pdp>, live: Live) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => Some(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading policies");
                reload_in_background(&pdp, "SIGHUP").await;
                live.apply();
                // Everything else in the config file is read at start: say what changed.
                match crate::config_file::changed_since_start() {
                    Some(Ok(changed)) if !changed.is_empty() => tracing::warn!(
                        changed = %changed.join(", "),
                        "SIGHUP: the config file changed settings that take effect only at a restart"
                    ),
                    Some(Err(error)) => {
                        tracing::error!(%error, "SIGHUP: the config file cannot be read")
                    }
                    _ => {}
                }
            }
        })),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload with the RPC instead");
            None
        }
    }
}

#[cfg(not(unix))]
pub(super) fn reload_on_sighup(_pdp: Arc<Pdp>, _live: Live) -> Option<tokio::task::JoinHandle<()>> {
    None
}
