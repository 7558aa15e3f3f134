//! Releases: compose files published for a fleet, pins, and each device's target state
//! and reported update progress.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;

use super::auth::{Caller, Role};
use super::error::{ApiError, JsonObject};
use super::types::{
    DevicePin, DeviceState, DeviceTarget, FleetPin, NewRelease, Pin, Release, ReleaseList,
    TargetSource,
};
use super::{device_or_404, fleet_or_404, ApiResult, ApiState, DeviceParam};
use crate::store::ReleaseRecord;
use crate::targets;

/// Routes for releases and target states.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/fleets/{name}/releases",
            get(list_releases).post(create_release),
        )
        .route("/v1/releases/{id}", get(show_release))
        .route("/v1/releases/{id}/target", get(release_target))
        .route("/v1/fleets/{name}/pin", put(pin_fleet))
        .route("/v1/devices/{uuid}/pin", put(pin_device))
        .route("/v1/devices/{uuid}/target", get(device_target))
        .route("/v1/devices/{uuid}/state", get(device_state))
}

/// A release as the API shows it; `compose` only where asked for.
fn release_view(r: ReleaseRecord, with_compose: bool) -> Release {
    Release {
        id: r.id,
        fleet: r.fleet,
        seq: r.seq,
        hash: r.hash,
        created_at: r.created_at,
        created_by: r.created_by,
        compose: with_compose.then_some(r.compose),
        created: None,
        services: None,
    }
}

impl From<crate::store::TargetSource> for TargetSource {
    fn from(s: crate::store::TargetSource) -> Self {
        use crate::store::TargetSource as Stored;
        match s {
            Stored::DevicePin => Self::DevicePin,
            Stored::FleetPin => Self::FleetPin,
            Stored::FleetLatest => Self::FleetLatest,
        }
    }
}

pub(super) async fn create_release(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<NewRelease>, ApiError>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    caller.require(Role::Operator)?;
    let Path(fleet) = name?;
    let JsonObject(body) = body?;
    fleet_or_404(&st, &fleet).await?;
    let compose = compose::parse_compose(&body.compose).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_compose",
            format!("invalid compose file: {e}"),
        )
    })?;
    let hash = compose::release_hash(&body.compose);
    let (rel, created) = st
        .store
        .create_release(&fleet, &body.compose, &hash, &caller.actor())
        .await?;
    if created {
        st.store
            .audit(
                &caller.actor(),
                "release.create",
                &rel.id,
                &json!({"fleet": fleet, "services": compose.services.keys().collect::<Vec<_>>()})
                    .to_string(),
            )
            .await?;
        targets::retarget_fleet(&st.store, &st.sessions, &fleet).await;
        crate::wake::tell(&st.store, crate::store::Wake::Fleet(fleet.clone())).await;
    }
    let mut v = release_view(rel, false);
    v.created = Some(created);
    v.services = Some(compose.services.keys().cloned().collect());
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(v),
    ))
}

async fn list_releases(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<ReleaseList> {
    caller.require(Role::Viewer)?;
    let Path(fleet) = name?;
    fleet_or_404(&st, &fleet).await?;
    let pinned = st.store.fleet_pin(&fleet).await?;
    let rels = st.store.releases(&fleet).await?;
    Ok(Json(ReleaseList {
        fleet,
        pinned_release: pinned,
        releases: rels.into_iter().map(|r| release_view(r, false)).collect(),
    }))
}

async fn show_release(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Release> {
    caller.require(Role::Viewer)?;
    let Path(id) = id?;
    let rel = st
        .store
        .release(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no release {id:?}")))?;
    Ok(Json(release_view(rel, true)))
}

/// The target state a release gives its fleet's devices (fleet variables merged), as an
/// offline bundle carries it.
async fn release_target(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<protocol::release::TargetState> {
    caller.require(Role::Viewer)?;
    let Path(id) = id?;
    let rel = st
        .store
        .release(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no release {id:?}")))?;
    Ok(Json(targets::release_target(&st.store, &rel).await?))
}

pub(super) async fn pin_fleet(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<Pin>, ApiError>,
) -> ApiResult<FleetPin> {
    caller.require(Role::Operator)?;
    let Path(fleet) = name?;
    let JsonObject(pin) = body?;
    fleet_or_404(&st, &fleet).await?;
    if let Some(id) = &pin.release {
        release_of_fleet(&st, id, &fleet).await?;
    }
    st.store.pin_fleet(&fleet, pin.release.as_deref()).await?;
    st.store
        .audit(
            &caller.actor(),
            "fleet.pin",
            &fleet,
            &json!({"release": pin.release}).to_string(),
        )
        .await?;
    targets::retarget_fleet(&st.store, &st.sessions, &fleet).await;
    crate::wake::tell(&st.store, crate::store::Wake::Fleet(fleet.clone())).await;
    Ok(Json(FleetPin {
        fleet,
        pinned_release: pin.release,
    }))
}

pub(super) async fn pin_device(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<Pin>, ApiError>,
) -> ApiResult<DevicePin> {
    caller.require(Role::Operator)?;
    let JsonObject(pin) = body?;
    let d = device_or_404(&st, uuid).await?;
    if let Some(id) = &pin.release {
        let Some(fleet) = d.fleet.as_deref() else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_fleet",
                format!("device {uuid} is in no fleet; move it into the release's fleet first"),
            ));
        };
        release_of_fleet(&st, id, fleet).await?;
    }
    st.store.pin_device(uuid, pin.release.as_deref()).await?;
    st.store
        .audit(
            &caller.actor(),
            "device.pin",
            uuid.as_str(),
            &json!({"release": pin.release}).to_string(),
        )
        .await?;
    targets::retarget(&st.sessions, uuid);
    crate::wake::tell(&st.store, crate::store::Wake::Target(uuid)).await;
    Ok(Json(DevicePin {
        uuid: uuid.as_str().to_string(),
        pinned_release: pin.release,
    }))
}

async fn release_of_fleet(st: &ApiState, id: &str, fleet: &str) -> Result<ReleaseRecord, ApiError> {
    match st.store.release(id).await? {
        Some(r) if r.fleet == fleet => Ok(r),
        Some(r) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_fleet",
            format!("release {id} belongs to fleet {:?}, not {fleet:?}", r.fleet),
        )),
        None => Err(ApiError::not_found(format!("no release {id:?}"))),
    }
}

async fn device_target(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<DeviceTarget> {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    match targets::target_for(&st.store, uuid).await? {
        Some((target, source)) => Ok(Json(DeviceTarget {
            source: source.into(),
            target,
        })),
        None => Err(ApiError::not_found(format!(
            "device {uuid} has no target: its fleet has no release yet"
        ))),
    }
}

/// What the device last reported (release, per-service status, download progress) beside
/// what it should run.
async fn device_state(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<DeviceState> {
    caller.require(Role::Viewer)?;
    let d = device_or_404(&st, uuid).await?;
    let target = targets::target_for(&st.store, uuid).await?;
    Ok(Json(DeviceState {
        uuid: uuid.as_str().to_string(),
        online: st.sessions.get(&uuid).is_some(),
        target_release: target.as_ref().map(|(t, _)| t.release.clone()),
        target_source: target.map(|(_, s)| s.into()),
        reported: d.state,
    }))
}
