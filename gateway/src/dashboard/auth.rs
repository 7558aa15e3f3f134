//! Sign-in, sessions and CSRF.
//!
//! A session is a random id in the `gw_session` cookie (HttpOnly, SameSite=Strict,
//! Path=/, and Secure over HTTPS); the store keeps only its SHA-256, who it is, its CSRF
//! token and its expiry. Every POST carries the CSRF token as the hidden field `csrf`;
//! a POST without it, or with another, is refused with 403. The sign-in form itself,
//! before any session, is protected the same way by a short-lived `gw_login` cookie that
//! must match its hidden field.
//!
//! Wrong passwords and tokens answer 401 and count towards the management listener's
//! per-address back-off (`api::auth::AuthBackoff`), which answers 429 once an address has
//! failed too often.
//!
//! A user limited to fleets (`gateway user add --fleet`) is held to them here, before any
//! page handler runs ([`scope_check`]): a device's pages only for a device of those
//! fleets, the devices list only filtered to one of them, and nothing else but
//! signing out (the fleet overview, live presence and any page about every fleet are
//! refused with 403).

use std::net::SocketAddr;

use crate::passwords::{hash_password, verify_password};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::{form, layout, DashError, Secure, St};
use crate::api::auth::{Caller, Role};
use crate::api::ApiState;
use crate::store::{Principal, Store, StoreError};

/// The session cookie.
const COOKIE: &str = "gw_session";
/// The cookie that ties a sign-in form to the browser that loaded it.
const LOGIN_COOKIE: &str = "gw_login";
/// How long a session lasts.
pub(crate) const SESSION_TTL_SECS: i64 = 12 * 3600;
/// How long a one-time login link is valid.
#[cfg_attr(not(feature = "demo"), allow(dead_code))]
pub(crate) const LINK_TTL_SECS: i64 = 10 * 60;

/// A request from a signed-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub(crate) principal: Principal,
    pub(crate) role: Role,
    pub(crate) csrf: String,
    /// The fleets a user limited to fleets may see (empty: every fleet).
    pub(crate) fleets: Vec<String>,
}

impl Signed {
    /// The caller as the API's handlers know it (for actions that go through them).
    pub(crate) fn caller(&self) -> Caller {
        match &self.principal {
            Principal::User(name) => Caller {
                token_id: String::new(),
                role: self.role,
                user: Some(name.clone()),
            },
            Principal::Token(id) => Caller {
                token_id: id.clone(),
                role: self.role,
                user: None,
            },
        }
    }

    /// Whether this session may act on devices (operator and up).
    pub(crate) fn can_act(&self) -> bool {
        self.role >= Role::Operator
    }

    /// Checks the form's `csrf` field against the session's (403 when missing or
    /// different), then that the role is at least `role` (403 otherwise).
    pub(crate) fn check_post(
        &self,
        form: &std::collections::HashMap<String, String>,
        role: Role,
    ) -> Result<(), DashError> {
        let sent = form.get("csrf").map(String::as_str).unwrap_or("");
        if !constant_time_eq(sent.as_bytes(), self.csrf.as_bytes()) {
            return Err(DashError::forbidden(
                "this form is missing its CSRF token or carries a stale one; reload the page and try again",
            ));
        }
        if self.role < role {
            return Err(DashError::forbidden(format!(
                "this needs the {} role; you are signed in as {}",
                role.as_str(),
                self.role.as_str()
            )));
        }
        Ok(())
    }

    /// Who, for the page header: `ann` or `token 1a2b3c4d`.
    pub(crate) fn display(&self) -> String {
        match &self.principal {
            Principal::User(n) => n.clone(),
            Principal::Token(id) => format!("token {id}"),
        }
    }
}

impl FromRequestParts<ApiState> for Signed {
    type Rejection = DashError;

    async fn from_request_parts(parts: &mut Parts, st: &ApiState) -> Result<Self, DashError> {
        let next = parts
            .uri
            .path_and_query()
            .map_or("/devices".to_string(), |p| p.as_str().to_string());
        let sign_in = || DashError::SignIn(next.clone());
        let id = cookie(&parts.headers, COOKIE).ok_or_else(sign_in)?;
        let s = st
            .store
            .dashboard_session(&certs::sha256_hex(id.as_bytes()))
            .await?
            .ok_or_else(sign_in)?;
        let role = Role::parse(&s.role).ok_or_else(|| {
            DashError::Page(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stored role {:?} is unknown", s.role),
            )
        })?;
        let fleets = match &s.principal {
            Principal::User(name) => st.store.user_fleets(name).await?,
            Principal::Token(_) => Vec::new(),
        };
        if !fleets.is_empty() {
            scope_check(st, &fleets, &parts.uri).await?;
        }
        Ok(Self {
            principal: s.principal,
            role,
            csrf: s.csrf,
            fleets,
        })
    }
}

/// Holds a user limited to `fleets` to them: `/devices/{uuid}[/…]` of a device in one of
/// them, `/devices?fleet=F` with `F` one of them (without `fleet`: redirected to the first),
/// `/logout`; everything else is refused (a page added later is closed to them until it
/// says otherwise here).
async fn scope_check(
    st: &ApiState,
    fleets: &[String],
    uri: &axum::http::Uri,
) -> Result<(), DashError> {
    let path = uri.path();
    let list = fleets.join(", ");
    let refuse = |what: &str| {
        DashError::forbidden(format!(
            "{what}: your user sees only the devices of fleet{} {list}",
            if fleets.len() == 1 { "" } else { "s" }
        ))
    };
    if path == "/logout" {
        return Ok(());
    }
    if path == "/devices" {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
        let asked = pairs
            .iter()
            .rev()
            .find(|(k, _)| k == "fleet")
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty());
        return match asked {
            Some(f) if fleets.iter().any(|mine| mine == f) => Ok(()),
            Some(f) => Err(refuse(&format!("fleet {f:?} is not yours"))),
            None => {
                let mut rest: Vec<(String, String)> =
                    pairs.into_iter().filter(|(k, _)| k != "fleet").collect();
                rest.insert(0, ("fleet".into(), fleets[0].clone()));
                let q = serde_urlencoded::to_string(&rest).unwrap_or_default();
                Err(DashError::Redirect(format!("/devices?{q}")))
            }
        };
    }
    if let Some(rest) = path.strip_prefix("/devices/") {
        let first = rest.split('/').next().unwrap_or("");
        let Ok(uuid) = first.parse::<protocol::DeviceUuid>() else {
            return Err(refuse("this page covers devices of every fleet"));
        };
        let fleet = st.store.device(uuid).await?.and_then(|d| d.fleet);
        return match fleet {
            Some(f) if fleets.contains(&f) => Ok(()),
            _ => Err(refuse(&format!("device {uuid} is not in your fleets"))),
        };
    }
    Err(refuse("this page covers every fleet"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A `Set-Cookie` value.
fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("hex values and fixed attributes form a valid header")
}

/// Only a path on this listener: never `//host` or `https://…` (an open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/devices".into(),
    }
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// `GET /login`: the sign-in form.
pub(super) async fn login_page(
    Query(q): Query<LoginQuery>,
    secure: Option<axum::Extension<Secure>>,
) -> Response {
    login_form(q.next.as_deref(), None, StatusCode::OK, secure_of(secure))
}

fn secure_of(s: Option<axum::Extension<Secure>>) -> bool {
    s.is_some_and(|s| s.0 .0)
}

fn login_form(
    next: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
    secure: bool,
) -> Response {
    let nonce = certs::random_hex(16);
    let next = safe_next(next);
    let body = layout::bare(
        "Sign in",
        html! {
            main.login {
                form.card.login-card method="post" action="/login" {
                    h1 { span.brand-mark {} "Fleet gateway" }
                    p.muted { "Sign in with your dashboard user, or paste an API token." }
                    @if let Some(e) = error { p.alert.alert-error role="alert" { (e) } }
                    input type="hidden" name="csrf" value=(nonce);
                    input type="hidden" name="next" value=(next);
                    label { "User" input name="user" autocomplete="username" autofocus; }
                    label { "Password" input name="password" type="password" autocomplete="current-password"; }
                    details {
                        summary { "Use an API token instead" }
                        label { "Token" input name="token" type="password" autocomplete="off" placeholder="gw_…"; }
                    }
                    button.btn.btn-primary type="submit" { "Sign in" }
                }
            }
        },
    );
    let mut resp = (status, body).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &nonce, 600, secure),
    );
    resp
}

/// `POST /login`: a user and password, or an API token. 401 with the form again when
/// wrong (counted by the back-off), 303 to `next` with the session cookie when right.
pub(super) async fn login(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    secure: Option<axum::Extension<Secure>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DashError> {
    let secure = secure_of(secure);
    let f = form(&body)?;
    let get = |k: &str| f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let next = get("next");
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if nonce.is_empty() || !constant_time_eq(nonce.as_bytes(), get("csrf").unwrap_or("").as_bytes())
    {
        return Err(DashError::forbidden(
            "this sign-in form is missing its CSRF token or is stale; reload the sign-in page",
        ));
    }
    let principal = match (get("token"), get("user")) {
        (Some(token), _) => {
            let t = st
                .store
                .token_by_hash(&certs::sha256_hex(token.as_bytes()))
                .await?;
            // A support grant reaches one fleet or device and expires; the dashboard's
            // pages are neither scoped nor timed, so a grant is for the API only.
            if t.as_ref()
                .is_some_and(|t| t.scope.is_some() || t.expires_at.is_some())
            {
                return Ok(login_form(
                    next,
                    Some("A support grant cannot sign in to the dashboard: use it with the API (docs/support.md)."),
                    StatusCode::FORBIDDEN,
                    secure,
                ));
            }
            t.map(|t| Principal::Token(t.id))
        }
        (None, Some(user)) => {
            let password = f.get("password").cloned().unwrap_or_default();
            check_password(&st.store, user, password).await?
        }
        (None, None) => {
            return Ok(login_form(
                next,
                Some("Enter a user and password, or an API token."),
                StatusCode::BAD_REQUEST,
                secure,
            ))
        }
    };
    let Some(principal) = principal else {
        let who = get("user").map_or("token".to_string(), |u| format!("user:{u}"));
        st.store
            .audit(
                "anonymous",
                "dashboard.sign_in_failed",
                &who,
                &json!({"from": peer.ip().to_string()}).to_string(),
            )
            .await?;
        return Ok(login_form(
            next,
            Some("Wrong user or password, or unknown token."),
            StatusCode::UNAUTHORIZED,
            secure,
        ));
    };
    let how = match &principal {
        Principal::User(name) => {
            st.store.user_signed_in(name).await?;
            "password"
        }
        Principal::Token(_) => "token",
    };
    start_session(&st.store, &principal, how, peer, secure, &safe_next(next)).await
}

/// Who `user` is if `password` is theirs. A missing user costs a hash as well, so that
/// timing does not tell which names exist.
async fn check_password(
    store: &Store,
    user: &str,
    password: String,
) -> Result<Option<Principal>, DashError> {
    let record = store.user(user).await?;
    let stored = record.as_ref().map(|u| u.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(h) => verify_password(&password, &h),
        None => {
            let _ = hash_password(&password);
            false
        }
    })
    .await
    .map_err(|e| DashError::Page(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(ok.then(|| Principal::User(user.to_string())))
}

/// Creates a session for `principal`, audits the sign-in, and redirects to `to` with the
/// session cookie set (and the sign-in form's cookie cleared).
async fn start_session(
    store: &Store,
    principal: &Principal,
    how: &str,
    peer: SocketAddr,
    secure: bool,
    to: &str,
) -> Result<Response, DashError> {
    let id = certs::random_hex(32);
    let csrf = certs::random_hex(16);
    store
        .create_dashboard_session(
            &certs::sha256_hex(id.as_bytes()),
            principal,
            &csrf,
            SESSION_TTL_SECS,
        )
        .await?;
    store
        .audit(
            &principal.actor(),
            "dashboard.sign_in",
            "dashboard",
            &json!({"with": how, "from": peer.ip().to_string()}).to_string(),
        )
        .await?;
    let mut resp = Redirect::to(to).into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(COOKIE, &id, SESSION_TTL_SECS, secure),
    );
    h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0, secure));
    Ok(resp)
}

#[derive(Deserialize)]
pub(super) struct OnceQuery {
    t: Option<String>,
}

/// `GET /login/once?t=…`: a one-time login link (made by `gateway demo`). Used up by the
/// first visit; a second one, or one after it expired, is refused.
pub(super) async fn login_once(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    secure: Option<axum::Extension<Secure>>,
    Query(q): Query<OnceQuery>,
) -> Result<Response, DashError> {
    let t = q.t.unwrap_or_default();
    let principal = if t.is_empty() {
        None
    } else {
        st.store
            .take_login_link(&certs::sha256_hex(t.as_bytes()))
            .await?
    };
    let Some(principal) = principal else {
        return Err(DashError::forbidden(
            "this sign-in link was used already or has expired; sign in at /login",
        ));
    };
    start_session(
        &st.store,
        &principal,
        "link",
        peer,
        secure_of(secure),
        "/devices",
    )
    .await
}

/// `POST /logout`: ends the session (CSRF-checked) and clears the cookie.
pub(super) async fn logout(
    signed: Signed,
    State(st): St,
    secure: Option<axum::Extension<Secure>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DashError> {
    signed.check_post(&form(&body)?, Role::Viewer)?;
    if let Some(id) = cookie(&headers, COOKIE) {
        st.store
            .delete_dashboard_session(&certs::sha256_hex(id.as_bytes()))
            .await?;
    }
    st.store
        .audit(
            &signed.principal.actor(),
            "dashboard.sign_out",
            "dashboard",
            "{}",
        )
        .await?;
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(COOKIE, "", 0, secure_of(secure)),
    );
    Ok(resp)
}

/// Stores a one-time login link for `principal` and returns its secret (for
/// `/login/once?t=<secret>`), valid for [`LINK_TTL_SECS`].
#[cfg_attr(not(feature = "demo"), allow(dead_code))]
pub(crate) async fn create_login_link(
    store: &Store,
    principal: &Principal,
) -> Result<String, StoreError> {
    let secret = certs::random_hex(24);
    store
        .create_login_link(
            &certs::sha256_hex(secret.as_bytes()),
            principal,
            LINK_TTL_SECS,
        )
        .await?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; gw_session=abc"),
        );
        assert_eq!(cookie(&h, "gw_session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "gw"), None);
    }

    #[test]
    fn next_stays_on_this_listener() {
        assert_eq!(safe_next(Some("/devices?fleet=a")), "/devices?fleet=a");
        assert_eq!(safe_next(Some("//evil.example/")), "/devices");
        assert_eq!(safe_next(Some("https://evil.example/")), "/devices");
        assert_eq!(safe_next(None), "/devices");
    }
}
