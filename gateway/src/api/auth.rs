//! Bearer-token authentication and roles.
//!
//! A token is `gw_<id>.<secret>`. Only the SHA-256 of the whole token is stored; `id` is
//! public (shown in listings and the audit log) so a token can be revoked by id.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::error::ApiError;
use super::ApiState;

/// What a token may do. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also act on devices: actions, public URLs, terminals, logs.
    Operator,
    /// Also manage fleets, provisioning keys and tokens.
    Admin,
}

impl Role {
    /// Parses `viewer`, `operator` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// A new token: returned once, then only its hash exists.
pub struct NewToken {
    /// Public id.
    pub id: String,
    /// The full secret token string.
    pub token: String,
    /// SHA-256 of `token`, hex.
    pub hash: String,
}

/// Generates a token.
pub fn generate_token() -> NewToken {
    let id = certs::random_hex(4);
    let secret = certs::random_hex(24);
    let token = format!("gw_{id}.{secret}");
    let hash = certs::sha256_hex(token.as_bytes());
    NewToken { id, token, hash }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) token_id: String,
    pub(crate) role: Role,
}

impl Caller {
    /// Fails with 403 unless the caller has at least `role`.
    pub(crate) fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; your token has {}",
                    role.as_str(),
                    self.role.as_str()
                ),
            ))
        }
    }

    /// The audit-log actor name.
    pub(crate) fn actor(&self) -> String {
        format!("token:{}", self.token_id)
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let record = state
            .store
            .token_by_hash(&certs::sha256_hex(token.as_bytes()))
            .await?
            .ok_or_else(|| unauthorized("unknown or revoked token"))?;
        let role = Role::parse(&record.role).ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "token has an unknown role",
            )
        })?;
        Ok(Caller {
            token_id: record.id,
            role,
        })
    }
}
