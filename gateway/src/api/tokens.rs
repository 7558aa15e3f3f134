//! `/v1/tokens`: API tokens.

use super::*;

pub(super) async fn create_token(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<NewToken>, ApiError>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
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
        Json(CreatedToken {
            id: t.id,
            name: body.name,
            role: role.as_str().to_string(),
            token: t.token,
        }),
    ))
}

pub(super) async fn list_tokens(
    caller: Caller,
    State(st): State<ApiState>,
) -> ApiResult<Vec<Token>> {
    caller.require(Role::Admin)?;
    let tokens = st.store.tokens().await?;
    Ok(Json(tokens.into_iter().map(token_view).collect()))
}

/// A stored token as the API lists it.
pub(super) fn token_view(t: crate::store::TokenRecord) -> Token {
    Token {
        id: t.id,
        name: t.name,
        role: t.role,
        created_at: t.created_at,
        last_used: t.last_used,
        expires_at: t.expires_at,
        scope: t.scope.as_ref().map(crate::support::scope_label),
    }
}

pub(super) async fn delete_token(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
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
