//! Dashboard users: adding one, removing one, resetting a password, each audited. One
//! implementation for the offline CLI (`gateway user ...`) and the dashboard's admin
//! page.

use crate::api::auth::Role;
use crate::store::{Store, StoreError};

/// Shortest password accepted.
pub(crate) const MIN_PASSWORD: usize = 8;

/// Why a user change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UserError {
    /// The name has characters outside the allowed set, or is empty or too long.
    #[error("user name {0:?} is not valid: 1 to 64 of letters, digits, `.`, `_`, `-` and `@`")]
    InvalidName(String),
    /// The password is shorter than [`MIN_PASSWORD`].
    #[error("the password must be at least {MIN_PASSWORD} characters long")]
    ShortPassword,
    /// A user of that name exists.
    #[error("user {0:?} exists already (remove it first to change it)")]
    Exists(String),
    /// There is no user of that name.
    #[error("there is no user {0:?}")]
    NoSuchUser(String),
    /// A fleet to limit the user to does not exist.
    #[error("--fleet {0:?}: there is no such fleet (gateway fleet list shows them)")]
    NoSuchFleet(String),
    /// argon2 failed to hash the password.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a user name: 1 to 64 of letters, digits, `.`, `_`, `-` and `@`.
pub(crate) fn valid_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidName(name.to_string()))
    }
}

async fn hash(password: &str) -> Result<String, UserError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(UserError::ShortPassword);
    }
    // argon2 takes tens of milliseconds of CPU: off the async workers.
    let password = password.to_string();
    tokio::task::spawn_blocking(move || crate::passwords::hash_password(&password))
        .await
        .map_err(|e| UserError::Hash(e.to_string()))?
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Adds user `name` with `role` and `password` (stored as an argon2id hash), limited to
/// `fleets` (empty: every fleet; each must exist), for `actor` (`user.add` in the audit
/// log).
pub(crate) async fn add(
    store: &Store,
    actor: &str,
    name: &str,
    role: Role,
    password: &str,
    fleets: &[String],
) -> Result<(), UserError> {
    valid_name(name)?;
    let mut fleets = fleets.to_vec();
    fleets.sort();
    fleets.dedup();
    for f in &fleets {
        if store.fleet(f).await?.is_none() {
            return Err(UserError::NoSuchFleet(f.clone()));
        }
    }
    let hash = hash(password).await?;
    if !store
        .create_user_in_fleets(name, role.as_str(), &hash, &fleets)
        .await?
    {
        return Err(UserError::Exists(name.to_string()));
    }
    store
        .audit(
            actor,
            "user.add",
            name,
            &serde_json::json!({"role": role.as_str(), "fleets": fleets}).to_string(),
        )
        .await?;
    Ok(())
}

/// Removes user `name`; their dashboard sessions end at once (`user.remove`).
pub(crate) async fn remove(store: &Store, actor: &str, name: &str) -> Result<(), UserError> {
    if !store.remove_user(name).await? {
        return Err(UserError::NoSuchUser(name.to_string()));
    }
    store.audit(actor, "user.remove", name, "{}").await?;
    Ok(())
}

/// Gives user `name` a new password; their sessions end (`user.password`).
pub(crate) async fn reset_password(
    store: &Store,
    actor: &str,
    name: &str,
    password: &str,
) -> Result<(), UserError> {
    let hash = hash(password).await?;
    if !store.set_user_password(name, &hash).await? {
        return Err(UserError::NoSuchUser(name.to_string()));
    }
    store.audit(actor, "user.password", name, "{}").await?;
    Ok(())
}
