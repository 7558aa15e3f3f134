//! Who may visit a device's public URL, on its page: the mode in force (the device's own,
//! its fleet's, or the default), the allow-list, a form to change them (operators), and
//! share links in `link` mode. Every change goes through the API's own handlers: the
//! same checks, password hashing, audit entries, and cache drop on every cluster node
//! (`docs/access.md`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::forms::{alert, kept, Refusal};
use super::layout::{self, Nav};
use super::{form, parse_uuid, DashError, Signed, St};
use crate::api::auth::Role;
use crate::api::types::{Access, AccessSettings};

/// The modes a device may be set to, with what the form says of each.
const MODES: &[(&str, &str)] = &[
    ("inherit", "as its fleet"),
    ("public", "anyone"),
    ("login", "signed-in dashboard users of its fleet"),
    ("basic", "a user and password"),
    ("link", "holders of a share link"),
];

/// The "who may visit" part of the device page's public-URL card.
pub(super) fn section(
    uuid: &str,
    access: &Access,
    signed: &Signed,
    refusal: Option<&Refusal>,
) -> Markup {
    let source = match (access.source.as_str(), &access.fleet) {
        ("device", _) => "set on this device".to_string(),
        ("fleet", Some(f)) => format!("from fleet {f}"),
        _ => "the default".to_string(),
    };
    let current = if access.source == "device" {
        access.mode.as_str()
    } else {
        "inherit"
    };
    let chosen = kept(refusal, "access", "mode").unwrap_or(current);
    let allow = kept(refusal, "access", "allow")
        .map(str::to_string)
        .unwrap_or_else(|| access.allow.join(", "));
    html! {
        div id="access" {
            h2 { "Who may visit" }
            p data-access-mode=(access.mode) {
                span.badge.neutral { (access.mode) } " " span.muted { (source) }
                @if let Some(u) = &access.user { " · user " code { (u) } }
            }
            @if !access.allow.is_empty() {
                p { span.muted { "Only from " } code { (access.allow.join(", ")) } }
            }
            @if signed.can_act() {
                (alert(refusal, "access"))
                details.edit-access open[refusal.is_some_and(|r| r.form == "access")] {
                    summary { "Change" }
                    form.act.access-form method="post" action={ "/devices/" (uuid) "/access" } {
                        input type="hidden" name="csrf" value=(signed.csrf.as_str());
                        label { span.muted { "Mode" }
                            select name="mode" {
                                @for (m, what) in MODES {
                                    option value=(m) selected[*m == chosen] { (m) " — " (what) }
                                }
                            }
                        }
                        label { span.muted { "User (basic)" }
                            input type="text" name="user" autocomplete="off"
                                value=(kept(refusal, "access", "user").or(access.user.as_deref()).unwrap_or(""));
                        }
                        label { span.muted { "Password (basic; stored hashed, never shown)" }
                            input type="password" name="password" autocomplete="new-password";
                        }
                        label { span.muted { "Allow only from (CIDRs, comma-separated; empty: anywhere)" }
                            input type="text" name="allow" value=(allow) placeholder="10.0.0.0/8, 2001:db8::/32";
                        }
                        button.btn type="submit" data-action="access" { "Save" }
                    }
                }
                @if access.mode == "link" {
                    (alert(refusal, "share"))
                    form.act.share-form method="post" action={ "/devices/" (uuid) "/share-link" } {
                        input type="hidden" name="csrf" value=(signed.csrf.as_str());
                        label { span.muted { "Share link valid for" }
                            input type="text" name="for" size="6" value=(kept(refusal, "share", "for").unwrap_or("2h"));
                        }
                        button.btn type="submit" data-action="share" { "Create a share link" }
                    }
                }
            }
        }
    }
}

/// `POST /devices/{uuid}/access` (operator and up): `mode`, `user`, `password`, `allow`;
/// a refusal (a bad CIDR, basic without a password) comes back beside the form.
pub(super) async fn post(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    let field = |name: &str| f.get(name).map(|v| v.trim()).unwrap_or("");
    let mode = field("mode").to_string();
    let basic = mode == "basic";
    let settings = AccessSettings {
        user: (basic && !field("user").is_empty()).then(|| field("user").to_string()),
        // A password is never trimmed: spaces may be part of it.
        password: f
            .get("password")
            .filter(|p| basic && !p.is_empty())
            .cloned(),
        allow: field("allow")
            .split([',', '\n', ' '])
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
        mode,
    };
    match crate::api::set_device_access(st.clone(), signed.caller(), uuid, settings).await {
        Ok(_) => Ok(Redirect::to(&format!("/devices/{uuid}#access")).into_response()),
        Err(e) => {
            let mut kept_fields = f.clone();
            kept_fields.remove("password");
            let refusal = Refusal::from_api(e, "access", &kept_fields)?;
            super::device::render(&st, &signed, uuid, Some(&refusal)).await
        }
    }
}

/// `POST /devices/{uuid}/share-link` (operator and up): `for` (`2h`, `7d`; a second to a
/// year). The link is shown once, on a page of its own.
pub(super) async fn share(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    let text = f.get("for").map(|v| v.trim()).unwrap_or("");
    let valid = match crate::config::bounds::SHARE_LINK.parse(text) {
        Ok(d) => d,
        Err(e) => {
            let refusal = Refusal::new("share", format!("valid for {text:?}: {e}"), &f);
            return super::device::render(&st, &signed, uuid, Some(&refusal)).await;
        }
    };
    let for_secs = i64::try_from(valid.as_secs().max(1)).unwrap_or(i64::MAX);
    let link = match crate::api::share_device(st.clone(), signed.caller(), uuid, for_secs).await {
        Ok(l) => l,
        Err(e) => {
            let refusal = Refusal::from_api(e, "share", &f)?;
            return super::device::render(&st, &signed, uuid, Some(&refusal)).await;
        }
    };
    let uuid_s = uuid.as_str();
    let body = html! {
        div.page-head { h1 { "Share link" } }
        section.card {
            p { "Anyone with this link may visit the device's public URL until "
                (layout::utc(link.expires_at)) ". It is shown only now." }
            p { code.share-url data-share-url { (link.url) } }
            p { a href={ "/devices/" (uuid_s) "#access" } { "Back to the device" } }
        }
    };
    Ok(layout::page("Share link", &signed, Nav::Devices, body).into_response())
}
