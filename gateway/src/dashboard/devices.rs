//! `/devices`: every device, 50 a page, filtered by fleet, online, tag, release and text
//! (GET parameters, so a filtered view is a link), with presence switched live.

use axum::extract::{Query, State};
use axum::response::Html;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, Nav};
use super::{urlencode, DashError, Signed, St};
use crate::api::ApiState;
use crate::store::{DeviceListFilter, DeviceListRow};

/// Rows per page.
pub(super) const PAGE_SIZE: i64 = 50;

/// The page's GET parameters.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Params {
    fleet: Option<String>,
    /// `online`, `offline` or empty.
    online: Option<String>,
    /// `name` or `name=value`.
    tag: Option<String>,
    release: Option<String>,
    q: Option<String>,
    page: Option<String>,
}

impl Params {
    fn filter(&self) -> Result<DeviceListFilter, DashError> {
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        let online = match set(&self.online).as_deref() {
            None => None,
            Some("online") => Some(true),
            Some("offline") => Some(false),
            Some(other) => {
                return Err(DashError::bad_request(format!(
                    "online must be `online` or `offline`, not {other:?}"
                )))
            }
        };
        Ok(DeviceListFilter {
            fleet: set(&self.fleet),
            online,
            tag: set(&self.tag).map(|t| match t.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (t, None),
            }),
            release: set(&self.release),
            text: set(&self.q),
        })
    }

    fn page(&self) -> Result<i64, DashError> {
        match self.page.as_deref().filter(|p| !p.is_empty()) {
            None => Ok(1),
            Some(p) => p
                .parse::<i64>()
                .ok()
                .filter(|&n| (1..=1_000_000).contains(&n))
                .ok_or_else(|| {
                    DashError::bad_request(format!("page must be a number from 1, not {p:?}"))
                }),
        }
    }

    /// This view's query string with `page` replaced.
    fn link(&self, page: i64) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("fleet", &self.fleet),
            ("online", &self.online),
            ("tag", &self.tag),
            ("release", &self.release),
            ("q", &self.q),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        }
        parts.push(format!("page={page}"));
        format!("/devices?{}", parts.join("&"))
    }
}

/// `GET /devices`.
pub(super) async fn page(
    signed: Signed,
    State(st): St,
    Query(p): Query<Params>,
) -> Result<Html<String>, DashError> {
    let filter = p.filter()?;
    let page = p.page()?;
    let (rows, total) = st
        .store
        .device_page(&filter, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        .await?;
    let mut fleets = st.store.fleets().await?;
    // A user limited to fleets is offered only theirs (the names of the others are not
    // theirs to see either).
    if !signed.fleets.is_empty() {
        fleets.retain(|(f, _)| signed.fleets.contains(&f.name));
    }
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let filtered = filter != DeviceListFilter::default();
    let sel = |v: &Option<String>, want: &str| v.as_deref() == Some(want);
    let body = html! {
        div.page-head {
            h1 { "Devices" }
            p.muted.count { (total) " device" @if total != 1 { "s" } @if filtered { " match" } }
        }
        form.filters method="get" action="/devices" role="search" {
            label { "Fleet"
                select name="fleet" {
                    option value="" { "All fleets" }
                    @for (f, _) in &fleets {
                        option value=(f.name) selected[sel(&p.fleet, &f.name)] { (f.name) }
                    }
                }
            }
            label { "Status"
                select name="online" {
                    option value="" { "Any" }
                    option value="online" selected[sel(&p.online, "online")] { "Online" }
                    option value="offline" selected[sel(&p.online, "offline")] { "Offline" }
                }
            }
            label { "Tag" input name="tag" value=[p.tag.as_deref()] placeholder="room=a1"; }
            label { "Release" input name="release" value=[p.release.as_deref()] placeholder="id prefix"; }
            label.grow { "Search" input type="search" name="q" value=[p.q.as_deref()] placeholder="name, uuid, address"; }
            div.filter-buttons {
                button.btn.btn-primary type="submit" { "Filter" }
                @if filtered { a.btn.btn-quiet href="/devices" { "Clear" } }
            }
        }
        @if rows.is_empty() {
            div.card.empty {
                @if filtered { "No device matches these filters." }
                @else { "No devices yet. Add one with " code { "gateway device add" } " or a provisioning key." }
            }
        } @else {
            @let selectable = signed.can_act();
            // Operators get a checkbox a row and the group-action bar; the form wraps the
            // table so that the checkboxes are its fields.
            form.bulk method="post" action="/devices/bulk" data-bulk[selectable] {
            @if selectable { (super::bulk::bar(&signed)) }
            div.table-wrap {
                table.devices data-live-presence {
                    thead { tr {
                        @if selectable {
                            th.select { input type="checkbox" data-select-all aria-label="Select every device on this page"; }
                        }
                        th { "Device" } th { "Fleet" } th { "Online" } th.hide-sm { "Status" }
                        th { "Last seen" } th.hide-sm { "Transport" } th.hide-sm { "Release" } th.hide-sm { "IP" }
                    } }
                    tbody {
                        @for r in &rows { (row(&st, r, selectable)) }
                    }
                }
            }
            }
            @if pages > 1 {
                nav.pager aria-label="pages" {
                    @if page > 1 { a.btn.btn-quiet href=(p.link(page - 1)) rel="prev" { "← Previous" } }
                    span.muted { "Page " (page) " of " (pages) }
                    @if page < pages { a.btn.btn-quiet href=(p.link(page + 1)) rel="next" { "Next →" } }
                }
            }
        }
    };
    Ok(layout::page("Devices", &signed, Nav::Devices, body))
}

/// One table row. Presence and transport come from the session registry (the live
/// truth); the rest from the store.
fn row(st: &ApiState, r: &DeviceListRow, selectable: bool) -> Markup {
    let d = &r.device;
    let path = st.sessions.path(&d.uuid);
    // On PostgreSQL another node may hold the tunnel: then the store's flag says so.
    let online = path.is_some() || (d.online && st.store.is_postgres());
    let uuid = d.uuid.as_str();
    let name = d.name.clone().unwrap_or_else(|| uuid[..7].to_string());
    let state = d.state.as_ref();
    let status = state.and_then(|s| s["status"].as_str());
    let running = state.and_then(|s| s["reconciler"]["release"].as_str());
    let ips: Vec<&str> = state
        .and_then(|s| s["ip_addresses"].as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    html! {
        tr data-uuid=(uuid) class=(if online { "is-online" } else { "is-offline" }) {
            @if selectable {
                td.select { input type="checkbox" name="uuid" value=(uuid) aria-label={ "Select " (name) }; }
            }
            td.device-cell {
                a.device-name href={ "/devices/" (uuid) } { (name) }
                code.uuid.muted { (uuid) }
            }
            td { @match &d.fleet { Some(f) => a href={ "/devices?fleet=" (urlencode(f)) } { (f) }, None => (layout::none()) } }
            td { (layout::presence(online)) }
            td.hide-sm { @match status { Some(s) => (layout::status_badge(s)), None => (layout::none()) } }
            td data-field="last-seen" { (layout::ago(d.last_seen)) }
            td.hide-sm data-field="transport" {
                @match &path { Some(p) => span.transport { (p.kind.as_str()) }, None => (layout::none()) }
            }
            td.hide-sm {
                @match (&r.release, running) {
                    (Some(t), Some(run)) if t != run => { (layout::short(t)) " " span.muted title="running now" { "(runs " (layout::short(run)) ")" } }
                    (Some(t), _) => (layout::short(t)),
                    (None, Some(run)) => (layout::short(run)),
                    (None, None) => (layout::none()),
                }
            }
            td.hide-sm {
                @if ips.is_empty() { (layout::none()) } @else { code { (ips.join(", ")) } }
            }
        }
    }
}
