//! Who may visit a device's public URL, on its page: the mode in force (the device's own,
//! its fleet's, or the default), the allow-list, a form to change them (operators), and
//! share links in `link` mode. Every change goes through the API's own handlers: the
//! same checks, password hashing, audit entries, and cache drop on every cluster node
//! (`docs/access.md`). The posts' handlers are the device page's
//! ([`super::device::access_post`], [`super::device::share_link`]), which shows a refusal
//! beside the form.

use maud::{html, Markup};

use super::forms::{alert, kept, Refusal};
use super::Signed;
use crate::api::types::Access;

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
