//! `/admin/keys`: every fleet's provisioning keys; create one (the key shown once),
//! revoke one.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::{admin_page, confirm_button, field, refused, require_admin, shown_once, when, Tab};
use crate::api::auth::Role;
use crate::api::types::NewKey;
use crate::api::{pages, ApiState};
use crate::config::bounds;
use crate::dashboard::layout;
use crate::dashboard::{form, DashError, Signed, St};

/// `GET /admin/keys`.
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
    let fleets = st.store.fleets().await?;
    let mut keys = Vec::new();
    for (f, _) in &fleets {
        keys.extend(pages::keys(st.clone(), signed.caller(), f.name.clone()).await?);
    }
    let now = crate::store::now_unix();
    let csrf = signed.csrf.as_str();
    let body = html! {
        div.page-head {
            h1 { "Provisioning keys" }
            p.muted.count { (keys.len()) " key" @if keys.len() != 1 { "s" } }
        }
        @if fleets.is_empty() {
            div.card.empty { "No fleets yet: a key provisions devices into a fleet. Create one with " code { "gateway fleet create NAME" } "." }
        } @else {
            div.card {
                h2 { "Create a key" }
                form.inline-form method="post" action="/admin/keys" {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Fleet"
                        select name="fleet" required {
                            @for (f, _) in &fleets { option value=(f.name) { (f.name) } }
                        }
                    }
                    label { "Expires after" input name="expires" placeholder="never (or 7d, 12h)" size="10"; }
                    label { "Max uses" input name="max_uses" type="number" min="1" placeholder="unlimited"; }
                    button.btn.btn-primary type="submit" { "Create key" }
                }
            }
        }
        @if !keys.is_empty() {
            div.table-wrap {
                table.admin-table data-table="keys" {
                    thead { tr { th { "ID" } th { "Fleet" } th { "Status" } th.num { "Uses" } th.hide-sm { "Created" } th.hide-sm { "Expires" } th {} } }
                    tbody {
                        @for k in &keys {
                            @let expired = k.expires_at.is_some_and(|t| t <= now);
                            @let used_up = k.max_uses.is_some_and(|m| k.uses >= m);
                            tr data-key=(k.id) {
                                td { code { (k.id) } }
                                td { (k.fleet) }
                                td {
                                    @if k.revoked { span.badge.neutral { "revoked" } }
                                    @else if expired { span.badge.bad { "expired" } }
                                    @else if used_up { span.badge.wait { "used up" } }
                                    @else { span.badge.ok { "active" } }
                                }
                                td.num { (k.uses) @if let Some(m) = k.max_uses { " / " (m) } }
                                td.hide-sm { (layout::ago(Some(k.created_at))) }
                                td.hide-sm { (when(k.expires_at)) }
                                td.row-actions {
                                    @if !k.revoked {
                                        (confirm_button(&format!("/admin/keys/{}/revoke", k.id), csrf, "Revoke",
                                            &format!("Revoke provisioning key {}? Devices already provisioned keep working.", k.id)))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let html = admin_page("Provisioning keys", signed, Tab::Keys, notice, body);
    Ok((status, html).into_response())
}

/// `POST /admin/keys`: `fleet`, `expires` (a duration, optional), `max_uses` (optional).
pub(super) async fn create(
    signed: Signed,
    State(st): St,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Admin)?;
    let fleet = field(&f, "fleet").unwrap_or("").to_string();
    let expires_in_secs = match field(&f, "expires") {
        None => None,
        Some(text) => match bounds::KEY_EXPIRY.parse(text) {
            Ok(d) => Some(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            Err(e) => {
                let m = format!("Expires after {text:?}: {e} (write it as 12h, 7d)");
                return render(&st, &signed, Some(refused(&m)), StatusCode::BAD_REQUEST).await;
            }
        },
    };
    let max_uses = match field(&f, "max_uses") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                let m = format!("Max uses {text:?}: a whole number of 1 or more, or empty");
                return render(&st, &signed, Some(refused(&m)), StatusCode::BAD_REQUEST).await;
            }
        },
    };
    let req = NewKey {
        expires_in_secs,
        max_uses,
    };
    let (notice, status) = match pages::issue_key(st.clone(), signed.caller(), fleet, req).await {
        Ok(k) => (
            Some(shown_once(
                "provisioning key",
                &k.id,
                &k.key,
                html! { "Devices join fleet " b { (k.fleet) } " with it: " code { "edge-agent provision --key …" } "." },
            )),
            StatusCode::CREATED,
        ),
        Err(e) if e.status.is_client_error() => (Some(refused(&e.message)), e.status),
        Err(e) => return Err(e.into()),
    };
    render(&st, &signed, notice, status).await
}

/// `POST /admin/keys/{id}/revoke`.
pub(super) async fn revoke(
    signed: Signed,
    State(st): St,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    signed.check_post(&form(&body)?, Role::Admin)?;
    pages::revoke_provisioning_key(st, signed.caller(), id).await?;
    Ok(Redirect::to("/admin/keys").into_response())
}
