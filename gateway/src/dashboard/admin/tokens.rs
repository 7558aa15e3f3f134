//! `/admin/tokens` (API tokens) and `/admin/support` (support grants: tokens for one fleet
//! or device that expire by themselves): list, create (the secret shown once), revoke.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::{
    admin_page, confirm_button, field, form_role, refused, require_admin, shown_once, when, Tab,
};
use crate::api::auth::Role;
use crate::api::types::{NewSupportGrant, NewToken, Token};
use crate::api::{pages, ApiError};
use crate::config::bounds;
use crate::dashboard::layout;
use crate::dashboard::{form, DashError, Signed, St};

/// `GET /admin/tokens`.
pub(super) async fn page(signed: Signed, State(st): St) -> Result<Response, DashError> {
    tokens_page(&st, &signed, None, StatusCode::OK).await
}

async fn tokens_page(
    st: &crate::api::ApiState,
    signed: &Signed,
    notice: Option<Markup>,
    status: StatusCode,
) -> Result<Response, DashError> {
    require_admin(signed)?;
    let all = pages::tokens(st.clone(), signed.caller()).await?;
    let tokens: Vec<&Token> = all.iter().filter(|t| t.expires_at.is_none()).collect();
    let csrf = signed.csrf.as_str();
    let body = html! {
        div.page-head {
            h1 { "API tokens" }
            p.muted.count { (tokens.len()) " token" @if tokens.len() != 1 { "s" } }
        }
        div.card {
            h2 { "Create a token" }
            form.inline-form method="post" action="/admin/tokens" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Name" input name="name" required pattern="[A-Za-z0-9._-]{1,64}" placeholder="ci-deploy"; }
                label { "Role" (role_select(&[Role::Viewer, Role::Operator, Role::Admin], Role::Viewer)) }
                button.btn.btn-primary type="submit" { "Create token" }
            }
        }
        @if tokens.is_empty() {
            div.card.empty { "No API tokens." }
        } @else {
            div.table-wrap {
                table.admin-table data-table="tokens" {
                    thead { tr { th { "ID" } th { "Name" } th { "Role" } th.hide-sm { "Created" } th.hide-sm { "Last used" } th {} } }
                    tbody {
                        @for t in &tokens {
                            tr data-token=(t.id) {
                                td { code { (t.id) } }
                                td { (t.name) }
                                td { span.role-badge { (t.role) } }
                                td.hide-sm { (layout::ago(Some(t.created_at))) }
                                td.hide-sm { (layout::ago(t.last_used)) }
                                td.row-actions {
                                    (confirm_button(&format!("/admin/tokens/{}/revoke", t.id), csrf, "Revoke",
                                        &format!("Revoke token {} ({})? Whatever uses it stops working.", t.id, t.name)))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let html = admin_page("API tokens", signed, Tab::Tokens, notice, body);
    Ok((status, html).into_response())
}

fn role_select(roles: &[Role], selected: Role) -> Markup {
    html! {
        select name="role" {
            @for r in roles {
                option value=(r.as_str()) selected[*r == selected] { (r.as_str()) }
            }
        }
    }
}

/// A refused form: the page again, with the API's message, and its status.
fn refused_with(e: ApiError) -> Result<(Option<Markup>, StatusCode), DashError> {
    if e.status.is_client_error() {
        Ok((Some(refused(&e.message)), e.status))
    } else {
        Err(e.into())
    }
}

/// `POST /admin/tokens`: `name`, `role`.
pub(super) async fn create(
    signed: Signed,
    State(st): St,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Admin)?;
    let role = form_role(&f)?;
    let req = NewToken {
        name: field(&f, "name").unwrap_or("").to_string(),
        role: role.as_str().to_string(),
    };
    let (notice, status) = match pages::issue_token(st.clone(), signed.caller(), req).await {
        Ok(t) => (
            Some(shown_once(
                "token",
                &t.id,
                &t.token,
                html! { "Use it as " code { "Authorization: Bearer …" } " with the API, or sign in to this dashboard with it." },
            )),
            StatusCode::CREATED,
        ),
        Err(e) => refused_with(e)?,
    };
    tokens_page(&st, &signed, notice, status).await
}

/// `POST /admin/tokens/{id}/revoke`.
pub(super) async fn revoke(
    signed: Signed,
    State(st): St,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    signed.check_post(&form(&body)?, Role::Admin)?;
    pages::revoke_token(st, signed.caller(), id).await?;
    Ok(Redirect::to("/admin/tokens").into_response())
}

/// `GET /admin/support`.
pub(super) async fn grants_page(signed: Signed, State(st): St) -> Result<Response, DashError> {
    support_page(&st, &signed, None, StatusCode::OK).await
}

async fn support_page(
    st: &crate::api::ApiState,
    signed: &Signed,
    notice: Option<Markup>,
    status: StatusCode,
) -> Result<Response, DashError> {
    require_admin(signed)?;
    let grants = pages::grants(st.clone(), signed.caller()).await?;
    let fleets = st.store.fleets().await?;
    let now = crate::store::now_unix();
    let csrf = signed.csrf.as_str();
    let body = html! {
        div.page-head {
            h1 { "Support grants" }
            p.muted.count { (grants.len()) " grant" @if grants.len() != 1 { "s" } }
        }
        div.card {
            h2 { "Grant support access" }
            p.muted { "A token that reaches one fleet (and its devices) or one device, and expires by itself. Every use is in the audit log." }
            form.inline-form method="post" action="/admin/support" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Fleet"
                    select name="fleet" {
                        option value="" { "— a device instead —" }
                        @for (fl, _) in &fleets { option value=(fl.name) { (fl.name) } }
                    }
                }
                label { "or device uuid" input name="device" placeholder="32 hex" pattern="[0-9a-fA-F-]{32,36}"; }
                label { "Role" (role_select(&[Role::Viewer, Role::Operator], Role::Operator)) }
                label { "For" input name="for" required value="4h" placeholder="4h, 2d" size="6"; }
                label { "Name" input name="name" value="support" pattern="[A-Za-z0-9._-]{1,64}"; }
                button.btn.btn-primary type="submit" { "Create grant" }
            }
        }
        @if grants.is_empty() {
            div.card.empty { "No support grants." }
        } @else {
            div.table-wrap {
                table.admin-table data-table="grants" {
                    thead { tr { th { "ID" } th { "Scope" } th { "Role" } th { "Name" } th { "Expires" } th.hide-sm { "Last used" } th {} } }
                    tbody {
                        @for g in &grants {
                            @let expires = g.expires_at.unwrap_or(0);
                            tr data-grant=(g.id) {
                                td { code { (g.id) } }
                                td { code { (g.scope.as_deref().unwrap_or("—")) } }
                                td { span.role-badge { (g.role) } }
                                td { (g.name) }
                                td {
                                    @if expires > now { (when(Some(expires))) }
                                    @else { span.badge.bad { "expired" } }
                                }
                                td.hide-sm { (layout::ago(g.last_used)) }
                                td.row-actions {
                                    (confirm_button(&format!("/admin/support/{}/revoke", g.id), csrf, "Revoke",
                                        &format!("End support grant {} now?", g.id)))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let html = admin_page("Support grants", signed, Tab::Support, notice, body);
    Ok((status, html).into_response())
}

/// `POST /admin/support`: `fleet` or `device`, `role`, `for` (a duration), `name`.
pub(super) async fn create_grant(
    signed: Signed,
    State(st): St,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Admin)?;
    let role = form_role(&f)?;
    let text = field(&f, "for").unwrap_or("");
    let valid_for = match bounds::SUPPORT_GRANT.parse(text) {
        Ok(d) => d,
        Err(e) => {
            let m = format!("For {text:?}: {e} (write it as 4h, 2d, 1h30m)");
            return support_page(&st, &signed, Some(refused(&m)), StatusCode::BAD_REQUEST).await;
        }
    };
    let req = NewSupportGrant {
        fleet: field(&f, "fleet").map(Into::into),
        device: field(&f, "device").map(Into::into),
        role: role.as_str().to_string(),
        valid_for_secs: i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX),
        name: field(&f, "name").map(Into::into),
    };
    let (notice, status) = match pages::issue_grant(st.clone(), signed.caller(), req).await {
        Ok(g) => (
            Some(shown_once(
                "support grant",
                &g.id,
                &g.token,
                html! { (g.role) " on " code { (g.scope) } ", until " (layout::utc(g.expires_at)) ". It works with the API only (" code { "Authorization: Bearer …" } ")." },
            )),
            StatusCode::CREATED,
        ),
        Err(e) => refused_with(e)?,
    };
    support_page(&st, &signed, notice, status).await
}

/// `POST /admin/support/{id}/revoke`.
pub(super) async fn revoke_grant(
    signed: Signed,
    State(st): St,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    signed.check_post(&form(&body)?, Role::Admin)?;
    pages::revoke_grant(st, signed.caller(), id).await?;
    Ok(Redirect::to("/admin/support").into_response())
}
