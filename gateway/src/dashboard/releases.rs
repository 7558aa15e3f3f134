//! Releases on the dashboard: a fleet's releases with their status (pinned, newest, how
//! many devices should run each), publishing a compose file (pasted, or read from a file
//! by the script), pinning the fleet, and pinning one device (from its page).
//!
//! * `POST /fleets/{name}/releases`: `compose` and `csrf` (operator and up). A compose
//!   file with an error comes back on the fleet page with the error's line and key, the
//!   text kept in the box; a good one becomes a release through the API's own handler.
//! * `POST /fleets/{name}/pin`: `release` (an id, or empty for the newest) and `csrf`.
//! * `POST /devices/{uuid}/pin`: `release` (an id, or empty to follow the fleet).
//!
//! The three posts' handlers are on the pages they come back to (`fleet::publish`,
//! `fleet::pin_fleet`, `device::pin_device`), which show a refusal beside the form.
//! All three go through the API's handlers (`release.create`, `fleet.pin`, `device.pin`
//! in the audit log, the devices retargeted).

use maud::{html, Markup};

use super::forms::{self, Refusal};
use super::layout;
use super::{urlencode, DashError, Signed};
use crate::store::ReleaseRecord;

/// The services a release's compose file names (empty when it no longer parses, which a
/// stored release always does).
fn services_of(r: &ReleaseRecord) -> Vec<String> {
    compose::parse_compose(&r.compose)
        .map(|c| c.services.into_keys().collect())
        .unwrap_or_default()
}

/// The fleet's releases, newest first: number, id, when and by whom, services, how many
/// devices should run it (a link to them), pinned / newest, and (operators) a pin button.
pub(super) fn table(
    fleet: &str,
    releases: &[(ReleaseRecord, i64)],
    pin: Option<&str>,
    signed: &Signed,
    refusal: Option<&Refusal>,
) -> Markup {
    let newest = releases.first().map(|(r, _)| r.id.as_str());
    html! {
        (forms::alert(refusal, "pin"))
        @if releases.is_empty() {
            p.muted { "No release yet: publish a compose file below, or use " code { "gateway release create" } "." }
        } @else {
            p.muted {
                @match pin {
                    Some(p) => { "Pinned to " (layout::short(p)) ": devices run it until the pin is lifted." }
                    None => { "Not pinned: devices run the newest release." }
                }
            }
            div.table-wrap { table.releases {
                thead { tr {
                    th { "Release" } th { "Status" } th.hide-sm { "Services" } th.num { "Devices" }
                    th.hide-sm { "Published" } th.hide-sm { "By" }
                    @if signed.can_act() { th {} }
                } }
                tbody { @for (r, devices) in releases {
                    @let pinned = pin == Some(r.id.as_str());
                    tr data-release=(r.id) {
                        td {
                            "#" (r.seq) " " (layout::short(&r.id))
                            details.compose-view { summary { "compose" } pre.compose { (r.compose) } }
                        }
                        td {
                            @if pinned { span.badge.ok data-release-status="pinned" { "pinned" } " " }
                            @if Some(r.id.as_str()) == newest {
                                span.badge.neutral.wait[pin.is_none()] data-release-status="newest" { "newest" }
                            }
                        }
                        td.hide-sm { code { (services_of(r).join(", ")) } }
                        td.num {
                            a href={ "/devices?fleet=" (urlencode(fleet)) "&release=" (r.id) } data-release-devices=(devices) { (devices) }
                        }
                        td.hide-sm { (layout::ago(Some(r.created_at))) }
                        td.hide-sm { code { (r.created_by) } }
                        @if signed.can_act() {
                            td.num {
                                form.act method="post" action={ "/fleets/" (urlencode(fleet)) "/pin" }
                                    data-confirm=(if pinned { format!("Unpin {fleet}: its devices move to the newest release?") } else { format!("Pin {fleet} to release #{}: its devices move to it?", r.seq) }) {
                                    input type="hidden" name="csrf" value=(signed.csrf);
                                    input type="hidden" name="release" value=(if pinned { "" } else { r.id.as_str() });
                                    button.btn.btn-small type="submit" data-pin=(r.id) {
                                        @if pinned { "Unpin" } @else { "Pin fleet" }
                                    }
                                }
                            }
                        }
                    }
                } }
            } }
        }
    }
}

/// The publish form (operators): a compose file pasted or loaded from a file.
pub(super) fn publish_form(fleet: &str, signed: &Signed, refusal: Option<&Refusal>) -> Markup {
    let kept = forms::kept(refusal, "compose", "compose");
    html! {
        form.act.publish method="post" action={ "/fleets/" (urlencode(fleet)) "/releases" } {
            input type="hidden" name="csrf" value=(signed.csrf);
            (forms::alert(refusal, "compose"))
            label { span.muted { "Compose file (the subset in " code { "docs/releases.md" } ")" }
                textarea name="compose" rows="12" spellcheck="false" required
                    placeholder="services:\n  web:\n    image: registry.example.com/web:1.4\n    ports: [\"80:8080\"]" {
                    @if let Some(k) = kept { (k) }
                }
            }
            div.publish-buttons {
                label.file { span.muted { "or load a file" } input type="file" accept=".yml,.yaml,text/yaml,text/plain" data-compose-file; }
                button.btn.btn-primary type="submit" data-action="publish" { "Publish release" }
            }
        }
    }
}

/// The device page's pin form (operators): one of its fleet's releases, or follow the
/// fleet.
pub(super) fn device_pin_form(
    uuid: &str,
    releases: &[ReleaseRecord],
    pinned: Option<&str>,
    signed: &Signed,
    refusal: Option<&Refusal>,
) -> Markup {
    html! {
        (forms::alert(refusal, "pin"))
        @if !releases.is_empty() {
            form.act.pin-device method="post" action={ "/devices/" (uuid) "/pin" } {
                input type="hidden" name="csrf" value=(signed.csrf);
                label { span.muted { "Pin this device" }
                    select name="release" {
                        option value="" selected[pinned.is_none()] { "Follow the fleet" }
                        @for r in releases {
                            option value=(r.id) selected[pinned == Some(r.id.as_str())] { "#" (r.seq) " " (r.id) }
                        }
                    }
                }
                button.btn.btn-small type="submit" data-action="pin-device" { "Save pin" }
            }
        }
    }
}

/// Each release, newest first, with how many devices of `fleet` should run it: those
/// pinned to it, plus (for the fleet's pin, else its newest) those that follow the fleet.
pub(super) async fn with_counts(
    st: &crate::api::ApiState,
    fleet: &str,
) -> Result<Vec<(ReleaseRecord, i64)>, DashError> {
    let releases = st.store.releases(fleet).await?;
    let pin = st.store.fleet_pin(fleet).await?;
    let pins = st.store.pins_in_fleet(fleet).await?;
    let count = |id: Option<&str>| {
        pins.iter()
            .filter(|(p, _)| p.as_deref() == id)
            .map(|(_, n)| n)
            .sum::<i64>()
    };
    let default = pin.or_else(|| releases.first().map(|r| r.id.clone()));
    let following = count(None);
    Ok(releases
        .into_iter()
        .map(|r| {
            let extra = if default.as_deref() == Some(r.id.as_str()) {
                following
            } else {
                0
            };
            let n = count(Some(&r.id)) + extra;
            (r, n)
        })
        .collect())
}
