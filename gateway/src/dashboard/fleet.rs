//! `/fleets/{name}`: one fleet: its counts and public-URL default, its releases (status,
//! publish, pin; see [`super::releases`]) and its environment variables (admins edit
//! them, as in the API).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::env::{self, Scope};
use super::forms::Refusal;
use super::layout::{self, Nav};
use super::releases;
use super::{form, urlencode, DashError, Signed, St};
use crate::api::auth::Role;
use crate::api::ApiState;

/// After a publish: which release, and whether it existed already.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Params {
    published: Option<String>,
    same: Option<String>,
}

/// `GET /fleets/{name}`.
pub(super) async fn page(
    signed: Signed,
    State(st): St,
    Path(name): Path<String>,
    Query(q): Query<Params>,
) -> Result<Response, DashError> {
    let published = q
        .published
        .as_deref()
        .filter(|id| id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|id| (id, q.same.is_some()));
    render(&st, &signed, &name, None, published).await
}

/// The fleet page, with a form's refusal shown beside that form (and the page's status
/// then the refusal's), or a notice of what was just published.
pub(super) async fn render(
    st: &ApiState,
    signed: &Signed,
    name: &str,
    refusal: Option<&Refusal>,
    published: Option<(&str, bool)>,
) -> Result<Response, DashError> {
    let Some(f) = st.store.fleet(name).await? else {
        return Err(DashError::not_found(format!("there is no fleet {name:?}")));
    };
    let rels = releases::with_counts(st, name).await?;
    let pin = st.store.fleet_pin(name).await?;
    let every = crate::store::DeviceListFilter {
        fleet: Some(name.to_string()),
        ..Default::default()
    };
    let (_, devices) = st.store.device_page(&every, 0, 0).await?;
    let online = st
        .store
        .online_per_fleet()
        .await?
        .into_iter()
        .find(|(f, _)| f == name)
        .map_or(0, |(_, n)| n);
    let vars = st.store.env("fleet", name).await?;
    let mut services: Vec<String> = rels
        .first()
        .and_then(|(r, _)| compose::parse_compose(&r.compose).ok())
        .map(|c| c.services.into_keys().collect())
        .unwrap_or_default();
    services.dedup();
    let admin = signed.role >= Role::Admin;
    let fleet_q = urlencode(name);
    let body = html! {
        div.page-head {
            div {
                p.crumbs { a href="/fleets" { "Fleets" } " / " (name) }
                h1 { (name) }
            }
            p.muted.count {
                a href={ "/devices?fleet=" (fleet_q) } { (devices) " device" @if devices != 1 { "s" } }
                " · " span.badge.online[online > 0].offline[online == 0] { (online) " online" }
                " · public URLs "
                @if f.public_url_default { span.badge.ok { "on by default" } } @else { span.badge.neutral { "off by default" } }
            }
        }
        @if let Some((id, same)) = published {
            p.alert.alert-ok role="status" data-published=(id) {
                @if same { "That compose file is already release " } @else { "Published release " }
                code { (id) } "."
            }
        }
        section.card id="releases" {
            h2 { "Releases" }
            (releases::table(name, &rels, pin.as_deref(), signed, refusal))
        }
        @if signed.can_act() {
            section.card id="publish" {
                h2 { "Publish a release" }
                (releases::publish_form(name, signed, refusal))
            }
        }
        section.card id="env" {
            h2 { "Fleet environment" }
            p.muted { "Every device of the fleet gets these; a device's own variables win over them." }
            (env::section(Scope::Fleet(name), &vars, admin, signed, &services, refusal))
            @if !admin { (env::read_only_note(Scope::Fleet(name), signed)) }
        }
    };
    let status = refusal.map_or(StatusCode::OK, |r| r.status);
    Ok((status, layout::page(name, signed, Nav::Fleets, body)).into_response())
}

/// `POST /fleets/{name}/env` (admin): `op=set|unset`, `name`, `value`, `service`, `csrf`.
pub(super) async fn env_post(
    signed: Signed,
    State(st): St,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Admin)?;
    if st.store.fleet(&name).await?.is_none() {
        return Err(DashError::not_found(format!("there is no fleet {name:?}")));
    }
    let rows = st.store.env("fleet", &name).await?;
    let refusal = match env::apply(rows, &f) {
        Err(r) => r,
        Ok(vars) => {
            match crate::api::replace_fleet_env(st.clone(), signed.caller(), &name, vars).await {
                Ok(()) => {
                    return Ok(
                        Redirect::to(&format!("/fleets/{}#env", urlencode(&name))).into_response()
                    )
                }
                Err(e) => env::refused(e, &f)?,
            }
        }
    };
    render(&st, &signed, &name, Some(&refusal), None).await
}

/// `POST /fleets/{name}/releases`.
pub(super) async fn publish(
    signed: Signed,
    State(st): St,
    Path(fleet): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let text = f.get("compose").cloned().unwrap_or_default();
    let refusal = if text.trim().is_empty() {
        Some(Refusal::new(
            "compose",
            "paste a compose file, or load one from a file",
            &f,
        ))
    } else if let Err(e) = compose::parse_compose(&text) {
        // Parsed here too for the error's parts (line, key) apart; the API's handler
        // parses again and would refuse the same file.
        let mut r = Refusal::new("compose", e.message.clone(), &f);
        r.status = StatusCode::UNPROCESSABLE_ENTITY;
        r.at = Some(Box::new((e.line, e.path)));
        Some(r)
    } else {
        match crate::api::publish_release(st.clone(), signed.caller(), &fleet, text).await {
            Ok(rel) => {
                let again = if rel.created == Some(false) {
                    "&same=1"
                } else {
                    ""
                };
                let to = format!(
                    "/fleets/{}?published={}{again}#releases",
                    urlencode(&fleet),
                    rel.id
                );
                return Ok(Redirect::to(&to).into_response());
            }
            Err(e) => Some(Refusal::from_api(e, "compose", &f)?),
        }
    };
    render(&st, &signed, &fleet, refusal.as_ref(), None).await
}

/// `POST /fleets/{name}/pin`.
pub(super) async fn pin_fleet(
    signed: Signed,
    State(st): St,
    Path(fleet): Path<String>,
    body: Bytes,
) -> Result<Response, DashError> {
    let f = form(&body)?;
    signed.check_post(&f, Role::Operator)?;
    let release = f
        .get("release")
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    match crate::api::pin_fleet(st.clone(), signed.caller(), &fleet, release).await {
        Ok(()) => {
            Ok(Redirect::to(&format!("/fleets/{}#releases", urlencode(&fleet))).into_response())
        }
        Err(e) => {
            let r = Refusal::from_api(e, "pin", &f)?;
            render(&st, &signed, &fleet, Some(&r), None).await
        }
    }
}
