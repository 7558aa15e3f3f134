//! The sign-in page of `login` mode, on the public listener under the bare `<domain>`
//! host (`http://<domain>/login`): the management listener, where the dashboard lives, is
//! loopback-only by default, so visitors sign in here.
//!
//! * `GET /login?device=<uuid>&next=<path>`: signed in already (the `gw_portal` cookie, a
//!   dashboard session of a user) and allowed to see that device's fleet: a 303 back to
//!   `<uuid>.<domain>` with a ticket ([`super::login`]); not allowed: 403; not signed in:
//!   the form.
//! * `POST /login`: the form (CSRF: its hidden `csrf` field must match the `gw_portal_form`
//!   cookie it came with), checked against the dashboard's argon2 users. Wrong passwords
//!   answer 401 and count per client address like wrong Basic passwords: past the
//!   threshold, 429 with `Retry-After` before any argon2 work.
//!
//! Cookies here are HttpOnly, SameSite=Lax, Path=/, Secure over HTTPS, with no `Domain`:
//! the bare domain's own; device hosts never receive them.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use protocol::DeviceUuid;
use serde_json::json;
use tracing::warn;

use super::super::forwarding::Scheme;
use super::super::pages::{error_page, Body};
use super::basic::{backoff_key, hash_password, verify_password};
use super::links::cookie_values;
use super::login::{ticket, TICKET_PARAM};
use super::AccessCache;
use crate::store::{Principal, Store};

/// The bare domain's sign-in session: a dashboard session id.
pub(crate) const PORTAL_COOKIE: &str = "gw_portal";
/// Ties a sign-in form to the browser that loaded it.
const FORM_COOKIE: &str = "gw_portal_form";
/// How long a sign-in lasts (as the dashboard's).
const SESSION_TTL_SECS: i64 = 12 * 3600;
/// A sign-in form body is small.
const MAX_FORM: usize = 16 * 1024;
/// An argon2id hash of a random password: a missing user costs a verification too, so
/// that timing does not tell which names exist.
static NOBODY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&certs::random_hex(16)).unwrap_or_default());

/// What the form and the page carry along: the device to go back to, and its path.
#[derive(Debug, Default)]
struct Target {
    device: Option<DeviceUuid>,
    next: String,
}

impl Target {
    /// From `device` and `next` values; a `next` that is not a plain path is `/` (it is
    /// appended to the device's origin, so `@evil.example` must not get through).
    fn of(device: Option<&str>, next: Option<&str>) -> Result<Self, String> {
        let device = match device.map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) => Some(
                d.parse::<DeviceUuid>()
                    .map_err(|_| format!("{d:?} is not a device uuid"))?,
            ),
            None => None,
        };
        let next = match next {
            Some(n)
                if n.starts_with('/')
                    && !n.starts_with("//")
                    && !n.contains('\\')
                    && n.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                n.to_string()
            }
            _ => "/".to_string(),
        };
        Ok(Self { device, next })
    }
}

/// Answers a request to the bare domain.
pub(crate) async fn handle(
    access: &AccessCache,
    store: &Store,
    req: Request<Incoming>,
    peer: IpAddr,
    scheme: Scheme,
    host: &str,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/") => redirect("/login"),
        (Method::GET | Method::HEAD, "/login") => {
            let q = parse_pairs(req.uri().query().unwrap_or("").as_bytes());
            let target = match Target::of(get(&q, "device"), get(&q, "next")) {
                Ok(t) => t,
                Err(e) => return error_page(StatusCode::BAD_REQUEST, &e, req.headers()),
            };
            let session = portal_session(req.headers());
            if let Some(session) = session {
                match access.who.get(store, &session).await {
                    Ok(Some(who)) => {
                        return onward(access, store, &target, &session, &who.user, scheme, host)
                            .await
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot read a sign-in session");
                        return unavailable();
                    }
                }
            }
            form(&target, None, StatusCode::OK, scheme)
        }
        (Method::POST, "/login") => sign_in(access, store, req, peer, scheme, host).await,
        _ => error_page(
            StatusCode::NOT_FOUND,
            "Nothing here: this is the gateway's sign-in address (/login).",
            req.headers(),
        ),
    }
}

async fn sign_in(
    access: &AccessCache,
    store: &Store,
    req: Request<Incoming>,
    peer: IpAddr,
    scheme: Scheme,
    host: &str,
) -> Response<Body> {
    let key = backoff_key(peer);
    if let Some(wait) = access.backoff.refused_for(key, std::time::Instant::now()) {
        let mut page = error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passwords from your address; try again later.",
            req.headers(),
        );
        page.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return page;
    }
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The sign-in form is too large.",
                &parts.headers,
            )
        }
    };
    let f = parse_pairs(&bytes);
    let target = match Target::of(get(&f, "device"), get(&f, "next")) {
        Ok(t) => t,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e, &parts.headers),
    };
    let nonce = cookie_values(&parts.headers, FORM_COOKIE)
        .find(|v| !v.is_empty())
        .unwrap_or("");
    let sent = get(&f, "csrf").unwrap_or("");
    if nonce.is_empty() || !constant_time_eq(nonce.as_bytes(), sent.as_bytes()) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This sign-in form is missing its CSRF token or is stale; reload the sign-in page.",
            &parts.headers,
        );
    }
    let user = get(&f, "user").map(str::trim).unwrap_or("").to_string();
    let password = get(&f, "password").unwrap_or("").to_string();
    if user.is_empty() {
        return form(
            &target,
            Some("Enter your user and password."),
            StatusCode::BAD_REQUEST,
            scheme,
        );
    }
    let record = match store.user(&user).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot read a dashboard user");
            return unavailable();
        }
    };
    let hash = record
        .as_ref()
        .map_or_else(|| NOBODY.clone(), |u| u.password_hash.clone());
    // argon2 takes ~20 MiB and tens of milliseconds: off the runtime's threads, a few at
    // a time (shared with Basic's checks).
    let ok = match access.verifying.acquire().await {
        Ok(_permit) => tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false),
        Err(_) => false,
    } && record.is_some();
    if !ok {
        access.backoff.failed(key, std::time::Instant::now());
        let _ = store
            .audit(
                "anonymous",
                "dashboard.sign_in_failed",
                &format!("user:{user}"),
                &json!({"from": peer.to_string(), "via": "public"}).to_string(),
            )
            .await;
        return form(
            &target,
            Some("Wrong user or password."),
            StatusCode::UNAUTHORIZED,
            scheme,
        );
    }
    access.backoff.succeeded(key);
    let id = certs::random_hex(32);
    let session = certs::sha256_hex(id.as_bytes());
    let principal = Principal::User(user.clone());
    let stored = async {
        store
            .create_dashboard_session(
                &session,
                &principal,
                &certs::random_hex(16),
                SESSION_TTL_SECS,
            )
            .await?;
        store.user_signed_in(&user).await?;
        store
            .audit(
                &principal.actor(),
                "dashboard.sign_in",
                "public",
                &json!({"with": "password", "from": peer.to_string(), "via": "public"}).to_string(),
            )
            .await
    };
    if let Err(e) = stored.await {
        warn!(error = %e, "cannot store a sign-in session");
        return unavailable();
    }
    // A session of this id may have been looked up (and found missing) a moment ago.
    access.who.forget(&session);
    let cookies = [
        set_cookie(PORTAL_COOKIE, &id, SESSION_TTL_SECS, scheme),
        set_cookie(FORM_COOKIE, "", 0, scheme),
    ];
    let mut resp = onward(access, store, &target, &session, &user, scheme, host).await;
    for v in cookies {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Signed in as `user` (session `session`): to the device with a ticket when it may see
/// it, a 403 when not, a small page when no device was asked for.
async fn onward(
    access: &AccessCache,
    store: &Store,
    target: &Target,
    session: &str,
    user: &str,
    scheme: Scheme,
    host: &str,
) -> Response<Body> {
    match target.device {
        None => page(
            StatusCode::OK,
            "Signed in",
            html! {
                h1 { "Signed in" }
                p { "You are signed in as " strong { (user) } ". Open a device's address to reach it." }
            },
        ),
        Some(uuid) => {
            let fleet = match store.device(uuid).await {
                Ok(Some(d)) if !d.revoked => d.fleet,
                Ok(_) => {
                    return error_page(
                        StatusCode::NOT_FOUND,
                        "There is no such device.",
                        &http::HeaderMap::new(),
                    )
                }
                Err(e) => {
                    warn!(error = %e, "cannot read a device");
                    return unavailable();
                }
            };
            let who = match access.who.get(store, session).await {
                Ok(Some(w)) => w,
                Ok(None) => return unavailable(),
                Err(e) => {
                    warn!(error = %e, "cannot read a sign-in session");
                    return unavailable();
                }
            };
            if !who.may_see(fleet.as_deref()) {
                let fleet = fleet.map_or("no fleet".to_string(), |f| format!("fleet {f}"));
                page(
                    StatusCode::FORBIDDEN,
                    "No access",
                    html! {
                        h1 { "403 Forbidden" }
                        p { "You are signed in as " strong { (user) } ", who may not see device "
                            code { (uuid) } " (" (fleet) "). Ask an admin for access to its fleet." }
                    },
                )
            } else {
                let secret = match access.secret(store).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot read the share-link secret");
                        return unavailable();
                    }
                };
                let t = ticket(&secret, uuid, session, crate::store::now_unix());
                let sep = if target.next.contains('?') { '&' } else { '?' };
                let to = format!(
                    "{}://{uuid}.{host}{}{sep}{TICKET_PARAM}={t}",
                    scheme.as_str(),
                    target.next
                );
                redirect(&to)
            }
        }
    }
}

/// The sign-in form, with a fresh CSRF nonce in a hidden field and in its cookie.
fn form(
    target: &Target,
    error: Option<&str>,
    status: StatusCode,
    scheme: Scheme,
) -> Response<Body> {
    let nonce = certs::random_hex(16);
    let device = target.device.map(|d| d.to_string()).unwrap_or_default();
    let mut resp = page(
        status,
        "Sign in",
        html! {
            form method="post" action="/login" {
                h1 { "Sign in" }
                @if let Some(d) = target.device {
                    p.muted { "Device " code { (d) } " is for signed-in users. Sign in with your dashboard user." }
                } @else {
                    p.muted { "Sign in with your dashboard user." }
                }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                input type="hidden" name="csrf" value=(nonce);
                input type="hidden" name="device" value=(device);
                input type="hidden" name="next" value=(target.next);
                label { "User" input name="user" autocomplete="username" autofocus; }
                label { "Password" input name="password" type="password" autocomplete="current-password"; }
                button type="submit" { "Sign in" }
            }
        },
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(FORM_COOKIE, &nonce, 600, scheme),
    );
    resp
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;background:#f4f6f8;color:#1d2733;margin:0}\
main{max-width:24rem;margin:10vh auto;background:#fff;border-radius:10px;padding:2rem;\
box-shadow:0 2px 12px rgba(0,0,0,.08)}h1{font-size:1.4rem;margin-top:0}label{display:block;\
margin:.8rem 0;font-weight:600}input{display:block;width:100%;box-sizing:border-box;\
padding:.55rem;margin-top:.3rem;border:1px solid #c5ccd4;border-radius:6px;font:inherit}\
button{margin-top:1rem;width:100%;padding:.6rem;border:0;border-radius:6px;background:#2563eb;\
color:#fff;font:inherit;font-weight:600;cursor:pointer}.muted{color:#5b6776}\
.error{background:#fde8e8;color:#9b1c1c;padding:.5rem .7rem;border-radius:6px}";

fn page(status: StatusCode, title: &str, body: Markup) -> Response<Body> {
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · edge gateway" }
                style { (PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    };
    let mut resp = Response::new(Body::Right(Full::new(Bytes::from(html.into_string()))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The sign-in page is never framed (clickjacking of the form).
    h.insert(
        header::HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    resp
}

fn redirect(to: &str) -> Response<Body> {
    let mut resp = Response::new(Body::Right(Full::new(Bytes::from_static(
        b"Redirecting.\n",
    ))));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn unavailable() -> Response<Body> {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The gateway cannot check sign-ins right now.",
        &http::HeaderMap::new(),
    )
}

fn set_cookie(name: &str, value: &str, max_age: i64, scheme: Scheme) -> HeaderValue {
    let secure = if scheme == Scheme::Https {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("hex values and fixed attributes form a valid header")
}

/// The session hash of the request's `gw_portal` cookie.
fn portal_session(headers: &http::HeaderMap) -> Option<String> {
    cookie_values(headers, PORTAL_COOKIE)
        .find(|v| !v.is_empty())
        .map(|id| certs::sha256_hex(id.as_bytes()))
}

fn parse_pairs(raw: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(raw).unwrap_or_default()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_plain_path_or_slash() {
        let t = |n: &str| Target::of(None, Some(n)).unwrap().next;
        assert_eq!(t("/a/b?c=1"), "/a/b?c=1");
        assert_eq!(t("//evil.example/"), "/");
        assert_eq!(t("@evil.example/"), "/");
        assert_eq!(t("https://evil.example/"), "/");
        assert_eq!(t("/\\evil"), "/");
        assert_eq!(t("/a b"), "/");
        assert!(Target::of(Some("banana"), None).is_err());
    }

    #[test]
    fn the_decoy_hash_parses_and_matches_nothing() {
        assert!(NOBODY.starts_with("$argon2id$"));
        assert!(!verify_password("", &NOBODY));
    }
}
