//! Helpers of the dashboard tests (`tests/dashboard*.rs`): users made with the `gateway
//! user` CLI, hyper as the browser where headers and cookies are asserted, sign-in in
//! headless Chromium, agents whose blink writes a file; sign-in with any fields, a
//! session that posts with its CSRF token, and a reader of Server-Sent Events.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::browser::Browser;
use crate::{body, eventually, fast_agent_options, http_client, Api, TestAgent, TestGateway};

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Adds a dashboard user of every fleet with `gateway user add`, the password on stdin.
pub fn user_add(gw: &TestGateway, name: &str, role: &str, password: &str) {
    crate::access::user_add(gw, name, role, &[], password)
}

/// One HTTP exchange with the management listener: status, headers, body text.
pub async fn http(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    http_at(gw.api_addr, method, path, cookie, form).await
}

/// One HTTP exchange with the management listener at `api`: status, headers, body text.
/// `form` is sent as `application/x-www-form-urlencoded`.
pub async fn http_at(
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
    let bytes = http_body_util::BodyExt::collect(b)
        .await
        .unwrap()
        .to_bytes();
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

pub fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

/// The value of the first hidden `csrf` field in a page.
pub fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Signs in through the form with hyper; returns the `gw_session` Set-Cookie header.
pub async fn sign_in(gw: &TestGateway, user: &str, password: &str) -> String {
    let (status, form_resp) = post_login(gw, &format!("user={user}&password={password}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    set_cookie(&form_resp, "gw_session")
        .expect("a session cookie")
        .to_string()
}

/// Loads the sign-in form and posts `fields` with its CSRF nonce.
pub async fn post_login(gw: &TestGateway, fields: &str) -> (StatusCode, HeaderMap) {
    let (s, h, page) = http(gw, "GET", "/login", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let nonce = cookie_value(set_cookie(&h, "gw_login").expect("the sign-in form's cookie"));
    assert_eq!(csrf_in(&page), nonce);
    let (s, h, _) = http(
        gw,
        "POST",
        "/login",
        Some(&format!("gw_login={nonce}")),
        Some(&format!("csrf={nonce}&{fields}")),
    )
    .await;
    (s, h)
}

pub async fn api_ok(api: &Api, token: &str, method: &str, path: &str, body: Value) -> Value {
    let (s, v) = api.call(method, path, Some(token), Some(body)).await;
    assert!(s.is_success(), "{method} {path}: {s} {v}");
    v
}

/// An agent whose blink writes an LED file (as in actions.rs).
pub struct Device {
    dir: tempfile::TempDir,
    pub cfg: edge_agent::AgentConfig,
}

impl Device {
    pub async fn new(gw: &TestGateway) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            cfg: gw.add_device(false).await,
        }
    }

    pub fn led(&self) -> PathBuf {
        self.dir.path().join("led")
    }

    /// Starts the agent, shipping its log lines through `logs`.
    pub fn start(&self, logs: edge_agent::logs::LogPipeline) -> TestAgent {
        self.start_with(Some(logs), |_| {})
    }

    /// Starts the agent with a host shell for terminals (`/bin/sh`), shipping no logs.
    pub fn start_with_shell(&self) -> TestAgent {
        self.start_with(None, |o| o.terminal.shell = Some("/bin/sh".into()))
    }

    /// Starts the agent with its LED file and harmless reboot/shutdown commands, then
    /// `tweak` on the options.
    pub fn start_with(
        &self,
        logs: Option<edge_agent::logs::LogPipeline>,
        tweak: impl FnOnce(&mut edge_agent::AgentOptions),
    ) -> TestAgent {
        let data = self.dir.path().join("data");
        let mut hooks = edge_agent::device::Hooks::defaults(&data);
        hooks.led = Some(self.led());
        hooks.hostname_file = self.dir.path().join("hostname");
        hooks.locks_root = self.dir.path().join("locks");
        hooks.reboot = vec!["true".into()];
        hooks.shutdown = vec!["true".into()];
        let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
        opts.data_dir = Some(data);
        opts.hooks = Some(hooks);
        opts.logs = logs;
        tweak(&mut opts);
        TestAgent::spawn_with(self.cfg.clone(), opts)
    }
}

/// Where the screenshots go: `docs/dashboard/` when `DASHBOARD_SCREENSHOTS=docs` (to
/// refresh the ones in the docs), else a temporary folder, so that a test run leaves the
/// checkout as it was.
pub fn docs_dir() -> PathBuf {
    let dir = if std::env::var("DASHBOARD_SCREENSHOTS").as_deref() == Ok("docs") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard")
    } else {
        std::env::temp_dir().join(format!("dashboard-screenshots-{}", std::process::id()))
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Signs in through the form with hyper; returns the `Cookie` header value for the
/// session (`gw_session=…`).
pub async fn session(gw: &TestGateway, user: &str, password: &str) -> String {
    format!(
        "gw_session={}",
        cookie_value(&sign_in(gw, user, password).await)
    )
}

/// Percent-encodes `pairs` as a form body.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// GETs `path` with the session cookie and returns the page and its CSRF token.
pub async fn page_and_csrf(gw: &TestGateway, cookie: &str, path: &str) -> (String, String) {
    let (s, _, page) = http(gw, "GET", path, Some(cookie), None).await;
    assert_eq!(s, StatusCode::OK, "GET {path}: {page}");
    let csrf = csrf_in(&page);
    (page, csrf)
}

/// Signs `user` in through the sign-in form in the browser and waits for the devices page.
pub async fn browser_sign_in(b: &Browser, base: &str, user: &str, password: &str) {
    b.goto(&format!("{base}/login")).await;
    let u = b.find("input[name=user]").await;
    b.type_into(&u, user).await;
    let pw = b.find("input[name=password]").await;
    b.type_into(&pw, password).await;
    let submit = b.find("button[type=submit]").await;
    b.click(&submit).await;
    eventually(Duration::from_secs(10), || async {
        (b.script("return location.pathname").await == "/devices").then_some(())
    })
    .await
    .expect("signed in and on the devices page");
}

/// Waits until `js` (a script that returns a value) returns `want` in the browser.
pub async fn wait_for(b: &Browser, js: &str, want: Value, limit: Duration) {
    let got = eventually(limit, || async {
        (b.script(js).await == want).then_some(())
    })
    .await;
    if got.is_none() {
        let last = b.script(js).await;
        panic!("{js} never returned {want} (last: {last})");
    }
}

/// The browser, or `None` (and a SKIPPED line) when chromedriver is not installed; with
/// `CI=true` a missing one fails the test.
pub async fn browser(width: u32, height: u32) -> Option<Browser> {
    let b = Browser::start_sized(width, height).await;
    if b.is_none() {
        assert!(!in_ci(), "chromedriver is missing and CI=true");
        println!("SKIPPED: chromedriver not installed (apt-get install chromium chromium-driver)");
    }
    b
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
    let (s, h, page) = http_at(api, "GET", "/login", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let nonce = cookie_value(set_cookie(&h, "gw_login").expect("the sign-in form's cookie"));
    assert_eq!(csrf_in(&page), nonce);
    let (s, h, _) = http_at(
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
pub async fn sign_in_with(api: SocketAddr, fields: &str) -> String {
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
        let cookie = sign_in_with(api, fields).await;
        let (s, _, page) = http_at(api, "GET", "/devices", Some(&cookie), None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        Self {
            api,
            csrf: csrf_in(&page),
            cookie,
        }
    }

    /// `GET path` with the session.
    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        http_at(self.api, "GET", path, Some(&self.cookie), None).await
    }

    /// `POST path` with the session and `form`, the CSRF token first.
    pub async fn post(&self, path: &str, form: &str) -> (StatusCode, HeaderMap, String) {
        let form = if form.is_empty() {
            format!("csrf={}", self.csrf)
        } else {
            format!("csrf={}&{form}", self.csrf)
        };
        http_at(self.api, "POST", path, Some(&self.cookie), Some(&form)).await
    }

    /// `POST path` with the session and `form` as given (no CSRF token added).
    pub async fn post_raw(&self, path: &str, form: &str) -> (StatusCode, HeaderMap, String) {
        http_at(self.api, "POST", path, Some(&self.cookie), Some(form)).await
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
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut b).await {
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
