//! `/v1/support-grants`: time-limited tokens for one fleet or device, created, listed and
//! revoked through [`crate::support`] (the code `gateway support grant` runs offline).

use super::*;

use crate::store::TokenScope;
use crate::GatewayError;

pub(super) async fn create_support_grant(
    caller: Caller,
    State(st): State<ApiState>,
    body: Result<JsonObject<NewSupportGrant>, ApiError>,
) -> Result<(StatusCode, Json<CreatedSupportGrant>), ApiError> {
    caller.require(Role::Admin)?;
    let JsonObject(body) = body?;
    let role = match Role::parse(&body.role) {
        Some(r @ (Role::Viewer | Role::Operator)) => r,
        Some(Role::Admin) => {
            return Err(ApiError::bad_request(
                "invalid_role",
                "the admin role is not for support grants: an admin manages tokens and keys, \
                 which no grant scoped to one fleet or device reaches; use viewer or operator",
            ))
        }
        None => {
            return Err(ApiError::bad_request(
                "invalid_role",
                format!(
                    "{:?}: a support grant's role is viewer or operator",
                    body.role
                ),
            ))
        }
    };
    let scope = match (body.fleet, body.device) {
        (Some(f), None) => {
            valid_name(&f)?;
            TokenScope::Fleet(f)
        }
        (None, Some(d)) => TokenScope::Device(parse_uuid(&d)?.to_string()),
        _ => return Err(ApiError::bad_request(
            "invalid_request",
            "name exactly one of `fleet` and `device`: the one fleet or device the grant reaches",
        )),
    };
    let secs = u64::try_from(body.valid_for_secs).map_err(|_| {
        ApiError::bad_request(
            "invalid_request",
            "valid_for_secs must be between 1 and 2592000 (30 days)",
        )
    })?;
    let name = body.name.unwrap_or_else(|| "support".into());
    valid_name(&name)?;
    let g = crate::support::grant(
        &st.store,
        &caller.actor(),
        role,
        &name,
        &scope,
        std::time::Duration::from_secs(secs),
    )
    .await
    .map_err(|e| match e {
        GatewayError::NotFound(m) => ApiError::not_found(m),
        GatewayError::Refused(m) => ApiError::bad_request("invalid_request", m),
        GatewayError::Store(e) => ApiError::from(e),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            other.to_string(),
        ),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedSupportGrant {
            id: g.id,
            name,
            role: role.as_str().to_string(),
            scope: crate::support::scope_label(&scope),
            expires_at: g.expires_at,
            token: g.token,
        }),
    ))
}

pub(super) async fn list_support_grants(
    caller: Caller,
    State(st): State<ApiState>,
) -> ApiResult<Vec<Token>> {
    caller.require(Role::Admin)?;
    let tokens = st.store.tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .filter(|t| t.expires_at.is_some())
            .map(token_view)
            .collect(),
    ))
}

pub(super) async fn revoke_support_grant(
    caller: Caller,
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let Path(id) = id?;
    if !crate::support::revoke(&st.store, &caller.actor(), &id).await? {
        return Err(ApiError::not_found(format!("no support grant {id:?}")));
    }
    Ok(StatusCode::NO_CONTENT)
}
