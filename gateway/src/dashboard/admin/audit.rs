//! `/admin/audit`: the audit log, newest first, 50 a page, filtered by actor, action and
//! target (GET parameters, so a filtered view is a link). Through `GET /v1/audit`.

use axum::extract::{Query, State};
use axum::response::Html;
use maud::html;
use serde::Deserialize;

use super::{admin_page, require_admin, Tab};
use crate::api::pages;
use crate::api::types::AuditQuery;
use crate::dashboard::layout;
use crate::dashboard::{urlencode, DashError, Signed, St};

/// Entries a page shows.
const PAGE: i64 = 50;

#[derive(Deserialize, Default)]
pub(super) struct Filter {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    before: Option<String>,
}

/// `GET /admin/audit?actor=&action=&target=&before=`.
pub(super) async fn page(
    signed: Signed,
    State(st): St,
    Query(q): Query<Filter>,
) -> Result<Html<String>, DashError> {
    require_admin(&signed)?;
    let clean = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let (actor, action, target) = (clean(&q.actor), clean(&q.action), clean(&q.target));
    let before =
        match clean(&q.before) {
            None => None,
            Some(b) => Some(b.parse::<i64>().map_err(|_| {
                DashError::bad_request(format!("before={b:?} is not an entry number"))
            })?),
        };
    let query = AuditQuery {
        before,
        // One more than a page: whether there is an older page.
        limit: Some(PAGE + 1),
        actor: actor.clone(),
        action: action.clone(),
        target: target.clone(),
    };
    let mut entries = pages::audit(st, signed.caller(), query).await?;
    let more = entries.len() as i64 > PAGE;
    entries.truncate(PAGE as usize);
    let filters = [("actor", &actor), ("action", &action), ("target", &target)];
    let link = |before: Option<i64>| {
        let mut parts: Vec<String> = filters
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", urlencode(v))))
            .collect();
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        format!("/admin/audit?{}", parts.join("&"))
    };
    let filtered = filters.iter().any(|(_, v)| v.is_some());
    let body = html! {
        div.page-head {
            h1 { "Audit log" }
            p.muted.count { "newest first" }
        }
        form.filters method="get" action="/admin/audit" {
            label { "Actor" input name="actor" value=[actor.as_deref()] placeholder="user:ann, token:1a2b3c4d"; }
            label { "Action" input name="action" value=[action.as_deref()] placeholder="token.create, support."; }
            label.grow { "Target (device uuid, fleet, token id)" input name="target" value=[target.as_deref()]; }
            div.filter-buttons {
                button.btn.btn-primary type="submit" { "Filter" }
                @if filtered { a.btn href="/admin/audit" { "Clear" } }
            }
        }
        @if entries.is_empty() {
            div.card.empty { @if filtered { "No entries match." } @else { "The audit log is empty." } }
        } @else {
            div.table-wrap {
                table.admin-table.audit data-table="audit" {
                    thead { tr { th.num { "#" } th { "When" } th { "Actor" } th { "Action" } th { "Target" } th.hide-sm { "Detail" } } }
                    tbody {
                        @for e in &entries {
                            tr data-seq=(e.seq) {
                                td.num { (e.seq) }
                                td { (layout::ago(Some(e.at))) }
                                td { a href={ "/admin/audit?actor=" (urlencode(&e.actor)) } { code { (e.actor) } } }
                                td { a href={ "/admin/audit?action=" (urlencode(&e.action)) } { (e.action) } }
                                td { a href={ "/admin/audit?target=" (urlencode(&e.target)) } { code.detail { (e.target) } } }
                                td.hide-sm { code.detail { (e.detail.to_string()) } }
                            }
                        }
                    }
                }
            }
            nav.pager {
                @if before.is_some() { a.btn href=(link(None)) { "Newest" } }
                @if more {
                    @if let Some(last) = entries.last() { a.btn href=(link(Some(last.seq))) rel="next" { "Older" } }
                }
            }
        }
    };
    Ok(admin_page("Audit log", &signed, Tab::Audit, None, body))
}
