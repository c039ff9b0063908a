//! One filing: its image (fetched by the server and served from here), fields, claim and
//! history, with the verdict form beside the image. A verdict given "& next" goes on to the
//! next filing of the reviewer's queue not claimed by another, and claims it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::guard::StrictForm;
use super::page::{self, Lang};
use super::review::{
    CLAIM_MS, LIST, QueueFilter, REVIEW, claim_badge, claim_key, claims, display_name, kind_named,
};
use super::session::Session;
use super::viewer::Viewer;
use super::{Access, Console, access, csrf_ok, error_page, may, status_of};
use crate::domain::{
    Kind, LogRecord, Millis, RecordBody, Registration, ReviewClaim, ReviewCommand, ReviewStatus,
    Verdict,
};
use crate::error::PdpError;
use crate::images::{Image, ImageError};
use crate::store::Claimed;

/// Changes a filing's history shows, and how many log records it looks through for them.
const HISTORY_RECORDS: usize = 100;
const HISTORY_SCAN: usize = 1_000_000;
/// How far before a filing's creation its history is looked for: replicas' clocks differ
/// by a little.
const CLOCK_SLACK_MS: i64 = 60_000;

/// How an image shown is fetched.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Fetch {
    /// Fetched now if the anchor's approval is bound to an image (its page checks it afresh);
    /// otherwise from the recent fetches.
    CheckingApproval,
    /// From the recent fetches (the `<img>` of a page just rendered, thumbnails).
    Recent,
}

/// An anchor's image as the server fetched it: None for other kinds and when the server
/// fetches no images. An approved anchor seen with other bytes goes back to review at once.
pub(super) async fn image_of(
    console: &Console,
    filing: &Registration,
    fetch: Fetch,
) -> Option<Result<Arc<Image>, ImageError>> {
    let RecordBody::Anchor {
        image_reference, ..
    } = &filing.body
    else {
        return None;
    };
    let images = console.pdp.images()?;
    let bound = filing.bound_image();
    let image = if bound.is_some() && fetch == Fetch::CheckingApproval {
        images.fetch(image_reference).await
    } else {
        images.recent(image_reference).await
    };
    if let (Ok(image), Some(bound)) = (&image, bound)
        && bound != image.sha256
        && let Err(error) = console
            .pdp
            .image_seen(&filing.id, image_reference, &image.sha256)
            .await
    {
        tracing::error!(anchor = %filing.id, %error, "cannot send a changed image back to review");
    }
    Some(image)
}

/// A shortened hash to show (and to version an image's URL with).
pub(super) fn short(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or(sha256)
}

/// `GET /review/anchor/{id}/image`: the anchor's image, fetched by the server from its
/// configured prefix and checked; the browser never contacts the image's host.
#[derive(serde::Deserialize)]
pub struct ImageQuery {
    /// The start of the hash the page that shows the image was rendered with: other bytes are
    /// refused (409), so no one decides on pixels other than those the hash names.
    #[serde(default)]
    v: String,
}

pub async fn image(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<ImageQuery>,
) -> Response {
    if let Access::Refused(response) = access(&console, &headers, LIST).await {
        return response;
    }
    if kind != Kind::Anchor.name() {
        return (StatusCode::NOT_FOUND, "only anchors have images").into_response();
    }
    let filing = match console.pdp.get_registration(Kind::Anchor, &id) {
        Ok(filing) => filing,
        Err(PdpError::NotFound(e)) => return (StatusCode::NOT_FOUND, e).into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    match image_of(&console, &filing, Fetch::Recent).await {
        None => (StatusCode::NOT_FOUND, "this server fetches no images").into_response(),
        Some(Err(e @ (ImageError::NotMapped(_) | ImageError::BadPath { .. }))) => {
            (StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Some(Err(e)) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        Some(Ok(image)) if !image.sha256.starts_with(&query.v) => (
            StatusCode::CONFLICT,
            "the image changed since the page was shown: reload the page",
        )
            .into_response(),
        Some(Ok(image)) => (
            [
                (header::CONTENT_TYPE, image.content_type.to_owned()),
                (header::CACHE_CONTROL, "private, max-age=60".to_owned()),
                (
                    header::HeaderName::from_static("x-image-sha256"),
                    image.sha256.clone(),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; sandbox".to_owned(),
                ),
            ],
            image.bytes.clone(),
        )
            .into_response(),
    }
}

/// A filing's history, newest first: each change the decision log holds for it (the filing,
/// each revision, each verdict), found by the change its record carries. Only the log's
/// records from the filing's creation on are read.
fn history(console: &Console, filing: &Registration) -> Result<Vec<LogRecord>, PdpError> {
    let change = format!("{} {} revision ", filing.kind().name(), filing.id);
    let since = filing.created_at.saturating_sub(CLOCK_SLACK_MS);
    console
        .pdp
        .store()
        .newest_log(
            since..=Millis::MAX,
            &[&change],
            |r| r.change.starts_with(&change),
            HISTORY_RECORDS,
            HISTORY_SCAN,
        )
        .map(|(records, _)| records)
}

/// A history record's change (`anchor a1 revision 2, APPROVED`) in the viewer's language.
fn change_text(lang: Lang, filing: &Registration, change: &str) -> String {
    let prefix = format!("{} {} revision ", filing.kind().name(), filing.id);
    match change
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.split_once(", "))
    {
        Some((revision, state)) => {
            format!("{} {revision} · {}", lang.t("revision"), lang.value(state))
        }
        None => change.to_owned(),
    }
}

/// The history table: when, what, who, the revision and state it led to, and the note.
fn history_table(viewer: &Viewer, filing: &Registration, records: &[LogRecord]) -> Markup {
    let lang = viewer.lang;
    let first = format!("{} {} revision 1,", filing.kind().name(), filing.id);
    // Revision 1 is the filing itself: without it, retention took the earliest changes.
    let whole = records.last().is_some_and(|r| r.change.starts_with(&first));
    html! {
        h2 { (lang.t("history")) }
        @if records.is_empty() {
            p { (lang.t("history_none")) }
        } @else {
            div.scroll {
                table.log {
                    thead { tr {
                        th { (lang.t("time")) } th { (lang.t("action")) } th { (lang.t("caller")) }
                        th { (lang.t("change")) } th { (lang.t("note")) }
                    } }
                    tbody {
                        @for r in records {
                            tr {
                                td { (viewer.time(r.at)) }
                                td { (r.action) " · " (r.entry_point) }
                                td { (r.caller) }
                                td { (change_text(lang, filing, &r.change)) }
                                td { @if let Some(note) = r.request.get("note").and_then(|n| n.as_str()) { (note) } }
                            }
                        }
                    }
                }
            }
            @if !whole { p { (lang.t("history_partial")) } }
        }
    }
}

/// Where a filing sits in its queue: the filings before and after it that are not claimed by
/// another (after the last comes the first), and its place (if still pending).
struct Neighbours {
    previous: Option<Registration>,
    next: Option<Registration>,
    place: Option<usize>,
    count: usize,
}

fn neighbours(
    console: &Console,
    filter: &QueueFilter,
    filing: &Registration,
    me: &str,
    claims: &HashMap<String, ReviewClaim>,
) -> Neighbours {
    let free = |f: &&&Registration| {
        claim_key(f) != claim_key(filing) && claims.get(&claim_key(f)).is_none_or(|c| c.by == me)
    };
    filter.with_pending(console, |pending| {
        let split = pending.partition_point(|f| filter.compare(f, filing).is_lt());
        let (before, after) = pending.split_at(split);
        let place = after
            .first()
            .filter(|f| claim_key(f) == claim_key(filing))
            .map(|_| split + 1);
        Neighbours {
            previous: before.iter().rev().find(free).map(|f| (*f).clone()),
            next: after.iter().chain(before).find(free).map(|f| (*f).clone()),
            place,
            count: pending.len(),
        }
    })
}

pub(super) fn filing_path(filing: &Registration) -> String {
    format!("/review/{}/{}", filing.kind().name(), filing.id)
}

/// What a filing page shows besides the filing.
struct Shown<'a> {
    notice: Option<&'a str>,
    kept_note: &'a str,
    filter: &'a QueueFilter,
}

/// A filing's image and its verdict form side by side (above the fold at 1366×768), then
/// its fields, claim and history.
fn filing_page(
    console: &Console,
    viewer: &Viewer,
    session: &Session,
    filing: &Registration,
    shown: &Shown,
    image: Option<&Result<Arc<Image>, ImageError>>,
) -> Markup {
    let lang = viewer.lang;
    let me = session.caller_name();
    let csrf = session.csrf.as_str();
    let may_review = may(session, REVIEW);
    // The claims are read once for the page: its neighbours and its own.
    let mut claims = claims(console);
    let around = neighbours(console, shown.filter, filing, &me, &claims);
    let claim = claims.remove(&claim_key(filing));
    let history = history(console, filing);
    let verdict_at = |v: Verdict| match v {
        Verdict::Approve => lang.t("approve"),
        Verdict::Reject => lang.t("reject"),
        Verdict::Revoke => lang.t("revoke"),
    };
    let pending = filing.review_status == ReviewStatus::PendingReview;
    html! {
        @if let Some(notice) = shown.notice { p.notice role="status" { (notice) } }
        div.filing {
            @if let RecordBody::Anchor { image_reference, .. } = &filing.body {
                figure.image id="image" {
                    @match image {
                        Some(Ok(image)) => {
                            img.anchor id="anchor-image" src=(format!("/review/anchor/{}/image?v={}", filing.id, short(&image.sha256))) alt=(image_reference);
                            figcaption {
                                code { (image_reference) } br;
                                "SHA-256 " code.hash title=(image.sha256) { (short(&image.sha256)) "…" }
                                " · " button.link type="button" id="zoom" data-key="v" { (lang.t("zoom")) " (v)" }
                            }
                        }
                        Some(Err(e)) => { p.notice { (lang.t("no_image")) ": " (e) } figcaption { code { (image_reference) } } }
                        None => { p.notice { (lang.t("no_image")) } figcaption { code { (image_reference) } } }
                    }
                }
            }
            div.decide {
                p.position {
                    @if let Some(previous) = &around.previous {
                        a data-key="k" rel="prev" href=(shown.filter.link(&filing_path(previous), &[])) { "← " (lang.t("previous")) " (k)" }
                    }
                    " "
                    @if let Some(place) = around.place { (place) " / " (around.count) } @else { (around.count) " " (lang.t("pending")) }
                    " "
                    @if let Some(next) = &around.next {
                        a data-key="j" rel="next" href=(shown.filter.link(&filing_path(next), &[])) { (lang.t("next")) " (j) →" }
                    }
                    " · " a href=(shown.filter.link("/review", &[])) { (lang.t("review_queue")) }
                }
                h2.name { (display_name(&filing.body)) }
                p.state { (lang.value(filing.review_status.policy_name())) " · " (lang.t("revision")) " " (filing.revision)
                    " " (claim_badge(lang, session, claim.as_ref())) }
                @if may_review && (pending || filing.review_status == ReviewStatus::Approved) {
                    form.verdict method="post" action=(filing_path(filing)) {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="expected_revision" value=(filing.revision);
                        @if let Some(Ok(image)) = image { input type="hidden" name="image_sha256" value=(image.sha256); }
                        @for (name, value) in shown.filter.pairs() { input type="hidden" name=(name) value=(value); }
                        label { (lang.t("note")) textarea name="note" maxlength="512" rows="2" { (shown.kept_note) } }
                        @if pending {
                            label { (lang.t("expires")) input type="datetime-local" name="expires"; }
                            div.buttons {
                                // An anchor whose image could not be shown cannot be approved.
                                @if !matches!(image, Some(Err(_))) {
                                    button.approve type="submit" name="verdict" value="approve" data-key="a" { (lang.t("approve_next")) " (a)" }
                                }
                                button.reject type="submit" name="verdict" value="reject" data-key="r" { (lang.t("reject_next")) " (r)" }
                            }
                        } @else {
                            div.buttons {
                                button.reject type="submit" name="verdict" value="revoke" { (lang.t("revoke")) }
                            }
                        }
                    }
                    @if pending && claim.as_ref().is_none_or(|c| c.by != me) {
                        form.claim method="post" action=(format!("{}/claim", filing_path(filing))) {
                            input type="hidden" name="csrf" value=(csrf);
                            @for (name, value) in shown.filter.pairs() { input type="hidden" name=(name) value=(value); }
                            button type="submit" { (lang.t("claim_it")) }
                        }
                    }
                }
                p.keys { (lang.t("keys")) }
            }
        }
        dl {
            dt { (lang.t("kind")) } dd { (lang.t(filing.kind().name())) }
            dt { (lang.t("id")) } dd { (filing.id) }
            dt { (lang.t("owner")) } dd { (filing.body.owner().unwrap_or("")) }
            @match &filing.body {
                RecordBody::Anchor { provider_id, image_style, likeness_of, consent_id, .. } => {
                    dt { (lang.t("provider")) }
                    dd {
                        (provider_id) " — "
                        @match console.pdp.get_registration(Kind::Provider, provider_id).ok().and_then(|p| p.provider_listing) {
                            Some(listing) if listing.listed => { (lang.t("listed")) }
                            _ => { (lang.t("not_listed")) }
                        }
                    }
                    dt { (lang.t("image_style")) } dd { (lang.value(image_style.policy_name())) }
                    @if !likeness_of.is_empty() {
                        dt { (lang.t("likeness_of")) } dd { code { (likeness_of) } }
                        dt { (lang.t("consent")) } dd { (consent_of(console, lang, filing, likeness_of, consent_id)) }
                    }
                }
                RecordBody::Driver { identity_reference, .. } => {
                    dt { (lang.t("identity")) } dd { code { (identity_reference) } }
                }
                RecordBody::Consent { person_reference, consent_reference, .. } => {
                    dt { (lang.t("person")) } dd { code { (person_reference) } }
                    dt { (lang.t("consent_document")) } dd { code { (consent_reference) } }
                    dt { (lang.t("relied_on_by")) } dd { (relying_anchors(console, lang, &filing.id)) }
                }
                _ => {}
            }
            dt { (lang.t("filed")) } dd { (viewer.time(filing.created_at)) }
            dt { (lang.t("last_verdict")) }
            dd {
                @match &filing.last_review {
                    Some(review) => {
                        (verdict_at(review.verdict)) " — " (review.reviewer) ", " (viewer.time(review.reviewed_at))
                        @if !review.note.is_empty() { " — " q { (review.note) } }
                        @if let Some(sha) = &review.image_sha256 { " — SHA-256 " code.hash title=(sha) { (short(sha)) "…" } }
                    }
                    None => { (lang.t("none_yet")) }
                }
            }
        }
        @match &history {
            Ok(records) => { (history_table(viewer, filing, records)) }
            Err(e) => { h2 { (lang.t("history")) } p.notice { (lang.t("history_unreadable")) " " (e) } }
        }
    }
}

/// The consent a cloned anchor relies on, as its reviewer needs to see it before approving:
/// a link to the consent filing with its review state, and anything that would keep it from
/// counting for this anchor under C1 (another person, another merchant, an expired approval).
fn consent_of(
    console: &Console,
    lang: Lang,
    anchor: &Registration,
    likeness_of: &str,
    consent_id: &str,
) -> Markup {
    let none = html! { span.error { (lang.t("no_consent")) } };
    if consent_id.is_empty() {
        return none;
    }
    let consent = match console.pdp.get_registration(Kind::Consent, consent_id) {
        Ok(consent) => consent,
        // Named but not found: C1 counts it as none, and the reviewer needs the id to chase.
        Err(PdpError::NotFound(_)) => return html! { (none) " — " code { (consent_id) } },
        Err(e) => return html! { span.error { (e) } },
    };
    let approved = consent.review_status == ReviewStatus::Approved;
    let expired = consent
        .approval_expires_at()
        .is_some_and(|at| at <= console.pdp.now());
    let state = lang.value(consent.review_status.policy_name());
    html! {
        a href=(filing_path(&consent)) { (consent.id) } " — "
        @if approved { (state) } @else { span.error { (state) } }
        @if let RecordBody::Consent { owner_merchant_id, person_reference, .. } = &consent.body {
            @if person_reference != likeness_of {
                " — " span.error { (lang.t("consent_other_person")) " " code { (person_reference) } }
            }
            @if anchor.body.owner() != Some(owner_merchant_id.as_str()) {
                " — " span.error { (lang.t("consent_other_merchant")) " " (owner_merchant_id) }
            }
        }
        @if expired { " — " span.error { (lang.t("consent_expired")) } }
    }
}

/// The anchors that name consent `consent_id`, each with its review state: what revoking the
/// consent would stop (C1 shuts their live broadcasts down).
fn relying_anchors(console: &Console, lang: Lang, consent_id: &str) -> Markup {
    let anchors: Vec<(String, &'static str)> = console.pdp.store().visit_registrations(
        &[Kind::Anchor],
        |a| a.consent_id() == Some(consent_id),
        |mut found| {
            found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            found
                .iter()
                .map(|a| (a.id.clone(), a.review_status.policy_name()))
                .collect()
        },
    );
    html! {
        @if anchors.is_empty() { (lang.t("relied_on_by_none")) }
        @for (i, (id, state)) in anchors.iter().enumerate() {
            @if i > 0 { ", " }
            a href=(format!("/review/anchor/{id}")) { (id) } " (" (lang.value(state)) ")"
        }
    }
}

/// The filing's page, as an answer with `status`.
async fn page_answer(
    console: &Console,
    viewer: &Viewer,
    session: &Session,
    filing: &Registration,
    status: StatusCode,
    shown: Shown<'_>,
) -> Response {
    let image = image_of(console, filing, Fetch::CheckingApproval).await;
    // Seeing the image may have sent an approved anchor back to review: show it as it is now.
    let now = console.pdp.get_registration(filing.kind(), &filing.id).ok();
    let filing = now.as_ref().unwrap_or(filing);
    let title = format!("{} {}", viewer.lang.t(filing.kind().name()), filing.id);
    (
        status,
        page::layout(
            viewer,
            Some(session),
            &title,
            filing_page(console, viewer, session, filing, &shown, image.as_ref()),
        ),
    )
        .into_response()
}

pub async fn filing(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, LIST).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let Some(kind) = kind_named(&kind) else {
        return error_page(
            &viewer,
            &session,
            StatusCode::NOT_FOUND,
            "no such kind of filing",
        );
    };
    let filing = match console.pdp.get_registration(kind, &id) {
        Ok(filing) => filing,
        Err(e) => return error_page(&viewer, &session, status_of(&e), &e.to_string()),
    };
    // "& next" says which filing it recorded a verdict on.
    let done = query
        .get("done")
        .map(|done| done_notice(&console, lang, done));
    let notice = done
        .as_deref()
        .or(query.contains_key("recorded").then(|| lang.t("recorded")));
    let filter = QueueFilter::from_map(&query);
    page_answer(
        &console,
        &viewer,
        &session,
        &filing,
        StatusCode::OK,
        Shown {
            notice,
            kept_note: "",
            filter: &filter,
        },
    )
    .await
}

/// "Verdict recorded: Anchor image a1 · approved." for `done` = `anchor/a1`, the filing a
/// fast-path verdict was given on.
pub(super) fn done_notice(console: &Console, lang: Lang, done: &str) -> String {
    let filing = done
        .split_once('/')
        .and_then(|(kind, id)| console.pdp.get_registration(kind_named(kind)?, id).ok());
    match filing {
        Some(f) => format!(
            "{} {} {} · {}",
            lang.t("recorded"),
            lang.t(f.kind().name()),
            f.id,
            lang.value(f.review_status.policy_name())
        ),
        None => lang.t("recorded").to_owned(),
    }
}

/// Claims `filing` for the session; the claim in force answers (another's, if theirs holds).
async fn claim_for(
    console: &Console,
    session: &Session,
    kind: Kind,
    id: &str,
) -> Result<Claimed, PdpError> {
    let now = console.pdp.now();
    console
        .pdp
        .store()
        .claim_filing(kind, id, &session.caller_name(), now + CLAIM_MS, now)
        .await
}

/// The next filing after `after` that is not claimed by another, claimed now for the
/// session: one claimed by someone else meanwhile is passed by (a few tries, then the queue).
async fn next_claimed(
    console: &Console,
    session: &Session,
    filter: &QueueFilter,
    after: &Registration,
) -> Option<Registration> {
    let mut after = after.clone();
    for _ in 0..5 {
        let claims = claims(console);
        let next = neighbours(console, filter, &after, &session.caller_name(), &claims).next?;
        match claim_for(console, session, next.kind(), &next.id).await {
            Ok(Claimed::Yours(_)) => return Some(next),
            Ok(Claimed::Theirs(_)) => after = next,
            Err(error) => {
                // A claim only guides: go on without it.
                tracing::warn!(%error, "cannot claim the next filing");
                return Some(next);
            }
        }
    }
    None
}

pub async fn claim(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    StrictForm(form): StrictForm,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, REVIEW).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let Some(kind) = kind_named(&kind) else {
        return error_page(
            &viewer,
            &session,
            StatusCode::NOT_FOUND,
            "no such kind of filing",
        );
    };
    let filter = QueueFilter::from_map(&form);
    let filing = match console.pdp.get_registration(kind, &id) {
        Ok(filing) => filing,
        Err(e) => return error_page(&viewer, &session, status_of(&e), &e.to_string()),
    };
    let (status, notice) = if !csrf_ok(&session, &form) {
        (StatusCode::FORBIDDEN, lang.t("form_expired").to_owned())
    } else {
        match claim_for(&console, &session, kind, &id).await {
            Ok(Claimed::Yours(_)) => (StatusCode::OK, lang.t("claimed_by_you").to_owned()),
            Ok(Claimed::Theirs(ReviewClaim { by, .. })) => (
                StatusCode::CONFLICT,
                format!("{} {by}", lang.t("claimed_by")),
            ),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    };
    page_answer(
        &console,
        &viewer,
        &session,
        &filing,
        status,
        Shown {
            notice: Some(&notice),
            kept_note: "",
            filter: &filter,
        },
    )
    .await
}

pub async fn verdict(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    StrictForm(form): StrictForm,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, REVIEW).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let Some(kind) = kind_named(&kind) else {
        return error_page(
            &viewer,
            &session,
            StatusCode::NOT_FOUND,
            "no such kind of filing",
        );
    };
    let note = form.get("note").cloned().unwrap_or_default();
    let filter = QueueFilter::from_map(&form);
    // The filing's page as it is now, with `notice` and the typed note kept.
    let filing_again =
        async |status: StatusCode, notice: &str| match console.pdp.get_registration(kind, &id) {
            Ok(filing) => {
                page_answer(
                    &console,
                    &viewer,
                    &session,
                    &filing,
                    status,
                    Shown {
                        notice: Some(notice),
                        kept_note: &note,
                        filter: &filter,
                    },
                )
                .await
            }
            Err(e) => error_page(&viewer, &session, status, &format!("{notice} ({e})")),
        };
    // A verdict not recorded comes back as the filing's page, saying why.
    let not_recorded = async |status: StatusCode, why: &str| {
        filing_again(status, &format!("{} {why}", lang.t("verdict_not_recorded"))).await
    };
    if !csrf_ok(&session, &form) {
        // A form from before a second sign-in: nothing changes, the note is kept.
        return not_recorded(StatusCode::FORBIDDEN, lang.t("form_expired")).await;
    }
    let verdict = match form.get("verdict").map(String::as_str) {
        Some("approve") => Verdict::Approve,
        Some("reject") => Verdict::Reject,
        Some("revoke") => Verdict::Revoke,
        _ => {
            return not_recorded(
                StatusCode::BAD_REQUEST,
                "verdict: approve, reject or revoke",
            )
            .await;
        }
    };
    if note.len() > 512 {
        return not_recorded(StatusCode::BAD_REQUEST, "note: at most 512 bytes").await;
    }
    let expected_revision = match form.get("expected_revision").map(|r| r.parse::<u64>()) {
        Some(Ok(revision)) => Some(revision),
        Some(Err(_)) => {
            return not_recorded(StatusCode::BAD_REQUEST, "expected_revision: a number").await;
        }
        None => None,
    };
    let approval_expires_at =
        match viewer.parse_local("expires", form.get("expires").map_or("", String::as_str)) {
            Ok(at) => at,
            Err(e) => return not_recorded(StatusCode::BAD_REQUEST, &e).await,
        };
    let seen_image_sha256 = match form.get("image_sha256").filter(|s| !s.is_empty()) {
        Some(seen) => match crate::api::convert::sha256_hex_field("image_sha256", seen) {
            Ok(seen) => Some(seen),
            Err(e) => return not_recorded(StatusCode::BAD_REQUEST, &e.to_string()).await,
        },
        None => None,
    };
    // An approval binds to the image the reviewer saw: without one shown, none is given.
    if verdict == Verdict::Approve
        && kind == Kind::Anchor
        && console.pdp.images().is_some()
        && seen_image_sha256.is_none()
    {
        return not_recorded(StatusCode::BAD_REQUEST, lang.t("image_not_seen")).await;
    }
    let command = ReviewCommand {
        kind,
        id: id.clone(),
        verdict,
        reviewer: session.caller.name.clone(),
        note: note.clone(),
        expected_revision,
        approval_expires_at,
        seen_image_sha256: seen_image_sha256.clone(),
        image: None,
    };
    let origin = super::origin(
        &session,
        serde_json::json!({
            "kind": kind.name(),
            "id": id,
            "verdict": form.get("verdict"),
            "note": note,
            "expected_revision": expected_revision,
            "approval_expires_at": approval_expires_at,
            "image_sha256": seen_image_sha256,
        }),
    );
    match console.pdp.review(&origin, &command).await {
        Ok(filing) if verdict == Verdict::Revoke => {
            Redirect::to(&filter.link(&filing_path(&filing), &[("recorded", "")])).into_response()
        }
        Ok(filing) => {
            // The fast path: on to the next filing not claimed by another, claimed now.
            let done = format!("{}/{id}", kind.name());
            match next_claimed(&console, &session, &filter, &filing).await {
                Some(next) => Redirect::to(&filter.link(&filing_path(&next), &[("done", &done)]))
                    .into_response(),
                None => Redirect::to(&filter.link("/review", &[("done", &done)])).into_response(),
            }
        }
        Err(PdpError::Aborted(why)) => {
            // Someone else's verdict or change landed first, or the image changed: show the
            // filing as it is now.
            filing_again(
                StatusCode::CONFLICT,
                &format!("{} {why}", lang.t("conflict")),
            )
            .await
        }
        Err(e @ PdpError::NotFound(_)) => {
            error_page(&viewer, &session, StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e @ (PdpError::InvalidArgument { .. } | PdpError::FailedPrecondition(_))) => {
            not_recorded(StatusCode::BAD_REQUEST, &e.to_string()).await
        }
        Err(e) => not_recorded(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_changes_read_in_the_viewers_language() {
        let filing = Registration {
            id: "a1".into(),
            revision: 3,
            review_status: ReviewStatus::PendingReview,
            last_review: None,
            created_at: 0,
            updated_at: 0,
            body: RecordBody::Anchor {
                owner_merchant_id: "m1".into(),
                provider_id: "p1".into(),
                image_style: crate::domain::ImageStyle::RealisticHuman,
                image_reference: "oss://anchors/a1.png".into(),
                display_name: "Mei".into(),
                likeness_of: String::new(),
                consent_id: String::new(),
            },
            provider_listing: None,
            ai_feature_clearance: None,
        };
        assert_eq!(
            change_text(Lang::Zh, &filing, "anchor a1 revision 2, APPROVED"),
            "版本 2 · 已通过"
        );
        assert_eq!(
            change_text(Lang::En, &filing, "anchor a1 revision 3, PENDING_REVIEW"),
            "Revision 3 · pending review"
        );
        assert_eq!(
            change_text(Lang::En, &filing, "something else"),
            "something else"
        );
    }
}
