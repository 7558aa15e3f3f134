//! `/v1/fleets`: create, list, show and delete fleets, and their public-URL default.

use super::*;

pub(super) fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!("{name:?}: names are 1-64 characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

fn fleet_view(f: crate::store::FleetRecord, devices: i64) -> Fleet {
    Fleet {
        name: f.name,
        public_url_default: f.public_url_default,
        created_at: f.created_at,
        devices,
    }
}

pub(super) async fn list_fleets(
    caller: Caller,
    State(st): State<ApiState>,
) -> ApiResult<Vec<Fleet>> {
    caller.require(Role::Viewer)?;
    let fleets = st.store.fleets().await?;
    Ok(Json(
        fleets.into_iter().map(|(f, n)| fleet_view(f, n)).collect(),
    ))
}

pub(super) async fn create_fleet(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<NewFleet>, ApiError>,
) -> Result<(StatusCode, Json<Fleet>), ApiError> {
    caller.require(Role::Admin)?;
    let JsonObject(body) = body?;
    valid_name(&body.name)?;
    let f = st
        .store
        .create_fleet(&body.name, body.public_url_default)
        .await?;
    st.store
        .audit(
            &caller.actor(),
            "fleet.create",
            &f.name,
            &json!({"public_url_default": f.public_url_default}).to_string(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(fleet_view(f, 0))))
}

pub(super) async fn show_fleet(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<FleetDetail> {
    caller.require(Role::Viewer)?;
    let Path(name) = name?;
    let f = st
        .store
        .fleet(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet {name:?}")))?;
    let devices = st
        .store
        .devices()
        .await?
        .iter()
        .filter(|d| d.fleet.as_deref() == Some(&name))
        .map(|d| device_view(&st, d))
        .collect();
    Ok(Json(FleetDetail {
        name: f.name,
        public_url_default: f.public_url_default,
        created_at: f.created_at,
        devices,
    }))
}

pub(super) async fn delete_fleet(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    // Keys, releases and fleet variables go with the fleet; devices block it (409).
    let gone = st
        .store
        .delete_fleet(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet {name:?}")))?;
    st.store
        .audit(
            &caller.actor(),
            "fleet.delete",
            &name,
            &json!({"keys": gone.keys, "releases": gone.releases, "env_vars": gone.env_vars})
                .to_string(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_fleet_public_url(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<Switch>, ApiError>,
) -> ApiResult<FleetSwitched> {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    let JsonObject(body) = body?;
    let switched = st
        .store
        .set_fleet_public_url(&name, body.enabled)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fleet {name:?}")))?;
    for uuid in &switched {
        st.sessions.set_public_url(uuid, body.enabled);
    }
    // The devices whose tunnels other nodes hold: their nodes re-read the switch.
    crate::wake::tell(&st.store, crate::store::Wake::FleetPublicUrl(name.clone())).await;
    st.store
        .audit(
            &caller.actor(),
            "fleet.public_url",
            &name,
            &json!({"enabled": body.enabled, "devices": switched.len()}).to_string(),
        )
        .await?;
    Ok(Json(FleetSwitched {
        fleet: name,
        enabled: body.enabled,
        devices_switched: switched.len() as u64,
    }))
}
