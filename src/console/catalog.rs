//! The admin's catalog: service providers and their market listing, generative-AI features and
//! their security assessment and filing number (PolicyAdmin/SetProviderListing and
//! SetAiFeatureFiling behind the same roles).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::guard::StrictForm;
use super::page;
use super::review::filings;
use super::viewer::Viewer;
use super::{Access, Console, access, csrf_ok, csrf_refused, may};
use crate::domain::Kind;
use crate::error::PdpError;
use crate::service::Origin;

const LIST: &str = "/anchorpdp.v1.PolicyAdmin/ListRegistrations";
const LISTING: &str = "/anchorpdp.v1.PolicyAdmin/SetProviderListing";
const AI_FILING: &str = "/anchorpdp.v1.PolicyAdmin/SetAiFeatureFiling";

pub async fn catalog(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let viewer = Viewer::of(&headers);
    let lang = viewer.lang;
    let session = match access(&console, &headers, LIST).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    let providers = filings(&console, &[Kind::Provider], |_| true);
    let features = filings(&console, &[Kind::AiFeature], |_| true);
    let body = html! {
        h2 { (lang.t("providers")) }
        div.scroll { table { tbody {
            @for p in &providers {
                @let listed = p.provider_listing.as_ref().is_some_and(|l| l.listed);
                tr {
                    td { (p.id) }
                    td { @if listed { (lang.t("listed")) } @else { (lang.t("not_listed")) } }
                    td {
                        @if may(&session, LISTING) {
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
                @let (assessed, number) = f.ai_feature_clearance.as_ref().map_or((false, ""), |c| (c.security_assessment_passed, c.filing_number.as_str()));
                tr {
                    td { (f.id) }
                    td {
                        @if may(&session, AI_FILING) {
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
    page::layout(&viewer, Some(&session), lang.t("catalog"), body).into_response()
}

fn origin(session: &super::session::Session, request: serde_json::Value) -> Origin {
    Origin {
        request_id: None,
        entry_point: "console",
        gateway_id: String::new(),
        caller: session.caller_name(),
        request,
    }
}

fn answer(result: Result<impl Sized, PdpError>) -> Response {
    match result {
        Ok(_) => Redirect::to("/catalog").into_response(),
        Err(PdpError::NotFound(e)) => (StatusCode::NOT_FOUND, e).into_response(),
        Err(e @ (PdpError::InvalidArgument { .. } | PdpError::FailedPrecondition(_))) => {
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(PdpError::Aborted(e)) => (StatusCode::CONFLICT, e).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

pub async fn set_listing(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    StrictForm(form): StrictForm,
) -> Response {
    let session = match access(&console, &headers, LISTING).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    let listed = form.get("listed").map(String::as_str) == Some("true");
    let origin = origin(
        &session,
        serde_json::json!({ "provider_id": id, "listed": listed }),
    );
    answer(
        console
            .pdp
            .set_provider_listing(&origin, &id, listed, &session.caller.name, None)
            .await,
    )
}

pub async fn set_ai_filing(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    StrictForm(form): StrictForm,
) -> Response {
    let session = match access(&console, &headers, AI_FILING).await {
        Access::Granted(session) => session,
        Access::Refused(response) => return response,
    };
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    let assessed = form.get("assessed").map(String::as_str) == Some("true");
    let filing_number = form
        .get("filing_number")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    if filing_number.len() > 128 {
        return (StatusCode::BAD_REQUEST, "filing_number: at most 128 bytes").into_response();
    }
    let origin = origin(
        &session,
        serde_json::json!({ "ai_feature_id": id, "security_assessment_passed": assessed, "filing_number": filing_number }),
    );
    answer(
        console
            .pdp
            .set_ai_feature_filing(
                &origin,
                &id,
                assessed,
                &filing_number,
                &session.caller.name,
                None,
            )
            .await,
    )
}
