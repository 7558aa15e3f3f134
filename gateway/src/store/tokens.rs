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
    /// A support grant's expiry, unix seconds: past it the token no longer exists for
    /// authentication. `None`: it never expires.
    pub expires_at: Option<i64>,
    /// What a support grant may reach; `None`: everything its role allows.
    pub scope: Option<TokenScope>,
}

/// The one fleet or device a support grant reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    /// A fleet by name: its own paths and its devices'.
    Fleet(String),
    /// A device by uuid (32 hex).
    Device(String),
}

/// The columns of a token row.
const TOKEN_COLUMNS: &str =
    "id, name, role, created_at, last_used, expires_at, scope_fleet, scope_device";

impl Store {
    /// Stores a new API token (only its hash).
    pub async fn create_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        secret_hash: &str,
    ) -> Result<(), StoreError> {
        self.create_grant(id, name, role, secret_hash, None, None)
            .await
    }

    /// Stores a new token that expires at `expires_at` (unix seconds) and reaches only
    /// `scope`, when given: a support grant.
    pub async fn create_grant(
        &self,
        id: &str,
        name: &str,
        role: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
        scope: Option<&TokenScope>,
    ) -> Result<(), StoreError> {
        let (fleet, device) = match scope {
            Some(TokenScope::Fleet(f)) => (Some(f.as_str()), None),
            Some(TokenScope::Device(d)) => (None, Some(d.as_str())),
            None => (None, None),
        };
        on_write!(self, |p| {
            sqlx::query(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, expires_at, scope_fleet, scope_device)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(name)
            .bind(role)
            .bind(secret_hash)
            .bind(now_unix())
            .bind(expires_at)
            .bind(fleet)
            .bind(device)
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
            // An expired grant is as good as deleted.
            let row = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens
                 WHERE secret_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
            ))
            .bind(secret_hash)
            .bind(now_unix())
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
        on_pool!(self, |p| sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ))
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
        expires_at: r.col("expires_at")?,
        scope: match (
            r.col::<Option<String>>("scope_fleet")?,
            r.col::<Option<String>>("scope_device")?,
        ) {
            (Some(f), _) => Some(TokenScope::Fleet(f)),
            (None, Some(d)) => Some(TokenScope::Device(d)),
            (None, None) => None,
        },
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

        async fn a_grant_is_scoped_and_gone_once_expired(store) {
            let soon = crate::store::now_unix() + 3600;
            let scope = crate::store::TokenScope::Device("ab".repeat(16));
            store
                .create_grant("g1", "support", "operator", "h1", Some(soon), Some(&scope))
                .await
                .unwrap();
            let fleet = crate::store::TokenScope::Fleet("kiosks".into());
            store
                .create_grant("g2", "old", "viewer", "h2", Some(crate::store::now_unix() - 1), Some(&fleet))
                .await
                .unwrap();
            let g = store.token_by_hash("h1").await.unwrap().unwrap();
            assert_eq!((g.expires_at, g.scope), (Some(soon), Some(scope)));
            assert!(store.token_by_hash("h2").await.unwrap().is_none(), "an expired grant authenticated");
            // Listed until revoked, expired or not.
            let all = store.tokens().await.unwrap();
            assert_eq!(all.iter().find(|t| t.id == "g2").unwrap().scope, Some(fleet));
        }
    }
}
