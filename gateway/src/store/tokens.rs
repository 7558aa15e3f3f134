//! API tokens (only their hashes are stored).

use super::*;

/// An API token as stored (the secret is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (the part of the token before the dot).
    pub id: String,
    /// Operator-chosen label.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last authenticated use, unix seconds.
    pub last_used: Option<i64>,
}

impl Store {
    /// Stores a new API token (only its hash).
    pub async fn create_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        secret_hash: &str,
    ) -> Result<(), StoreError> {
        on_write!(self, |p| {
            sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(name)
        .bind(role)
        .bind(secret_hash)
        .bind(now_unix())
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(())
    }

    /// Finds a token by the hash of its secret, recording its use.
    pub async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        on_pool!(self, |p| {
            let row = sqlx::query(
                "SELECT id, name, role, created_at, last_used FROM api_tokens WHERE secret_hash = $1",
            )
            .bind(secret_hash)
            .fetch_optional(p)
            .await?;
            let Some(r) = row else { return Ok(None) };
            let rec = token_from_row(&r)?;
            sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE id = $2")
                .bind(now_unix())
                .bind(&rec.id)
                .execute(p)
                .await?;
            Ok(Some(rec))
        })
    }

    /// All tokens (never their secrets).
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        on_pool!(self, |p| sqlx::query(
            "SELECT id, name, role, created_at, last_used FROM api_tokens ORDER BY created_at, id",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(token_from_row)
        .collect())
    }

    /// Deletes a token. Returns `false` if it does not exist.
    pub async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_write!(self, |p| sqlx::query(
            "DELETE FROM api_tokens WHERE id = $1"
        )
        .bind(id)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }
}

pub(super) fn token_from_row(r: &impl DbRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: r.col("id")?,
        name: r.col("name")?,
        role: r.col("role")?,
        created_at: r.col("created_at")?,
        last_used: r.col("last_used")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;

    both_backends! {
        async fn tokens_are_found_by_hash_and_deleted(store) {
            store.create_token("t1", "ci", "operator", "hash1").await.unwrap();
            store.create_token("t2", "me", "admin", "hash2").await.unwrap();
            assert!(store.create_token("t3", "dup", "viewer", "hash1").await.is_err());
            let t = store.token_by_hash("hash2").await.unwrap().unwrap();
            assert_eq!((t.id.as_str(), t.role.as_str()), ("t2", "admin"));
            assert!(store.token_by_hash("nope").await.unwrap().is_none());
            let all = store.tokens().await.unwrap();
            assert_eq!(all.len(), 2);
            assert!(all.iter().find(|t| t.id == "t2").unwrap().last_used.is_some());
            assert!(store.delete_token("t1").await.unwrap());
            assert!(!store.delete_token("t1").await.unwrap());
            assert_eq!(store.tokens().await.unwrap().len(), 1);
        }
    }
}
