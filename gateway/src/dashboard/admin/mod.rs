//! The admin pages (`/admin/...`, the admin role only): provisioning keys, API tokens,
//! dashboard users, support grants and the audit log.
//!
//! A viewer or operator sees no Admin entry in the navigation, and gets 403 from every
//! page and every POST here anyway. Every form carries the session's CSRF token. Keys,
//! tokens, grants and the audit log go through the API's own handlers
//! ([`crate::api::pages`]); users through [`crate::users`], the code `gateway user` runs.
//! Each change is in the audit log with actor `user:<name>` or `token:<id>`. A new key,
//! token or grant is shown once, on the page that answers its form.

mod audit;
mod keys;
mod tokens;
mod users;

use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};

use super::layout::{self, Nav};
use super::{DashError, Signed};
use crate::api::auth::Role;
use crate::api::ApiState;

/// The admin pages' routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/tokens") }))
        .route("/admin/keys", get(keys::page).post(keys::create))
        .route("/admin/keys/{id}/revoke", post(keys::revoke))
        .route("/admin/tokens", get(tokens::page).post(tokens::create))
        .route("/admin/tokens/{id}/revoke", post(tokens::revoke))
        .route(
            "/admin/support",
            get(tokens::grants_page).post(tokens::create_grant),
        )
        .route("/admin/support/{id}/revoke", post(tokens::revoke_grant))
        .route("/admin/users", get(users::page).post(users::add))
        .route("/admin/users/{name}/remove", post(users::remove))
        .route("/admin/users/{name}/password", post(users::password))
        .route("/admin/audit", get(audit::page))
}

/// The admin pages' tabs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tab {
    Keys,
    Tokens,
    Support,
    Users,
    Audit,
}

const TABS: &[(Tab, &str, &str)] = &[
    (Tab::Tokens, "/admin/tokens", "API tokens"),
    (Tab::Keys, "/admin/keys", "Provisioning keys"),
    (Tab::Users, "/admin/users", "Users"),
    (Tab::Support, "/admin/support", "Support grants"),
    (Tab::Audit, "/admin/audit", "Audit log"),
];

/// 403 unless the session is an admin's.
fn require_admin(signed: &Signed) -> Result<(), DashError> {
    if signed.role >= Role::Admin {
        Ok(())
    } else {
        Err(DashError::forbidden(format!(
            "the admin pages need the admin role; you are signed in as {}",
            signed.role.as_str()
        )))
    }
}

/// An admin page: the shell, the tabs, an optional notice, then `body`.
fn admin_page(
    title: &str,
    signed: &Signed,
    tab: Tab,
    notice: Option<Markup>,
    body: Markup,
) -> Html<String> {
    layout::page(
        title,
        signed,
        Nav::Admin,
        html! {
            nav.tabs aria-label="Admin" {
                @for (t, href, label) in TABS {
                    a.tab.active[*t == tab] href=(href) aria-current=[(*t == tab).then_some("page")] { (label) }
                }
            }
            @if let Some(n) = notice { (n) }
            (body)
        },
    )
}

/// The card that shows a new secret, once.
fn shown_once(what: &str, id: &str, secret: &str, hint: Markup) -> Markup {
    html! {
        div.card.secret-once role="status" data-secret-for=(id) {
            h2 { "New " (what) " " code { (id) } }
            p { "Copy it now: it is shown only this once, and only its hash is stored." }
            pre.secret data-secret { (secret) }
            p.muted { (hint) }
        }
    }
}

/// An error notice above the page (a form that was refused).
fn refused(message: &str) -> Markup {
    html! { p.alert.alert-error role="alert" { (message) } }
}

/// A one-button form that posts to `action` (revoke, remove), asking first.
fn confirm_button(action: &str, csrf: &str, label: &str, question: &str) -> Markup {
    html! {
        form.act method="post" action=(action) data-confirm=(question) {
            input type="hidden" name="csrf" value=(csrf);
            button.btn.btn-danger type="submit" { (label) }
        }
    }
}

/// A form field, trimmed; `None` when absent or empty.
fn field<'a>(f: &'a std::collections::HashMap<String, String>, k: &str) -> Option<&'a str> {
    f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// `role` from a form: viewer, operator or admin (400 page otherwise).
fn form_role(f: &std::collections::HashMap<String, String>) -> Result<Role, DashError> {
    let r = field(f, "role").unwrap_or("");
    Role::parse(r).ok_or_else(|| {
        DashError::bad_request(format!("{r:?} is no role: viewer, operator or admin"))
    })
}

/// When, for a table cell: the time, or a dash.
fn when(t: Option<i64>) -> Markup {
    match t {
        Some(t) => html! { time datetime=(t) title=(layout::utc(t)) { (layout::utc(t)) } },
        None => layout::none(),
    }
}
