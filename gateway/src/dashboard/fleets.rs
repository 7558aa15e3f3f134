//! `/fleets`: each fleet with its device and online counts, newest release, pin and
//! public-URL default; the name leads to the fleet's page (releases, environment), the
//! count to its devices.

use axum::extract::State;
use axum::response::Html;
use maud::html;

use super::layout::{self, Nav};
use super::{urlencode, DashError, Signed, St};

/// `GET /fleets`.
pub(super) async fn page(signed: Signed, State(st): St) -> Result<Html<String>, DashError> {
    let fleets = st.store.fleets().await?;
    let online: std::collections::HashMap<String, i64> =
        st.store.online_per_fleet().await?.into_iter().collect();
    let mut rows = Vec::with_capacity(fleets.len());
    for (f, devices) in fleets {
        let newest = st.store.releases(&f.name).await?.into_iter().next();
        let pin = st.store.fleet_pin(&f.name).await?;
        let on = online.get(&f.name).copied().unwrap_or(0);
        rows.push((f, devices, on, newest, pin));
    }
    let body = html! {
        div.page-head {
            h1 { "Fleets" }
            p.muted.count { (rows.len()) " fleet" @if rows.len() != 1 { "s" } }
        }
        @if rows.is_empty() {
            div.card.empty { "No fleets yet. Create one with " code { "gateway fleet create NAME" } "." }
        } @else {
            div.table-wrap {
                table.fleets {
                    thead { tr {
                        th { "Fleet" } th.num { "Devices" } th.num { "Online" }
                        th { "Current release" } th { "Pinned to" } th { "Public URLs" }
                    } }
                    tbody {
                        @for (f, devices, on, newest, pin) in &rows {
                            tr data-fleet=(f.name) {
                                td { a.device-name href={ "/fleets/" (urlencode(&f.name)) } { (f.name) } }
                                td.num { a href={ "/devices?fleet=" (urlencode(&f.name)) } { (devices) } }
                                td.num {
                                    span.badge.online[*on > 0].offline[*on == 0] { (on) " online" }
                                }
                                td {
                                    @match newest {
                                        Some(r) => { "#" (r.seq) " " (layout::short(&r.id)) " " span.muted { (layout::ago(Some(r.created_at))) } },
                                        None => span.muted { "no release" },
                                    }
                                }
                                td { @match pin { Some(p) => (layout::short(p)), None => span.muted { "newest" } } }
                                td {
                                    @if f.public_url_default { span.badge.ok { "on by default" } }
                                    @else { span.badge.neutral { "off by default" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Fleets", &signed, Nav::Fleets, body))
}
