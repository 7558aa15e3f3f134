//! `/devices/{uuid}`: one device's state, services, release (and its pin), tags and
//! environment (editable, see [`super::env`]), its public URL, actions (CSRF-protected
//! forms that go through the API's own handlers), its recent actions (refreshed by the
//! script), the embedded terminal ([`super::terminal`]), live logs, and its audit
//! entries.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::Value;

use super::env::{self, Scope};
use super::forms::Refusal;
use super::layout::{self, Nav};
use super::{form, parse_uuid, urlencode, DashError, Signed, St};
use crate::api::auth::Role;
use crate::api::types::{AccessSettings, NewAction};
use crate::api::ApiState;
use crate::store::{ActionRecord, DeviceRecord};

/// The action buttons, in order: name, label, whether the browser asks first.
const BUTTONS: &[(&str, &str, bool)] = &[
    ("blink", "Blink LED", false),
    ("restart", "Restart services", true),
    ("update", "Update now", false),
    ("purge", "Purge data", true),
    ("reboot", "Reboot", true),
    ("shutdown", "Shut down", true),
];

/// Actions listed on the page.
const RECENT_ACTIONS: i64 = 15;
/// Audit entries listed on the page.
const RECENT_AUDIT: i64 = 20;

async fn device_or_404(
    st: &ApiState,
    uuid: protocol::DeviceUuid,
) -> Result<DeviceRecord, DashError> {
    match st.store.device(uuid).await? {
        Some(d) if !d.revoked => Ok(d),
        _ => Err(DashError::not_found(format!("there is no device {uuid}"))),
    }
}

/// `GET /devices/{uuid}`.
pub(super) async fn page(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
) -> Result<Response, DashError> {
    let uuid = parse_uuid(&uuid)?;
    render(&st, &signed, uuid, None).await
}

/// The device page, with a form's refusal shown beside that form (the page's status is
/// then the refusal's).
pub(super) async fn render(
    st: &ApiState,
    signed: &Signed,
    uuid: protocol::DeviceUuid,
    refusal: Option<&Refusal>,
) -> Result<Response, DashError> {
    let d = device_or_404(st, uuid).await?;
    let path = st.sessions.path(&uuid);
    let online = path.is_some() || (d.online && st.store.is_postgres());
    let name = d
        .name
        .clone()
        .unwrap_or_else(|| uuid.as_str()[..7].to_string());
    let tags = st.store.tags(uuid).await?;
    let env = st.store.env("device", uuid.as_str()).await?;
    let target = st.store.target_release(uuid).await?;
    let actions = st.store.device_actions(uuid, RECENT_ACTIONS).await?;
    let audit = st.store.audit_for(uuid.as_str(), RECENT_AUDIT).await?;
    let access = crate::api::device_access(st.clone(), signed.caller(), uuid).await?;
    let empty = Value::Null;
    let state = d.state.as_ref().unwrap_or(&empty);
    let rec = &state["reconciler"];
    let text = |v: &Value| v.as_str().map(String::from);
    let ips: Vec<String> = state["ip_addresses"]
        .as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default();
    let uuid_s = uuid.as_str();
    let csrf = signed.csrf.as_str();
    let service_names: Vec<String> = rec["services"]
        .as_array()
        .map(|l| l.iter().filter_map(|s| text(&s["name"])).collect())
        .unwrap_or_default();
    let fleet_releases = match &d.fleet {
        Some(f) if signed.can_act() => st.store.releases(f).await?,
        _ => Vec::new(),
    };
    let device_pin = target.as_ref().and_then(|(r, src)| {
        (*src == crate::store::TargetSource::DevicePin).then_some(r.id.as_str())
    });
    let body = html! {
        div.page-head.device-head data-uuid=(uuid_s) {
            div {
                p.crumbs { a href="/devices" { "Devices" } " / " @if let Some(f) = &d.fleet { a href={ "/devices?fleet=" (urlencode(f)) } { (f) } } }
                h1 { (name) " " (layout::presence(online)) }
                code.uuid.muted { (uuid_s) }
            }
            @if signed.can_act() {
                div.head-actions {
                    a.btn.btn-quiet href="#terminal" { "Terminal" }
                }
            }
        }
        div.grid {
            section.card {
                h2 { "Overview" }
                dl.facts {
                    dt { "Fleet" } dd { @match &d.fleet { Some(f) => (f), None => (layout::none()) } }
                    dt { "Status" } dd { @match text(&state["status"]) { Some(s) => (layout::status_badge(&s)), None => (layout::none()) } }
                    dt { "Last seen" } dd data-field="last-seen" { (layout::ago(d.last_seen)) }
                    dt { "Transport" } dd data-field="transport" {
                        @match &path {
                            Some(p) => { span.transport { (p.kind.as_str()) } " " span.muted { (format!("{:.1}", p.rtt.as_secs_f64() * 1000.0)) " ms" } },
                            None => (layout::none()),
                        }
                    }
                    dt { "Addresses" } dd { @if ips.is_empty() { (layout::none()) } @else { code { (ips.join(", ")) } } }
                    dt { "Connects from" } dd { @match &d.public_address { Some(a) => code { (a) }, None => (layout::none()) } }
                    dt { "Agent" } dd { @match text(&state["agent_version"]) { Some(v) => (v), None => (layout::none()) } }
                    dt { "OS" } dd { @match text(&state["os_version"]) { Some(v) if !v.is_empty() => (v), _ => (layout::none()) } }
                    dt { "Registered" } dd { (layout::ago(Some(d.created_at))) }
                }
            }
            section.card {
                h2 { "Release" }
                dl.facts {
                    dt { "Target" } dd {
                        @match &target {
                            Some((r, src)) => { "#" (r.seq) " " (layout::short(&r.id)) " " span.muted { (source(*src)) } },
                            None => span.muted { "no release in this fleet" },
                        }
                    }
                    dt { "Running" } dd { @match text(&rec["release"]) { Some(r) => (layout::short(&r)), None => (layout::none()) } }
                    dt { "Update" } dd { @match text(&rec["update_status"]) { Some(u) => (layout::status_badge(&u)), None => (layout::none()) } }
                    @if let Some(e) = text(&rec["error"]) { dt { "Error" } dd.bad-text { (e) } }
                }
                @if signed.can_act() {
                    (super::releases::device_pin_form(uuid_s, &fleet_releases, device_pin, signed, refusal))
                }
                (services(rec))
            }
            section.card {
                h2 { "Public URL" }
                @let url = format!("http://{}.{}/", uuid_s, st.domain);
                p {
                    @if d.public_url { span.badge.ok { "served" } " " a href=(url) target="_blank" rel="noopener" { (url) } }
                    @else { span.badge.neutral { "off" } " " span.muted { "visitors get 404" } }
                }
                @if signed.can_act() {
                    form.act method="post" action={ "/devices/" (uuid_s) "/public-url" } {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="enabled" value=(if d.public_url { "off" } else { "on" });
                        button.btn type="submit" data-action="public-url" { @if d.public_url { "Turn off" } @else { "Turn on" } }
                    }
                }
                (super::access::section(uuid_s, &access, signed, refusal))
                h2 { "Tags" }
                @if tags.is_empty() { p.muted { "No tags." } } @else {
                    ul.tags { @for (k, v) in &tags { li { a href={ "/devices?tag=" (urlencode(&format!("{k}={v}"))) } { code { (k) "=" (v) } } } } }
                }
                @if signed.can_act() {
                    details.edit-tags {
                        summary { "Edit tags" }
                        form.act method="post" action={ "/devices/" (uuid_s) "/tags" } {
                            input type="hidden" name="csrf" value=(csrf);
                            label { span.muted { "One " code { "name=value" } " a line" }
                                textarea name="tags" rows="4" spellcheck="false" {
                                    @for (k, v) in &tags { (k) "=" (v) "\n" }
                                }
                            }
                            button.btn type="submit" data-action="tags" { "Save tags" }
                        }
                    }
                }
            }
        }
        section.card id="env" {
            h2 { "Environment" }
            p.muted { "Device variables win over the fleet's"
                @if let Some(f) = &d.fleet { " (" a href={ "/fleets/" (urlencode(f)) "#env" } { (f) } ")" } "." }
            (env::section(Scope::Device(uuid_s), &env, signed.can_act(), signed, &service_names, refusal))
            @if !signed.can_act() { (env::read_only_note(Scope::Device(uuid_s), signed)) }
        }
        section.card id="actions" {
            div.section-head {
                h2 { "Actions" }
                @if signed.can_act() {
                    div.buttons {
                        @for (action, label, confirm) in BUTTONS {
                            form.act method="post" action={ "/devices/" (uuid_s) "/actions" } data-confirm=[confirm.then(|| format!("{label} on {name}?"))] {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="action" value=(action);
                                button.btn.btn-danger[*confirm].btn-action type="submit" data-action=(action) { (label) }
                            }
                        }
                    }
                }
            }
            @if !online { p.muted { "The device is offline: actions wait for it to reconnect (up to a day)." } }
            div.table-wrap {
                table.actions {
                    thead { tr { th { "Action" } th { "Status" } th.hide-sm { "By" } th { "Queued" } th.hide-sm { "Delivered" } th.hide-sm { "Finished" } th.hide-sm { "Detail" } } }
                    tbody data-refresh={ "/devices/" (uuid_s) "/actions" } { (action_rows(&actions)) }
                }
            }
        }
        @if signed.can_act() { (super::terminal::section(uuid_s, &service_names, signed, online)) }
        section.card {
            div.section-head { h2 { "Logs" } span.muted data-log-state { "connecting…" } }
            (log_filters(uuid_s, &service_names))
            pre.logs data-log-src={ "/devices/" (uuid_s) "/logs" } {}
        }
        section.card {
            h2 { "Audit" }
            @if audit.is_empty() { p.muted { "Nothing recorded for this device yet." } } @else {
                div.table-wrap { table.compact {
                    thead { tr { th { "When" } th { "Who" } th { "What" } th.hide-sm { "Detail" } } }
                    tbody { @for e in &audit {
                        tr { td { (layout::ago(Some(e.at))) } td { code { (e.actor) } } td { (e.action) } td.hide-sm { code.detail { (e.detail) } } }
                    } }
                } }
            }
        }
    };
    let status = refusal.map_or(StatusCode::OK, |r| r.status);
    Ok((status, layout::page(&name, signed, Nav::Devices, body)).into_response())
}

/// The log view's filters: service (or the agent's own lines), text, stderr only. The
/// script re-opens the live view on a change; without it, the form's submit is the
/// download of the matching lines.
fn log_filters(uuid: &str, services: &[String]) -> Markup {
    html! {
        form.log-filter method="get" action={ "/devices/" (uuid) "/logs/download" } data-log-filter {
            label { span.muted { "Service" }
                select name="service" {
                    option value="" { "All lines" }
                    option value=(super::logs::AGENT_LINES) { "The agent's own" }
                    @for s in services { option value=(s) { (s) } }
                }
            }
            label { span.muted { "Text" } input type="search" name="q" placeholder="contains…"; }
            label.check { input type="checkbox" name="stderr" value="on"; " stderr only" }
            button.btn.btn-quiet type="submit" data-log-download { "Download" }
        }
    }
}

/// `POST /devices/{uuid}/env` (operator and up): `op=set|unset`, `name`, `value`,
/// `service`, `csrf`; a refusal comes back on the page beside the form.
pub(super) async fn env_post(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    device_or_404(&st, uuid).await?;
    let rows = st.store.env("device", uuid.as_str()).await?;
    let refusal = match env::apply(rows, &f) {
        Err(r) => r,
        Ok(vars) => {
            match crate::api::replace_device_env(st.clone(), signed.caller(), uuid, vars).await {
                Ok(()) => return Ok(Redirect::to(&format!("/devices/{uuid}#env")).into_response()),
                Err(e) => env::refused(e, &f)?,
            }
        }
    };
    render(&st, &signed, uuid, Some(&refusal)).await
}

fn source(s: crate::store::TargetSource) -> &'static str {
    match s {
        crate::store::TargetSource::DevicePin => "pinned on the device",
        crate::store::TargetSource::FleetPin => "the fleet's pin",
        crate::store::TargetSource::FleetLatest => "the fleet's newest",
    }
}

/// The services the reconciler reports, as a table.
fn services(rec: &Value) -> Markup {
    let Some(list) = rec["services"].as_array().filter(|l| !l.is_empty()) else {
        return html! { p.muted { "No services reported." } };
    };
    html! {
        table.compact.services {
            thead { tr { th { "Service" } th { "Status" } th.hide-sm { "Image" } th.hide-sm { "Release" } } }
            tbody { @for s in list {
                tr {
                    td { (s["name"].as_str().unwrap_or("?")) }
                    td {
                        (layout::status_badge(s["status"].as_str().unwrap_or("unknown")))
                        @if let Some(h) = s["health"].as_str() { " " (layout::status_badge(h)) }
                    }
                    td.hide-sm { code { (s["image"].as_str().unwrap_or("")) } }
                    td.hide-sm { @match s["release"].as_str() { Some(r) => (layout::short(r)), None => (layout::none()) } }
                }
            } }
        }
    }
}

/// An action's status as the API shows it (a pending one past its TTL is expired).
pub(super) fn status_of(a: &ActionRecord) -> &str {
    if a.status == "pending" && a.expires_at <= crate::store::now_unix() {
        "expired"
    } else {
        &a.status
    }
}

fn action_rows(actions: &[ActionRecord]) -> Markup {
    html! {
        @if actions.is_empty() { tr { td.muted colspan="7" { "No actions yet." } } }
        @for a in actions {
            @let status = status_of(a);
            tr data-action-id=(a.id) data-finished=(matches!(status, "succeeded" | "failed" | "expired")) {
                td { (a.name) }
                td { (layout::status_badge(status)) }
                td.hide-sm { code { (a.actor) } }
                td { (layout::ago(Some(a.created_at))) }
                td.hide-sm { (layout::ago(a.delivered_at)) }
                td.hide-sm { (layout::ago(a.finished_at)) }
                td.hide-sm { @match &a.detail { None | Some(Value::Null) => (layout::none()), Some(Value::String(s)) => (s), Some(v) => code.detail { (v.to_string()) } } }
            }
        }
    }
}

/// `GET /devices/{uuid}/actions`: the rows of the recent-actions table (the script
/// refreshes the table with them while an action is unfinished).
pub(super) async fn actions_rows(
    _signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
) -> Result<Html<String>, DashError> {
    let uuid = parse_uuid(&uuid)?;
    device_or_404(&st, uuid).await?;
    let actions = st.store.device_actions(uuid, RECENT_ACTIONS).await?;
    Ok(Html(action_rows(&actions).into_string()))
}

/// `POST /devices/{uuid}/actions`: `action=<name>` and `csrf`; queued through the API's
/// handler (operator and up), then back to the page.
pub(super) async fn run_action(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    let action = f.get("action").cloned().unwrap_or_default();
    let new = NewAction {
        action,
        params: serde_json::Map::new(),
        force: f.get("force").is_some_and(|v| v == "on"),
        ttl_secs: None,
    };
    crate::api::queue_action(st, signed.caller(), uuid, new).await?;
    Ok(Redirect::to(&format!("/devices/{uuid}#actions")).into_response())
}

/// `POST /devices/{uuid}/tags`: `tags` (one `name=value` a line; blank lines ignored)
/// and `csrf`, replacing the device's tags through the API's handler (operator and up).
pub(super) async fn tags(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    let tags = parse_tags(f.get("tags").map_or("", String::as_str))?;
    crate::api::replace_tags(st, signed.caller(), uuid, tags).await?;
    Ok(Redirect::to(&format!("/devices/{uuid}")).into_response())
}

/// `name=value` lines into tags; a line without `=` is an error that names it.
fn parse_tags(text: &str) -> Result<crate::api::types::Tags, DashError> {
    let mut tags = crate::api::types::Tags::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(DashError::bad_request(format!(
                "tag line {} ({line:?}) is not name=value",
                i + 1
            )));
        };
        tags.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(tags)
}

/// `POST /devices/{uuid}/public-url`: `enabled=on|off` and `csrf`, through the API's
/// handler (operator and up).
pub(super) async fn public_url(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    let enabled = match f.get("enabled").map(String::as_str) {
        Some("on") => true,
        Some("off") => false,
        other => {
            return Err(DashError::bad_request(format!(
                "enabled must be `on` or `off`, not {other:?}"
            )))
        }
    };
    crate::api::switch_public_url(st, signed.caller(), uuid, enabled).await?;
    Ok(Redirect::to(&format!("/devices/{uuid}")).into_response())
}

/// `POST /devices/{uuid}/pin`.
pub(super) async fn pin_device(
    signed: Signed,
    State(st): St,
    Path(uuid): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let uuid = parse_uuid(&uuid)?;
    let release = f
        .get("release")
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    match crate::api::pin_device(st.clone(), signed.caller(), uuid, release).await {
        Ok(()) => Ok(Redirect::to(&format!("/devices/{uuid}")).into_response()),
        Err(e) => {
            let r = Refusal::from_api(e, "pin", &f)?;
            render(&st, &signed, uuid, Some(&r)).await
        }
    }
}

/// `POST /devices/{uuid}/access` (operator and up): `mode`, `user`, `password`, `allow`;
/// a refusal (a bad CIDR, basic without a password) comes back beside the form.
pub(super) async fn access_post(
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
            render(&st, &signed, uuid, Some(&refusal)).await
        }
    }
}

/// `POST /devices/{uuid}/share-link` (operator and up): `for` (`2h`, `7d`; a second to a
/// year). The link is shown once, on a page of its own.
pub(super) async fn share_link(
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
            return render(&st, &signed, uuid, Some(&refusal)).await;
        }
    };
    let for_secs = i64::try_from(valid.as_secs().max(1)).unwrap_or(i64::MAX);
    let link = match crate::api::share_device(st.clone(), signed.caller(), uuid, for_secs).await {
        Ok(l) => l,
        Err(e) => {
            let refusal = Refusal::from_api(e, "share", &f)?;
            return render(&st, &signed, uuid, Some(&refusal)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lines_parse_and_a_bad_line_is_named() {
        let t = parse_tags("room = a1\n\nfloor=2\r\n").unwrap();
        assert_eq!(t.get("room").map(String::as_str), Some("a1"));
        assert_eq!(t.get("floor").map(String::as_str), Some("2"));
        match parse_tags("ok=1\nnonsense") {
            Err(DashError::Page(_, m)) => assert!(m.contains("line 2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
