//! Who may visit a device's public URL (`docs/access.md`): an IP/CIDR allow-list, checked
//! first, then the mode: `public`, `basic` (HTTP Basic, argon2-hashed password), `link`
//! (signed share links that leave a signed cookie for the device's host) or `login`
//! (dashboard users who may see the device's fleet, signed in on the bare domain's page,
//! [`portal`], and sent back with a ticket that becomes a cookie for the device's host,
//! [`login`]).
//!
//! The hot path never waits on the database: the setting in force for a device is read
//! once and kept in [`AccessCache`] (on the session registry), dropped when the API
//! changes it here or another node says so (`access:` / `fleet-access:` wake-ups, see
//! [`crate::wake`]), and re-read after [`POLICY_TTL`] in any case. A correct Basic
//! password is verified with argon2 once, then remembered for [`BASIC_OK_TTL`]; failures
//! are counted per client address and refused for a while past a threshold.
//!
//! What the gateway reads here is its own: the `gw_access` and `gw_login` cookies, the
//! `gw_share` and `gw_ticket` query parameters and, in `basic` mode, the `Authorization`
//! header never reach the device.

mod basic;
mod links;
mod login;
pub(crate) mod portal;
mod rules;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use protocol::DeviceUuid;
use tracing::warn;

use super::forwarding::Scheme;
use super::pages::{error_page, Body};
use crate::store::{EffectiveAccess, Store};
pub(crate) use basic::hash_password;
use basic::{backoff_key, basic_pair, verify_password, Backoff};
pub(crate) use links::share_token;
use links::{cookie_values, query_param, redirect_with_cookie, scrub, verify, Check, Purpose};
use login::WhoCache;
pub(crate) use login::{LOGIN_COOKIE, TICKET_PARAM};
pub(crate) use rules::{Cidr, Mode, ModeError};

/// The cookie a share link leaves on the device's host.
pub(crate) const COOKIE: &str = "gw_access";
/// The query parameter that carries a share link's token.
pub(crate) const SHARE_PARAM: &str = "gw_share";

/// A device's setting is re-read from the database at least this often, even without a
/// wake-up (a notification lost while a node's listener was away, a fleet move on
/// SQLite made by another process).
pub(crate) const POLICY_TTL: Duration = Duration::from_secs(30);
/// How long a correct Basic password is remembered (not verified with argon2 again).
const BASIC_OK_TTL: Duration = Duration::from_secs(60);
/// Remembered correct passwords at most; a full table is pruned, then emptied.
const BASIC_OK_MAX: usize = 4096;
/// argon2 verifications at once (each takes ~20 MiB and tens of milliseconds).
const PARALLEL_VERIFIES: usize = 4;

/// The setting in force for one device, ready for the hot path.
#[derive(Debug)]
struct Policy {
    rule: Rule,
    allow: Vec<Cidr>,
    loaded: Instant,
}

#[derive(Debug)]
enum Rule {
    Public,
    Basic {
        user: String,
        hash: String,
    },
    Link,
    /// Signed-in dashboard users who may see `fleet` (the device's, when it was read).
    Login {
        fleet: Option<String>,
    },
    /// A stored row this gateway cannot apply (a mode of a newer version, a bad entry):
    /// everyone is refused rather than let in.
    Refuse(String),
}

impl Policy {
    /// `fleet`: the device's fleet (read for `login` mode only).
    fn of(access: &EffectiveAccess, fleet: Option<String>) -> Self {
        let loaded = Instant::now();
        let Some(r) = access.record() else {
            return Self {
                rule: Rule::Public,
                allow: Vec::new(),
                loaded,
            };
        };
        let allow: Result<Vec<Cidr>, String> = r.allow.iter().map(|a| a.parse()).collect();
        let rule = match (r.mode.parse(), &r.basic_user, &r.basic_hash) {
            _ if allow.is_err() => Rule::Refuse(format!("bad allow-list entry: {allow:?}")),
            (Ok(Mode::Public), _, _) => Rule::Public,
            (Ok(Mode::Link), _, _) => Rule::Link,
            (Ok(Mode::Login), _, _) => Rule::Login { fleet },
            (Ok(Mode::Basic), Some(user), Some(hash)) => Rule::Basic {
                user: user.clone(),
                hash: hash.clone(),
            },
            (Ok(Mode::Basic), _, _) => Rule::Refuse("basic without credentials".into()),
            (Err(e), _, _) => Rule::Refuse(e.to_string()),
        };
        Self {
            rule,
            allow: allow.unwrap_or_default(),
            loaded,
        }
    }
}

/// The access settings of devices as this node applies them, and what the checks
/// remember between requests. Lives on [`crate::sessions::Sessions`], so the API and
/// the wake-ups reach it where they reach the sessions.
pub(crate) struct AccessCache {
    policies: DashMap<DeviceUuid, Arc<Policy>>,
    /// Raised by every forget: a read from the database that started before it is not
    /// cached.
    generation: AtomicU64,
    secret: tokio::sync::OnceCell<Arc<[u8]>>,
    /// SHA-256 of (Authorization value, stored hash) → when it was verified.
    basic_ok: DashMap<[u8; 32], Instant>,
    backoff: Backoff,
    verifying: tokio::sync::Semaphore,
    /// Who each login-mode session is (user, fleets), for a few seconds.
    who: WhoCache,
}

impl Default for AccessCache {
    fn default() -> Self {
        Self {
            policies: DashMap::new(),
            generation: AtomicU64::new(0),
            secret: tokio::sync::OnceCell::new(),
            basic_ok: DashMap::new(),
            backoff: Backoff::default(),
            verifying: tokio::sync::Semaphore::new(PARALLEL_VERIFIES),
            who: WhoCache::default(),
        }
    }
}

impl fmt::Debug for AccessCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessCache")
            .field("policies", &self.policies.len())
            .field("basic_ok", &self.basic_ok.len())
            .field("backoff", &self.backoff.len())
            .finish_non_exhaustive()
    }
}

impl AccessCache {
    /// Drops `uuid`'s cached setting: the next request reads it again.
    pub(crate) fn forget(&self, uuid: &DeviceUuid) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.policies.remove(uuid);
    }

    /// Drops every cached setting (a fleet's default changed, or wake-ups were missed).
    pub(crate) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.policies.clear();
    }

    /// The share-link secret (read from the store once).
    pub(crate) async fn secret(
        &self,
        store: &Store,
    ) -> Result<Arc<[u8]>, crate::store::StoreError> {
        self.secret
            .get_or_try_init(|| async { store.share_secret().await.map(Arc::from) })
            .await
            .cloned()
    }

    async fn policy(
        &self,
        store: &Store,
        uuid: DeviceUuid,
    ) -> Result<Arc<Policy>, crate::store::StoreError> {
        if let Some(p) = self.policies.get(&uuid).map(|r| Arc::clone(r.value())) {
            if p.loaded.elapsed() < POLICY_TTL {
                return Ok(p);
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let access = store.effective_access(uuid).await?;
        // Login mode needs the device's fleet (whose users may come in); a fleet move
        // drops the cached policy like a setting change (`target:` wake-ups).
        let fleet = match access.record() {
            Some(r) if r.mode == Mode::Login.as_str() => {
                store.device(uuid).await?.and_then(|d| d.fleet)
            }
            _ => None,
        };
        let p = Arc::new(Policy::of(&access, fleet));
        if let Rule::Refuse(why) = &p.rule {
            warn!(device = %uuid, why, "public URL access setting cannot be applied; refusing visitors");
        }
        if self.generation.load(Ordering::Acquire) == generation {
            self.policies.insert(uuid, Arc::clone(&p));
            // A forget between the check and the insert: do not keep what it dropped.
            if self.generation.load(Ordering::Acquire) != generation {
                self.policies.remove(&uuid);
            }
        }
        Ok(p)
    }

    /// Decides whether the visitor at `peer` may reach `uuid`, and takes the gateway's
    /// own credentials out of `req`. `None`: forward it; `Some`: answer this instead (a
    /// refusal, or the redirect that turns a share link into a cookie).
    pub(crate) async fn admit<B>(
        &self,
        store: &Store,
        uuid: DeviceUuid,
        peer: IpAddr,
        scheme: Scheme,
        req: &mut Request<B>,
    ) -> Option<Response<Body>> {
        let policy = match self.policy(store, uuid).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, device = %uuid, "cannot read the public URL's access setting");
                return Some(error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The gateway cannot check access to this device right now.",
                    req.headers(),
                ));
            }
        };
        if !policy.allow.is_empty() && !policy.allow.iter().any(|c| c.contains(peer)) {
            return Some(error_page(
                StatusCode::FORBIDDEN,
                "Your address is not allowed to reach this device.",
                req.headers(),
            ));
        }
        let strip_authorization = match &policy.rule {
            Rule::Public => false,
            Rule::Refuse(_) => {
                return Some(error_page(
                    StatusCode::FORBIDDEN,
                    "This device's access setting is not available on this gateway.",
                    req.headers(),
                ))
            }
            Rule::Basic { user, hash } => {
                if let Some(refusal) = self.basic(uuid, peer, user, hash, req.headers()).await {
                    return Some(refusal);
                }
                true
            }
            Rule::Link => {
                if let Some(answer) = self.link(store, uuid, scheme, req).await {
                    return Some(answer);
                }
                false
            }
            Rule::Login { fleet } => {
                if let Some(answer) = self.login(store, uuid, fleet.as_deref(), scheme, req).await {
                    return Some(answer);
                }
                false
            }
        };
        scrub(req, strip_authorization);
        None
    }

    async fn basic(
        &self,
        uuid: DeviceUuid,
        peer: IpAddr,
        user: &str,
        hash: &str,
        headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        let challenge = |detail: &str| {
            let mut page = error_page(StatusCode::UNAUTHORIZED, detail, headers);
            let realm = format!("Basic realm=\"{uuid}\"");
            page.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&realm).expect("a hex uuid is a valid header value"),
            );
            page
        };
        let Some(presented) = headers.get(header::AUTHORIZATION) else {
            return Some(challenge("This device asks for a user name and password."));
        };
        let key = {
            let mut buf = Vec::with_capacity(presented.len() + 1 + hash.len());
            buf.extend_from_slice(presented.as_bytes());
            buf.push(0);
            buf.extend_from_slice(hash.as_bytes());
            certs::sha256(&buf)
        };
        let now = Instant::now();
        if self
            .basic_ok
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < BASIC_OK_TTL)
        {
            return None;
        }
        let key_ip = backoff_key(peer);
        if let Some(wait) = self.backoff.refused_for(key_ip, now) {
            let mut page = error_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong passwords from your address; try again later.",
                headers,
            );
            page.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
            return Some(page);
        }
        let ok = match basic_pair(presented) {
            Some((u, p)) if u == user => {
                // Verified off the runtime's threads, a few at a time.
                let Ok(_permit) = self.verifying.acquire().await else {
                    return Some(challenge("The gateway cannot check passwords right now."));
                };
                let hash = hash.to_string();
                tokio::task::spawn_blocking(move || verify_password(&p, &hash))
                    .await
                    .unwrap_or(false)
            }
            _ => false,
        };
        if ok {
            self.remember_ok(key, now);
            self.backoff.succeeded(key_ip);
            None
        } else {
            self.backoff.failed(key_ip, Instant::now());
            Some(challenge("Wrong user name or password."))
        }
    }

    fn remember_ok(&self, key: [u8; 32], now: Instant) {
        if self.basic_ok.len() >= BASIC_OK_MAX {
            self.basic_ok
                .retain(|_, at| now.duration_since(*at) < BASIC_OK_TTL);
            if self.basic_ok.len() >= BASIC_OK_MAX {
                self.basic_ok.clear();
            }
        }
        self.basic_ok.insert(key, now);
    }

    async fn link<B>(
        &self,
        store: &Store,
        uuid: DeviceUuid,
        scheme: Scheme,
        req: &Request<B>,
    ) -> Option<Response<Body>> {
        let secret = match self.secret(store).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot read the share-link secret");
                return Some(error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The gateway cannot check share links right now.",
                    req.headers(),
                ));
            }
        };
        let now = crate::store::now_unix();
        let refuse =
            |detail: &str| Some(error_page(StatusCode::UNAUTHORIZED, detail, req.headers()));
        if let Some(token) = query_param(req.uri().query(), SHARE_PARAM) {
            return match verify(&secret, Purpose::Share, uuid, token, now) {
                Check::Valid(expires_at) => Some(redirect_with_cookie(
                    &secret, uuid, expires_at, now, scheme, req,
                )),
                Check::Expired => refuse("This share link has expired; ask for a new one."),
                Check::Invalid => refuse("This share link is not valid for this device."),
            };
        }
        let mut expired = false;
        for value in cookie_values(req.headers(), COOKIE) {
            match verify(&secret, Purpose::Cookie, uuid, value, now) {
                Check::Valid(_) => return None,
                Check::Expired => expired = true,
                Check::Invalid => {}
            }
        }
        if expired {
            refuse("Your share link has expired; ask for a new one.")
        } else {
            refuse("This device is reached through a share link; ask its operator for one.")
        }
    }
}
