//! Device tags, and environment variables per device or fleet (optionally per service).

use super::*;

pub(super) async fn get_tags(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    let tags = st.store.tags(uuid).await?;
    Ok(Json(Value::Object(
        tags.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )))
}

pub(super) async fn put_tags(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<std::collections::BTreeMap<String, String>>, ApiError>,
) -> ApiResult {
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
    Ok(Json(Value::Object(
        tags.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )))
}

/// `{"vars": {NAME: value}, "services": {service: {NAME: value}}}`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvBody {
    #[serde(default)]
    vars: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    services: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
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

pub(super) fn env_rows(body: EnvBody) -> Result<Vec<(String, String, String)>, ApiError> {
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

pub(super) fn env_json(rows: Vec<(String, String, String)>) -> Value {
    let mut vars = serde_json::Map::new();
    let mut services = serde_json::Map::new();
    for (svc, k, v) in rows {
        if svc.is_empty() {
            vars.insert(k, Value::String(v));
        } else {
            let e = services.entry(svc).or_insert_with(|| json!({}));
            e[k] = Value::String(v);
        }
    }
    json!({"vars": vars, "services": services})
}

pub(super) async fn get_device_env(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    Ok(Json(env_json(st.store.env("device", uuid.as_str()).await?)))
}

pub(super) async fn put_device_env(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<EnvBody>, ApiError>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    device_or_404(&st, uuid).await?;
    let rows = env_rows(body)?;
    st.store.set_env("device", uuid.as_str(), &rows).await?;
    crate::targets::retarget(&st.sessions, uuid);
    st.store
        .audit(
            &caller.actor(),
            "device.env",
            uuid.as_str(),
            &json!({"vars": rows.len()}).to_string(),
        )
        .await?;
    Ok(Json(env_json(rows)))
}

pub(super) async fn get_fleet_env(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    let Path(name) = name?;
    fleet_or_404(&st, &name).await?;
    Ok(Json(env_json(st.store.env("fleet", &name).await?)))
}

pub(super) async fn put_fleet_env(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<EnvBody>, ApiError>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    let JsonObject(body) = body?;
    fleet_or_404(&st, &name).await?;
    let rows = env_rows(body)?;
    st.store.set_env("fleet", &name, &rows).await?;
    crate::targets::retarget_fleet(&st.store, &st.sessions, &name).await;
    st.store
        .audit(
            &caller.actor(),
            "fleet.env",
            &name,
            &json!({"vars": rows.len()}).to_string(),
        )
        .await?;
    Ok(Json(env_json(rows)))
}
