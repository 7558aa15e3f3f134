//! `/admin/users`: dashboard users; add one with a role, remove one, reset a password.
//! Through [`crate::users`], as `gateway user add|remove|password`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::{admin_page, confirm_button, field, form_role, refused, require_admin, Tab};
use crate::api::auth::Role;
use crate::api::ApiState;
use crate::dashboard::layout;
use crate::dashboard::{form, urlencode, DashError, Signed, St};
use crate::users::{self, UserError};

/// `GET /admin/users`.
pub(super) async fn page(signed: Signed, State(st): St) -> Result<Response, DashError> {
    render(&st, &signed, None, StatusCode::OK).await
}

async fn render(
    st: &ApiState,
    signed: &Signed,
    notice: Option<Markup>,
    status: StatusCode,
) -> Result<Response, DashError> {
    require_admin(signed)?;
    let all = st.store.users().await?;
    let csrf = signed.csrf.as_str();
    let me = match &signed.principal {
        crate::store::Principal::User(n) => Some(n.as_str()),
        crate::store::Principal::Token(_) => None,
    };
    let body = html! {
        div.page-head {
            h1 { "Users" }
            p.muted.count { (all.len()) " user" @if all.len() != 1 { "s" } }
        }
        div.card {
            h2 { "Add a user" }
            form.inline-form method="post" action="/admin/users" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Name" input name="name" required pattern="[A-Za-z0-9._@-]{1,64}" autocomplete="off"; }
                label { "Role"
                    select name="role" {
                        @for r in [Role::Viewer, Role::Operator, Role::Admin] {
                            option value=(r.as_str()) selected[r == Role::Viewer] { (r.as_str()) }
                        }
                    }
                }
                label { "Password" input name="password" type="password" required minlength=(users::MIN_PASSWORD) autocomplete="new-password"; }
                button.btn.btn-primary type="submit" { "Add user" }
            }
        }
        @if all.is_empty() {
            div.card.empty { "No dashboard users: everyone signs in with an API token." }
        } @else {
            div.table-wrap {
                table.admin-table data-table="users" {
                    thead { tr { th { "Name" } th { "Role" } th.hide-sm { "Created" } th.hide-sm { "Last sign-in" } th { "Password" } th {} } }
                    tbody {
                        @for u in &all {
                            tr data-user=(u.name) {
                                td { b { (u.name) } @if me == Some(u.name.as_str()) { " " span.muted { "(you)" } } }
                                td { span.role-badge { (u.role) } }
                                td.hide-sm { (layout::ago(Some(u.created_at))) }
                                td.hide-sm { (layout::ago(u.last_login)) }
                                td {
                                    details.reset {
                                        summary { "Reset" }
                                        form.inline-form method="post" action={ "/admin/users/" (urlencode(&u.name)) "/password" } {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input name="password" type="password" required minlength=(users::MIN_PASSWORD) autocomplete="new-password" aria-label={ "New password for " (u.name) } placeholder="new password";
                                            button.btn type="submit" { "Set" }
                                        }
                                    }
                                }
                                td.row-actions {
                                    (confirm_button(&format!("/admin/users/{}/remove", urlencode(&u.name)), csrf, "Remove",
                                        &format!("Remove user {}? Their sessions end at once.", u.name)))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let html = admin_page("Users", signed, Tab::Users, notice, body);
    Ok((status, html).into_response())
}

/// A refused change as a notice (bad input, name taken, no such user); a store failure
/// as an error page.
fn notice_of(e: UserError) -> Result<(Markup, StatusCode), DashError> {
    let status = match &e {
        UserError::InvalidName(_) | UserError::ShortPassword => StatusCode::BAD_REQUEST,
        UserError::Exists(_) => StatusCode::CONFLICT,
        UserError::NoSuchUser(_) | UserError::NoSuchFleet(_) => StatusCode::NOT_FOUND,
        UserError::Store(_) | UserError::Hash(_) => {
            return Err(DashError::Page(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ))
        }
    };
    Ok((refused(&e.to_string()), status))
}

/// `POST /admin/users`: `name`, `role`, `password`.
pub(super) async fn add(signed: Signed, State(st): St, body: Bytes) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Admin)?;
    let role = form_role(&f)?;
    let name = field(&f, "name").unwrap_or("");
    let password = f.get("password").map(String::as_str).unwrap_or("");
    let actor = signed.principal.actor();
    match users::add(&st.store, &actor, name, role, password, &[]).await {
        Ok(()) => Ok(Redirect::to("/admin/users").into_response()),
        Err(e) => {
            let (n, status) = notice_of(e)?;
            render(&st, &signed, Some(n), status).await
        }
    }
}

/// `POST /admin/users/{name}/remove`.
pub(super) async fn remove(
    signed: Signed,
    State(st): St,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    signed.check_post(&form(&body)?, Role::Admin)?;
    match users::remove(&st.store, &signed.principal.actor(), &name).await {
        Ok(()) => Ok(Redirect::to("/admin/users").into_response()),
        Err(e) => {
            let (n, status) = notice_of(e)?;
            render(&st, &signed, Some(n), status).await
        }
    }
}

/// `POST /admin/users/{name}/password`: `password`.
pub(super) async fn password(
    signed: Signed,
    State(st): St,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Admin)?;
    let password = f.get("password").map(String::as_str).unwrap_or("");
    match users::reset_password(&st.store, &signed.principal.actor(), &name, password).await {
        Ok(()) => {
            let n = html! { p.alert.alert-ok role="status" { "The password of " b { (name) } " was changed; their sessions ended." } };
            render(&st, &signed, Some(n), StatusCode::OK).await
        }
        Err(e) => {
            let (n, status) = notice_of(e)?;
            render(&st, &signed, Some(n), status).await
        }
    }
}
