//! Shared by the access-control tests (`tests/tests/access*.rs`, `docs/access.md`): a
//! device web server that records what it received, a visitor request with a chosen
//! `Host`, and a gateway with connected devices and API tokens.

use std::convert::Infallible;
use std::net::SocketAddr;
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
