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
    }
}
