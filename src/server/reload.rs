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

#[cfg(unix)]
pub(super) fn reload_on_sighup(pdp: Arc<Pdp>) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => Some(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading policies");
                reload_in_background(&pdp, "SIGHUP").await;
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
pub(super) fn reload_on_sighup(_pdp: Arc<Pdp>) -> Option<tokio::task::JoinHandle<()>> {
    None
}
