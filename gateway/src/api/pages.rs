//! The admin handlers as the dashboard's admin pages call them: the same checks (role,
//! names, limits), store code and audit entries as over HTTP, with the dashboard session
//! as the caller (actor `user:<name>` or `token:<id>`).

use super::*;

type Outcome<T> = Result<T, ApiError>;

/// As `POST /v1/tokens`.
pub(crate) async fn issue_token(
    st: ApiState,
    caller: Caller,
    body: NewToken,
) -> Outcome<CreatedToken> {
    let (_, Json(t)) = create_token(caller, State(st), Ok(JsonObject(body))).await?;
    Ok(t)
}

/// As `GET /v1/tokens`.
pub(crate) async fn tokens(st: ApiState, caller: Caller) -> Outcome<Vec<Token>> {
    Ok(list_tokens(caller, State(st)).await?.0)
}

/// As `DELETE /v1/tokens/{id}`.
pub(crate) async fn revoke_token(st: ApiState, caller: Caller, id: String) -> Outcome<()> {
    delete_token(caller, State(st), Ok(Path(id)))
        .await
        .map(drop)
}

/// As `POST /v1/fleets/{name}/keys`.
pub(crate) async fn issue_key(
    st: ApiState,
    caller: Caller,
    fleet: String,
    body: NewKey,
) -> Outcome<CreatedKey> {
    let (_, Json(k)) = create_key(caller, State(st), Ok(Path(fleet)), Ok(JsonObject(body))).await?;
    Ok(k)
}

/// As `GET /v1/fleets/{name}/keys`.
pub(crate) async fn keys(st: ApiState, caller: Caller, fleet: String) -> Outcome<Vec<Key>> {
    Ok(list_keys(caller, State(st), Ok(Path(fleet))).await?.0)
}

/// As `DELETE /v1/keys/{id}`.
pub(crate) async fn revoke_provisioning_key(
    st: ApiState,
    caller: Caller,
    id: String,
) -> Outcome<()> {
    revoke_key(caller, State(st), Ok(Path(id))).await.map(drop)
}

/// As `POST /v1/support-grants`.
pub(crate) async fn issue_grant(
    st: ApiState,
    caller: Caller,
    body: NewSupportGrant,
) -> Outcome<CreatedSupportGrant> {
    let (_, Json(g)) = create_support_grant(caller, State(st), Ok(JsonObject(body))).await?;
    Ok(g)
}

/// As `GET /v1/support-grants`.
pub(crate) async fn grants(st: ApiState, caller: Caller) -> Outcome<Vec<Token>> {
    Ok(list_support_grants(caller, State(st)).await?.0)
}

/// As `DELETE /v1/support-grants/{id}`.
pub(crate) async fn revoke_grant(st: ApiState, caller: Caller, id: String) -> Outcome<()> {
    revoke_support_grant(caller, State(st), Ok(Path(id)))
        .await
        .map(drop)
}

/// As `GET /v1/audit`.
pub(crate) async fn audit(st: ApiState, caller: Caller, q: AuditQuery) -> Outcome<Vec<AuditEntry>> {
    Ok(audit_log(caller, State(st), Ok(Query(q))).await?.0)
}
