//! `/v1/devices/{uuid}/actions` and `/v1/actions`: supervisor actions.

use super::*;

/// Actions a device understands.
pub(super) const ACTIONS: &[&str] = &[
    "blink",
    "reboot",
    "shutdown",
    "restart",
    "stop-service",
    "start-service",
    "purge",
    "update",
    "regenerate-api-key",
    "host-config",
];

/// Default time an action waits for an offline device.
pub(super) const DEFAULT_ACTION_TTL: i64 = 24 * 3600;

fn action_view(a: crate::store::ActionRecord) -> Action {
    // A pending action past its TTL is expired even before the device next connects
    // (the store marks it so at that point).
    let status = if a.status == "pending" && a.expires_at <= crate::store::now_unix() {
        "expired".to_string()
    } else {
        a.status
    };
    Action {
        id: a.id,
        device: a.device.as_str().to_string(),
        action: a.name,
        // The API stores only objects (`create_action` below).
        params: match a.params {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        status,
        detail: a.detail,
        requested_by: a.actor,
        created_at: a.created_at,
        expires_at: a.expires_at,
        delivered_at: a.delivered_at,
        finished_at: a.finished_at,
        device_online: None,
    }
}

pub(super) async fn create_action(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<NewAction>, ApiError>,
) -> Result<(StatusCode, Json<Action>), ApiError> {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    if !ACTIONS.contains(&body.action.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_action",
            format!(
                "unknown action {:?}; one of: {}",
                body.action,
                ACTIONS.join(", ")
            ),
        ));
    }
    let ttl = body.ttl_secs.unwrap_or(DEFAULT_ACTION_TTL);
    if ttl <= 0 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "ttl_secs must be positive",
        ));
    }
    device_or_404(&st, uuid).await?;
    let mut params = body.params;
    if body.force {
        params.insert("force".into(), Value::Bool(true));
    }
    let params = Value::Object(params);
    let id = format!("act_{}", certs::random_uuid());
    let a = st
        .store
        .create_action(&id, uuid, &body.action, &params, &caller.actor(), ttl)
        .await?;
    st.store
        .audit(
            &caller.actor(),
            &format!("action.{}", body.action),
            uuid.as_str(),
            &json!({"id": id, "params": params}).to_string(),
        )
        .await?;
    let online = st.sessions.kick(&uuid);
    // The node that holds the tunnel, if another, delivers it.
    crate::wake::tell(&st.store, crate::store::Wake::Action(uuid)).await;
    let mut v = action_view(a);
    v.device_online = Some(online);
    Ok((StatusCode::ACCEPTED, Json(v)))
}

pub(super) async fn list_actions(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<Vec<Action>> {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    let actions = st.store.device_actions(uuid, 200).await?;
    Ok(Json(actions.into_iter().map(action_view).collect()))
}

pub(super) async fn show_action(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Action> {
    caller.require(Role::Viewer)?;
    let Path(id) = id?;
    let a = st
        .store
        .action(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no action {id:?}")))?;
    Ok(Json(action_view(a)))
}
