//! `/v1/devices`: list, show, rename, move, delete devices and switch their public URL.

use super::*;

pub(super) async fn list_devices(
    caller: Caller,
    State(st): State<ApiState>,
    filter: Result<Query<DeviceFilter>, QueryRejection>,
) -> ApiResult<Vec<Device>> {
    caller.require(Role::Viewer)?;
    let Query(filter) = filter?;
    let tagged = match &filter.tag {
        Some(t) => {
            let (name, value) = match t.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (t.as_str(), None),
            };
            Some(st.store.devices_with_tag(name, value).await?)
        }
        None => None,
    };
    let devices = st
        .store
        .devices()
        .await?
        .iter()
        .filter(|d| filter.fleet.is_none() || d.fleet == filter.fleet)
        .filter(|d| tagged.as_ref().is_none_or(|t| t.contains(&d.uuid)))
        .map(|d| device_view(&st, d))
        .filter(|v| filter.online.is_none_or(|o| v.online == o))
        .collect();
    Ok(Json(devices))
}

pub(super) async fn show_device(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<Device> {
    caller.require(Role::Viewer)?;
    let d = device_or_404(&st, uuid).await?;
    let mut v = device_view(&st, &d);
    v.tags = Some(st.store.tags(d.uuid).await?.into_iter().collect());
    Ok(Json(v))
}

pub(super) async fn update_device(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<DevicePatch>, ApiError>,
) -> ApiResult<Device> {
    caller.require(Role::Operator)?;
    let JsonObject(patch) = body?;
    if let Some(n) = &patch.name {
        valid_name(n)?;
    }
    let fleet = patch.fleet.as_ref().map(|f| f.as_deref());
    if !st
        .store
        .update_device(uuid, patch.name.as_deref(), fleet)
        .await?
    {
        return Err(ApiError::not_found(format!("no device {uuid}")));
    }
    if patch.fleet.is_some() {
        // A pin to the old fleet's release means nothing in the new fleet.
        st.store.pin_device(uuid, None).await?;
        // Its public URL follows the new fleet's access default (if it has none of its own).
        st.sessions.access.forget(&uuid);
        crate::targets::retarget(&st.sessions, uuid);
        crate::wake::tell(&st.store, crate::store::Wake::Target(uuid)).await;
    }
    st.store
        .audit(
            &caller.actor(),
            "device.update",
            uuid.as_str(),
            &json!({"name": patch.name, "fleet": patch.fleet}).to_string(),
        )
        .await?;
    let d = device_or_404(&st, uuid).await?;
    Ok(Json(device_view(&st, &d)))
}

pub(super) async fn delete_device(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    if !st.store.revoke_device(uuid).await? {
        return Err(ApiError::not_found(format!("no device {uuid}")));
    }
    // Revocation is immediate: the live tunnel goes now, the next handshake is refused.
    st.sessions
        .disconnect(&uuid, AppErrorCode::UnknownDevice, b"device deleted");
    crate::wake::tell(&st.store, crate::store::Wake::Deleted(uuid)).await;
    st.store
        .audit(&caller.actor(), "device.delete", uuid.as_str(), "{}")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_device_public_url(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<Switch>, ApiError>,
) -> ApiResult<Device> {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    if !st.store.set_public_url(uuid, body.enabled).await? {
        return Err(ApiError::not_found(format!("no device {uuid}")));
    }
    st.sessions.set_public_url(&uuid, body.enabled);
    crate::wake::tell(&st.store, crate::store::Wake::PublicUrl(uuid)).await;
    st.store
        .audit(
            &caller.actor(),
            "device.public_url",
            uuid.as_str(),
            &json!({"enabled": body.enabled}).to_string(),
        )
        .await?;
    let d = device_or_404(&st, uuid).await?;
    Ok(Json(device_view(&st, &d)))
}
