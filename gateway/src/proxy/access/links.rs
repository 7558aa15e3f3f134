//! Share links and their cookies: HMAC-SHA256 signatures over purpose, device and
//! expiry, keyed with the store's share secret; and the request surgery around them (the
//! query parameter, the `Cookie` header).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use protocol::DeviceUuid;

use super::super::forwarding::Scheme;
use super::super::pages::Body;
use super::{COOKIE, LOGIN_COOKIE, SHARE_PARAM, TICKET_PARAM};

/// What a signature is for: a link's token cannot be used as a cookie, or the reverse.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purpose {
    Share,
    Cookie,
}

/// What is signed: a version, the purpose, the device and the expiry.
fn signed_data(purpose: Purpose, uuid: DeviceUuid, expires_at: i64) -> String {
    let p = match purpose {
        Purpose::Share => "share",
        Purpose::Cookie => "cookie",
    };
    format!("gw-access/v1\n{p}\n{uuid}\n{expires_at}")
}

/// `<expiry>.<hex HMAC-SHA256>`: a link's token or a cookie's value.
pub(super) fn signed(secret: &[u8], purpose: Purpose, uuid: DeviceUuid, expires_at: i64) -> String {
    let tag = certs::hmac_sha256(secret, signed_data(purpose, uuid, expires_at).as_bytes());
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("{expires_at}.{hex}")
}

/// The token of a share link to `uuid` valid until `expires_at` (unix seconds).
pub(crate) fn share_token(secret: &[u8], uuid: DeviceUuid, expires_at: i64) -> String {
    signed(secret, Purpose::Share, uuid, expires_at)
}

/// What [`verify`] found.
pub(super) enum Check {
    Valid(i64),
    Expired,
    Invalid,
}

pub(super) fn verify(
    secret: &[u8],
    purpose: Purpose,
    uuid: DeviceUuid,
    value: &str,
    now: i64,
) -> Check {
    let Some((exp, hex)) = value.split_once('.') else {
        return Check::Invalid;
    };
    let (Ok(expires_at), Some(tag)) = (exp.parse::<i64>(), unhex32(hex)) else {
        return Check::Invalid;
    };
    let data = signed_data(purpose, uuid, expires_at);
    if !certs::hmac_sha256_verify(secret, data.as_bytes(), &tag) {
        Check::Invalid
    } else if expires_at <= now {
        Check::Expired
    } else {
        Check::Valid(expires_at)
    }
}

pub(super) fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// 303 to the same URL without `gw_share`, setting the cookie for this host only.
pub(super) fn redirect_with_cookie<B>(
    secret: &[u8],
    uuid: DeviceUuid,
    expires_at: i64,
    now: i64,
    scheme: Scheme,
    req: &Request<B>,
) -> Response<Body> {
    let cookie = signed(secret, Purpose::Cookie, uuid, expires_at);
    let redirect = CookieRedirect {
        cookie: COOKIE,
        param: SHARE_PARAM,
        message: b"Signed in through a share link; redirecting.\n",
    };
    redirect.answer(&cookie, expires_at - now, scheme, req)
}

/// A device host's answer to a credential in its query (a share link's token, a login
/// ticket): a 303 to the same URL without that parameter, setting the host's own cookie
/// (HttpOnly, SameSite=Lax, Secure over HTTPS, no `Domain`: this host only).
pub(super) struct CookieRedirect {
    /// The cookie's name.
    pub(super) cookie: &'static str,
    /// The query parameter the redirect drops.
    pub(super) param: &'static str,
    /// The body, for a client that does not follow redirects.
    pub(super) message: &'static [u8],
}

impl CookieRedirect {
    /// The redirect, with the cookie set to `value` for `max_age` seconds.
    pub(super) fn answer<B>(
        &self,
        value: &str,
        max_age: i64,
        scheme: Scheme,
        req: &Request<B>,
    ) -> Response<Body> {
        let mut set = format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax",
            self.cookie
        );
        if scheme == Scheme::Https {
            set.push_str("; Secure");
        }
        let rest = without_param(req.uri().query().unwrap_or(""), self.param);
        let location = if rest.is_empty() {
            req.uri().path().to_string()
        } else {
            format!("{}?{rest}", req.uri().path())
        };
        let mut resp = Response::new(Body::Right(http_body_util::Full::new(
            bytes::Bytes::from_static(self.message),
        )));
        *resp.status_mut() = StatusCode::SEE_OTHER;
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&location) {
            h.insert(header::LOCATION, v);
        }
        h.insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&set).expect("digits, hex and ASCII attributes"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

/// The gateway's own cookies on a device host.
const OWN_COOKIES: [&str; 2] = [COOKIE, LOGIN_COOKIE];
/// The gateway's own query parameters on a device host.
const OWN_PARAMS: [&str; 2] = [SHARE_PARAM, TICKET_PARAM];

/// Takes the gateway's own credentials out of a request before it is forwarded: the
/// `gw_access` and `gw_login` cookies, the `gw_share` and `gw_ticket` parameters and
/// (`basic` mode) `Authorization`.
pub(super) fn scrub<B>(req: &mut Request<B>, strip_authorization: bool) {
    if strip_authorization {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    let headers = req.headers_mut();
    if headers.get_all(header::COOKIE).iter().any(|v| {
        OWN_COOKIES
            .iter()
            .any(|c| memfind(v.as_bytes(), c.as_bytes()))
    }) {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| {
                let s = v.to_str().ok()?;
                let rest: Vec<&str> = s
                    .split(';')
                    .map(str::trim)
                    .filter(|c| {
                        !c.is_empty()
                            && !c
                                .split('=')
                                .next()
                                .is_some_and(|n| OWN_COOKIES.contains(&n))
                    })
                    .collect();
                (!rest.is_empty()).then(|| HeaderValue::from_str(&rest.join("; ")).ok())?
            })
            .collect();
        headers.remove(header::COOKIE);
        for v in kept {
            headers.append(header::COOKIE, v);
        }
    }
    let query = req.uri().query().unwrap_or("");
    if OWN_PARAMS
        .iter()
        .any(|p| memfind(query.as_bytes(), p.as_bytes()))
    {
        let rest = OWN_PARAMS
            .iter()
            .fold(query.to_string(), |q, p| without_param(&q, p));
        let pq = if rest.is_empty() {
            req.uri().path().to_string()
        } else {
            format!("{}?{rest}", req.uri().path())
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

pub(super) fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The raw value of the first `name=` in a query string.
pub(super) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `query` without any `name` parameter (others kept as sent, in order).
pub(super) fn without_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join("&")
}

/// The values of every cookie called `name` in the request's `Cookie` headers.
pub(super) fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_device_purpose_and_time() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let a = DeviceUuid::from_bytes([1; 16]);
        let b = DeviceUuid::from_bytes([2; 16]);
        let t = share_token(secret, a, 1000);
        assert!(matches!(
            verify(secret, Purpose::Share, a, &t, 999),
            Check::Valid(1000)
        ));
        assert!(matches!(
            verify(secret, Purpose::Share, a, &t, 1000),
            Check::Expired
        ));
        assert!(matches!(
            verify(secret, Purpose::Share, b, &t, 999),
            Check::Invalid
        ));
        assert!(matches!(
            verify(secret, Purpose::Cookie, a, &t, 999),
            Check::Invalid
        ));
        assert!(matches!(
            verify(b"other", Purpose::Share, a, &t, 999),
            Check::Invalid
        ));
        // A later expiry with the old tag is a forgery.
        let forged = t.replacen("1000", "9999", 1);
        assert!(matches!(
            verify(secret, Purpose::Share, a, &forged, 999),
            Check::Invalid
        ));
        assert!(matches!(
            verify(secret, Purpose::Share, a, "x", 0),
            Check::Invalid
        ));
    }

    #[test]
    fn scrub_takes_out_only_the_gateways_own() {
        let mut req = Request::builder()
            .uri("http://d.example/p?a=1&gw_share=123.ab&b=2&gw_ticket=1.2.3.4")
            .header(
                "cookie",
                "theirs=1; gw_access=5.aa; other=x; gw_login=1.ab.cd",
            )
            .header("cookie", "gw_access=6.bb")
            .header("authorization", "Basic eDp5")
            .body(())
            .unwrap();
        scrub(&mut req, true);
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/p?a=1&b=2");
        let cookies: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["theirs=1; other=x"]);
        assert!(req.headers().get("authorization").is_none());

        let mut req = Request::builder()
            .uri("/p?gw_share=1")
            .header("authorization", "Bearer device-token")
            .body(())
            .unwrap();
        scrub(&mut req, false);
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/p");
        assert!(req.headers().get("authorization").is_some());
    }
}
