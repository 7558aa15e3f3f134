//! `login` mode on a device's host: the signed ticket the bare-domain sign-in page sends
//! the browser back with, the host-only cookie it is exchanged for, and who a cookie's
//! session belongs to now (a short cache over the store).
//!
//! Both values are HMAC-SHA256 signatures with the share-link secret, under purpose labels
//! of their own (`ticket`, `cookie`), over the device uuid, the expiry and the SHA-256 of
//! the sign-in session's id (the id itself never leaves the bare domain's cookie):
//!
//! * ticket `<expiry>.<nonce>.<session>.<tag>`, valid [`TICKET_TTL_SECS`], used once
//!   (its nonce is written to the store's `login_tickets`);
//! * cookie `<expiry>.<session>.<tag>`, until the session expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use protocol::DeviceUuid;
use tracing::warn;

use super::super::forwarding::Scheme;
use super::super::pages::{error_page, link_page, Body};
use super::links::{cookie_values, query_param, unhex32, without_param, CookieRedirect};
use super::AccessCache;
use crate::store::{Principal, Store, StoreError};

/// The cookie a login-mode device host keeps its visitor's sign-in in.
pub(crate) const LOGIN_COOKIE: &str = "gw_login";
/// The query parameter that carries a ticket to the device host.
pub(crate) const TICKET_PARAM: &str = "gw_ticket";
/// How long a ticket is valid: it only has to survive one redirect.
pub(crate) const TICKET_TTL_SECS: i64 = 60;
/// How long who a session is (user, fleets) is remembered: removing a user, signing
/// out or narrowing a user's fleets reaches a device host within this.
pub(super) const WHO_TTL: Duration = Duration::from_secs(5);
/// Remembered sessions at most; a full table is pruned, then emptied.
const WHO_MAX: usize = 4096;

/// Who a sign-in session is, as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Who {
    pub(super) user: String,
    /// Empty: every fleet.
    pub(super) fleets: Vec<String>,
    /// The session's expiry, unix seconds.
    pub(super) expires_at: i64,
}

impl Who {
    /// Whether this user may see a device of `fleet` (`None`: a device in no fleet,
    /// which only a user of every fleet sees).
    pub(super) fn may_see(&self, fleet: Option<&str>) -> bool {
        self.fleets.is_empty() || fleet.is_some_and(|f| self.fleets.iter().any(|m| m == f))
    }
}

/// The cache of [`Who`] per session hash (`None`: no such live session of a user).
#[derive(Debug, Default)]
pub(super) struct WhoCache {
    entries: DashMap<String, (Instant, Option<Arc<Who>>)>,
}

impl WhoCache {
    /// Who the session whose id hashes to `session` is now.
    pub(super) async fn get(
        &self,
        store: &Store,
        session: &str,
    ) -> Result<Option<Arc<Who>>, StoreError> {
        let now = Instant::now();
        if let Some(e) = self.entries.get(session) {
            if now.duration_since(e.0) < WHO_TTL {
                return Ok(e.1.clone());
            }
        }
        let who = match store.dashboard_session(session).await? {
            Some(s) => match s.principal {
                Principal::User(user) => Some(Arc::new(Who {
                    fleets: store.user_fleets(&user).await?,
                    user,
                    expires_at: s.expires_at,
                })),
                // API tokens sign in to the management dashboard only.
                Principal::Token(_) => None,
            },
            None => None,
        };
        if self.entries.len() >= WHO_MAX {
            self.entries
                .retain(|_, (at, _)| now.duration_since(*at) < WHO_TTL);
            if self.entries.len() >= WHO_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(session.to_string(), (now, who.clone()));
        Ok(who)
    }

    /// Forgets a session (signed out on this node).
    pub(super) fn forget(&self, session: &str) {
        self.entries.remove(session);
    }
}

fn tag_hex(secret: &[u8], data: &str) -> String {
    certs::hmac_sha256(secret, data.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ticket_data(uuid: DeviceUuid, expires_at: i64, nonce: &str, session: &str) -> String {
    format!("gw-login/v1\nticket\n{uuid}\n{expires_at}\n{nonce}\n{session}")
}

fn cookie_data(uuid: DeviceUuid, expires_at: i64, session: &str) -> String {
    format!("gw-login/v1\ncookie\n{uuid}\n{expires_at}\n{session}")
}

/// A fresh ticket for `uuid`'s host, for the session whose id hashes to `session`.
pub(super) fn ticket(secret: &[u8], uuid: DeviceUuid, session: &str, now: i64) -> String {
    let expires_at = now + TICKET_TTL_SECS;
    let nonce = certs::random_hex(16);
    let tag = tag_hex(secret, &ticket_data(uuid, expires_at, &nonce, session));
    format!("{expires_at}.{nonce}.{session}.{tag}")
}

/// What a presented ticket is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TicketCheck {
    /// Signed for this device and not expired: its expiry, nonce and session.
    Valid {
        expires_at: i64,
        nonce: String,
        session: String,
    },
    /// Signed for this device, too late.
    Expired,
    /// Garbage, or signed for another device.
    Invalid,
}

pub(super) fn open_ticket(secret: &[u8], uuid: DeviceUuid, value: &str, now: i64) -> TicketCheck {
    let mut parts = value.split('.');
    let (Some(exp), Some(nonce), Some(session), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return TicketCheck::Invalid;
    };
    let (Ok(expires_at), Some(tag)) = (exp.parse::<i64>(), unhex32(tag)) else {
        return TicketCheck::Invalid;
    };
    let data = ticket_data(uuid, expires_at, nonce, session);
    if !certs::hmac_sha256_verify(secret, data.as_bytes(), &tag) {
        TicketCheck::Invalid
    } else if expires_at <= now {
        TicketCheck::Expired
    } else {
        TicketCheck::Valid {
            expires_at,
            nonce: nonce.to_string(),
            session: session.to_string(),
        }
    }
}

fn cookie(secret: &[u8], uuid: DeviceUuid, session: &str, expires_at: i64) -> String {
    let tag = tag_hex(secret, &cookie_data(uuid, expires_at, session));
    format!("{expires_at}.{session}.{tag}")
}

/// The session of a valid, unexpired cookie of `uuid`'s host.
fn open_cookie(secret: &[u8], uuid: DeviceUuid, value: &str, now: i64) -> Option<String> {
    let mut parts = value.split('.');
    let (Some(exp), Some(session), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let expires_at = exp.parse::<i64>().ok()?;
    let tag = unhex32(tag)?;
    let data = cookie_data(uuid, expires_at, session);
    (certs::hmac_sha256_verify(secret, data.as_bytes(), &tag) && expires_at > now)
        .then(|| session.to_string())
}

/// The host a request was sent to (request-target authority, else `Host`).
pub(super) fn request_host<B>(req: &Request<B>) -> String {
    match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    }
}

/// `<scheme>://<domain>/login?device=…&next=…`: the bare domain's sign-in page, reached
/// from a device host `<uuid>.<domain>[:port]` (same port).
fn sign_in_url<B>(uuid: DeviceUuid, scheme: Scheme, req: &Request<B>) -> String {
    let host = request_host(req);
    let bare = host.split_once('.').map_or(host.as_str(), |(_, rest)| rest);
    let next = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let next = match req.uri().query() {
        Some(q) if q.contains(TICKET_PARAM) => {
            let rest = without_param(q, TICKET_PARAM);
            if rest.is_empty() {
                req.uri().path().to_string()
            } else {
                format!("{}?{rest}", req.uri().path())
            }
        }
        _ => next.to_string(),
    };
    format!(
        "{}://{bare}/login?device={uuid}&next={}",
        scheme.as_str(),
        encode(&next)
    )
}

/// Percent-encodes all but unreserved characters and `/` (for a query value).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl AccessCache {
    /// `login` mode on `uuid`'s host (a device of `fleet`): a ticket becomes the cookie
    /// (303 to the same URL without it), a valid cookie of a user who may see `fleet`
    /// lets the request through (`None`), anything else is refused or sent to sign in.
    pub(super) async fn login<B>(
        &self,
        store: &Store,
        uuid: DeviceUuid,
        fleet: Option<&str>,
        scheme: Scheme,
        req: &Request<B>,
    ) -> Option<Response<Body>> {
        let headers = req.headers();
        let unavailable = |e: StoreError| {
            warn!(error = %e, device = %uuid, "cannot check a login-mode visitor");
            Some(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway cannot check sign-ins right now.",
                headers,
            ))
        };
        let secret = match self.secret(store).await {
            Ok(s) => s,
            Err(e) => return unavailable(e),
        };
        let now = crate::store::now_unix();
        let sign_in = sign_in_url(uuid, scheme, req);
        let refuse = |status: StatusCode, detail: &str| {
            Some(link_page(status, detail, "Sign in", &sign_in, headers))
        };
        let not_yours = |who: &Who| {
            let fleet = fleet.map_or("no fleet".to_string(), |f| format!("fleet {f}"));
            refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "You are signed in as {}, who may not see this device ({fleet}). Sign in as another user?",
                    who.user
                ),
            )
        };
        if let Some(t) = query_param(req.uri().query(), TICKET_PARAM) {
            let (expires_at, nonce, session) = match open_ticket(&secret, uuid, t, now) {
                TicketCheck::Valid {
                    expires_at,
                    nonce,
                    session,
                } => (expires_at, nonce, session),
                TicketCheck::Expired => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "This sign-in ticket has expired; sign in again.",
                    )
                }
                TicketCheck::Invalid => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "This sign-in ticket is not valid for this device.",
                    )
                }
            };
            match store.use_login_ticket(&nonce, expires_at).await {
                Ok(true) => {}
                Ok(false) => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "This sign-in ticket was used already; sign in again.",
                    )
                }
                Err(e) => return unavailable(e),
            }
            let who = match self.who.get(store, &session).await {
                Ok(Some(w)) => w,
                Ok(None) => {
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        "Your sign-in has ended; sign in again.",
                    )
                }
                Err(e) => return unavailable(e),
            };
            if !who.may_see(fleet) {
                return not_yours(&who);
            }
            let value = cookie(&secret, uuid, &session, who.expires_at);
            return Some(redirect_with_cookie(
                &value,
                who.expires_at - now,
                scheme,
                req,
            ));
        }
        for value in cookie_values(headers, LOGIN_COOKIE) {
            let Some(session) = open_cookie(&secret, uuid, value, now) else {
                continue;
            };
            match self.who.get(store, &session).await {
                Ok(Some(who)) if who.may_see(fleet) => return None,
                Ok(Some(who)) => return not_yours(&who),
                // The session ended (signed out, expired, user removed): sign in again.
                Ok(None) => {}
                Err(e) => return unavailable(e),
            }
        }
        // A browser's navigation goes to the sign-in page; anything else (a form post, a
        // script's PUT) gets a 401 page that links there, so no body is lost in a redirect.
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut resp = link_page(
                StatusCode::SEE_OTHER,
                "Sign in to reach this device.",
                "Sign in",
                &sign_in,
                headers,
            );
            if let Ok(v) = HeaderValue::from_str(&sign_in) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return Some(resp);
        }
        refuse(
            StatusCode::UNAUTHORIZED,
            "This device is for signed-in users; sign in first.",
        )
    }
}

/// 303 to the same URL without the ticket, setting the device host's cookie (no `Domain`:
/// this host only).
fn redirect_with_cookie<B>(
    value: &str,
    max_age: i64,
    scheme: Scheme,
    req: &Request<B>,
) -> Response<Body> {
    let redirect = CookieRedirect {
        cookie: LOGIN_COOKIE,
        param: TICKET_PARAM,
        message: b"Signed in; redirecting.\n",
    };
    redirect.answer(value, max_age, scheme, req)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn tickets_are_bound_to_their_device_and_expire() {
        let a = DeviceUuid::from_bytes([1; 16]);
        let b = DeviceUuid::from_bytes([2; 16]);
        let session = "ab".repeat(32);
        let t = ticket(SECRET, a, &session, 1000);
        let TicketCheck::Valid {
            expires_at,
            nonce,
            session: s,
        } = open_ticket(SECRET, a, &t, 1000)
        else {
            panic!("a fresh ticket is valid");
        };
        assert_eq!(
            (expires_at, s.as_str()),
            (1000 + TICKET_TTL_SECS, session.as_str())
        );
        assert_eq!(nonce.len(), 32);
        assert_eq!(open_ticket(SECRET, b, &t, 1000), TicketCheck::Invalid);
        assert_eq!(
            open_ticket(SECRET, a, &t, 1000 + TICKET_TTL_SECS),
            TicketCheck::Expired
        );
        // Another session in a valid ticket: a forgery.
        let forged = t.replace(&session, &"cd".repeat(32));
        assert_eq!(open_ticket(SECRET, a, &forged, 1000), TicketCheck::Invalid);
        assert_eq!(open_ticket(SECRET, a, "1.2.3", 0), TicketCheck::Invalid);
        // A cookie is no ticket, and a ticket no cookie.
        let c = cookie(SECRET, a, &session, 2000);
        assert_eq!(open_ticket(SECRET, a, &c, 1000), TicketCheck::Invalid);
        assert_eq!(open_cookie(SECRET, a, &t, 1000), None);
        assert_eq!(open_cookie(SECRET, a, &c, 1999), Some(session.clone()));
        assert_eq!(open_cookie(SECRET, a, &c, 2000), None);
        assert_eq!(open_cookie(SECRET, b, &c, 1999), None);
    }

    #[test]
    fn users_see_their_fleets_and_unscoped_ones_all() {
        let who = |fleets: &[&str]| Who {
            user: "u".into(),
            fleets: fleets.iter().map(|f| f.to_string()).collect(),
            expires_at: 0,
        };
        assert!(who(&[]).may_see(None));
        assert!(who(&[]).may_see(Some("x")));
        assert!(who(&["x"]).may_see(Some("x")));
        assert!(!who(&["x"]).may_see(Some("y")));
        assert!(!who(&["x"]).may_see(None));
    }

    #[test]
    fn the_sign_in_url_is_on_the_bare_domain_and_drops_the_ticket() {
        let u = DeviceUuid::from_bytes([1; 16]);
        let req = Request::builder()
            .uri("/a/b?x=1&gw_ticket=zzz")
            .header("host", format!("{u}.devices.localhost:8080"))
            .body(())
            .unwrap();
        assert_eq!(
            sign_in_url(u, Scheme::Http, &req),
            format!("http://devices.localhost:8080/login?device={u}&next=/a/b%3Fx%3D1")
        );
    }
}
