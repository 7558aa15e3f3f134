//! Device tags, and environment variables per device or fleet (optionally per service).

use super::*;

pub(super) async fn get_tags(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<Tags> {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    Ok(Json(st.store.tags(uuid).await?.into_iter().collect()))
}

pub(super) async fn put_tags(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<Tags>, ApiError>,
) -> ApiResult<Tags> {
    caller.require(Role::Operator)?;
    let JsonObject(tags) = body?;
    device_or_404(&st, uuid).await?;
    for k in tags.keys() {
        if k.is_empty() || k.chars().count() > 100 {
            return Err(ApiError::bad_request(
                "invalid_tag",
                format!("tag name {k:?} must be 1-100 characters"),
            ));
        }
    }
    let tags: Vec<(String, String)> = tags.into_iter().collect();
    st.store.set_tags(uuid, &tags).await?;
    st.store
        .audit(
            &caller.actor(),
            "device.tags",
            uuid.as_str(),
            &json!(tags.iter().map(|(k, _)| k).collect::<Vec<_>>()).to_string(),
        )
        .await?;
    Ok(Json(tags.into_iter().collect()))
}

pub(super) fn valid_env_name(n: &str) -> Result<(), ApiError> {
    let mut chars = n.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_env_name",
            format!("{n:?} is not a variable name (letters, digits, _; not starting with a digit)"),
        ))
    }
}

pub(super) fn env_rows(body: Env) -> Result<Vec<(String, String, String)>, ApiError> {
    let mut rows = Vec::new();
    for (k, v) in body.vars {
        valid_env_name(&k)?;
        rows.push((String::new(), k, v));
    }
    for (svc, vars) in body.services {
        valid_name(&svc)?;
        for (k, v) in vars {
            valid_env_name(&k)?;
            rows.push((svc.clone(), k, v));
        }
    }
    Ok(rows)
}

/// Stored `(service, name, value)` rows (service empty: for all) as the API shows them.
pub(super) fn env_view(rows: Vec<(String, String, String)>) -> Env {
    let mut env = Env::default();
    for (svc, k, v) in rows {
        if svc.is_empty() {
            env.vars.insert(k, v);
        } else {
            env.services.entry(svc).or_default().insert(k, v);
        }
    }
    env
}

pub(super) async fn get_device_env(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<Env> {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    Ok(Json(env_view(st.store.env("device", uuid.as_str()).await?)))
}

pub(super) async fn put_device_env(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<Env>, ApiError>,
) -> ApiResult<Env> {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    device_or_404(&st, uuid).await?;
    let rows = env_rows(body)?;
    st.store.set_env("device", uuid.as_str(), &rows).await?;
    crate::targets::retarget(&st.sessions, uuid);
    crate::wake::tell(&st.store, crate::store::Wake::Target(uuid)).await;
    st.store
        .audit(
            &caller.actor(),
            "device.env",
            uuid.as_str(),
            &json!({"vars": rows.len()}).to_string(),
        )
        .await?;
    Ok(Json(env_view(rows)))
}

pub(super) async fn get_fleet_env(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Env> {
    caller.require(Role::Viewer)?;
    let Path(name) = name?;
    fleet_or_404(&st, &name).await?;
    Ok(Json(env_view(st.store.env("fleet", &name).await?)))
}

pub(super) async fn put_fleet_env(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<Env>, ApiError>,
) -> ApiResult<Env> {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    let JsonObject(body) = body?;
    fleet_or_404(&st, &name).await?;
    let rows = env_rows(body)?;
    st.store.set_env("fleet", &name, &rows).await?;
    crate::targets::retarget_fleet(&st.store, &st.sessions, &name).await;
    crate::wake::tell(&st.store, crate::store::Wake::Fleet(name.clone())).await;
    st.store
        .audit(
            &caller.actor(),
            "fleet.env",
            &name,
            &json!({"vars": rows.len()}).to_string(),
        )
        .await?;
    Ok(Json(env_view(rows)))
}
