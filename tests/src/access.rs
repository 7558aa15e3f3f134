//! Shared by the access-control tests (`tests/tests/access*.rs`, `user_fleets.rs`,
//! `docs/access.md`): a device web server that records what it received, a visitor
//! request with a chosen `Host`, a gateway with connected devices and API tokens, and for
//! login mode users made with the `gateway user` CLI and the bare domain's sign-in form.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::*;

#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<(String, HeaderMap)>>>);

impl Seen {
    pub fn last(&self) -> (String, HeaderMap) {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend saw a request")
    }

    pub fn all(&self) -> Vec<(String, HeaderMap)> {
        self.0.lock().unwrap().clone()
    }
}

/// A device web server that records every request and answers `ok <uri>`.
pub async fn recording_backend() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let uri = req.uri().to_string();
                        record
                            .0
                            .lock()
                            .unwrap()
                            .push((uri.clone(), req.headers().clone()));
                        Ok::<_, Infallible>(http::Response::new(body(format!("ok {uri}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One visitor request to `host` with extra headers: status, headers, body text.
pub async fn visit(
    gw: &TestGateway,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    visit_at(gw.http_addr, host, path, headers).await
}

/// [`visit`] to the public listener at `addr`.
pub async fn visit_at(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = http::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http_client()
        .request(req.body(empty()).unwrap())
        .await
        .expect("visitor request");
    let status = resp.status();
    let h = resp.headers().clone();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, h, String::from_utf8_lossy(&b).into_owned())
}

/// A gateway with one connected device whose backend records; and the API with tokens.
pub struct Setup {
    pub gw: TestGateway,
    pub api: Api,
    pub operator: String,
    pub admin: String,
    pub viewer: String,
    pub devices: Vec<(String, Seen, TestAgent)>,
}

impl Setup {
    pub async fn new(devices: usize) -> Self {
        Self::with(devices, |_| {}).await
    }

    /// As [`Setup::new`], with the gateway's configuration adjusted by `f`.
    pub async fn with(devices: usize, f: impl FnOnce(&mut gateway::ServeConfig)) -> Self {
        let gw = TestGateway::spawn_custom(f).await;
        let (viewer, operator, admin) = tokens(&gw).await;
        let api = Api::new(&gw);
        let mut out = Vec::new();
        for _ in 0..devices {
            let (addr, seen) = recording_backend().await;
            let cfg = gw.add_device(true).await;
            let uuid = cfg.uuid.clone();
            let mut agent = TestAgent::spawn(cfg, addr);
            agent.connected().await;
            out.push((uuid, seen, agent));
        }
        Self {
            gw,
            api,
            operator,
            admin,
            viewer,
            devices: out,
        }
    }

    pub fn uuid(&self, i: usize) -> &str {
        &self.devices[i].0
    }

    pub fn host(&self, i: usize) -> String {
        device_host(self.uuid(i))
    }

    pub fn seen(&self, i: usize) -> &Seen {
        &self.devices[i].1
    }

    pub fn session_id(&self, i: usize) -> u64 {
        let uuid = self.uuid(i).parse().unwrap();
        self.gw.sessions.get(&uuid).expect("device online").id
    }

    pub async fn set_device(&self, i: usize, settings: Value) -> (StatusCode, Value) {
        let path = format!("/v1/devices/{}/access", self.uuid(i));
        self.api
            .call("PUT", &path, Some(&self.operator), Some(settings))
            .await
    }

    pub async fn share(&self, i: usize, for_secs: i64) -> (StatusCode, Value) {
        let path = format!("/v1/devices/{}/share-links", self.uuid(i));
        self.api
            .call(
                "POST",
                &path,
                Some(&self.operator),
                Some(json!({ "for_secs": for_secs })),
            )
            .await
    }
}

/// The path and query of a share link's URL (the visitor reaches the gateway by address).
pub fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").unwrap().1;
    let slash = after_scheme.find('/').unwrap();
    after_scheme[slash..].to_string()
}

pub fn basic(user: &str, password: &str) -> String {
    // Base64 by hand: the tests take no base64 dependency.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// Runs `gateway ARGS` against the test gateway's API; (success, stdout, stderr).
pub fn cli(s: &Setup, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin("gateway"))
        .args(args)
        .env("GATEWAY_API", format!("http://{}", s.gw.api_addr))
        .env("GATEWAY_TOKEN", &s.admin)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The bare domain of the test gateways (`devices.localhost`): login mode's sign-in page.
pub const BARE: &str = "devices.localhost";

/// `gateway user add NAME --role R [--fleet F]...`, the password on stdin.
pub fn user_add(gw: &TestGateway, name: &str, role: &str, fleets: &[&str], password: &str) {
    let mut cmd = Command::new(bin("gateway"));
    cmd.args(["user", "add", name, "--role", role, "--data-dir"])
        .arg(&gw.data_dir);
    for f in fleets {
        cmd.args(["--fleet", f]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `gateway user ARGS --data-dir …`: (success, stdout, stderr).
pub fn user_cli(gw: &TestGateway, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("gateway"))
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(&gw.data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One request to the public listener (`host`), with a method, cookies and a form body.
pub async fn public(
    gw: &TestGateway,
    method: &str,
    host: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.http_addr))
        .header("host", host)
        .header("accept", "text/html");
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
pub fn set_cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(String::from)
}

/// `name=value` of a `Set-Cookie` header.
pub fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

pub fn location(h: &HeaderMap) -> String {
    h["location"].to_str().unwrap().to_string()
}

/// The path and query of an absolute URL, and its host.
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.split_once("://").unwrap().1;
    let slash = rest.find('/').unwrap();
    (rest[..slash].to_string(), rest[slash..].to_string())
}

/// Percent-encodes a form value.
pub fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Loads the bare domain's sign-in form at `path` and posts `user`/`password` with its
/// CSRF nonce: the answer to the post.
pub async fn sign_in(
    gw: &TestGateway,
    path: &str,
    user: &str,
    password: &str,
) -> (StatusCode, HeaderMap, String) {
    let (st, h, page) = public(gw, "GET", BARE, path, None, None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    let nonce = pair(&set_cookie(&h, "gw_portal_form").expect("the form's cookie"));
    let csrf = csrf_in(&page);
    assert_eq!(nonce, format!("gw_portal_form={csrf}"));
    let device = page
        .split("name=\"device\" value=\"")
        .nth(1)
        .map(|r| r[..r.find('"').unwrap()].to_string())
        .unwrap_or_default();
    let next = page
        .split("name=\"next\" value=\"")
        .nth(1)
        .map(|r| r[..r.find('"').unwrap()].replace("&amp;", "&"))
        .unwrap_or_default();
    let form = format!(
        "csrf={csrf}&device={device}&next={}&user={user}&password={password}",
        enc(&next)
    );
    public(gw, "POST", BARE, "/login", Some(&nonce), Some(&form)).await
}

/// Two fleets, a device in each (in login mode: the first by its own setting, the second
/// by its fleet's default), and users `ann` (kiosks only) and `root` (every fleet).
pub async fn login_setup() -> Setup {
    let s = Setup::new(2).await;
    for (i, fleet) in ["kiosks", "cams"].into_iter().enumerate() {
        let (st, _) = s
            .api
            .call(
                "POST",
                "/v1/fleets",
                Some(&s.admin),
                Some(json!({"name": fleet})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let (st, _) = s
            .api
            .call(
                "PATCH",
                &format!("/v1/devices/{}", s.uuid(i)),
                Some(&s.operator),
                Some(json!({"fleet": fleet})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, v) = s.set_device(0, json!({"mode": "login"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["mode"].as_str(), v["source"].as_str()),
        (Some("login"), Some("device"))
    );
    let (st, v) = s
        .api
        .call(
            "PUT",
            "/v1/fleets/cams/access",
            Some(&s.admin),
            Some(json!({"mode": "login"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    user_add(&s.gw, "ann", "viewer", &["kiosks"], "ann-password-1");
    user_add(&s.gw, "root", "admin", &[], "root-password-1");
    s
}
