//! The dashboard as a browser speaks to it, with hyper: sign-in through the form (its
//! CSRF nonce and cookie), pages and form posts with a session cookie, and a reader of
//! Server-Sent Events (`/events`).

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::{body, http_client};

/// One HTTP exchange with the management listener at `api`: status, headers, body text.
/// `form` is sent as `application/x-www-form-urlencoded`.
pub async fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{api}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let resp = http_client()
        .request(req.body(body(form.unwrap_or("").to_string())).unwrap())
        .await
        .unwrap();
    let (parts, b) = resp.into_parts();
    let bytes = b.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// The `Set-Cookie` header that sets `name`.
pub fn set_cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// The value a `Set-Cookie` header sets.
pub fn cookie_value(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().unwrap();
    pair.split_once('=').unwrap().1.to_string()
}

/// The value of the first hidden `csrf` field in a page.
pub fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + marker.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Percent-encodes a form value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Signs in through the form with `fields` (`user=…&password=…` or `token=…`); the
/// `gw_session=…` cookie to send, or the status when the sign-in was refused.
pub async fn try_sign_in(api: SocketAddr, fields: &str) -> Result<String, StatusCode> {
    let (s, h, page) = http(api, "GET", "/login", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let nonce = cookie_value(set_cookie(&h, "gw_login").expect("the sign-in form's cookie"));
    assert_eq!(csrf_in(&page), nonce);
    let (s, h, _) = http(
        api,
        "POST",
        "/login",
        Some(&format!("gw_login={nonce}")),
        Some(&format!("csrf={nonce}&{fields}")),
    )
    .await;
    if s != StatusCode::SEE_OTHER {
        return Err(s);
    }
    let c = set_cookie(&h, "gw_session").expect("a session cookie");
    Ok(format!("gw_session={}", cookie_value(c)))
}

/// As [`try_sign_in`], which must succeed.
pub async fn sign_in(api: SocketAddr, fields: &str) -> String {
    try_sign_in(api, fields)
        .await
        .unwrap_or_else(|s| panic!("sign-in with {fields:?} answered {s}"))
}

/// A session: its cookie and the CSRF token its pages carry (read from `page`).
pub struct Session {
    pub api: SocketAddr,
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    /// Signs in with `fields` and reads the CSRF token from `/devices`.
    pub async fn start(api: SocketAddr, fields: &str) -> Self {
        let cookie = sign_in(api, fields).await;
        let (s, _, page) = http(api, "GET", "/devices", Some(&cookie), None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        Self {
            api,
            csrf: csrf_in(&page),
            cookie,
        }
    }

    /// `GET path` with the session.
    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        http(self.api, "GET", path, Some(&self.cookie), None).await
    }

    /// `POST path` with the session and `form`, the CSRF token first.
    pub async fn post(&self, path: &str, form: &str) -> (StatusCode, HeaderMap, String) {
        let form = if form.is_empty() {
            format!("csrf={}", self.csrf)
        } else {
            format!("csrf={}&{form}", self.csrf)
        };
        http(self.api, "POST", path, Some(&self.cookie), Some(&form)).await
    }

    /// `POST path` with the session and `form` as given (no CSRF token added).
    pub async fn post_raw(&self, path: &str, form: &str) -> (StatusCode, HeaderMap, String) {
        http(self.api, "POST", path, Some(&self.cookie), Some(form)).await
    }
}

/// One Server-Sent Event: its `event:` name and `data:`.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: String,
}

/// Opens `GET path` on `api` with `cookie` as an event stream; the events arrive on the
/// receiver, in order, until the stream ends. Returns once the response has started
/// (the server subscribed before it answered).
pub async fn sse(api: SocketAddr, path: &str, cookie: &str) -> mpsc::UnboundedReceiver<Sse> {
    let req = http::Request::builder()
        .uri(format!("http://{api}{path}"))
        .header("cookie", cookie)
        .header("accept", "text/event-stream")
        .body(body(""))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), http_client().request(req))
        .await
        .expect("the event stream answers within 10 s")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut b = resp.into_body();
    tokio::spawn(async move {
        let mut buf = String::new();
        while let Some(Ok(frame)) = b.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    event: "message".into(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.trim_start());
                    }
                }
                // Keep-alive comments carry no data.
                if !ev.data.is_empty() && tx.send(ev).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
