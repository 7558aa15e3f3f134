//! `/v1/audit`: the audit log.

use super::*;

pub(super) async fn audit_log(
    caller: Caller,
    State(st): State<ApiState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Vec<AuditEntry>> {
    caller.require(Role::Admin)?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let blank = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = crate::store::AuditFilter {
        actor: blank(q.actor),
        action: blank(q.action),
        target: blank(q.target),
    };
    let entries = st.store.audit_search(&filter, q.before, limit).await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditEntry {
                detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
                seq: e.seq,
                at: e.at,
                actor: e.actor,
                action: e.action,
                target: e.target,
            })
            .collect(),
    ))
}
