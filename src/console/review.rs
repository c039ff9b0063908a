//! The reviewer's queue: pending anchors, drivers, rooms and likeness consents (anchors with
//! thumbnails), searched, sorted and claimed, and bulk approval with one confirmation (each
//! filing still its own verdict).
//! One filing's page and its verdict are in `filing.rs`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use maud::{Markup, html};

use super::filing::{Fetch, image_of};
use super::guard::StrictForm;
use super::page::{self, Lang};
use super::session::Session;
use super::viewer::Viewer;
use super::{Access, Console, access, csrf_ok, may};
use crate::domain::{
    Kind, RecordBody, Registration, ReviewClaim, ReviewCommand, ReviewStatus, Verdict,
};
use crate::error::PdpError;

pub(super) const LIST: &str = "/anchorpdp.v1.PolicyAdmin/ListRegistrations";
pub(super) const REVIEW: &str = "/anchorpdp.v1.PolicyAdmin/ReviewFiling";
/// The kinds a reviewer gives verdicts on: the three parts of admission (R7) and the consent
/// a cloned anchor relies on (C1).
pub(super) const REVIEWED_KINDS: [Kind; 4] =
    [Kind::Anchor, Kind::Driver, Kind::Room, Kind::Consent];

/// Rows per queue page.
const QUEUE_PAGE: usize = 50;
/// Filings one bulk approval may carry.
const BULK_MAX: usize = QUEUE_PAGE;
/// Images fetched, or approvals given, at once by one bulk approval.
const AT_ONCE: usize = 8;
/// How long a claim holds: a reviewer's look at one filing, with room to spare.
pub(super) const CLAIM_MS: i64 = 15 * 60_000;

pub(super) fn kind_named(name: &str) -> Option<Kind> {
    REVIEWED_KINDS.into_iter().find(|k| k.name() == name)
}

/// Which filings the queue shows and in which order; carried from the queue to each filing
/// (and through "& next") so that a reviewer works through the list they chose.
#[derive(serde::Deserialize, Default, Clone)]
pub struct QueueFilter {
    /// One kind, or all when empty.
    #[serde(default)]
    pub kind: String,
    /// Part of an id, a name, a merchant id or a cloned person (any case).
    #[serde(default)]
    pub q: String,
    /// `oldest` (the default), `newest`, `name` or `merchant`.
    #[serde(default)]
    pub sort: String,
}

impl QueueFilter {
    pub fn from_map(map: &HashMap<String, String>) -> QueueFilter {
        let field = |name: &str| map.get(name).cloned().unwrap_or_default();
        QueueFilter {
            kind: field("kind"),
            q: field("q"),
            sort: field("sort"),
        }
    }

    /// The filter as query pairs, empty ones left out.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [("kind", &self.kind), ("q", &self.q), ("sort", &self.sort)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.as_str()))
            .collect()
    }

    /// `path` with the filter (and `extra`) as its query.
    pub fn link(&self, path: &str, extra: &[(&str, &str)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs().into_iter().chain(extra.iter().copied()) {
            query.append_pair(k, v);
        }
        let query = query.finish();
        if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        }
    }

    fn kinds(&self) -> Vec<Kind> {
        match kind_named(&self.kind) {
            Some(kind) => vec![kind],
            None => REVIEWED_KINDS.to_vec(),
        }
    }

    fn matches(&self, filing: &Registration) -> bool {
        let q = self.q.trim().to_lowercase();
        q.is_empty()
            || filing.id.to_lowercase().contains(&q)
            || display_name(&filing.body).to_lowercase().contains(&q)
            || filing
                .body
                .owner()
                .is_some_and(|o| o.to_lowercase().contains(&q))
            || person(&filing.body).is_some_and(|p| p.to_lowercase().contains(&q))
    }

    /// The queue's order; ties broken by kind and id so that it is total.
    pub fn compare(&self, a: &Registration, b: &Registration) -> Ordering {
        let first = match self.sort.as_str() {
            "newest" => b.created_at.cmp(&a.created_at),
            "name" => display_name(&a.body)
                .to_lowercase()
                .cmp(&display_name(&b.body).to_lowercase()),
            "merchant" => a
                .body
                .owner()
                .cmp(&b.body.owner())
                .then(a.created_at.cmp(&b.created_at)),
            _ => a.created_at.cmp(&b.created_at),
        };
        first
            .then(a.kind().name().cmp(b.kind().name()))
            .then(a.id.cmp(&b.id))
    }

    /// Calls `visit` with every pending filing the filter selects, in its order, as
    /// references into the in-memory view that decisions read (no disk reads, no decoding): a
    /// page copies only the filings it shows, however long the queue.
    pub fn with_pending<R>(
        &self,
        console: &Console,
        visit: impl FnOnce(&[&Registration]) -> R,
    ) -> R {
        let keep =
            |r: &Registration| r.review_status == ReviewStatus::PendingReview && self.matches(r);
        console
            .pdp
            .store()
            .visit_registrations(&self.kinds(), keep, |mut filings| {
                if self.sort == "name" {
                    // Each name lower-cased once, not at every comparison.
                    filings.sort_by_cached_key(|f| {
                        let name = display_name(&f.body).to_lowercase();
                        (name, f.kind().name(), f.id.as_str())
                    });
                } else {
                    filings.sort_unstable_by(|a, b| self.compare(a, b));
                }
                visit(&filings)
            })
    }
}

/// Every filing of `kinds` that `keep` accepts, oldest first: read from the in-memory view
/// that decisions read, so it costs no disk reads and no decoding.
pub(super) fn filings(
    console: &Console,
    kinds: &[Kind],
    keep: impl Fn(&Registration) -> bool,
) -> Vec<Registration> {
    console
        .pdp
        .store()
        .registrations_page(kinds, keep, 0, usize::MAX)
        .1
}

pub(super) fn claim_key(filing: &Registration) -> String {
    crate::store::claimed_filing(filing.kind(), &filing.id)
}

/// The claims in force now; none if they cannot be read (a claim only guides).
pub(super) fn claims(console: &Console) -> HashMap<String, ReviewClaim> {
    let now = console.pdp.now();
    console
        .pdp
        .store()
        .filing_claims(now)
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read review claims");
            HashMap::new()
        })
}

/// The real person a filing is about, when it is a cloned anchor or a consent: a reviewer
/// searches for them to see every filing about one person together.
fn person(body: &RecordBody) -> Option<&str> {
    match body {
        RecordBody::Anchor { likeness_of, .. } if !likeness_of.is_empty() => Some(likeness_of),
        RecordBody::Consent {
            person_reference, ..
        } => Some(person_reference),
        _ => None,
    }
}

pub(super) fn display_name(body: &RecordBody) -> &str {
    match body {
        RecordBody::Anchor { display_name, .. }
        | RecordBody::Driver { display_name, .. }
        | RecordBody::Room { display_name, .. }
        | RecordBody::Consent { display_name, .. }
        | RecordBody::Merchant { display_name, .. }
        | RecordBody::Provider { display_name }
        | RecordBody::AiFeature { display_name } => display_name,
    }
}

/// A filing's thumbnail (anchors have images), served by the console.
/// `version`: the hash the page was rendered with, when it was (the image must still be it).
pub(super) fn thumbnail(filing: &Registration, version: Option<&str>) -> Markup {
    let src = match version {
        Some(sha) => format!(
            "/review/anchor/{}/image?v={}",
            filing.id,
            super::filing::short(sha)
        ),
        None => format!("/review/anchor/{}/image", filing.id),
    };
    html! {
        @if filing.kind() == Kind::Anchor {
            img.thumb src=(src) alt="" loading="lazy" width="56" height="56";
        }
    }
}

/// "claimed by X" for a claim held by another, "claimed by you" for one's own.
pub(super) fn claim_badge(lang: Lang, session: &Session, claim: Option<&ReviewClaim>) -> Markup {
    html! {
        @if let Some(claim) = claim {
            @if claim.by == session.caller_name() {
                span.claim.mine { (lang.t("claimed_by_you")) }
            } @else {
                span.claim { (lang.t("claimed_by")) " " (claim.by) }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct QueueQuery {
    #[serde(flatten)]
    filter: QueueFilter,
    /// Which page of `QUEUE_PAGE` rows, from 0.
    #[serde(default)]
    page: usize,
    /// The filing a fast-path verdict was given on when no filing came after it.
    #[serde(default)]
    done: String,
}

pub async fn queue(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<QueueQuery>,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, LIST).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let filter = &query.filter;
    let claims = claims(&console);
    // Only the page and the first filing free to review are copied out of the view.
    let (count, page_no, pages, shown, start) = filter.with_pending(&console, |pending| {
        let pages = pending.len().div_ceil(QUEUE_PAGE).max(1);
        // A page past the end shows the last one.
        let page_no = query.page.min(pages - 1);
        let shown: Vec<Registration> = pending[(page_no * QUEUE_PAGE).min(pending.len())
            ..((page_no + 1) * QUEUE_PAGE).min(pending.len())]
            .iter()
            .map(|f| (*f).clone())
            .collect();
        // The first filing not claimed by another: where "start" (and the j key) leads.
        let start = pending
            .iter()
            .find(|f| {
                claims
                    .get(&claim_key(f))
                    .is_none_or(|c| c.by == session.caller_name())
            })
            .map(|f| (*f).clone());
        (pending.len(), page_no, pages, shown, start)
    });
    let page_link = |page: usize| filter.link("/review", &[("page", &page.to_string())]);
    let bulk = may(&session, REVIEW);
    let body = html! {
        @if !query.done.is_empty() { p.notice role="status" { (super::filing::done_notice(&console, lang, &query.done)) " " (lang.t("queue_done")) } }
        form.filter method="get" action="/review" {
            label { (lang.t("kind"))
                select name="kind" {
                    option value="" { (lang.t("all")) }
                    @for kind in REVIEWED_KINDS {
                        option value=(kind.name()) selected[filter.kind == kind.name()] { (lang.t(kind.name())) }
                    }
                }
            }
            label { (lang.t("search")) input type="search" name="q" value=(filter.q) placeholder=(lang.t("search_hint")); }
            label { (lang.t("sort"))
                select name="sort" {
                    @for (value, key) in [("oldest", "sort_oldest"), ("newest", "sort_newest"), ("name", "sort_name"), ("merchant", "sort_merchant")] {
                        option value=(value) selected[filter.sort == value || (filter.sort.is_empty() && value == "oldest")] { (lang.t(key)) }
                    }
                }
            }
            button type="submit" { (lang.t("filter")) }
        }
        p {
            (count) " " (lang.t("pending"))
            @if let Some(first) = &start {
                " · " a.start data-key="j" href=(filter.link(&super::filing::filing_path(first), &[])) { (lang.t("start_reviewing")) " (j)" }
            }
        }
        @if count == 0 {
            (page::message(lang.t("empty_queue")))
        } @else {
            form.bulk method="post" action="/review/bulk" {
                input type="hidden" name="csrf" value=(session.csrf);
                div.scroll {
                    table.queue {
                        thead { tr {
                            @if bulk { th { input type="checkbox" id="pick-all" title=(lang.t("select_page")); } }
                            th { (lang.t("image")) } th { (lang.t("kind")) } th { (lang.t("id")) } th { (lang.t("owner")) }
                            th { (lang.t("name")) } th { (lang.t("filed")) } th { (lang.t("claim")) }
                        } }
                        tbody {
                            @for filing in &shown {
                                tr {
                                    @if bulk {
                                        td { input type="checkbox" class="pick" name=(format!("pick.{}", claim_key(filing))) value=(filing.revision) aria-label=(filing.id); }
                                    }
                                    td { (thumbnail(filing, None)) }
                                    td { (lang.t(filing.kind().name())) }
                                    td { a href=(filter.link(&super::filing::filing_path(filing), &[])) { (filing.id) } }
                                    td { (filing.body.owner().unwrap_or("")) }
                                    td { (display_name(&filing.body)) }
                                    td { (viewer.time(filing.created_at)) }
                                    td { (claim_badge(lang, &session, claims.get(&claim_key(filing)))) }
                                }
                            }
                        }
                    }
                }
                @if bulk { button type="submit" { (lang.t("approve_selected")) } }
            }
            @if pages > 1 {
                p.pages {
                    @if page_no > 0 { a href=(page_link(0)) { "« " (lang.t("first_page")) } " " a href=(page_link(page_no - 1)) { "← " (lang.t("previous")) } " " }
                    (page_no + 1) " / " (pages)
                    @if page_no + 1 < pages { " " a href=(page_link(page_no + 1)) { (lang.t("next")) " →" } " " a href=(page_link(pages - 1)) { (lang.t("last_page")) " »" } }
                }
            }
        }
    };
    page::layout(&viewer, Some(&session), lang.t("review_queue"), body).into_response()
}

/// The filings a bulk form picked: `pick.<kind>/<id>` = the revision seen.
fn picked(form: &HashMap<String, String>) -> Result<Vec<(Kind, String, u64)>, String> {
    let mut picks = Vec::new();
    for (name, value) in form {
        let Some(filing) = name.strip_prefix("pick.") else {
            continue;
        };
        let (kind, id) = filing
            .split_once('/')
            .and_then(|(kind, id)| Some((kind_named(kind)?, id)))
            .ok_or_else(|| format!("{name}: not a filing"))?;
        let revision = value
            .parse()
            .map_err(|_| format!("{name}: the revision is not a number"))?;
        picks.push((kind, id.to_owned(), revision));
    }
    picks.sort();
    Ok(picks)
}

/// Bulk approval: the first post shows what was picked and asks once; the confirmed post
/// approves each filing as its own verdict, at the revision the reviewer saw.
pub async fn bulk(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    StrictForm(form): StrictForm,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, REVIEW).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let refused = |status: StatusCode, why: &str| {
        (
            status,
            page::layout(
                &viewer,
                Some(&session),
                lang.t("approve_selected"),
                html! { p.notice { (lang.t("verdict_not_recorded")) " " (why) } p { a href="/review" { (lang.t("review_queue")) } } },
            ),
        )
            .into_response()
    };
    if !csrf_ok(&session, &form) {
        return refused(StatusCode::FORBIDDEN, lang.t("form_expired"));
    }
    let picks = match picked(&form) {
        Ok(picks) if picks.is_empty() => {
            return refused(StatusCode::BAD_REQUEST, lang.t("none_selected"));
        }
        Ok(picks) if picks.len() > BULK_MAX => {
            return refused(StatusCode::BAD_REQUEST, &format!("at most {BULK_MAX}"));
        }
        Ok(picks) => picks,
        Err(e) => return refused(StatusCode::BAD_REQUEST, &e),
    };
    let note = form.get("note").cloned().unwrap_or_default();
    if note.len() > 512 {
        return refused(StatusCode::BAD_REQUEST, "note: at most 512 bytes");
    }
    if form.get("confirm").map(String::as_str) != Some("yes") {
        return confirm_page(&console, &viewer, &session, &picks)
            .await
            .into_response();
    }
    // Each filing is its own verdict, a few at once (each approval of an anchor fetches its
    // image); one claimed by another reviewer, or whose image was not shown, is not approved.
    let claims = claims(&console);
    let me = session.caller_name();
    let approve = |(kind, id, revision): &(Kind, String, u64)| {
        let (kind, revision) = (*kind, *revision);
        let claimed = claims
            .get(&crate::store::claimed_filing(kind, id))
            .filter(|c| c.by != me)
            .map(|c| format!("{} {}", lang.t("claimed_by"), c.by));
        let seen = form.get(&format!("sha.{}/{id}", kind.name())).cloned();
        let unseen = kind == Kind::Anchor && console.pdp.images().is_some() && seen.is_none();
        let command = ReviewCommand {
            kind,
            id: id.clone(),
            verdict: Verdict::Approve,
            reviewer: session.caller.name.clone(),
            note: note.clone(),
            expected_revision: Some(revision),
            approval_expires_at: None,
            seen_image_sha256: seen,
            image: None,
        };
        let origin = super::origin(
            &session,
            serde_json::json!({
                "kind": kind.name(),
                "id": id,
                "verdict": "approve",
                "note": note,
                "expected_revision": revision,
                "bulk": picks.len(),
            }),
        );
        let console = &console;
        async move {
            let outcome = match (claimed, unseen) {
                (Some(claimed), _) => Err(claimed),
                (None, true) => Err(lang.t("image_not_seen").to_owned()),
                (None, false) => match console.pdp.review(&origin, &command).await {
                    Ok(filing) => Ok(filing.revision),
                    Err(PdpError::Aborted(why)) => Err(format!("{} {why}", lang.t("conflict"))),
                    Err(e) => Err(e.to_string()),
                },
            };
            (kind, command.id, outcome)
        }
    };
    let each: Vec<_> = picks.iter().map(approve).collect();
    let outcomes: Vec<_> = futures_util::stream::iter(each)
        .buffered(AT_ONCE)
        .collect()
        .await;
    let approved = outcomes.iter().filter(|(_, _, o)| o.is_ok()).count();
    let status = if approved == outcomes.len() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    let body = html! {
        p.notice { (approved) " / " (outcomes.len()) " " (lang.t("bulk_approved")) }
        div.scroll {
            table.queue {
                thead { tr { th { (lang.t("kind")) } th { (lang.t("id")) } th { (lang.t("outcome")) } } }
                tbody {
                    @for (kind, id, outcome) in &outcomes {
                        tr {
                            td { (lang.t(kind.name())) }
                            td { a href=(format!("/review/{}/{id}", kind.name())) { (id) } }
                            td {
                                @match outcome {
                                    Ok(revision) => { (lang.value("APPROVED")) " · " (lang.t("revision")) " " (revision) }
                                    Err(why) => { span.error { (lang.t("verdict_not_recorded")) " " (why) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        p { a data-key="j" href="/review" { (lang.t("review_queue")) " (j)" } }
    };
    (
        status,
        page::layout(&viewer, Some(&session), lang.t("approve_selected"), body),
    )
        .into_response()
}

/// A picked filing as the confirmation shows it: the filing and the hash of its image.
async fn shown<'a>(
    console: &Console,
    pick: &'a (Kind, String, u64),
) -> (
    Option<Registration>,
    Option<String>,
    &'a (Kind, String, u64),
) {
    let filing = console.pdp.get_registration(pick.0, &pick.1).ok();
    let seen = match &filing {
        Some(filing) => image_of(console, filing, Fetch::Recent)
            .await
            .and_then(Result::ok)
            .map(|image| image.sha256.clone()),
        None => None,
    };
    (filing, seen, pick)
}

/// The one confirmation of a bulk approval: what will be approved, each with its image (and
/// that image's hash, so that an image changed before the confirmation is not approved).
async fn confirm_page(
    console: &Console,
    viewer: &Viewer,
    session: &Session,
    picks: &[(Kind, String, u64)],
) -> Markup {
    let lang = viewer.lang;
    // Built first: a closure inside the stream would not be Send for every lifetime.
    let each: Vec<_> = picks.iter().map(|pick| shown(console, pick)).collect();
    let filings: Vec<_> = futures_util::stream::iter(each)
        .buffered(AT_ONCE)
        .collect()
        .await;
    let body = html! {
        p.notice { (lang.t("bulk_confirm")) " " (picks.len()) }
        form.bulk method="post" action="/review/bulk" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="confirm" value="yes";
            div.scroll {
                table.queue {
                    thead { tr { th { (lang.t("image")) } th { (lang.t("kind")) } th { (lang.t("id")) } th { (lang.t("owner")) } th { (lang.t("name")) } } }
                    tbody {
                        @for (filing, seen, (kind, id, revision)) in &filings {
                            tr {
                                td {
                                    input type="hidden" name=(format!("pick.{}/{id}", kind.name())) value=(revision);
                                    @if let Some(sha) = seen { input type="hidden" name=(format!("sha.{}/{id}", kind.name())) value=(sha); }
                                    @if let Some(filing) = filing { (thumbnail(filing, seen.as_deref())) }
                                }
                                td { (lang.t(kind.name())) }
                                td { (id) }
                                td { @if let Some(f) = filing { (f.body.owner().unwrap_or("")) } }
                                td { @if let Some(f) = filing { (display_name(&f.body)) } }
                            }
                        }
                    }
                }
            }
            label { (lang.t("note")) textarea name="note" maxlength="512" rows="2" {} }
            button type="submit" autofocus { (lang.t("bulk_confirm_button")) " (" (picks.len()) ")" }
            " " a href="/review" { (lang.t("cancel")) }
        }
    };
    page::layout(viewer, Some(session), lang.t("approve_selected"), body)
}
