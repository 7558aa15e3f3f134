//! `/v1/tokens`: API tokens.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTokenReq {
    name: String,
    role: String,
}

pub(super) async fn create_token(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<NewTokenReq>, ApiError>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let JsonObject(body) = body?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_role",
            format!("{:?}: role is viewer, operator or admin", body.role),
        )
    })?;
    valid_name(&body.name)?;
    let t = auth::generate_token();
    st.store
        .create_token(&t.id, &body.name, role.as_str(), &t.hash)
        .await?;
    st.store
        .audit(
            &caller.actor(),
            "token.create",
            &t.id,
            &json!({"name": body.name, "role": role.as_str()}).to_string(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": t.id, "name": body.name, "role": role.as_str(), "token": t.token})),
    ))
}

pub(super) async fn list_tokens(caller: Caller, State(st): State<ApiState>) -> ApiResult {
    caller.require(Role::Admin)?;
    let tokens = st.store.tokens().await?;
    Ok(Json(json!(tokens
        .iter()
        .map(|t| json!({"id": t.id, "name": t.name, "role": t.role, "created_at": t.created_at, "last_used": t.last_used}))
        .collect::<Vec<_>>())))
}

pub(super) async fn delete_token(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let Path(id) = id?;
    if !st.store.delete_token(&id).await? {
        return Err(ApiError::not_found(format!("no token {id:?}")));
    }
    st.store
        .audit(&caller.actor(), "token.delete", &id, "{}")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
