//! The reviewer's pages: the queue of pending anchors, drivers and rooms, each filing with its
//! image, and the verdict form (PolicyAdmin/ReviewFiling behind the same roles).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::guard::StrictForm;
use super::page::{self, Lang};
use super::session::Session;
use super::{Access, Console, access, csrf_ok, may};
use crate::domain::{
    Kind, LogRecord, Millis, RecordBody, Registration, ReviewCommand, ReviewStatus, Verdict,
};
use crate::error::PdpError;
use crate::service::Origin;

const LIST: &str = "/anchorpdp.v1.PolicyAdmin/ListRegistrations";
const REVIEW: &str = "/anchorpdp.v1.PolicyAdmin/ReviewFiling";
const REVIEWED_KINDS: [Kind; 3] = [Kind::Anchor, Kind::Driver, Kind::Room];

#[derive(serde::Deserialize)]
pub struct QueueFilter {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    merchant: String,
    /// Which page of `QUEUE_PAGE` rows, from 0.
    #[serde(default)]
    page: usize,
}

/// Rows per queue page: the oldest come first, and a reviewer works from the top.
const QUEUE_PAGE: usize = 200;
/// Changes a filing's history shows, and how many log records it looks through for them.
const HISTORY_RECORDS: usize = 100;
const HISTORY_SCAN: usize = 1_000_000;
/// How far before a filing's creation its history is looked for: replicas' clocks differ
/// by a little.
const CLOCK_SLACK_MS: i64 = 60_000;

fn kind_named(name: &str) -> Option<Kind> {
    REVIEWED_KINDS.into_iter().find(|k| k.name() == name)
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

pub async fn queue(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(filter): Query<QueueFilter>,
) -> Response {
    let lang = Lang::of(&headers);
    let session = match access(&console, &headers, LIST).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let kinds: Vec<Kind> = match kind_named(&filter.kind) {
        Some(kind) => vec![kind],
        None => REVIEWED_KINDS.to_vec(),
    };
    let merchant = filter.merchant.trim();
    let pending = |r: &Registration| {
        r.review_status == ReviewStatus::PendingReview
            && (merchant.is_empty() || r.body.owner() == Some(merchant))
    };
    // Only the page shown is copied out of the view; the count is of all pending. A page past
    // the end shows the last one.
    let store = console.pdp.store();
    let mut page_no = filter.page;
    let (mut count, mut shown) = store.registrations_page(
        &kinds,
        pending,
        page_no.saturating_mul(QUEUE_PAGE),
        QUEUE_PAGE,
    );
    let pages = count.div_ceil(QUEUE_PAGE).max(1);
    if page_no >= pages {
        page_no = pages - 1;
        (count, shown) =
            store.registrations_page(&kinds, pending, page_no * QUEUE_PAGE, QUEUE_PAGE);
    }
    let link = |page: usize| {
        form_urlencoded::Serializer::new(String::from("/review?"))
            .append_pair("kind", &filter.kind)
            .append_pair("merchant", &filter.merchant)
            .append_pair("page", &page.to_string())
            .finish()
    };
    let body = html! {
        form.filter method="get" action="/review" {
            label { (lang.t("kind")) " "
                select name="kind" {
                    option value="" { (lang.t("all")) }
                    @for kind in REVIEWED_KINDS {
                        option value=(kind.name()) selected[filter.kind == kind.name()] { (lang.t(kind.name())) }
                    }
                }
            }
            label { (lang.t("merchant")) " " input type="text" name="merchant" value=(filter.merchant); }
            button type="submit" { (lang.t("filter")) }
        }
        p { (count) " " (lang.t("pending")) }
        @if count == 0 {
            (page::message(lang.t("empty_queue")))
        } @else {
            table.queue {
                thead { tr { th { (lang.t("kind")) } th { (lang.t("id")) } th { (lang.t("owner")) } th { (lang.t("name")) } th { (lang.t("filed")) } } }
                tbody {
                    @for filing in shown {
                        tr {
                            td { (lang.t(filing.kind().name())) }
                            td { a href=(format!("/review/{}/{}", filing.kind().name(), filing.id)) { (filing.id) } }
                            td { (filing.body.owner().unwrap_or("")) }
                            td { (display_name(&filing.body)) }
                            td { (page::time(filing.created_at)) }
                        }
                    }
                }
            }
            @if pages > 1 {
                p.pages {
                    @if page_no > 0 { a href=(link(page_no - 1)) { "←" } " " }
                    (page_no + 1) " / " (pages)
                    @if page_no + 1 < pages { " " a href=(link(page_no + 1)) { "→" } }
                }
            }
        }
    };
    page::layout(lang, Some(&session), lang.t("review_queue"), body).into_response()
}

fn display_name(body: &RecordBody) -> &str {
    match body {
        RecordBody::Anchor { display_name, .. }
        | RecordBody::Driver { display_name, .. }
        | RecordBody::Room { display_name, .. }
        | RecordBody::Merchant { display_name, .. }
        | RecordBody::Provider { display_name }
        | RecordBody::AiFeature { display_name } => display_name,
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

/// The history table: when, what, who, the revision and state it led to, and the note.
fn history_table(lang: Lang, filing: &Registration, records: &[LogRecord]) -> Markup {
    let prefix = format!("{} {} ", filing.kind().name(), filing.id);
    // Revision 1 is the filing itself: without it, retention took the earliest changes.
    let whole = records
        .last()
        .is_some_and(|r| r.change.starts_with(&format!("{prefix}revision 1,")));
    html! {
        h2 { (lang.t("history")) }
        @if records.is_empty() {
            p { (lang.t("history_none")) }
        } @else {
            table.log {
                thead { tr {
                    th { (lang.t("time")) } th { (lang.t("action")) } th { (lang.t("caller")) }
                    th { (lang.t("change")) } th { (lang.t("note")) }
                } }
                tbody {
                    @for r in records {
                        tr {
                            td { (page::time(r.at)) }
                            td { (r.action) " · " (r.entry_point) }
                            td { (r.caller) }
                            td { (r.change.strip_prefix(prefix.as_str()).unwrap_or(&r.change)) }
                            td { @if let Some(note) = r.request.get("note").and_then(|n| n.as_str()) { (note) } }
                        }
                    }
                }
            }
            @if !whole { p { (lang.t("history_partial")) } }
        }
    }
}

/// A filing's fields, its image, its review history and the verdict form.
fn filing_page(
    console: &Console,
    lang: Lang,
    session: &Session,
    filing: &Registration,
    notice: Option<&str>,
    kept_note: &str,
) -> Markup {
    let csrf = session.csrf.as_str();
    // Only the verdicts this filing's state takes, and only for a role that may give them.
    let verdicts: &[(&str, &str)] = if !may(session, REVIEW) {
        &[]
    } else {
        match filing.review_status {
            ReviewStatus::PendingReview => &[("approve", "approve"), ("reject", "reject")],
            ReviewStatus::Approved => &[("revoke", "revoke")],
            _ => &[],
        }
    };
    let history = history(console, filing);
    let verdict_at = |v: Verdict| match v {
        Verdict::Approve => lang.t("approve"),
        Verdict::Reject => lang.t("reject"),
        Verdict::Revoke => lang.t("revoke"),
    };
    html! {
        @if let Some(notice) = notice { p.notice { (notice) } }
        dl {
            dt { (lang.t("kind")) } dd { (lang.t(filing.kind().name())) }
            dt { (lang.t("id")) } dd { (filing.id) }
            dt { (lang.t("name")) } dd { (display_name(&filing.body)) }
            dt { (lang.t("owner")) } dd { (filing.body.owner().unwrap_or("")) }
            @match &filing.body {
                RecordBody::Anchor { provider_id, image_style, image_reference, .. } => {
                    dt { (lang.t("provider")) }
                    dd {
                        (provider_id) " — "
                        @match console.pdp.get_registration(Kind::Provider, provider_id).ok().and_then(|p| p.provider_listing) {
                            Some(listing) if listing.listed => { (lang.t("listed")) }
                            _ => { (lang.t("not_listed")) }
                        }
                    }
                    dt { (lang.t("image_style")) } dd { (lang.value(image_style.policy_name())) }
                    dt { (lang.t("image")) }
                    dd {
                        @match console.image_url(image_reference) {
                            Some(url) => { img.anchor src=(url) alt=(image_reference); br; code { (image_reference) } }
                            None => { code { (image_reference) } " — " (lang.t("no_image")) }
                        }
                    }
                }
                RecordBody::Driver { identity_reference, .. } => {
                    dt { (lang.t("identity")) } dd { code { (identity_reference) } }
                }
                _ => {}
            }
            dt { (lang.t("filed")) } dd { (page::time(filing.created_at)) }
            dt { (lang.t("state")) } dd { (lang.value(filing.review_status.policy_name())) }
            dt { (lang.t("revision")) } dd { (filing.revision) }
            dt { (lang.t("last_verdict")) }
            dd {
                @match &filing.last_review {
                    Some(review) => {
                        (verdict_at(review.verdict)) " — " (review.reviewer) ", " (page::time(review.reviewed_at))
                        @if !review.note.is_empty() { " — " q { (review.note) } }
                    }
                    None => { (lang.t("none_yet")) }
                }
            }
        }
        @if !verdicts.is_empty() {
            form.verdict method="post" action=(format!("/review/{}/{}", filing.kind().name(), filing.id)) {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="expected_revision" value=(filing.revision);
                fieldset {
                    legend { (lang.t("verdict")) }
                    @for (value, key) in verdicts {
                        label { input type="radio" name="verdict" value=(value) required; " " (lang.t(key)) }
                    }
                }
                label { (lang.t("note")) textarea name="note" maxlength="512" { (kept_note) } }
                @if filing.review_status == ReviewStatus::PendingReview {
                    label { (lang.t("expires")) input type="datetime-local" name="expires"; }
                }
                button type="submit" { (lang.t("submit")) }
            }
        }
        @match &history {
            Ok(records) => { (history_table(lang, filing, records)) }
            Err(e) => { h2 { (lang.t("history")) } p.notice { (lang.t("history_unreadable")) " " (e) } }
        }
    }
}

pub async fn filing(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lang = Lang::of(&headers);
    let session = match access(&console, &headers, LIST).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let Some(kind) = kind_named(&kind) else {
        return (StatusCode::NOT_FOUND, "no such kind of filing").into_response();
    };
    let filing = match console.pdp.get_registration(kind, &id) {
        Ok(filing) => filing,
        Err(PdpError::NotFound(e)) => return (StatusCode::NOT_FOUND, e).into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let notice = query.contains_key("recorded").then(|| lang.t("recorded"));
    let body = filing_page(&console, lang, &session, &filing, notice, "");
    page::layout(
        lang,
        Some(&session),
        &format!("{} {}", lang.t(kind.name()), filing.id),
        body,
    )
    .into_response()
}

/// `2026-12-01T09:30` (a datetime-local field, read as UTC) in Unix milliseconds.
pub(super) fn parse_expiry(value: &str) -> Result<Option<i64>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    humantime::parse_rfc3339_weak(&format!("{}:00Z", value.replace('T', " ")))
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{}Z", value.replace('T', " "))))
        .map_err(|e| format!("expires: {e}"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| format!("expires: {e}"))
        })
        .map(|d| Some(d.as_millis() as i64))
}

pub async fn verdict(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
    StrictForm(form): StrictForm,
) -> Response {
    let lang = Lang::of(&headers);
    let session = match access(&console, &headers, REVIEW).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let Some(kind) = kind_named(&kind) else {
        return (StatusCode::NOT_FOUND, "no such kind of filing").into_response();
    };
    let note = form.get("note").cloned().unwrap_or_default();
    // The filing's page as it is now, with `notice` and the typed note kept.
    let filing_again = |status: StatusCode, notice: &str| {
        let filing = console.pdp.get_registration(kind, &id)?;
        Ok::<_, PdpError>(
            (
                status,
                page::layout(
                    lang,
                    Some(&session),
                    &format!("{} {}", lang.t(kind.name()), filing.id),
                    filing_page(&console, lang, &session, &filing, Some(notice), &note),
                ),
            )
                .into_response(),
        )
    };
    // A verdict not recorded comes back as the filing's page, saying why.
    let not_recorded = |status: StatusCode, why: &str| {
        filing_again(status, &format!("{} {why}", lang.t("verdict_not_recorded")))
            .unwrap_or_else(|e| (status, format!("{why} ({e})")).into_response())
    };
    if !csrf_ok(&session, &form) {
        // A form from before a second sign-in: nothing changes, the note is kept.
        return not_recorded(StatusCode::FORBIDDEN, lang.t("form_expired"));
    }
    let verdict = match form.get("verdict").map(String::as_str) {
        Some("approve") => Verdict::Approve,
        Some("reject") => Verdict::Reject,
        Some("revoke") => Verdict::Revoke,
        _ => {
            return not_recorded(
                StatusCode::BAD_REQUEST,
                "verdict: approve, reject or revoke",
            );
        }
    };
    if note.len() > 512 {
        return not_recorded(StatusCode::BAD_REQUEST, "note: at most 512 bytes");
    }
    let expected_revision = match form.get("expected_revision").map(|r| r.parse::<u64>()) {
        Some(Ok(revision)) => Some(revision),
        Some(Err(_)) => {
            return not_recorded(StatusCode::BAD_REQUEST, "expected_revision: a number");
        }
        None => None,
    };
    let approval_expires_at = match parse_expiry(form.get("expires").map_or("", String::as_str)) {
        Ok(at) => at,
        Err(e) => return not_recorded(StatusCode::BAD_REQUEST, &e),
    };
    let command = ReviewCommand {
        kind,
        id: id.clone(),
        verdict,
        reviewer: session.caller.name.clone(),
        note: note.clone(),
        expected_revision,
        approval_expires_at,
    };
    let origin = Origin {
        request_id: None,
        entry_point: "console",
        gateway_id: String::new(),
        caller: session.caller_name(),
        request: serde_json::json!({
            "kind": kind.name(),
            "id": id,
            "verdict": form.get("verdict"),
            "note": note,
            "expected_revision": expected_revision,
            "approval_expires_at": approval_expires_at,
        }),
    };
    match console.pdp.review(&origin, &command).await {
        Ok(_) => Redirect::to(&format!("/review/{}/{}?recorded", kind.name(), id)).into_response(),
        Err(PdpError::Aborted(_)) => {
            // Someone else's verdict or change landed first: show the filing as it is now.
            filing_again(StatusCode::CONFLICT, lang.t("conflict"))
                .unwrap_or_else(|e| (StatusCode::CONFLICT, e.to_string()).into_response())
        }
        Err(PdpError::NotFound(e)) => (StatusCode::NOT_FOUND, e).into_response(),
        Err(e @ (PdpError::InvalidArgument { .. } | PdpError::FailedPrecondition(_))) => {
            not_recorded(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e) => not_recorded(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
