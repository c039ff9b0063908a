//! Accounts and the decision log: a merchant's tier, warnings, freeze (and time left), its
//! filings and sessions, lifting a freeze (admins); and the log searched by merchant, session,
//! decision, rule and time, each deny with its explanation.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::guard::StrictForm;
use super::live::records_table;
use super::page;
use super::session::Session;
use super::viewer::Viewer;
use super::{Access, Console, READ_LOG, access, csrf_ok, error_page, may, not_done, status_of};
use crate::domain::{Millis, RecordBody};
use crate::error::PdpError;

const GET_ACCOUNT: &str = "/anchorpdp.v1.PolicyAdmin/GetAccount";
const LIFT: &str = "/anchorpdp.v1.PolicyAdmin/LiftFreeze";
/// Records a log search shows, and how many it looks through for them.
const LOG_RECORDS: usize = 500;
const LOG_SCAN: usize = 1_000_000;

#[derive(serde::Deserialize)]
pub struct AccountQuery {
    #[serde(default)]
    merchant: String,
}

pub async fn account(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<AccountQuery>,
) -> Response {
    let viewer = Viewer::of(&headers);
    let session = match access(&console, &headers, GET_ACCOUNT).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    account_page(&console, &viewer, &session, query.merchant.trim(), None, "")
}

/// A merchant's account, with `notice` above it and a refused lift's typed reason kept.
fn account_page(
    console: &Console,
    viewer: &Viewer,
    session: &Session,
    merchant_id: &str,
    notice: Option<(StatusCode, &str)>,
    kept_reason: &str,
) -> Response {
    let lang = viewer.lang;
    let merchant_id = merchant_id.to_owned();
    let now = console.pdp.now();
    let found = if merchant_id.is_empty() {
        None
    } else {
        match console.pdp.get_account(&merchant_id) {
            Ok(found) => Some(found),
            Err(PdpError::NotFound(_)) => None,
            Err(e) => return error_page(viewer, session, status_of(&e), &e.to_string()),
        }
    };
    let filings = if found.is_some() {
        super::review::filings(console, &super::review::REVIEWED_KINDS, |r| {
            r.body.owner() == Some(merchant_id.as_str())
        })
    } else {
        Vec::new()
    };
    let sessions: Vec<_> = console
        .pdp
        .live_sessions()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.merchant_id == merchant_id)
        .collect();
    let body = html! {
        @if let Some((_, notice)) = notice { p.notice role="alert" { (notice) } }
        form.filter method="get" action="/accounts" {
            label { (lang.t("merchant")) " " input type="text" name="merchant" value=(merchant_id); }
            button type="submit" { (lang.t("open")) }
        }
        @if let Some((merchant, account)) = &found {
            dl {
                dt { (lang.t("merchant")) } dd { (merchant.id) }
                dt { (lang.t("tier")) } dd {
                    @if let RecordBody::Merchant { tier, .. } = &merchant.body { (lang.value(tier.policy_name())) }
                }
                dt { (lang.t("warnings")) } dd { (account.warnings) }
                dt { (lang.t("penalties")) } dd { (account.penalties) }
                dt { (lang.t("frozen_until")) }
                dd.freeze {
                    @match account.frozen_at(now) {
                        Some(until) => {
                            (viewer.time(until)) " — " ((until - now).max(0) / 3_600_000) " h " (lang.t("left"))
                        }
                        None => { (lang.t("not_frozen")) }
                    }
                }
                @if let Some(last) = &account.last_penalty {
                    dt { (lang.t("last_penalty")) }
                    dd { (last.penalty.name()) " — " (last.rule_ids.join(", ")) ", " (viewer.time(last.applied_at))
                        " — " a href=(format!("/live/{}", last.session_id)) { (last.session_id) } }
                }
                @if let Some(lift) = &account.freeze_lifted {
                    dt { (lang.t("lifted")) } dd { (lift.operator) ", " (viewer.time(lift.lifted_at)) " — " q { (lift.reason) } }
                }
            }
            @if account.frozen_at(now).is_some() && may(session, LIFT) {
                form.verdict method="post" action=(format!("/accounts/{}/lift", merchant.id)) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label { (lang.t("reason")) textarea name="reason" required maxlength="512" { (kept_reason) } }
                    button type="submit" { (lang.t("lift")) }
                }
            }
            h2 { (lang.t("filings")) }
            div.scroll { table { tbody {
                @for f in &filings {
                    tr {
                        td { (lang.t(f.kind().name())) }
                        td { a href=(format!("/review/{}/{}", f.kind().name(), f.id)) { (f.id) } }
                        td { (lang.value(f.review_status.policy_name())) }
                    }
                }
            } } }
            h2 { (lang.t("live_board")) }
            ul { @for s in &sessions { li { a href=(format!("/live/{}", s.id)) { (s.id) } " — " (s.room_id) } } }
            @if may(session, READ_LOG) {
                p { a href=(format!("/log?merchant={}", merchant.id)) { (lang.t("merchant_log")) } }
            }
        } @else if !merchant_id.is_empty() {
            (page::message(lang.t("no_merchant")))
        }
    };
    (
        notice.map_or(StatusCode::OK, |(status, _)| status),
        page::layout(viewer, Some(session), lang.t("accounts"), body),
    )
        .into_response()
}

pub async fn lift(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(merchant): Path<String>,
    StrictForm(form): StrictForm,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, LIFT).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let typed = form.get("reason").map(String::as_str).unwrap_or_default();
    // A lift not made comes back as the account, saying why, with the reason kept.
    let refused = |status: StatusCode, why: &str| {
        let notice = not_done(lang, why);
        account_page(
            &console,
            &viewer,
            &session,
            &merchant,
            Some((status, &notice)),
            typed,
        )
    };
    if !csrf_ok(&session, &form) {
        return refused(StatusCode::FORBIDDEN, lang.t("form_expired"));
    }
    let reason = typed.trim().to_owned();
    if reason.is_empty() || reason.len() > 512 {
        return refused(StatusCode::BAD_REQUEST, "reason: 1-512 bytes");
    }
    let origin = super::origin(
        &session,
        serde_json::json!({ "merchant_id": merchant, "reason": reason }),
    );
    match console
        .pdp
        .lift_freeze(&origin, &merchant, &session.caller.name, &reason)
        .await
    {
        Ok(_) => Redirect::to(&format!("/accounts?merchant={merchant}")).into_response(),
        Err(e) => refused(status_of(&e), &e.to_string()),
    }
}

#[derive(serde::Deserialize, Default)]
pub struct LogQuery {
    #[serde(default)]
    merchant: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    rule: String,
    /// Only records at or after this time (`2026-11-28T20:00`, UTC).
    #[serde(default)]
    since: String,
    /// Only records up to this time, its whole minute included (`2026-11-28T21:00`, UTC).
    #[serde(default)]
    until: String,
}

/// The time range a search's `since` and `until` fields give; an `until` without seconds
/// takes in its whole minute, as the viewer means "up to 21:00" to include 21:00:30.
fn search_range(
    viewer: &Viewer,
    since: &str,
    until: &str,
) -> Result<std::ops::RangeInclusive<Millis>, String> {
    let since = viewer.parse_local("since", since)?.unwrap_or(Millis::MIN);
    let until = match viewer.parse_local("until", until)? {
        Some(at) if until.trim().len() == "2026-11-28T21:00".len() => at + 59_999,
        Some(at) => at,
        None => Millis::MAX,
    };
    if since > until {
        return Err("until: before since".to_owned());
    }
    Ok(since..=until)
}

pub async fn log(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<LogQuery>,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, READ_LOG).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    // A range that cannot be read is said above the search form, which keeps what was typed.
    let range = search_range(&viewer, &query.since, &query.until);
    let keep = |r: &crate::domain::LogRecord| {
        (query.merchant.is_empty() || r.merchant_id == query.merchant)
            && (query.session.is_empty() || r.session_id == query.session)
            && (query.rule.is_empty() || r.rule_ids.contains(&query.rule))
            && match query.decision.as_str() {
                "allow" => r.allowed == Some(true),
                "deny" => r.allowed == Some(false),
                _ => true,
            }
    };
    // Every match holds these ids: records without them are passed over undecoded.
    let contains: Vec<&str> = [&query.merchant, &query.session, &query.rule]
        .into_iter()
        .filter(|text| !text.is_empty())
        .map(String::as_str)
        .collect();
    let (status, refused, (records, cut_short)) = match range {
        Ok(during) => {
            match console
                .pdp
                .store()
                .newest_log(during, &contains, keep, LOG_RECORDS, LOG_SCAN)
            {
                Ok(found) => (StatusCode::OK, None, found),
                Err(e) => (status_of(&e), Some(e.to_string()), (Vec::new(), false)),
            }
        }
        Err(why) => (StatusCode::BAD_REQUEST, Some(why), (Vec::new(), false)),
    };
    let body = html! {
        @if let Some(why) = refused { p.notice role="alert" { (lang.t("log_unread")) " " (why) } }
        form.filter method="get" action="/log" {
            label { (lang.t("merchant")) input type="text" name="merchant" value=(query.merchant); }
            label { (lang.t("session")) input type="text" name="session" value=(query.session); }
            label { (lang.t("decision"))
                select name="decision" {
                    option value="" { (lang.t("all")) }
                    option value="allow" selected[query.decision == "allow"] { "ALLOW" }
                    option value="deny" selected[query.decision == "deny"] { "DENY" }
                }
            }
            label { (lang.t("rule")) input type="text" name="rule" value=(query.rule) size="6"; }
            label { (lang.t("since")) input type="datetime-local" name="since" value=(query.since); }
            label { (lang.t("until")) input type="datetime-local" name="until" value=(query.until); }
            button type="submit" { (lang.t("filter")) }
        }
        p { (records.len()) " " (lang.t("records")) " · " (lang.t("newest_first"))
            @if records.len() >= LOG_RECORDS { " · " (lang.t("log_more")) } }
        @if cut_short { p.notice { (lang.t("log_cut_short")) } }
        (records_table(&viewer, &records))
    };
    (
        status,
        page::layout(&viewer, Some(&session), lang.t("decision_log"), body),
    )
        .into_response()
}
