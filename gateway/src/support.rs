//! Support grants: API tokens that reach one fleet (and its devices) or one device and
//! expire by themselves (`docs/support.md`). One implementation for the offline CLI
//! (`gateway support grant`), the API (`POST /v1/support-grants`) and the dashboard's
//! admin page.

use std::time::Duration;

use crate::api::auth::{generate_token, Role};
use crate::config::bounds;
use crate::store::{self, Store, TokenScope};
use crate::GatewayError;

/// A support grant as created: shown once.
pub struct SupportGrant {
    /// Public id (revoke by it).
    pub id: String,
    /// The token.
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `fleet:<name>` or `device:<uuid>`, as the API and the audit log write a scope.
pub fn scope_label(scope: &TokenScope) -> String {
    match scope {
        TokenScope::Fleet(f) => format!("fleet:{f}"),
        TokenScope::Device(d) => format!("device:{d}"),
    }
}

/// Creates a support grant in `store` for `actor` (the audit log's who): a `role` token
/// that reaches only `scope` and expires after `valid_for`. Refused: the `admin` role, a
/// `valid_for` outside 1 s..=30 d, a fleet or device that does not exist.
pub async fn grant(
    store: &Store,
    actor: &str,
    role: Role,
    name: &str,
    scope: &TokenScope,
    valid_for: Duration,
) -> Result<SupportGrant, GatewayError> {
    if role == Role::Admin {
        return Err(GatewayError::Refused(
            "the admin role is not for support grants: an admin manages tokens and keys, which \
             no grant scoped to one fleet or device reaches; use viewer or operator"
                .into(),
        ));
    }
    bounds::SUPPORT_GRANT
        .check(valid_for)
        .map_err(|e| GatewayError::Refused(format!("how long a support grant lasts: {e}")))?;
    let exists = match scope {
        TokenScope::Fleet(f) => store.fleet(f).await?.is_some(),
        TokenScope::Device(d) => match d.parse() {
            Ok(uuid) => store.device(uuid).await?.is_some_and(|d| !d.revoked),
            Err(_) => false,
        },
    };
    if !exists {
        return Err(GatewayError::NotFound(match scope {
            TokenScope::Fleet(f) => format!("no fleet {f:?}"),
            TokenScope::Device(d) => format!("no device {d}"),
        }));
    }
    let t = generate_token();
    let expires_at = store::now_unix() + i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 2);
    store
        .create_grant(
            &t.id,
            name,
            role.as_str(),
            &t.hash,
            Some(expires_at),
            Some(scope),
        )
        .await?;
    store
        .audit(
            actor,
            "support.grant",
            &t.id,
            &serde_json::json!({
                "name": name,
                "role": role.as_str(),
                "scope": scope_label(scope),
                "expires_at": expires_at,
            })
            .to_string(),
        )
        .await?;
    Ok(SupportGrant {
        id: t.id,
        token: t.token,
        expires_at,
    })
}

/// Ends the support grant `id` now, for `actor`. Returns `false` when there is no grant
/// of that id (a token that is no grant is left alone: `token revoke` ends those).
pub async fn revoke(store: &Store, actor: &str, id: &str) -> Result<bool, store::StoreError> {
    let is_grant = store
        .tokens()
        .await?
        .iter()
        .any(|t| t.id == id && t.expires_at.is_some());
    if !is_grant || !store.delete_token(id).await? {
        return Ok(false);
    }
    store.audit(actor, "support.revoke", id, "{}").await?;
    Ok(true)
}
