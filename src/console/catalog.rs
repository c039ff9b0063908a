//! The admin's catalog: service providers and their market listing, generative-AI features and
//! their security assessment and filing number (PolicyAdmin/SetProviderListing and
//! SetAiFeatureFiling behind the same roles).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::guard::StrictForm;
use super::page;
use super::review::{LIST, filings};
use super::session::Session;
use super::viewer::Viewer;
use super::{Access, Console, access, csrf_ok, may, not_done, origin, status_of};
use crate::domain::Kind;

const LISTING: &str = "/anchorpdp.v1.PolicyAdmin/SetProviderListing";
const AI_FILING: &str = "/anchorpdp.v1.PolicyAdmin/SetAiFeatureFiling";

/// What an AI feature's form was sent with, kept when it was not saved.
struct KeptFiling<'a> {
    id: &'a str,
    assessed: bool,
    filing_number: &'a str,
}

/// The catalog page, with `notice` above it and a refused AI filing's typed values kept.
fn catalog_page(
    console: &Console,
    viewer: &Viewer,
    session: &Session,
    notice: Option<&str>,
    kept: Option<KeptFiling>,
) -> Markup {
    let lang = viewer.lang;
    let providers = filings(console, &[Kind::Provider], |_| true);
    let features = filings(console, &[Kind::AiFeature], |_| true);
    let body = html! {
        @if let Some(notice) = notice { p.notice role="alert" { (notice) } }
        h2 { (lang.t("providers")) }
        div.scroll { table { tbody {
            @for p in &providers {
                @let listed = p.provider_listing.as_ref().is_some_and(|l| l.listed);
                tr {
                    td { (p.id) }
                    td { @if listed { (lang.t("listed")) } @else { (lang.t("not_listed")) } }
                    td {
                        @if may(session, LISTING) {
                            form method="post" action=(format!("/catalog/provider/{}", p.id)) {
                                input type="hidden" name="csrf" value=(session.csrf);
                                input type="hidden" name="listed" value=(if listed { "false" } else { "true" });
                                button type="submit" { @if listed { (lang.t("unlist")) } @else { (lang.t("list")) } }
                            }
                        }
                    }
                }
            }
        } } }
        h2 { (lang.t("ai_features")) }
        div.scroll { table { tbody {
            @for f in &features {
                @let stored = f.ai_feature_clearance.as_ref().map_or((false, ""), |c| (c.security_assessment_passed, c.filing_number.as_str()));
                @let (assessed, number) = match &kept {
                    Some(k) if k.id == f.id => (k.assessed, k.filing_number),
                    _ => stored,
                };
                tr {
                    td { (f.id) }
                    td {
                        @if may(session, AI_FILING) {
                            form method="post" action=(format!("/catalog/ai-feature/{}", f.id)) {
                                input type="hidden" name="csrf" value=(session.csrf);
                                label { input type="checkbox" name="assessed" value="true" checked[assessed]; " " (lang.t("assessed")) }
                                label { (lang.t("filing_number")) input type="text" name="filing_number" value=(number) maxlength="128"; }
                                button type="submit" { (lang.t("save")) }
                            }
                        } @else {
                            (if assessed { lang.t("assessed") } else { "—" }) " " (number)
                        }
                    }
                }
            }
        } } }
    };
    page::layout(viewer, Some(session), lang.t("catalog"), body)
}

pub async fn catalog(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let viewer = Viewer::of(&headers);
    let session = match access(&console, &headers, LIST).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    catalog_page(&console, &viewer, &session, None, None).into_response()
}

/// A change not made comes back as the catalog, saying why, with what was typed kept.
fn refused(
    console: &Console,
    viewer: &Viewer,
    session: &Session,
    status: StatusCode,
    why: &str,
    kept: Option<KeptFiling>,
) -> Response {
    let notice = not_done(viewer.lang, why);
    (
        status,
        catalog_page(console, viewer, session, Some(&notice), kept),
    )
        .into_response()
}

pub async fn set_listing(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    StrictForm(form): StrictForm,
) -> Response {
    let viewer = Viewer::of(&headers);
    let session = match access(&console, &headers, LISTING).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    if !csrf_ok(&session, &form) {
        let why = viewer.lang.t("form_expired");
        return refused(
            &console,
            &viewer,
            &session,
            StatusCode::FORBIDDEN,
            why,
            None,
        );
    }
    let listed = form.get("listed").map(String::as_str) == Some("true");
    let origin = origin(
        &session,
        serde_json::json!({ "provider_id": id, "listed": listed }),
    );
    match console
        .pdp
        .set_provider_listing(&origin, &id, listed, &session.caller.name, None)
        .await
    {
        Ok(_) => Redirect::to("/catalog").into_response(),
        Err(e) => refused(
            &console,
            &viewer,
            &session,
            status_of(&e),
            &e.to_string(),
            None,
        ),
    }
}

pub async fn set_ai_filing(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    StrictForm(form): StrictForm,
) -> Response {
    let viewer = Viewer::of(&headers);
    let session = match access(&console, &headers, AI_FILING).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let assessed = form.get("assessed").map(String::as_str) == Some("true");
    let filing_number = form
        .get("filing_number")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    let kept = || {
        Some(KeptFiling {
            id: &id,
            assessed,
            filing_number: &filing_number,
        })
    };
    if !csrf_ok(&session, &form) {
        let why = viewer.lang.t("form_expired");
        return refused(
            &console,
            &viewer,
            &session,
            StatusCode::FORBIDDEN,
            why,
            kept(),
        );
    }
    if filing_number.len() > 128 {
        let why = "filing_number: at most 128 bytes";
        return refused(
            &console,
            &viewer,
            &session,
            StatusCode::BAD_REQUEST,
            why,
            kept(),
        );
    }
    let origin = origin(
        &session,
        serde_json::json!({ "ai_feature_id": id, "security_assessment_passed": assessed, "filing_number": filing_number }),
    );
    match console
        .pdp
        .set_ai_feature_filing(
            &origin,
            &id,
            assessed,
            &filing_number,
            &session.caller.name,
            None,
        )
        .await
    {
        Ok(_) => Redirect::to("/catalog").into_response(),
        Err(e) => refused(
            &console,
            &viewer,
            &session,
            status_of(&e),
            &e.to_string(),
            kept(),
        ),
    }
}
