//! The audit log: who did what to which target.

use super::*;

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Monotonic sequence number.
    pub seq: i64,
    /// Time, unix seconds.
    pub at: i64,
    /// Who: `token:<id>` or `cli:<user>` for offline commands.
    pub actor: String,
    /// What (`device.delete`, `fleet.create`, ...).
    pub action: String,
    /// On what (uuid, fleet name, token id).
    pub target: String,
    /// Details (JSON).
    pub detail: String,
}

/// Which audit entries [`Store::audit_search`] returns: each field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The actor, exactly (`user:ann`, `token:1a2b3c4d`, `cli:root`).
    pub actor: Option<String>,
    /// The action, exactly; one ending in `.` is a prefix (`support.` finds
    /// `support.grant` and `support.use`).
    pub action: Option<String>,
    /// The target, exactly (a device uuid, a fleet name, a token id).
    pub target: Option<String>,
}

impl Store {
    /// Appends to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        on_write!(self, |p| sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_unix())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// The newest `limit` audit entries with `seq` below `before` (if given), newest first.
    pub async fn audit_log(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        on_pool!(self, |p| sqlx::query(
            "SELECT seq, at, actor, action, target, detail FROM audit_log
             WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(p)
        .await?
        .iter()
        .map(audit_from_row)
        .collect())
    }

    /// The newest `limit` entries with `seq` below `before` (if given) that match
    /// `filter`, newest first: the audit log page of the API and the dashboard.
    pub async fn audit_search(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        // Only the conditions that are set, so that a filter on the target uses the
        // `audit_log_target` index and no filter is the plain page along `seq`.
        let mut sql = String::from(
            "SELECT seq, at, actor, action, target, detail FROM audit_log WHERE seq < $1",
        );
        let mut binds: Vec<&str> = Vec::new();
        if let Some(a) = filter.actor.as_deref() {
            binds.push(a);
            sql.push_str(&format!(" AND actor = ${}", binds.len() + 1));
        }
        if let Some(a) = filter.action.as_deref() {
            binds.push(a);
            let n = binds.len() + 1;
            if a.ends_with('.') {
                sql.push_str(&format!(" AND substr(action, 1, length(${n})) = ${n}"));
            } else {
                sql.push_str(&format!(" AND action = ${n}"));
            }
        }
        if let Some(t) = filter.target.as_deref() {
            binds.push(t);
            sql.push_str(&format!(" AND target = ${}", binds.len() + 1));
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", binds.len() + 2));
        on_pool!(self, |p| {
            let mut q = sqlx::query(&sql).bind(before.unwrap_or(i64::MAX));
            for b in &binds {
                q = q.bind(*b);
            }
            q.bind(limit)
                .fetch_all(p)
                .await?
                .iter()
                .map(audit_from_row)
                .collect()
        })
    }

    /// The newest `limit` audit entries about `target` (a device uuid), newest first.
    pub async fn audit_for(
        &self,
        target: &str,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        on_pool!(self, |p| sqlx::query(
            "SELECT seq, at, actor, action, target, detail FROM audit_log
             WHERE target = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(target)
        .bind(limit)
        .fetch_all(p)
        .await?
        .iter()
        .map(audit_from_row)
        .collect())
    }
}

fn audit_from_row(r: &impl DbRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: r.col("seq")?,
        at: r.col("at")?,
        actor: r.col("actor")?,
        action: r.col("action")?,
        target: r.col("target")?,
        detail: r.col("detail")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;

    both_backends! {
        async fn audit_log_pages_newest_first(store) {
            for i in 0..5 {
                store.audit("cli:root", "device.add", &format!("d{i}"), "{}").await.unwrap();
            }
            let page = store.audit_log(None, 2).await.unwrap();
            let targets: Vec<&str> = page.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(targets, ["d4", "d3"]);
            assert!(page[0].seq > page[1].seq);
            let next = store.audit_log(Some(page[1].seq), 10).await.unwrap();
            let targets: Vec<&str> = next.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(targets, ["d2", "d1", "d0"]);
        }

        async fn audit_search_filters_by_actor_action_and_target(store) {
            use crate::store::AuditFilter;
            store.audit("user:ann", "support.grant", "g1", "{}").await.unwrap();
            store.audit("token:t1", "support.use", "/v1/devices/x", "{}").await.unwrap();
            store.audit("user:ann", "token.create", "t2", "{}").await.unwrap();
            store.audit("user:ann", "support.grant", "g3", "{}").await.unwrap();
            let find = |actor: Option<&str>, action: Option<&str>, target: Option<&str>| {
                let f = AuditFilter {
                    actor: actor.map(Into::into),
                    action: action.map(Into::into),
                    target: target.map(Into::into),
                };
                let store = store.clone();
                async move {
                    store.audit_search(&f, None, 10).await.unwrap().into_iter()
                        .map(|r| r.target).collect::<Vec<_>>()
                }
            };
            assert_eq!(find(Some("user:ann"), None, None).await, ["g3", "t2", "g1"]);
            assert_eq!(find(None, Some("support."), None).await, ["g3", "/v1/devices/x", "g1"]);
            assert_eq!(find(None, Some("support"), None).await, Vec::<String>::new());
            assert_eq!(find(Some("user:ann"), Some("support.grant"), Some("g1")).await, ["g1"]);
            let all = store.audit_search(&AuditFilter::default(), None, 2).await.unwrap();
            let older = store.audit_search(&AuditFilter::default(), Some(all[1].seq), 10).await.unwrap();
            assert_eq!(older.len(), 2);
        }
    }
}
