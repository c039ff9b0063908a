//! The re-check of approved anchors' images: every `every`, each approved anchor whose approval
//! is bound to an image is fetched afresh; one serving other bytes goes back to review
//! (`Pdp::image_seen`), and its live sessions are re-checked. An image that cannot be fetched
//! changes nothing (it is no evidence of a change) but is counted and logged.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::Pdp;
use crate::domain::{Kind, RecordBody};

/// Images fetched at once: enough to hide a slow store, few enough not to hammer it.
const FETCHES_AT_ONCE: usize = 8;

/// The anchors to re-check: approved, bound to an image hash. (id, reference, bound hash).
fn bound_anchors(pdp: &Pdp) -> Vec<(String, String, String)> {
    pdp.store()
        .registrations_page(
            &[Kind::Anchor],
            |r| r.bound_image().is_some(),
            0,
            usize::MAX,
        )
        .1
        .into_iter()
        .filter_map(|r| {
            let bound = r.bound_image()?.to_owned();
            match r.body {
                RecordBody::Anchor {
                    image_reference, ..
                } => Some((r.id, image_reference, bound)),
                _ => None,
            }
        })
        .collect()
}

/// One pass over every bound anchor; returns how many went back to review.
pub async fn check_once(pdp: &Pdp) -> usize {
    let Some(images) = pdp.images() else {
        return 0;
    };
    let checks = bound_anchors(pdp).into_iter().map(|(id, reference, bound)| async move {
        match images.fetch(&reference).await {
            Ok(image) if image.sha256 == bound => false,
            Ok(image) => match pdp.image_seen(&id, &reference, &image.sha256).await {
                Ok(changed) => changed,
                Err(error) => {
                    tracing::error!(anchor = %id, %error, "cannot send a changed image back to review");
                    false
                }
            },
            Err(error) => {
                metrics::counter!("anchor_pdp_image_check_failures_total").increment(1);
                tracing::warn!(anchor = %id, %error, "cannot re-check an approved image");
                false
            }
        }
    });
    futures_util::stream::iter(checks)
        .buffer_unordered(FETCHES_AT_ONCE)
        .filter(|changed| std::future::ready(*changed))
        .count()
        .await
}

/// Re-checks every `every` until aborted.
pub async fn run(pdp: Arc<Pdp>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let sent_back = check_once(&pdp).await;
        if sent_back > 0 {
            tracing::warn!(
                sent_back,
                "approved anchors whose image changed went back to review"
            );
        }
    }
}
