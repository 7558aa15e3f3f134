//! `/v1/fleets/{name}/keys` and `/v1/keys`: provisioning keys, and registering a device
//! ahead of provisioning.

use super::*;

fn key_view(k: crate::store::KeyRecord) -> Key {
    Key {
        id: k.id,
        fleet: k.fleet,
        created_at: k.created_at,
        expires_at: k.expires_at,
        max_uses: k.max_uses,
        uses: k.uses,
        revoked: k.revoked,
    }
}

pub(super) async fn create_key(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<NewKey>, ApiError>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require(Role::Admin)?;
    let Path(fleet) = name?;
    let JsonObject(body) = body?;
    if body.expires_in_secs.is_some_and(|s| s <= 0) || body.max_uses.is_some_and(|n| n <= 0) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "expires_in_secs and max_uses must be positive",
        ));
    }
    let t = auth::generate_token();
    let expires_at = body
        .expires_in_secs
        .map(|s| crate::store::now_unix().saturating_add(s));
    st.store
        .create_key(&t.id, &fleet, &t.hash, expires_at, body.max_uses)
        .await?;
    let key = protocol::ProvisioningKey {
        gateway: st.advertise.clone(),
        ca_fingerprint: st.ca_fingerprint.clone(),
        secret: t.token,
    };
    st.store
        .audit(
            &caller.actor(),
            "key.create",
            &t.id,
            &json!({"fleet": fleet, "expires_at": expires_at, "max_uses": body.max_uses})
                .to_string(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: t.id,
            fleet,
            expires_at,
            max_uses: body.max_uses,
            key: key.encode(),
        }),
    ))
}

pub(super) async fn list_keys(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Vec<Key>> {
    caller.require(Role::Admin)?;
    let Path(fleet) = name?;
    fleet_or_404(&st, &fleet).await?;
    let keys = st.store.keys(&fleet).await?;
    Ok(Json(keys.into_iter().map(key_view).collect()))
}

pub(super) async fn revoke_key(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = id?;
    if !st.store.revoke_key(&id).await? {
        return Err(ApiError::not_found(format!("no provisioning key {id:?}")));
    }
    st.store
        .audit(&caller.actor(), "key.revoke", &id, "{}")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn register_device(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<Register>, ApiError>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    caller.require(Role::Admin)?;
    let JsonObject(body) = body?;
    let uuid = match body.uuid.as_deref() {
        Some(u) => parse_uuid(u)?,
        None => certs::random_uuid(),
    };
    let d = st
        .store
        .register_device(uuid, body.fleet.as_deref())
        .await?;
    st.store
        .audit(
            &caller.actor(),
            "device.register",
            uuid.as_str(),
            &json!({"fleet": body.fleet}).to_string(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(device_view(&st, &d))))
}
