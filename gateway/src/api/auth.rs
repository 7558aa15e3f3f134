//! Bearer-token authentication and roles.
//!
//! A token is `gw_<id>.<secret>`. Only the SHA-256 of the whole token is stored; `id` is
//! public (shown in listings and the audit log) so a token can be revoked by id.
//!
//! Guessing is slowed down per client address (`AuthBackoff`): after a few failed token
//! checks, every request from that address gets `429 Too Many Requests` with
//! `Retry-After` for a window that doubles with each further failure.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use tokio::time::Instant;

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
    /// The dashboard user acting, when the caller is a dashboard session of a user
    /// (then `token_id` is empty).
    pub(crate) user: Option<String>,
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
        match &self.user {
            Some(name) => format!("user:{name}"),
            None => format!("token:{}", self.token_id),
        }
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
        let reach = match &record.scope {
            Some(scope) => check_scope(state, scope, parts.uri.path()).await,
            None => Ok(()),
        };
        if record.expires_at.is_some() {
            // Every use of a support grant is audited, refused or not.
            let detail = serde_json::json!({
                "method": parts.method.as_str(),
                "refused": reach.is_err(),
            });
            state
                .store
                .audit(
                    &format!("token:{}", record.id),
                    "support.use",
                    parts.uri.path(),
                    &detail.to_string(),
                )
                .await?;
        }
        reach?;
        Ok(Caller {
            token_id: record.id,
            role,
            user: None,
        })
    }
}

/// Refuses `path` to a support grant that does not reach it: a device grant reaches
/// `/v1/devices/<its uuid>[/…]`, a fleet grant `/v1/fleets/<its name>[/…]` and the paths
/// of that fleet's devices. Lists and everything else are refused.
async fn check_scope(
    state: &ApiState,
    scope: &crate::store::TokenScope,
    path: &str,
) -> Result<(), ApiError> {
    use crate::store::TokenScope;
    let under = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?;
        let first = rest.split('/').next().filter(|s| !s.is_empty())?;
        Some(first.to_string())
    };
    let device = under("/v1/devices/");
    let reached = match scope {
        TokenScope::Device(uuid) => device.as_deref() == Some(uuid.as_str()),
        TokenScope::Fleet(fleet) => {
            if let Some(name) = under("/v1/fleets/") {
                &name == fleet
            } else if let Some(d) = device.and_then(|d| d.parse::<protocol::DeviceUuid>().ok()) {
                state
                    .store
                    .device(d)
                    .await?
                    .is_some_and(|r| r.fleet.as_deref() == Some(fleet.as_str()))
            } else {
                false
            }
        }
    };
    if reached {
        return Ok(());
    }
    let what = match scope {
        TokenScope::Device(d) => format!("device {d} (/v1/devices/{d}/…)"),
        TokenScope::Fleet(f) => format!("fleet {f} and its devices"),
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this support grant reaches only {what}"),
    ))
}

/// Addresses tracked at most by [`AuthBackoff`]; past this, expired entries are pruned, and
/// if none are, new addresses go untracked (logged) rather than growing memory.
const MAX_TRACKED: usize = 65_536;

/// How often a full table may be scanned for expired entries.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Settings of the per-address back-off on failed token checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackoffConfig {
    /// Failed checks from one address before it is refused; 0 turns the back-off off.
    pub(crate) failures_before_backoff: u32,
    /// The first refusal window; each further failure doubles it.
    pub(crate) initial: Duration,
    /// The longest window. An address that has not failed for this long (and is not
    /// refused) is forgotten.
    pub(crate) max: Duration,
}

/// Failed token checks per client address (IPv6: per /64), and the refusal windows they
/// earned. Sharded; no guard is held across an `.await`.
pub(crate) struct AuthBackoff {
    cfg: BackoffConfig,
    table: DashMap<IpAddr, Strikes>,
    /// Bookkeeping of a full table.
    full: Mutex<FullTable>,
}

/// When a full table was last pruned and last warned about, and how many addresses went
/// untracked since that warning.
#[derive(Debug, Default)]
struct FullTable {
    pruned_at: Option<Instant>,
    warned_at: Option<Instant>,
    untracked: u64,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    refused_until: Option<Instant>,
    last_failure: Instant,
}

impl AuthBackoff {
    pub(crate) fn new(cfg: BackoffConfig) -> Self {
        Self {
            cfg,
            table: DashMap::new(),
            full: Mutex::new(FullTable::default()),
        }
    }

    fn enabled(&self) -> bool {
        self.cfg.failures_before_backoff > 0
    }

    /// How long `ip` is still refused, if it is.
    fn refused_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.table.get(&ip)?.refused_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failed check from `ip`; returns the refusal window it starts, if any.
    fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !self.table.contains_key(&ip) && self.table.len() >= MAX_TRACKED && !self.make_room(now)
        {
            return None;
        }
        let mut e = self.table.entry(ip).or_insert(Strikes {
            failures: 0,
            refused_until: None,
            last_failure: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        let over = e.failures.checked_sub(self.cfg.failures_before_backoff)?;
        // initial × 2^over, capped; 2^31 × anything is past any sane cap already.
        let window = self
            .cfg
            .initial
            .checked_mul(1u32 << over.min(31))
            .unwrap_or(self.cfg.max)
            .min(self.cfg.max);
        e.refused_until = Some(now + window);
        Some(window)
    }

    /// Drops forgotten addresses from a full table (at most once per [`PRUNE_EVERY`]);
    /// says whether there is room now.
    fn make_room(&self, now: Instant) -> bool {
        // Plain counters: still usable after a panic elsewhere.
        let mut f = self.full.lock().unwrap_or_else(|e| e.into_inner());
        if f.pruned_at
            .is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
        {
            f.pruned_at = Some(now);
            let forget_after = self.cfg.max;
            self.table.retain(|_, s| {
                s.refused_until.is_some_and(|u| u > now)
                    || now.duration_since(s.last_failure) < forget_after
            });
        }
        if self.table.len() < MAX_TRACKED {
            return true;
        }
        f.untracked += 1;
        if f.warned_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            f.warned_at = Some(now);
            tracing::warn!(
                tracked = MAX_TRACKED,
                untracked = std::mem::take(&mut f.untracked),
                "token back-off table full; failed checks from new addresses are not counted"
            );
        }
        false
    }
}

/// Middleware: refuses clients in a back-off window with 429 + `Retry-After` (before any
/// token is looked at, so a valid token does not shorten the window), and counts the
/// 401s of requests that presented a token.
pub(crate) async fn backoff_gate(
    State(backoff): State<Arc<AuthBackoff>>,
    req: Request,
    next: Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| crate::listener::client_key(c.0.ip()));
    let Some(ip) = ip.filter(|_| backoff.enabled()) else {
        return next.run(req).await;
    };
    if let Some(wait) = backoff.refused_for(ip, Instant::now()) {
        return too_many_failures(wait);
    }
    // Only a presented token is a guess; a request without one learns nothing. A sign-in
    // form sent to the dashboard (`POST /login`) is a guess of a password or token.
    let presented = req.headers().contains_key(header::AUTHORIZATION)
        || (req.method() == axum::http::Method::POST && req.uri().path() == "/login")
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("token=")));
    let resp = next.run(req).await;
    if presented && resp.status() == StatusCode::UNAUTHORIZED {
        if let Some(window) = backoff.failed(ip, Instant::now()) {
            tracing::warn!(client = %ip, window = ?window, "too many failed token checks; refusing this address for a while");
        }
    }
    resp
}

fn too_many_failures(wait: Duration) -> Response {
    // Whole seconds, rounded up: a client retrying after `Retry-After` must not be early.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        format!("too many failed token checks from your address; retry in {secs} s"),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(n: u32) -> AuthBackoff {
        AuthBackoff::new(BackoffConfig {
            failures_before_backoff: n,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    }

    #[test]
    fn windows_double_up_to_the_cap() {
        let b = backoff(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        assert_eq!(b.failed(ip, t), None);
        assert_eq!(b.failed(ip, t), None);
        assert_eq!(b.failed(ip, t), Some(Duration::from_secs(1)));
        assert_eq!(b.refused_for(ip, t), Some(Duration::from_secs(1)));
        assert_eq!(b.refused_for(ip, t + Duration::from_secs(1)), None);
        let windows: Vec<_> = (0..5).map(|_| b.failed(ip, t).unwrap().as_secs()).collect();
        assert_eq!(windows, [2, 4, 8, 8, 8]);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(b.refused_for(other, t), None);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let b = backoff(1);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        b.table.insert(
            ip,
            Strikes {
                failures: u32::MAX - 1,
                refused_until: None,
                last_failure: t,
            },
        );
        assert_eq!(b.failed(ip, t), Some(Duration::from_secs(8)));
        assert_eq!(b.failed(ip, t), Some(Duration::from_secs(8)));
    }

    #[test]
    fn full_table_forgets_quiet_addresses() {
        let b = backoff(5);
        let t = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.failed(ip, t);
        }
        let newcomer: IpAddr = "192.0.2.9".parse().unwrap();
        // All entries are recent: the newcomer is not tracked, and memory does not grow.
        b.failed(newcomer, t);
        assert_eq!(b.table.len(), MAX_TRACKED);
        assert!(!b.table.contains_key(&newcomer));
        // Once they have been quiet for the longest window, they make room.
        b.failed(newcomer, t + Duration::from_secs(9));
        assert!(b.table.contains_key(&newcomer));
        assert_eq!(b.table.len(), 1);
    }
}
