//! `/v1/audit`: the audit log.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

pub(super) async fn audit_log(
    caller: Caller,
    State(st): State<ApiState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = st.store.audit_log(q.before, limit).await?;
    Ok(Json(json!(entries
        .iter()
        .map(|e| json!({
            "seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
            "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::Null),
        }))
        .collect::<Vec<_>>())))
}
