//! Dashboard users (argon2 password hashes) and the fleets they are limited to, their
//! browser sessions (only the SHA-256 of the cookie's id is stored), one-time login links,
//! and the used nonces of login-mode tickets (single use).

use super::*;

/// A dashboard user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Unique name (the audit log's `user:<name>`).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The argon2 PHC string of the password.
    pub password_hash: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last sign-in, unix seconds.
    pub last_login: Option<i64>,
    /// The fleets this user sees, by name; empty: every fleet.
    pub fleets: Vec<String>,
}

/// Who a dashboard session (or login link) acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A dashboard user, by name.
    User(String),
    /// An API token, by id.
    Token(String),
}

impl Principal {
    /// The audit-log actor: `user:<name>` or `token:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Self::User(n) => format!("user:{n}"),
            Self::Token(id) => format!("token:{id}"),
        }
    }

    fn columns(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Self::User(n) => (Some(n), None),
            Self::Token(id) => (None, Some(id)),
        }
    }

    fn from_columns(user: Option<String>, token: Option<String>) -> Result<Self, StoreError> {
        match (user, token) {
            (Some(u), None) => Ok(Self::User(u)),
            (None, Some(t)) => Ok(Self::Token(t)),
            _ => Err(StoreError::Corrupt(
                "a dashboard session names neither or both of a user and a token".into(),
            )),
        }
    }
}

/// A live dashboard session, with the role its user or token has now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// Who.
    pub principal: Principal,
    /// The current role of that user or token.
    pub role: String,
    /// The session's CSRF token (a hidden field in every form).
    pub csrf: String,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

impl Store {
    /// Adds a user who sees every fleet. Returns `false` if one of that name exists.
    pub async fn create_user(
        &self,
        name: &str,
        role: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        self.create_user_in_fleets(name, role, password_hash, &[])
            .await
    }

    /// Adds a user who sees only `fleets` (empty: every fleet), in one transaction.
    /// Returns `false` if one of that name exists (and changes nothing).
    pub async fn create_user_in_fleets(
        &self,
        name: &str,
        role: &str,
        password_hash: &str,
        fleets: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx(&[]).await?;
        let n = on_tx!(tx, |c| {
            let n = sqlx::query(
                "INSERT INTO dashboard_users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(role)
            .bind(password_hash)
            .bind(now_unix())
            .execute(&mut *c)
            .await?
            .rows_affected();
            if n == 1 {
                // Rows left by an earlier user of the same name (removed before 0015's
                // cleanup existed) must not narrow or widen this one.
                sqlx::query("DELETE FROM dashboard_user_fleets WHERE user_name = $1")
                    .bind(name)
                    .execute(&mut *c)
                    .await?;
                for f in fleets {
                    sqlx::query(
                        "INSERT INTO dashboard_user_fleets (user_name, fleet) VALUES ($1, $2)
                         ON CONFLICT (user_name, fleet) DO NOTHING",
                    )
                    .bind(name)
                    .bind(f)
                    .execute(&mut *c)
                    .await?;
                }
            }
            n
        });
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The fleets `name` is limited to, sorted (empty: every fleet, or no such user).
    pub async fn user_fleets(&self, name: &str) -> Result<Vec<String>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query(
                "SELECT fleet FROM dashboard_user_fleets WHERE user_name = $1 ORDER BY fleet",
            )
            .bind(name)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| r.at::<String>(0).map_err(StoreError::from))
            .collect()
        })
    }

    /// Looks a user up (with the fleets they are limited to).
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let user = on_pool!(self, |p| {
            sqlx::query(
            "SELECT name, role, password_hash, created_at, last_login FROM dashboard_users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(p)
        .await?
        .map(|r| user_from_row(&r))
        .transpose()
        })?;
        let Some(mut u) = user else {
            return Ok(None);
        };
        u.fleets = self.user_fleets(name).await?;
        Ok(Some(u))
    }

    /// All users, by name (with the fleets they are limited to).
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let mut users: Vec<UserRecord> = on_pool!(self, |p| {
            sqlx::query(
            "SELECT name, role, password_hash, created_at, last_login FROM dashboard_users ORDER BY name",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(user_from_row)
        .collect::<Result<_, StoreError>>()
        })?;
        let scopes: Vec<(String, String)> = on_pool!(self, |p| {
            sqlx::query("SELECT user_name, fleet FROM dashboard_user_fleets ORDER BY fleet")
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| -> Result<(String, String), StoreError> {
                    Ok((r.col("user_name")?, r.col("fleet")?))
                })
                .collect::<Result<_, StoreError>>()
        })?;
        for (user, fleet) in scopes {
            if let Some(u) = users.iter_mut().find(|u| u.name == user) {
                u.fleets.push(fleet);
            }
        }
        Ok(users)
    }

    /// Removes a user and ends their sessions. Returns `false` if there is no such user.
    pub async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_tx(&[]).await?;
        let n = on_tx!(tx, |c| {
            sqlx::query("DELETE FROM dashboard_sessions WHERE user_name = $1")
                .bind(name)
                .execute(&mut *c)
                .await?;
            sqlx::query("DELETE FROM dashboard_login_links WHERE user_name = $1")
                .bind(name)
                .execute(&mut *c)
                .await?;
            sqlx::query("DELETE FROM dashboard_user_fleets WHERE user_name = $1")
                .bind(name)
                .execute(&mut *c)
                .await?;
            sqlx::query("DELETE FROM dashboard_users WHERE name = $1")
                .bind(name)
                .execute(&mut *c)
                .await?
                .rows_affected()
        });
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Replaces a user's password hash and ends their sessions (a reset password signs
    /// everyone out who used the old one). Returns `false` if there is no such user.
    pub async fn set_user_password(
        &self,
        name: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx(&[]).await?;
        let n = on_tx!(tx, |c| {
            let n = sqlx::query("UPDATE dashboard_users SET password_hash = $1 WHERE name = $2")
                .bind(password_hash)
                .bind(name)
                .execute(&mut *c)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM dashboard_sessions WHERE user_name = $1")
                .bind(name)
                .execute(&mut *c)
                .await?;
            n
        });
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Records a user's sign-in time.
    pub async fn user_signed_in(&self, name: &str) -> Result<(), StoreError> {
        on_write!(self, |p| sqlx::query(
            "UPDATE dashboard_users SET last_login = $1 WHERE name = $2"
        )
        .bind(now_unix())
        .bind(name)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Stores a new session (the hash of its id) valid for `ttl_secs`, and drops expired
    /// ones.
    pub async fn create_dashboard_session(
        &self,
        id_hash: &str,
        principal: &Principal,
        csrf: &str,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let now = now_unix();
        let (user, token) = principal.columns();
        let mut tx = self.write_tx(&[]).await?;
        on_tx!(tx, |c| {
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *c)
                .await?;
            sqlx::query(
                "INSERT INTO dashboard_sessions (id_hash, user_name, token_id, csrf, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id_hash)
            .bind(user)
            .bind(token)
            .bind(csrf)
            .bind(now)
            .bind(now.saturating_add(ttl_secs))
            .execute(&mut *c)
            .await?;
        });
        tx.commit().await
    }

    /// The unexpired session whose id hashes to `id_hash`, if its user still exists (or its
    /// token is not revoked), with that user's or token's current role.
    pub async fn dashboard_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<DashboardSession>, StoreError> {
        let row = on_pool!(self, |p| {
            sqlx::query(
            "SELECT s.user_name, s.token_id, s.csrf, s.expires_at, COALESCE(u.role, t.role) AS role
             FROM dashboard_sessions s
             LEFT JOIN dashboard_users u ON u.name = s.user_name
             LEFT JOIN api_tokens t ON t.id = s.token_id
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_unix())
        .fetch_optional(p)
        .await?
        .map(|r| -> Result<Option<DashboardSession>, StoreError> {
            // The user was removed or the token revoked: the session is gone with them.
            let Some(role) = r.col::<Option<String>>("role")? else {
                return Ok(None);
            };
            Ok(Some(DashboardSession {
                principal: Principal::from_columns(r.col("user_name")?, r.col("token_id")?)?,
                role,
                csrf: r.col("csrf")?,
                expires_at: r.col("expires_at")?,
            }))
        })
        .transpose()?
        });
        Ok(row.flatten())
    }

    /// Ends a session. Returns whether it existed.
    pub async fn delete_dashboard_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let n = on_write!(self, |p| sqlx::query(
            "DELETE FROM dashboard_sessions WHERE id_hash = $1"
        )
        .bind(id_hash)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Stores a one-time login link (the hash of its secret) valid for `ttl_secs`.
    pub async fn create_login_link(
        &self,
        hash: &str,
        principal: &Principal,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let (user, token) = principal.columns();
        on_write!(self, |p| {
            sqlx::query(
            "INSERT INTO dashboard_login_links (hash, user_name, token_id, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash)
        .bind(user)
        .bind(token)
        .bind(now_unix().saturating_add(ttl_secs))
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(())
    }

    /// Uses up the login link whose secret hashes to `hash`: deletes it and returns who it
    /// signs in, if it existed and had not expired. A second use finds nothing.
    pub async fn take_login_link(&self, hash: &str) -> Result<Option<Principal>, StoreError> {
        let row = on_write!(self, |p| {
            sqlx::query(
            "DELETE FROM dashboard_login_links WHERE hash = $1 RETURNING user_name, token_id, expires_at",
        )
        .bind(hash)
        .fetch_optional(p)
        .await?
        .map(
            |r| -> Result<(Option<String>, Option<String>, i64), StoreError> {
                Ok((r.col("user_name")?, r.col("token_id")?, r.col("expires_at")?))
            }
        )
        .transpose()?
        });
        match row {
            Some((user, token, expires_at)) if expires_at > now_unix() => {
                Principal::from_columns(user, token).map(Some)
            }
            _ => Ok(None),
        }
    }
}

impl Store {
    /// Uses up a login-mode ticket's `nonce` (valid until `expires_at`, unix seconds):
    /// `true` the first time, `false` when it was used already. Expired nonces are
    /// dropped on the way (a ticket past its expiry is refused before it gets here).
    pub async fn use_login_ticket(&self, nonce: &str, expires_at: i64) -> Result<bool, StoreError> {
        let mut tx = self.write_tx(&[]).await?;
        let n = on_tx!(tx, |c| {
            sqlx::query("DELETE FROM login_tickets WHERE expires_at < $1")
                .bind(now_unix())
                .execute(&mut *c)
                .await?;
            sqlx::query(
                "INSERT INTO login_tickets (nonce, expires_at) VALUES ($1, $2)
                 ON CONFLICT (nonce) DO NOTHING",
            )
            .bind(nonce)
            .bind(expires_at)
            .execute(&mut *c)
            .await?
            .rows_affected()
        });
        tx.commit().await?;
        Ok(n == 1)
    }
}

fn user_from_row(r: &impl DbRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: r.col("name")?,
        role: r.col("role")?,
        password_hash: r.col("password_hash")?,
        created_at: r.col("created_at")?,
        last_login: r.col("last_login")?,
        fleets: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    both_backends! {
        async fn users_sessions_follow_their_user_and_token(store) {
            assert!(store.create_user("ann", "operator", "h1").await.unwrap());
            assert!(!store.create_user("ann", "admin", "h2").await.unwrap());
            assert_eq!(store.user("ann").await.unwrap().unwrap().role, "operator");
            assert_eq!(store.users().await.unwrap().len(), 1);

            let ann = Principal::User("ann".into());
            store.create_dashboard_session("s1", &ann, "c1", 60).await.unwrap();
            let s = store.dashboard_session("s1").await.unwrap().unwrap();
            assert_eq!((s.principal.actor().as_str(), s.role.as_str(), s.csrf.as_str()), ("user:ann", "operator", "c1"));
            // Expired sessions are not found.
            store.create_dashboard_session("s2", &ann, "c2", -1).await.unwrap();
            assert_eq!(store.dashboard_session("s2").await.unwrap(), None);
            assert_eq!(store.dashboard_session("nope").await.unwrap(), None);

            // A token's session lives as long as the token.
            store.create_token("t1", "ci", "viewer", "th").await.unwrap();
            let tok = Principal::Token("t1".into());
            store.create_dashboard_session("s3", &tok, "c3", 60).await.unwrap();
            assert_eq!(store.dashboard_session("s3").await.unwrap().unwrap().role, "viewer");
            assert!(store.delete_token("t1").await.unwrap());
            assert_eq!(store.dashboard_session("s3").await.unwrap(), None);

            // Logging out, and removing the user, end sessions.
            store.create_dashboard_session("s4", &ann, "c4", 60).await.unwrap();
            assert!(store.delete_dashboard_session("s4").await.unwrap());
            assert!(!store.delete_dashboard_session("s4").await.unwrap());
            // A new password ends the sessions signed in with the old one.
            store.create_dashboard_session("s5", &ann, "c5", 60).await.unwrap();
            assert!(store.set_user_password("ann", "h9").await.unwrap());
            assert_eq!(store.dashboard_session("s5").await.unwrap(), None);
            assert_eq!(store.user("ann").await.unwrap().unwrap().password_hash, "h9");
            assert!(!store.set_user_password("nobody", "h9").await.unwrap());
            assert!(store.remove_user("ann").await.unwrap());
            assert!(!store.remove_user("ann").await.unwrap());
            assert_eq!(store.dashboard_session("s1").await.unwrap(), None);
        }

        async fn users_may_be_limited_to_fleets(store) {
            let fleets = vec!["kiosks".to_string(), "cams".to_string()];
            assert!(store.create_user_in_fleets("sam", "viewer", "h", &fleets).await.unwrap());
            assert!(store.create_user("root", "admin", "h").await.unwrap());
            assert_eq!(store.user_fleets("sam").await.unwrap(), ["cams", "kiosks"]);
            assert_eq!(store.user("sam").await.unwrap().unwrap().fleets, ["cams", "kiosks"]);
            assert!(store.user("root").await.unwrap().unwrap().fleets.is_empty());
            let all = store.users().await.unwrap();
            assert_eq!(all.iter().map(|u| (u.name.as_str(), u.fleets.len())).collect::<Vec<_>>(), [("root", 0), ("sam", 2)]);
            // A second add of the name changes nothing.
            assert!(!store.create_user_in_fleets("sam", "viewer", "h", &[]).await.unwrap());
            assert_eq!(store.user_fleets("sam").await.unwrap().len(), 2);
            // Removed and added again: the old scope is gone with the user.
            assert!(store.remove_user("sam").await.unwrap());
            assert!(store.user_fleets("sam").await.unwrap().is_empty());
            assert!(store.create_user("sam", "viewer", "h").await.unwrap());
            assert!(store.user("sam").await.unwrap().unwrap().fleets.is_empty());
        }

        async fn login_tickets_are_used_once(store) {
            let later = now_unix() + 60;
            assert!(store.use_login_ticket("n1", later).await.unwrap());
            assert!(!store.use_login_ticket("n1", later).await.unwrap());
            assert!(store.use_login_ticket("n2", later).await.unwrap());
            // Expired rows are dropped by the next use.
            assert!(store.use_login_ticket("old", now_unix() - 5).await.unwrap());
            assert!(store.use_login_ticket("n3", later).await.unwrap());
            assert!(store.use_login_ticket("old", now_unix() - 5).await.unwrap());
        }

        async fn login_links_are_single_use_and_expire(store) {
            let p = Principal::User("bob".into());
            store.create_login_link("l1", &p, 60).await.unwrap();
            assert_eq!(store.take_login_link("l1").await.unwrap(), Some(p.clone()));
            assert_eq!(store.take_login_link("l1").await.unwrap(), None);
            store.create_login_link("l2", &p, -1).await.unwrap();
            assert_eq!(store.take_login_link("l2").await.unwrap(), None);
        }
    }
}
