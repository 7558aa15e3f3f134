//! Group actions on the devices page (balena's "group actions"): the rows' checkboxes
//! post the selected uuids to `POST /devices/bulk` with an action (blink, restart, ...)
//! or a public-URL switch. Each device's action goes through the API's own handler, so
//! the role check and the audit entry are per device, as when it is run on its own.
//!
//! Queued actions then show on `GET /devices/bulk?ids=...` (one row a device, refreshed
//! by the script until every one has finished); a page reload there re-runs nothing.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, Nav};
use super::{parse_uuid, DashError, Signed, St};
use crate::api::auth::Role;
use crate::api::types::NewAction;
use crate::api::ApiState;
use crate::store::ActionRecord;

/// The group actions, in order: form value, button label, whether the browser asks first.
pub(super) const BULK_ACTIONS: &[(&str, &str, bool)] = &[
    ("blink", "Blink", false),
    ("restart", "Restart services", true),
    ("update", "Update now", false),
    ("purge", "Purge data", true),
    ("reboot", "Reboot", true),
    ("shutdown", "Shut down", true),
    ("public-url-on", "Public URL on", false),
    ("public-url-off", "Public URL off", true),
];

/// Most devices one group action may select (a page shows 50).
const MAX_SELECTED: usize = 200;

/// The bar above the devices table: the CSRF token, a count of the selection (the script
/// keeps it current), and one submit button per group action.
pub(super) fn bar(signed: &Signed) -> Markup {
    html! {
        div.bulk-bar {
            input type="hidden" name="csrf" value=(signed.csrf);
            // Set by the script from the button clicked (it disables buttons on submit,
            // and a disabled button's own value is not sent); without the script, the
            // button's value comes after this one and wins.
            input type="hidden" name="action" value="" data-bulk-chosen;
            span.muted data-bulk-count { "Select devices for a group action" }
            div.buttons {
                @for (action, label, confirm) in BULK_ACTIONS {
                    button.btn.btn-danger[*confirm] type="submit" name="action" value=(action)
                        data-bulk-action=(action)
                        data-confirm=[confirm.then(|| format!("{label} on the selected devices?"))] { (label) }
                }
            }
        }
    }
}

/// A form body with repeated fields: every `uuid`, the last `action`, and the rest as a
/// map (for the CSRF check).
fn parse(
    body: &[u8],
) -> Result<(Vec<String>, std::collections::HashMap<String, String>), DashError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| DashError::bad_request(format!("the form does not parse: {e}")))?;
    let uuids = pairs
        .iter()
        .filter(|(k, _)| k == "uuid")
        .map(|(_, v)| v.clone())
        .collect();
    let rest = pairs
        .into_iter()
        .filter(|(k, v)| k != "uuid" && !(k == "action" && v.is_empty()))
        .collect();
    Ok((uuids, rest))
}

/// What happened on one device: `Ok(None)` an action queued (its row shows the rest),
/// `Ok(Some(what))` a switch done, `Err(why)` not done.
struct Outcome {
    uuid: String,
    result: Result<Option<String>, String>,
}

/// `POST /devices/bulk`: `uuid` (repeated), `action` and `csrf`. Actions are queued per
/// device, then the browser goes to their live status page; a public-URL switch answers
/// with what it did to each device. A device that fails (deleted meanwhile, ...) is named
/// with its reason; the others still run.
pub(super) async fn run(signed: Signed, State(st): St, body: Bytes) -> Result<Response, DashError> {
    let (uuids, f) = parse(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let action = f.get("action").cloned().unwrap_or_default();
    let Some((_, label, _)) = BULK_ACTIONS.iter().find(|(a, _, _)| *a == action) else {
        return Err(DashError::bad_request(format!(
            "unknown group action {action:?}; one of: {}",
            BULK_ACTIONS
                .iter()
                .map(|(a, _, _)| *a)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if uuids.is_empty() {
        return Err(DashError::bad_request(
            "select at least one device (the checkboxes in the first column)",
        ));
    }
    if uuids.len() > MAX_SELECTED {
        return Err(DashError::bad_request(format!(
            "{} devices selected; a group action takes at most {MAX_SELECTED}",
            uuids.len()
        )));
    }
    let mut parsed = Vec::with_capacity(uuids.len());
    for u in &uuids {
        let uuid = u
            .parse::<protocol::DeviceUuid>()
            .map_err(|_| DashError::bad_request(format!("{u:?} is not a device uuid")))?;
        if !parsed.contains(&uuid) {
            parsed.push(uuid);
        }
    }
    let mut outcomes = Vec::with_capacity(parsed.len());
    let mut queued = Vec::new();
    for uuid in parsed {
        let result = match action.as_str() {
            "public-url-on" | "public-url-off" => {
                let on = action == "public-url-on";
                crate::api::switch_public_url(st.clone(), signed.caller(), uuid, on)
                    .await
                    .map(|()| Some(format!("public URL {}", if on { "on" } else { "off" })))
            }
            name => {
                let new = NewAction {
                    action: name.to_string(),
                    params: serde_json::Map::new(),
                    force: false,
                    ttl_secs: None,
                };
                crate::api::queue_action(st.clone(), signed.caller(), uuid, new)
                    .await
                    .map(|a| {
                        queued.push(a.id);
                        None
                    })
            }
        };
        outcomes.push(Outcome {
            uuid: uuid.as_str().to_string(),
            result: result.map_err(|e| e.message),
        });
    }
    let failed = outcomes.iter().any(|o| o.result.is_err());
    if !failed && !queued.is_empty() {
        return Ok(
            Redirect::to(&format!("/devices/bulk?ids={}", queued.join(","))).into_response(),
        );
    }
    let actions = load(&st, &queued).await?;
    Ok(page(&st, &signed, label, &actions, &outcomes)
        .await?
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct Ids {
    ids: Option<String>,
}

impl Ids {
    /// The action ids, checked for shape (`act_` and a uuid), at most [`MAX_SELECTED`].
    fn parse(&self) -> Result<Vec<String>, DashError> {
        let ids: Vec<String> = self
            .ids
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if ids.len() > MAX_SELECTED {
            return Err(DashError::bad_request(format!(
                "at most {MAX_SELECTED} action ids"
            )));
        }
        for id in &ids {
            let ok = id.strip_prefix("act_").is_some_and(|rest| {
                !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            });
            if !ok {
                return Err(DashError::bad_request(format!(
                    "{id:?} is not an action id (act_…)"
                )));
            }
        }
        Ok(ids)
    }
}

async fn load(st: &ApiState, ids: &[String]) -> Result<Vec<ActionRecord>, DashError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(a) = st.store.action(id).await? {
            out.push(a);
        }
    }
    Ok(out)
}

/// `GET /devices/bulk?ids=act_…,act_…`: the status of a group action's actions.
pub(super) async fn status_page(
    signed: Signed,
    State(st): St,
    Query(q): Query<Ids>,
) -> Result<Html<String>, DashError> {
    let ids = q.parse()?;
    let actions = load(&st, &ids).await?;
    let label = actions
        .first()
        .and_then(|a| BULK_ACTIONS.iter().find(|(n, _, _)| *n == a.name))
        .map_or("Group action", |(_, l, _)| l);
    page(&st, &signed, label, &actions, &[]).await
}

/// `GET /devices/bulk/rows?ids=…`: the rows of that table (the script refreshes it).
pub(super) async fn status_rows(
    _signed: Signed,
    State(st): St,
    Query(q): Query<Ids>,
) -> Result<Html<String>, DashError> {
    let ids = q.parse()?;
    let actions = load(&st, &ids).await?;
    Ok(Html(rows(&st, &actions).await?.into_string()))
}

async fn page(
    st: &ApiState,
    signed: &Signed,
    label: &str,
    actions: &[ActionRecord],
    outcomes: &[Outcome],
) -> Result<Html<String>, DashError> {
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let switched: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(&o.result, Ok(Some(_))))
        .collect();
    let ids: Vec<&str> = actions.iter().map(|a| a.id.as_str()).collect();
    let mut names = Vec::new();
    for o in failures.iter().chain(&switched) {
        names.push(name_of(st, &o.uuid).await?);
    }
    let (fail_names, switch_names) = names.split_at(failures.len());
    let body = html! {
        div.page-head {
            div {
                p.crumbs { a href="/devices" { "Devices" } " / group action" }
                h1 { (label) }
            }
        }
        @if !failures.is_empty() {
            div.card {
                h2 { "Not done" }
                ul.bulk-failures {
                    @for (o, name) in failures.iter().zip(fail_names) {
                        li.alert.alert-error data-uuid-failed=(o.uuid) {
                            a href={ "/devices/" (o.uuid) } { (name) } ": " (o.result.as_ref().err().map_or("", String::as_str))
                        }
                    }
                }
            }
        }
        @if !switched.is_empty() {
            div.card {
                h2 { "Done" }
                table.compact.bulk-done { tbody {
                    @for (o, name) in switched.iter().zip(switch_names) {
                        tr data-uuid-done=(o.uuid) {
                            td { a href={ "/devices/" (o.uuid) } { (name) } }
                            td { (layout::status_badge("done")) " " (o.result.as_ref().ok().and_then(Option::as_deref).unwrap_or("")) }
                        }
                    }
                } }
            }
        }
        @if !actions.is_empty() {
            section.card id="actions" {
                h2 { "Actions" }
                p.muted { "Offline devices get theirs when they reconnect (up to a day)." }
                div.table-wrap {
                    table.actions.bulk-actions {
                        thead { tr { th { "Device" } th { "Action" } th { "Status" } th.hide-sm { "Queued" } th.hide-sm { "Finished" } th.hide-sm { "Detail" } } }
                        tbody data-refresh={ "/devices/bulk/rows?ids=" (ids.join(",")) } { (rows(st, actions).await?) }
                    }
                }
            }
        }
        p { a.btn.btn-quiet href="/devices" { "← Back to the devices" } }
    };
    Ok(layout::page(label, signed, Nav::Devices, body))
}

async fn name_of(st: &ApiState, uuid: &str) -> Result<String, DashError> {
    let short = || uuid.chars().take(7).collect::<String>();
    let Ok(u) = parse_uuid(uuid) else {
        return Ok(short());
    };
    Ok(st
        .store
        .device(u)
        .await?
        .and_then(|d| d.name)
        .unwrap_or_else(short))
}

async fn rows(st: &ApiState, actions: &[ActionRecord]) -> Result<Markup, DashError> {
    let mut named = Vec::with_capacity(actions.len());
    for a in actions {
        named.push((a, name_of(st, a.device.as_str()).await?));
    }
    Ok(html! {
        @for (a, name) in &named {
            @let status = super::device::status_of(a);
            tr data-action-id=(a.id) data-device=(a.device.as_str()) data-finished=(matches!(status, "succeeded" | "failed" | "expired")) {
                td { a href={ "/devices/" (a.device.as_str()) } { (name) } }
                td { (a.name) }
                td { (layout::status_badge(status)) }
                td.hide-sm { (layout::ago(Some(a.created_at))) }
                td.hide-sm { (layout::ago(a.finished_at)) }
                td.hide-sm { @match &a.detail { None | Some(Value::Null) => (layout::none()), Some(Value::String(s)) => (s), Some(v) => code.detail { (v.to_string()) } } }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_uuids_and_the_chosen_action_are_read() {
        let (uuids, rest) = parse(b"csrf=x&action=&uuid=a&uuid=b&action=blink").unwrap();
        assert_eq!(uuids, ["a", "b"]);
        assert_eq!(rest["action"], "blink");
        assert_eq!(rest["csrf"], "x");
    }

    #[test]
    fn action_ids_are_checked_for_shape() {
        let ok = Ids {
            ids: Some("act_0a-1b,act_ff".into()),
        };
        assert_eq!(ok.parse().unwrap(), ["act_0a-1b", "act_ff"]);
        for bad in ["act_", "x", "act_zz", "act_1'--"] {
            let ids = Ids {
                ids: Some(bad.into()),
            };
            assert!(ids.parse().is_err(), "{bad}");
        }
    }
}
