//! The inspector's pages: the live board (with the AI-content labels each session reports), a
//! session with its decisions, and "report violation" with a rule picker from the active policy
//! set; the penalty the report will bring is shown before it is confirmed
//! (PolicyAdmin/ReportViolation behind the same roles).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::guard::StrictForm;
use super::page::{self, Lang};
use super::session::Session;
use super::viewer::Viewer;
use super::{Access, Console, READ_LOG, access, csrf_ok, error_page, not_done, status_of};
use crate::domain::{LabelKind, LabelReport, LogRecord, Penalty, SessionState};

const LIST: &str = "/anchorpdp.v1.PolicyAdmin/ListLiveSessions";
const GET: &str = "/anchorpdp.v1.PolicyAdmin/GetSession";
const REPORT: &str = "/anchorpdp.v1.PolicyAdmin/ReportViolation";
/// Decision-log records a session page shows, and how many it looks through for them.
const SESSION_RECORDS: usize = 200;
const SESSION_SCAN: usize = 200_000;

/// What a penalty does, in the viewer's language.
pub fn penalty_text(lang: Lang, penalty: Penalty) -> &'static str {
    match penalty {
        Penalty::WarningOnly => lang.t("penalty_warning"),
        Penalty::None => lang.t("penalty_none"),
        Penalty::E1 => lang.t("penalty_e1"),
        Penalty::E2 => lang.t("penalty_e2"),
    }
}

/// Whether an inspector may report `rule` broken in a live session: not E3 (a freeze is the
/// account's state, not something seen on a stream) and not a rule that only warns when found
/// live (ReportViolation refuses those).
fn reportable(rule: &crate::policy::RuleInfo) -> bool {
    rule.id != "E3" && rule.penalty != Penalty::WarningOnly
}

/// The AI-content labels a session last reported: the explicit label viewers see (L1), then
/// the implicit one in the stream's metadata (L2). What the label rule pack would refuse is
/// marked, whether or not the active set enables the pack: an inspector looks for it either way.
fn labels_cell(lang: Lang, labels: Option<&LabelReport>) -> Markup {
    let Some(labels) = labels else {
        return html! { (lang.t("label_not_reported")) };
    };
    let shown = match (labels.label_shown, labels.label_kind) {
        (false, _) => None,
        (true, LabelKind::Overlay) => Some(lang.t("label_overlay")),
        (true, LabelKind::Interface) => Some(lang.t("label_interface")),
        (true, LabelKind::None) => Some(lang.t("label_shown_nowhere")),
    };
    let provider = labels.implicit_label_provider.as_str();
    html! {
        @match shown {
            Some(shown) => { (shown) }
            None => { span.error { (lang.t("label_not_shown")) } }
        }
        br;
        @if !labels.implicit_label {
            span.error { (lang.t("no_metadata_label")) }
        } @else if provider.is_empty() {
            span.error { (lang.t("metadata_no_provider")) }
        } @else {
            (lang.t("metadata_label")) " " (provider)
        }
    }
}

pub async fn board(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, LIST).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let live = match console.pdp.live_sessions() {
        Ok(live) => live,
        Err(e) => return error_page(&viewer, &session, status_of(&e), &e.to_string()),
    };
    let now = console.pdp.now();
    let body = html! {
        p { (live.len()) " " (lang.t("live_now")) }
        div.scroll { table.board {
            thead { tr {
                th { (lang.t("session")) } th { (lang.t("merchant")) } th { (lang.t("room")) }
                th { (lang.t("anchor")) } th { (lang.t("driver")) } th { (lang.t("gateway")) }
                th { (lang.t("started")) } th { (lang.t("time_live")) }
                th title=(lang.t("last_check_hint")) { (lang.t("last_check")) }
                th title=(lang.t("ai_label_hint")) { (lang.t("ai_label")) }
            } }
            tbody {
                @for s in &live {
                    tr {
                        td { a href=(format!("/live/{}", s.id)) { (s.id) } }
                        td { a href=(format!("/accounts?merchant={}", s.merchant_id)) { (s.merchant_id) } }
                        td { (s.room_id) } td { (s.anchor_id) } td { (s.driver_id) } td { (s.gateway_id) }
                        td { (viewer.time(s.started_at)) }
                        td { ((now - s.started_at).max(0) / 60_000) " min" }
                        td.last-check {
                            @match console.pdp.last_check(&s.id) {
                                Some(at) => { (viewer.time(at)) " · " ((now - at).max(0) / 1000) " s" }
                                None => { span title=(lang.t("not_checked_here")) { "—" } }
                            }
                        }
                        td.labels { (labels_cell(lang, s.labels.as_ref())) }
                    }
                }
            }
        } }
    };
    page::layout(&viewer, Some(&session), lang.t("live_board"), body).into_response()
}

/// A decision-log table, each deny with its explanation.
pub fn records_table(viewer: &Viewer, records: &[LogRecord]) -> Markup {
    let lang = viewer.lang;
    html! {
        div.scroll { table.log {
            thead { tr {
                th { (lang.t("time")) } th { (lang.t("action")) } th { (lang.t("caller")) }
                th { (lang.t("merchant")) } th { (lang.t("session")) } th { (lang.t("decision")) }
                th { (lang.t("rules")) } th { (lang.t("outcome")) }
            } }
            tbody {
                @for r in records {
                    tr {
                        td { (viewer.time(r.at)) }
                        td { (r.action) " · " (r.entry_point) }
                        td { (r.caller) }
                        td { (r.merchant_id) }
                        td { @if !r.session_id.is_empty() { a href=(format!("/live/{}", r.session_id)) { (r.session_id) } } }
                        td { @match r.allowed { Some(true) => { (lang.value("ALLOW")) } Some(false) => { (lang.value("DENY")) } None => {} } }
                        td { (r.rule_ids.join(", ")) }
                        td { @if !r.enforcement.is_empty() { (lang.value(&r.enforcement)) " " } (r.outcome)
                            @if let Some(p) = r.penalty_applied { " · " (p.name()) } }
                    }
                    @if let (Some(false), Some(explanation)) = (r.allowed, &r.explanation) {
                        tr.explanation { td colspan="8" {
                            details {
                                summary { (lang.t("why")) }
                                ul {
                                    @for fact in explanation.facts.iter().chain(&explanation.context) {
                                        li { code { (fact.entity) "." (fact.attribute) " = " (fact.value) } }
                                    }
                                }
                                p { (lang.t("determining")) " " (explanation.determining_policies.join(", ")) }
                            }
                        } }
                    }
                }
            }
        } }
    }
}

#[derive(serde::Deserialize)]
pub struct ReportQuery {
    #[serde(default)]
    reported: Option<String>,
}

pub async fn session_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ReportQuery>,
) -> Response {
    let viewer = Viewer::of(&headers);
    let session = match access(&console, &headers, GET).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let reported = query.reported.is_some().then(|| viewer.lang.t("reported"));
    let shown = Shown {
        status: StatusCode::OK,
        notice: reported,
        rule_id: "",
        note: "",
    };
    live_page(&console, &viewer, &session, &id, shown)
}

/// What a session's page shows besides the session: a notice, and a refused report's rule and
/// note kept.
struct Shown<'a> {
    status: StatusCode,
    notice: Option<&'a str>,
    rule_id: &'a str,
    note: &'a str,
}

fn live_page(
    console: &Console,
    viewer: &Viewer,
    session: &Session,
    id: &str,
    shown: Shown,
) -> Response {
    let lang = viewer.lang;
    let live = match console.pdp.get_session(id) {
        Ok(live) => live,
        Err(e) => return error_page(viewer, session, status_of(&e), &e.to_string()),
    };
    let records = if super::may(session, READ_LOG) {
        console
            .pdp
            .store()
            .newest_log(
                crate::domain::Millis::MIN..=crate::domain::Millis::MAX,
                &[id],
                |r| r.session_id == id,
                SESSION_RECORDS,
                SESSION_SCAN,
            )
            .map(|(records, _)| records)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let policies = console.pdp.policies();
    let mut rules: Vec<_> = policies.rules().collect();
    rules.sort_by_key(|r| r.order);
    let body = html! {
        @if let Some(notice) = shown.notice { p.notice role="status" { (notice) } }
        dl {
            dt { (lang.t("state")) } dd { (lang.value(&format!("{:?}", live.state).to_uppercase())) }
            dt { (lang.t("merchant")) } dd { a href=(format!("/accounts?merchant={}", live.merchant_id)) { (live.merchant_id) } }
            dt { (lang.t("room")) } dd { (live.room_id) }
            dt { (lang.t("anchor")) } dd { (live.anchor_id) }
            dt { (lang.t("driver")) } dd { (live.driver_id) }
            dt { (lang.t("gateway")) } dd { (live.gateway_id) }
            dt { (lang.t("started")) } dd { (viewer.time(live.started_at)) }
            dt title=(lang.t("ai_label_hint")) { (lang.t("ai_label")) } dd.labels { (labels_cell(lang, live.labels.as_ref())) }
            @if let Some(closed) = live.closed_at {
                dt { (lang.t("closed")) } dd { (viewer.time(closed)) " — " (live.close_reason) }
            }
        }
        @if live.state == SessionState::Active && super::may(session, REPORT) {
            form.verdict method="post" action=(format!("/live/{}/report", live.id)) {
                input type="hidden" name="csrf" value=(session.csrf);
                label { (lang.t("rule"))
                    select name="rule_id" required {
                        @for rule in &rules {
                            @if reportable(rule) {
                                option value=(rule.id) selected[rule.id == shown.rule_id] {
                                    (rule.id) " — " (match lang { Lang::En => &rule.message_en, Lang::Zh => &rule.message_zh })
                                }
                            }
                        }
                    }
                }
                label { (lang.t("note")) textarea name="note" maxlength="512" { (shown.note) } }
                button type="submit" { (lang.t("report")) }
            }
        }
        h2 { (lang.t("decisions")) }
        (records_table(viewer, &records))
    };
    (
        shown.status,
        page::layout(
            viewer,
            Some(session),
            &format!("{} {}", lang.t("session"), live.id),
            body,
        ),
    )
        .into_response()
}

/// Step one shows what the report will do; step two (`confirm=yes`) does it.
pub async fn report(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    StrictForm(form): StrictForm,
) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, REPORT).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let rule_id = form.get("rule_id").cloned().unwrap_or_default();
    let note = form.get("note").cloned().unwrap_or_default();
    // A report not made comes back as the session's page, saying why, rule and note kept.
    let refused = |status: StatusCode, why: &str| {
        let notice = not_done(lang, why);
        let shown = Shown {
            status,
            notice: Some(&notice),
            rule_id: &rule_id,
            note: &note,
        };
        live_page(&console, &viewer, &session, &id, shown)
    };
    if !csrf_ok(&session, &form) {
        return refused(StatusCode::FORBIDDEN, lang.t("form_expired"));
    }
    if note.len() > 512 {
        return refused(StatusCode::BAD_REQUEST, "note: at most 512 bytes");
    }
    let policies = console.pdp.policies();
    let Some(rule) = policies.rule(&rule_id) else {
        let why = format!("rule_id: {rule_id} is not a rule of the active set");
        return refused(StatusCode::BAD_REQUEST, &why);
    };
    let live = match console.pdp.get_session(&id) {
        Ok(live) => live,
        Err(e) => return refused(status_of(&e), &e.to_string()),
    };
    if form.get("confirm").map(String::as_str) != Some("yes") {
        let penalty = if live.penalty_applied.is_some() {
            lang.t("already_penalized")
        } else {
            penalty_text(lang, rule.penalty)
        };
        let body = html! {
            dl {
                dt { (lang.t("session")) } dd { (live.id) }
                dt { (lang.t("merchant")) } dd { (live.merchant_id) }
                dt { (lang.t("rule")) } dd { (rule.id) " — " (match lang { Lang::En => &rule.message_en, Lang::Zh => &rule.message_zh }) }
                dt { (lang.t("penalty")) } dd.penalty { (penalty) }
            }
            form.verdict method="post" action=(format!("/live/{}/report", live.id)) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="rule_id" value=(rule.id);
                input type="hidden" name="note" value=(note);
                input type="hidden" name="confirm" value="yes";
                button type="submit" { (lang.t("confirm_report")) }
            }
        };
        return page::layout(&viewer, Some(&session), lang.t("confirm_title"), body)
            .into_response();
    }
    let origin = super::origin(
        &session,
        serde_json::json!({ "session_id": id, "rule_id": rule_id, "note": note }),
    );
    match console
        .pdp
        .report_violation(&origin, &id, &rule_id, &session.caller.name, &note)
        .await
    {
        Ok(_) => Redirect::to(&format!("/live/{id}?reported=1")).into_response(),
        Err(e) => refused(status_of(&e), &e.to_string()),
    }
}
