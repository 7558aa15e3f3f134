//! The local supervisor API over a real socket, checked against balena's documentation
//! ("Interacting with the balena Supervisor", balena-os/balena-supervisor `docs/API.md`):
//! every endpoint's status code and body shape, the API key rules, 423 for held update
//! locks and `force` overriding them, and 400 for bodies that do not parse.
//!
//! The client is a few lines of raw HTTP/1.1 on a `TcpStream`, so the tests control the
//! exact bytes sent (no body, broken JSON, odd headers) and see the exact bytes back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use edge_agent::local_api::{
    serve, ControlError, ControlFuture, DeviceControl, DeviceInfo, LocalApiState, ServiceRef,
    StateStatus, UpdateStatus,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const KEY: &str = "0123456789abcdef0123456789abcdef";
const COMMIT: &str = "414e65cd378a69a96f403b75f14b40b5";
const LOCKED_BY: &str = "service main of app 1 holds updates.lock";

// ---- the device side, faked ----

struct FakeDevice {
    healthy: AtomicBool,
    connected: AtomicBool,
}

impl DeviceInfo for FakeDevice {
    fn uuid(&self) -> String {
        "7cf02a6b1c2d4e5f8a9b0c1d2e3f4a5b".into()
    }
    fn name(&self) -> String {
        "holy-wildflower".into()
    }
    fn api_port(&self) -> u16 {
        48484
    }
    fn os_version(&self) -> String {
        "Debian GNU/Linux 12 (bookworm)".into()
    }
    fn supervisor_version(&self) -> String {
        edge_agent::VERSION.into()
    }
    fn ip_addresses(&self) -> Vec<String> {
        vec!["192.168.0.114".into(), "10.42.0.3".into()]
    }
    fn status(&self) -> String {
        "Idle".into()
    }
    fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
    fn tags(&self) -> Vec<(String, String)> {
        vec![("DeviceLocation".into(), "warehouse #3".into())]
    }
    fn commit(&self) -> Option<String> {
        Some(COMMIT.into())
    }
    fn update_status(&self) -> UpdateStatus {
        UpdateStatus {
            pending: true,
            downloaded: false,
            failed: false,
            applying: false,
            download_progress: Some(84),
        }
    }
}

/// Records every action it performs; refuses lock-guarded actions with `Locked` while
/// `locked` is set and `force` is not; fails everything with `Internal` while `broken`.
/// App 1 is a single-container app (service `main`), app 2 a multi-container one.
#[derive(Default)]
struct FakeControl {
    locked: AtomicBool,
    broken: AtomicBool,
    performed: Mutex<Vec<String>>,
    host_patches: Mutex<Vec<(Value, bool)>>,
    next_key: Mutex<String>,
    /// Sizes (serialized) of the local-mode target states received.
    local_targets: Mutex<Vec<usize>>,
}

impl FakeControl {
    fn performed(&self) -> Vec<String> {
        self.performed.lock().unwrap().clone()
    }

    /// The common checks, then the record: the action "happens" only if this is `Ok`.
    fn act(&self, action: String, guarded_by_lock: bool, force: bool) -> Result<(), ControlError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(ControlError::Internal("engine unreachable".into()));
        }
        if guarded_by_lock && self.locked.load(Ordering::SeqCst) && !force {
            return Err(ControlError::Locked(LOCKED_BY.into()));
        }
        self.performed.lock().unwrap().push(action);
        Ok(())
    }

    fn known_app(app_id: u32) -> Result<(), ControlError> {
        match app_id {
            1 | 2 => Ok(()),
            _ => Err(ControlError::NotFound(format!("App {app_id} not found"))),
        }
    }

    fn single_container(app_id: u32) -> Result<(), ControlError> {
        Self::known_app(app_id)?;
        if app_id == 2 {
            return Err(ControlError::BadRequest(
                "Some v1 endpoints are only allowed on single-container apps".into(),
            ));
        }
        Ok(())
    }

    fn service(app_id: u32, service: &ServiceRef) -> Result<String, ControlError> {
        Self::known_app(app_id)?;
        match service {
            ServiceRef::Name(n) if n == "main" || n == "db" => Ok(format!("name:{n}")),
            ServiceRef::ImageId(id) if *id == 959262 => Ok(format!("image:{id}")),
            _ => Err(ControlError::NotFound(
                "Service not found, a container must exist for this endpoint to work".into(),
            )),
        }
    }
}

impl DeviceControl for FakeControl {
    fn blink(&self) -> ControlFuture<'_, ()> {
        Box::pin(async { self.act("blink".into(), false, false) })
    }
    fn reboot(&self, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move { self.act(format!("reboot force={force}"), true, force) })
    }
    fn shutdown(&self, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move { self.act(format!("shutdown force={force}"), true, force) })
    }
    fn update(&self, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move { self.act(format!("update force={force}"), true, force) })
    }
    fn restart_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            Self::known_app(app_id)?;
            self.act(format!("restart app={app_id} force={force}"), true, force)
        })
    }
    fn stop_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, String> {
        Box::pin(async move {
            Self::single_container(app_id)?;
            self.act(format!("stop app={app_id} force={force}"), true, force)?;
            Ok("5f4d4a857742e9ec".into())
        })
    }
    fn start_app(&self, app_id: u32) -> ControlFuture<'_, String> {
        Box::pin(async move {
            Self::single_container(app_id)?;
            self.act(format!("start app={app_id}"), false, false)?;
            Ok("6d9e1efdb9aad90f".into())
        })
    }
    fn purge(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            Self::known_app(app_id)?;
            self.act(format!("purge app={app_id} force={force}"), true, force)
        })
    }
    fn restart_service(
        &self,
        app_id: u32,
        service: ServiceRef,
        force: bool,
    ) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let s = Self::service(app_id, &service)?;
            self.act(
                format!("restart-service app={app_id} {s} force={force}"),
                true,
                force,
            )
        })
    }
    fn stop_service(&self, app_id: u32, service: ServiceRef, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let s = Self::service(app_id, &service)?;
            self.act(
                format!("stop-service app={app_id} {s} force={force}"),
                true,
                force,
            )
        })
    }
    fn start_service(&self, app_id: u32, service: ServiceRef) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let s = Self::service(app_id, &service)?;
            self.act(format!("start-service app={app_id} {s}"), false, false)
        })
    }
    fn regenerate_api_key(&self) -> ControlFuture<'_, String> {
        Box::pin(async {
            self.act("regenerate-api-key".into(), false, false)?;
            Ok(self.next_key.lock().unwrap().clone())
        })
    }
    fn host_config(&self) -> ControlFuture<'_, Value> {
        Box::pin(async {
            self.act("host-config".into(), false, false)?;
            Ok(json!({
                "network": {
                    "proxy": { "ip": "192.168.0.199", "port": "8123", "type": "socks5" },
                    "hostname": "27b0fdc"
                }
            }))
        })
    }
    fn patch_host_config(&self, patch: Value, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            // Only a hostname change reboots, so only it is guarded by locks.
            let reboots = patch.pointer("/network/hostname").is_some();
            self.act(format!("patch-host-config force={force}"), reboots, force)?;
            self.host_patches.lock().unwrap().push((patch, force));
            Ok(())
        })
    }
    fn apps_state(&self) -> ControlFuture<'_, Value> {
        Box::pin(async {
            self.act("apps-state".into(), false, false)?;
            Ok(json!({
                "myapp": {
                    "appId": 1,
                    "commit": COMMIT,
                    "services": {
                        "main": { "status": "Running", "releaseId": 557617, "downloadProgress": null }
                    }
                }
            }))
        })
    }
    fn app(&self, app_id: u32) -> ControlFuture<'_, Option<Value>> {
        Box::pin(async move {
            if app_id == 2 {
                Self::single_container(app_id)?;
            }
            if app_id != 1 {
                return Ok(None);
            }
            Ok(Some(json!({
                "appId": 1,
                "commit": COMMIT,
                "imageId": "registry.example/app/main:414e65c",
                "containerId": "e5c1eace8b4e",
                "env": { "FOO": "bar" }
            })))
        })
    }
    fn state_status(&self) -> ControlFuture<'_, StateStatus> {
        Box::pin(async {
            Ok(StateStatus {
                containers: vec![json!({
                    "status": "Running",
                    "serviceName": "main",
                    "appId": 1,
                    "imageId": 959262,
                    "serviceId": 29396,
                    "containerId": "be4a860e34ff",
                    "createdAt": "2019-03-11T16:05:34.506Z"
                })],
                images: vec![],
            })
        })
    }
    fn set_local_target(&self, target: Value) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.act("local-target".into(), false, false)?;
            self.local_targets
                .lock()
                .unwrap()
                .push(target.to_string().len());
            Ok(())
        })
    }
}

// ---- the API under test ----

struct TestApi {
    addr: SocketAddr,
    key: Arc<RwLock<String>>,
    device: Arc<FakeDevice>,
    control: Arc<FakeControl>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn spawn_api() -> TestApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let device = Arc::new(FakeDevice {
        healthy: AtomicBool::new(true),
        connected: AtomicBool::new(true),
    });
    let control = Arc::new(FakeControl::default());
    let state = LocalApiState::new(KEY, device.clone(), control.clone());
    let key = state.api_key.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, state, shutdown.clone()));
    TestApi {
        addr,
        key,
        device,
        control,
        shutdown,
        task,
    }
}

/// How a request presents the key.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Query(&'a str),
    Bearer(&'a str),
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
    fn json(&self) -> Value {
        assert!(
            self.header("content-type")
                .unwrap_or("")
                .starts_with("application/json"),
            "not JSON: {:?} {}",
            self.header("content-type"),
            self.text()
        );
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl TestApi {
    /// One request on a fresh connection; `body` of `None` sends no body at all.
    async fn call(&self, method: &str, path: &str, auth: Auth<'_>, body: Option<&str>) -> Resp {
        let path = match auth {
            Auth::Query(k) if path.contains('?') => format!("{path}&apikey={k}"),
            Auth::Query(k) => format!("{path}?apikey={k}"),
            _ => path.to_string(),
        };
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Auth::Bearer(k) = auth {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        // balena's examples always send this header, with or without a body.
        req.push_str("Content-Type: application/json\r\n");
        let body = body.unwrap_or("");
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);

        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        // A server refusing a body (413) may answer and close before reading all of it,
        // so a failed write, or a reset after the response, is not the test's verdict.
        let _ = stream.write_all(req.as_bytes()).await;
        let mut raw = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut raw),
        )
        .await
        .expect("response within 10 s");
        if let Err(e) = read {
            assert!(!raw.is_empty(), "{method} {path}: no response: {e}");
        }
        parse_response(&raw)
    }

    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, Auth::Bearer(KEY), None).await
    }

    async fn post(&self, path: &str, body: Option<&str>) -> Resp {
        self.call("POST", path, Auth::Bearer(KEY), body).await
    }

    fn lock(&self) {
        self.control.locked.store(true, Ordering::SeqCst);
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        rest = &rest[eol + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `(method, path, body)` of every endpoint that needs the key.
const KEYED: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/v1/blink", None),
    ("POST", "/v1/update", Some(r#"{"force":true}"#)),
    ("POST", "/v1/reboot", None),
    ("POST", "/v1/shutdown", None),
    ("POST", "/v1/purge", Some(r#"{"appId":1}"#)),
    ("POST", "/v1/restart", Some(r#"{"appId":1}"#)),
    ("POST", "/v1/regenerate-api-key", None),
    ("GET", "/v1/device", None),
    ("GET", "/v1/apps/1", None),
    ("POST", "/v1/apps/1/stop", None),
    ("POST", "/v1/apps/1/start", None),
    ("GET", "/v1/device/host-config", None),
    (
        "PATCH",
        "/v1/device/host-config",
        Some(r#"{"network":{"hostname":"x"}}"#),
    ),
    ("GET", "/v2/applications/state", None),
    (
        "POST",
        "/v2/applications/1/restart-service",
        Some(r#"{"serviceName":"main"}"#),
    ),
    (
        "POST",
        "/v2/applications/1/stop-service",
        Some(r#"{"serviceName":"main"}"#),
    ),
    (
        "POST",
        "/v2/applications/1/start-service",
        Some(r#"{"serviceName":"main"}"#),
    ),
    ("POST", "/v2/applications/1/restart", None),
    ("POST", "/v2/applications/1/purge", None),
    ("GET", "/v2/state/status", None),
    ("GET", "/v2/version", None),
    ("GET", "/v2/device/name", None),
    ("GET", "/v2/device/tags", None),
    ("GET", "/v2/device/vpn", None),
];

// ---- the key ----

#[tokio::test]
async fn ping_and_healthy_answer_without_a_key() {
    let api = spawn_api().await;
    // "GET /ping: Responds with a simple "OK"" — no apikey in balena's example.
    let r = api.call("GET", "/ping", Auth::None, None).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    let r = api.call("GET", "/ping", Auth::Bearer("wrong"), None).await;
    assert_eq!((r.status, r.text()), (200, "OK"));

    // "GET /v1/healthy: Responds with an empty 200 response if the supervisor is healthy,
    // or a 500 status code if something is not working correctly."
    let r = api.call("GET", "/v1/healthy", Auth::None, None).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    api.device.healthy.store(false, Ordering::SeqCst);
    let r = api.call("GET", "/v1/healthy", Auth::None, None).await;
    assert_eq!(r.status, 500);
    api.device.healthy.store(true, Ordering::SeqCst);
    assert!(api.control.performed().is_empty());
}

#[tokio::test]
async fn every_other_endpoint_needs_the_key() {
    let api = spawn_api().await;
    for &(method, path, body) in KEYED {
        for auth in [Auth::None, Auth::Query("wrong"), Auth::Bearer("wrong")] {
            let r = api.call(method, path, auth, body).await;
            assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
        }
        // A key of the right length that differs in the last character.
        let near = format!("{}0", &KEY[..KEY.len() - 1]);
        let r = api.call(method, path, Auth::Bearer(&near), body).await;
        assert_eq!(r.status, 401, "{method} {path}");
    }
    assert!(
        api.control.performed().is_empty(),
        "nothing ran without a key"
    );

    for &(method, path, body) in KEYED {
        if path == "/v1/regenerate-api-key" {
            continue; // changes the key; see its own test
        }
        for auth in [Auth::Query(KEY), Auth::Bearer(KEY)] {
            let r = api.call(method, path, auth, body).await;
            assert!(
                (200..300).contains(&r.status),
                "{method} {path}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    // Other header spellings balena accepts.
    let r = api.call("GET", "/v2/version", Auth::None, None).await;
    assert_eq!(r.status, 401);
    for scheme in ["bearer", "ApiKey"] {
        let raw = format!(
            "GET /v2/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {scheme} {KEY}\r\n\r\n"
        );
        let mut s = TcpStream::connect(api.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        assert_eq!(parse_response(&buf).status, 200, "{scheme}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_behind_the_key() {
    let api = spawn_api().await;
    assert_eq!(
        api.call("GET", "/v1/nope", Auth::None, None).await.status,
        401
    );
    assert_eq!(api.get("/v1/nope").await.status, 404);
    assert_eq!(api.get("/v3/anything").await.status, 404);
    assert_eq!(
        api.post("/v2/applications/1/explode", None).await.status,
        404
    );
}

#[tokio::test]
async fn regenerate_api_key_retires_the_old_key() {
    let api = spawn_api().await;
    let new_key = "480af7bb8a9cf56de8a1e295f0d50e6b3bb46676aaddbf4103aa43cb57039364";
    *api.control.next_key.lock().unwrap() = new_key.into();

    // "Responds with the new API key" — the bare key as text.
    let r = api.post("/v1/regenerate-api-key", None).await;
    assert_eq!((r.status, r.text()), (200, new_key));
    assert_eq!(*api.key.read().unwrap(), new_key);

    assert_eq!(api.get("/v1/device").await.status, 401, "old key, header");
    let r = api.call("GET", "/v1/device", Auth::Query(KEY), None).await;
    assert_eq!(r.status, 401, "old key, query");
    let r = api
        .call("GET", "/v1/device", Auth::Bearer(new_key), None)
        .await;
    assert_eq!(r.status, 200);
    let r = api
        .call("GET", "/v1/device", Auth::Query(new_key), None)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn an_empty_regenerated_key_is_refused_and_the_old_one_kept() {
    let api = spawn_api().await;
    let r = api.post("/v1/regenerate-api-key", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "failed");
    assert_eq!(api.get("/v1/device").await.status, 200);
}

// ---- v1 ----

#[tokio::test]
async fn blink_is_an_empty_200() {
    let api = spawn_api().await;
    let r = api.post("/v1/blink", None).await;
    assert_eq!((r.status, r.text()), (200, ""));
    assert_eq!(api.control.performed(), ["blink"]);
}

#[tokio::test]
async fn update_is_an_empty_204_and_force_overrides_locks() {
    let api = spawn_api().await;
    // "Can be a JSON object with a force property": absent means false.
    let r = api.post("/v1/update", None).await;
    assert_eq!((r.status, r.text()), (204, ""));
    let r = api.post("/v1/update", Some(r#"{"force": true}"#)).await;
    assert_eq!((r.status, r.text()), (204, ""));
    assert_eq!(
        api.control.performed(),
        ["update force=false", "update force=true"]
    );

    api.lock();
    let r = api.post("/v1/update", Some(r#"{"force": false}"#)).await;
    assert_eq!(r.status, 423);
    assert_eq!(
        r.json(),
        json!({ "status": "failed", "message": format!("Updates are locked: {LOCKED_BY}") })
    );
    let r = api.post("/v1/update", Some(r#"{"force": true}"#)).await;
    assert_eq!(r.status, 204);
    assert_eq!(api.control.performed().len(), 3);
}

#[tokio::test]
async fn reboot_and_shutdown_answer_202_data_ok_and_423_when_locked() {
    let api = spawn_api().await;
    for action in ["reboot", "shutdown"] {
        let path = format!("/v1/{action}");
        // "When successful, responds with 202 accepted and a JSON object:
        // {"Data": "OK", "Error": ""}" — balena's example sends no body.
        let r = api.post(&path, None).await;
        assert_eq!(r.status, 202, "{action}");
        assert_eq!(r.json(), json!({ "Data": "OK", "Error": "" }));
    }
    assert_eq!(
        api.control.performed(),
        ["reboot force=false", "shutdown force=false"]
    );

    api.lock();
    for action in ["reboot", "shutdown"] {
        let path = format!("/v1/{action}");
        let r = api.post(&path, Some("{}")).await;
        assert_eq!(r.status, 423, "{action}");
        assert_eq!(
            r.json(),
            json!({ "Data": "", "Error": format!("Updates are locked: {LOCKED_BY}") })
        );
        // "An optional "force" parameter in the body overrides the lock when true."
        let r = api.post(&path, Some(r#"{"force":true}"#)).await;
        assert_eq!(r.status, 202, "{action}");
        assert_eq!(r.json(), json!({ "Data": "OK", "Error": "" }));
    }
    assert_eq!(
        api.control.performed(),
        [
            "reboot force=false",
            "shutdown force=false",
            "reboot force=true",
            "shutdown force=true"
        ]
    );
}

#[tokio::test]
async fn purge_answers_200_data_ok() {
    let api = spawn_api().await;
    // "Has to be a JSON object with an appId property" — {"Data":"OK","Error":""}.
    let r = api.post("/v1/purge", Some(r#"{"appId": 1}"#)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "Data": "OK", "Error": "" }));
    // balena also takes the id as a numeric string.
    let r = api.post("/v1/purge", Some(r#"{"appId": "1"}"#)).await;
    assert_eq!(r.status, 200);

    let r = api.post("/v1/purge", None).await;
    assert_eq!((r.status, r.text()), (400, "Invalid or missing appId"));

    api.lock();
    let r = api.post("/v1/purge", Some(r#"{"appId": 1}"#)).await;
    assert_eq!(r.status, 423);
    assert_eq!(r.json()["status"], "failed");
    let r = api
        .post("/v1/purge", Some(r#"{"appId": 1, "force": true}"#))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        api.control.performed(),
        [
            "purge app=1 force=false",
            "purge app=1 force=false",
            "purge app=1 force=true"
        ]
    );

    // An app the device does not run.
    let r = api
        .post("/v1/purge", Some(r#"{"appId": 99, "force": true}"#))
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn restart_answers_ok_text() {
    let api = spawn_api().await;
    // "When successful, responds with 200 and an "OK"".
    let r = api.post("/v1/restart", Some(r#"{"appId": 1}"#)).await;
    assert_eq!((r.status, r.text()), (200, "OK"));

    let r = api.post("/v1/restart", Some("{}")).await;
    assert_eq!((r.status, r.text()), (400, "Missing app id"));

    api.lock();
    let r = api.post("/v1/restart", Some(r#"{"appId": 1}"#)).await;
    assert_eq!(r.status, 423);
    assert_eq!(
        r.json(),
        json!({ "status": "failed", "message": format!("Updates are locked: {LOCKED_BY}") })
    );
    let r = api
        .post("/v1/restart", Some(r#"{"appId": 1, "force": true}"#))
        .await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    assert_eq!(
        api.control.performed(),
        ["restart app=1 force=false", "restart app=1 force=true"]
    );
}

#[tokio::test]
async fn device_has_the_documented_fields() {
    let api = spawn_api().await;
    let r = api.get("/v1/device").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    // Field by field from the doc's list and example response.
    // The port the API is really bound to (the test binds port 0), not balena's default.
    assert_eq!(
        v["api_port"],
        api.addr.port(),
        "api_port: port, as a number"
    );
    assert_eq!(
        v["ip_address"], "192.168.0.114 10.42.0.3",
        "space-separated"
    );
    assert_eq!(v["commit"], COMMIT);
    assert_eq!(v["status"], "Idle");
    assert_eq!(v["download_progress"], 84, "a percentage, as a number");
    assert_eq!(v["os_version"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(v["supervisor_version"], edge_agent::VERSION);
    assert_eq!(v["update_pending"], true);
    assert_eq!(v["update_downloaded"], false);
    assert_eq!(v["update_failed"], false);
    assert_eq!(v.as_object().unwrap().len(), 10, "{v}");
}

#[tokio::test]
async fn app_returns_the_documented_object() {
    let api = spawn_api().await;
    let r = api.get("/v1/apps/1").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["appId"], 1);
    assert_eq!(v["commit"], COMMIT);
    assert!(v["imageId"].is_string());
    assert_eq!(v["containerId"], "e5c1eace8b4e");
    assert_eq!(v["env"], json!({ "FOO": "bar" }));

    // balena kept 400 for "not found" here, and 400 on multi-container devices.
    let r = api.get("/v1/apps/99").await;
    assert_eq!((r.status, r.text()), (400, "App not found"));
    let r = api.get("/v1/apps/2").await;
    assert_eq!(r.status, 400);
    assert_eq!(api.get("/v1/apps/abc").await.status, 400);
    assert_eq!(api.get("/v1/apps/0").await.status, 400);
}

#[tokio::test]
async fn app_stop_and_start_return_the_container_id() {
    let api = spawn_api().await;
    // "When successful, responds with 200 and the Id of the stopped container."
    let r = api.post("/v1/apps/1/stop", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "containerId": "5f4d4a857742e9ec" }));
    let r = api.post("/v1/apps/1/start", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "containerId": "6d9e1efdb9aad90f" }));

    api.lock();
    let r = api.post("/v1/apps/1/stop", None).await;
    assert_eq!(r.status, 423);
    assert_eq!(r.json()["status"], "failed");
    // "Can contain a force property, which if set to true will cause the update lock
    // to be overridden."
    let r = api.post("/v1/apps/1/stop", Some(r#"{"force":true}"#)).await;
    assert_eq!(r.status, 200);
    // Starting kills nothing: a lock does not stop it.
    let r = api.post("/v1/apps/1/start", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        api.control.performed(),
        [
            "stop app=1 force=false",
            "start app=1",
            "stop app=1 force=true",
            "start app=1"
        ]
    );

    // "This is only supported on single-container devices, and will return 400 on
    // devices running multiple containers."
    assert_eq!(
        api.post("/v1/apps/2/stop", Some(r#"{"force":true}"#))
            .await
            .status,
        400
    );
    assert_eq!(api.post("/v1/apps/2/start", None).await.status, 400);
    assert_eq!(api.post("/v1/apps/99/start", None).await.status, 400);
    assert_eq!(api.post("/v1/apps/x/start", None).await.status, 400);
}

#[tokio::test]
async fn host_config_reads_and_patches() {
    let api = spawn_api().await;
    let r = api.get("/v1/device/host-config").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["network"]["hostname"], "27b0fdc");

    // "Response: OK".
    let r = api
        .call(
            "PATCH",
            "/v1/device/host-config",
            Auth::Bearer(KEY),
            Some(r#"{"network": {"hostname": "newhostname"}}"#),
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "OK"));

    api.lock();
    let patch = r#"{"network": {"hostname": "other"}}"#;
    let r = api
        .call(
            "PATCH",
            "/v1/device/host-config",
            Auth::Bearer(KEY),
            Some(patch),
        )
        .await;
    assert_eq!(r.status, 423);
    assert_eq!(r.text(), format!("Updates are locked: {LOCKED_BY}"));
    let forced = r#"{"network": {"hostname": "other"}, "force": true}"#;
    let r = api
        .call(
            "PATCH",
            "/v1/device/host-config",
            Auth::Bearer(KEY),
            Some(forced),
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "OK"));

    // The patch reaches the device without `force`, which travels separately.
    let patches = api.control.host_patches.lock().unwrap().clone();
    assert_eq!(
        patches,
        [
            (json!({"network": {"hostname": "newhostname"}}), false),
            (json!({"network": {"hostname": "other"}}), true),
        ]
    );

    for bad in [
        r#"{"network": "wifi"}"#,
        r#"{"network": {"dns": 5}}"#,
        r#"["network"]"#,
        r#"{"network": {"#,
    ] {
        let r = api
            .call(
                "PATCH",
                "/v1/device/host-config",
                Auth::Bearer(KEY),
                Some(bad),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
}

// ---- v2 ----

#[tokio::test]
async fn applications_state_is_the_controls_json() {
    let api = spawn_api().await;
    let r = api.get("/v2/applications/state").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["myapp"]["appId"], 1);
    assert_eq!(v["myapp"]["services"]["main"]["status"], "Running");
}

#[tokio::test]
async fn service_actions_take_a_service_name_or_an_image_id() {
    let api = spawn_api().await;
    for action in ["restart-service", "stop-service", "start-service"] {
        let path = format!("/v2/applications/1/{action}");
        // "Response: OK", by serviceName or by imageId.
        let r = api.post(&path, Some(r#"{"serviceName": "main"}"#)).await;
        assert_eq!((r.status, r.text()), (200, "OK"), "{action}");
        let r = api.post(&path, Some(r#"{"imageId": 959262}"#)).await;
        assert_eq!((r.status, r.text()), (200, "OK"), "{action}");
        // Neither: 400.
        let r = api.post(&path, Some("{}")).await;
        assert_eq!(r.status, 400, "{action}");
        // No such service: 404.
        let r = api.post(&path, Some(r#"{"serviceName": "ghost"}"#)).await;
        assert_eq!(r.status, 404, "{action}");
        // No such app: 404.
        let path99 = format!("/v2/applications/99/{action}");
        let r = api.post(&path99, Some(r#"{"serviceName": "main"}"#)).await;
        assert_eq!(r.status, 404, "{action}");
        // Not an app id: 400 in the failed envelope.
        let pathx = format!("/v2/applications/x/{action}");
        let r = api.post(&pathx, Some(r#"{"serviceName": "main"}"#)).await;
        assert_eq!(r.status, 400, "{action}");
        assert_eq!(
            r.json(),
            json!({ "status": "failed", "message": "Invalid app id" })
        );
    }
    assert_eq!(
        api.control.performed(),
        [
            "restart-service app=1 name:main force=false",
            "restart-service app=1 image:959262 force=false",
            "stop-service app=1 name:main force=false",
            "stop-service app=1 image:959262 force=false",
            "start-service app=1 name:main",
            "start-service app=1 image:959262",
        ]
    );
}

#[tokio::test]
async fn service_actions_are_423_when_locked_unless_forced() {
    let api = spawn_api().await;
    api.lock();
    for action in ["restart-service", "stop-service"] {
        let path = format!("/v2/applications/1/{action}");
        let r = api.post(&path, Some(r#"{"serviceName": "db"}"#)).await;
        assert_eq!(r.status, 423, "{action}");
        assert_eq!(
            r.json(),
            json!({ "status": "failed", "message": format!("Updates are locked: {LOCKED_BY}") })
        );
        // "an extra optional boolean, force, which if true informs the supervisor to
        // ignore any update locks which have been taken."
        let r = api
            .post(&path, Some(r#"{"serviceName": "db", "force": true}"#))
            .await;
        assert_eq!((r.status, r.text()), (200, "OK"), "{action}");
    }
    let r = api
        .post(
            "/v2/applications/1/start-service",
            Some(r#"{"serviceName": "db"}"#),
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    assert_eq!(
        api.control.performed(),
        [
            "restart-service app=1 name:db force=true",
            "stop-service app=1 name:db force=true",
            "start-service app=1 name:db",
        ]
    );
}

#[tokio::test]
async fn app_restart_and_purge_answer_ok() {
    let api = spawn_api().await;
    let r = api.post("/v2/applications/1/restart", None).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    let r = api.post("/v2/applications/1/purge", None).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    api.lock();
    assert_eq!(
        api.post("/v2/applications/1/restart", None).await.status,
        423
    );
    assert_eq!(api.post("/v2/applications/1/purge", None).await.status, 423);
    let forced = Some(r#"{"force":true}"#);
    assert_eq!(
        api.post("/v2/applications/1/restart", forced).await.status,
        200
    );
    assert_eq!(
        api.post("/v2/applications/1/purge", forced).await.status,
        200
    );
    assert_eq!(
        api.post("/v2/applications/0/purge", forced).await.status,
        400
    );
}

#[tokio::test]
async fn state_status_has_the_documented_envelope() {
    let api = spawn_api().await;
    let r = api.get("/v2/state/status").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["status"], "success");
    assert_eq!(v["appState"], "applied");
    assert_eq!(v["overallDownloadProgress"], 84);
    assert_eq!(v["release"], COMMIT);
    assert_eq!(v["images"], json!([]));
    let c = &v["containers"][0];
    for field in [
        "status",
        "serviceName",
        "appId",
        "imageId",
        "serviceId",
        "containerId",
        "createdAt",
    ] {
        assert!(!c[field].is_null(), "containers[0].{field}");
    }
}

#[tokio::test]
async fn version_name_tags_and_vpn() {
    let api = spawn_api().await;
    let r = api.get("/v2/version").await;
    assert_eq!(
        r.json(),
        json!({ "status": "success", "version": edge_agent::VERSION })
    );
    let r = api.get("/v2/device/name").await;
    assert_eq!(
        r.json(),
        json!({ "status": "success", "deviceName": "holy-wildflower" })
    );
    let r = api.get("/v2/device/tags").await;
    assert_eq!(
        r.json(),
        json!({
            "status": "success",
            "tags": [{ "name": "DeviceLocation", "value": "warehouse #3" }]
        })
    );
    let r = api.get("/v2/device/vpn").await;
    assert_eq!(
        r.json(),
        json!({ "status": "success", "vpn": { "enabled": true, "connected": true } })
    );
    api.device.connected.store(false, Ordering::SeqCst);
    assert_eq!(
        api.get("/v2/device/vpn").await.json()["vpn"]["connected"],
        false
    );
}

// ---- bad input and failures ----

#[tokio::test]
async fn malformed_bodies_are_400_and_run_nothing() {
    let api = spawn_api().await;
    let cases: &[(&str, &str, &str)] = &[
        ("POST", "/v1/update", r#"{"force": tru"#),
        ("POST", "/v1/update", r#"{"force": "banana"}"#),
        ("POST", "/v1/update", "[true]"),
        ("POST", "/v1/reboot", r#"{"force": {}}"#),
        ("POST", "/v1/shutdown", "force=true"),
        ("POST", "/v1/purge", r#"{"appId": "one"}"#),
        ("POST", "/v1/purge", r#"{"appId": -3}"#),
        ("POST", "/v1/restart", r#"{"appId": true}"#),
        ("POST", "/v1/restart", r#"{"appId": 1.5}"#),
        ("POST", "/v1/apps/1/stop", r#"{"force": 7}"#),
        (
            "POST",
            "/v2/applications/1/restart-service",
            r#"{"serviceName": 5}"#,
        ),
        (
            "POST",
            "/v2/applications/1/stop-service",
            r#"{"imageId": "abc"}"#,
        ),
        ("POST", "/v2/applications/1/start-service", "null"),
        (
            "POST",
            "/v2/applications/1/restart",
            r#"{"force": "maybe"}"#,
        ),
    ];
    for &(method, path, body) in cases {
        let r = api.call(method, path, Auth::Bearer(KEY), Some(body)).await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        assert!(!r.body.is_empty(), "{path}: a message says what is wrong");
    }
    assert!(api.control.performed().is_empty());

    // The messages name the problem.
    let r = api.post("/v1/update", Some(r#"{"force": "banana"}"#)).await;
    assert!(r.text().contains("force"), "{}", r.text());
    let r = api.post("/v1/update", Some("{oops")).await;
    assert!(r.text().contains("not valid JSON"), "{}", r.text());
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let api = spawn_api().await;
    let big = format!(r#"{{"force":true,"pad":"{}"}}"#, "x".repeat(100 * 1024));
    let r = api.post("/v1/update", Some(&big)).await;
    assert_eq!(r.status, 413);
    assert!(api.control.performed().is_empty());
}

#[tokio::test]
async fn device_failures_map_to_balenas_codes() {
    let api = spawn_api().await;
    api.control.broken.store(true, Ordering::SeqCst);
    // Most endpoints: balena's error middleware, 503 {"status":"failed"}.
    for (path, body) in [
        ("/v1/update", None),
        ("/v1/restart", Some(r#"{"appId":1}"#)),
        (
            "/v2/applications/1/restart-service",
            Some(r#"{"serviceName":"main"}"#),
        ),
    ] {
        let r = api.post(path, body).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(
            r.json(),
            json!({ "status": "failed", "message": "engine unreachable" })
        );
    }
    // Reboot and shutdown keep their Go-era envelope, with 500.
    let r = api.post("/v1/reboot", None).await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json(),
        json!({ "Data": "", "Error": "engine unreachable" })
    );
    // Host config answers in text.
    let r = api
        .call(
            "PATCH",
            "/v1/device/host-config",
            Auth::Bearer(KEY),
            Some("{}"),
        )
        .await;
    assert_eq!((r.status, r.text()), (503, "engine unreachable"));
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let api = spawn_api().await;
    assert_eq!(api.get("/ping").await.status, 200);
    api.shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), api.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(TcpStream::connect(api.addr).await.is_err());
}

// ---- form bodies, balena's value coercion, body limits ----

impl TestApi {
    /// One request with exactly this `Content-Type` (or none) and body, key as Bearer.
    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Resp {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str("\r\n");
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        // A refused body (413) may be answered and the socket closed mid-upload.
        let _ = stream.write_all(req.as_bytes()).await;
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            stream.read_to_end(&mut raw),
        )
        .await
        .expect("response within 30 s");
        if let Err(e) = read {
            assert!(!raw.is_empty(), "{method} {path}: no response: {e}");
        }
        parse_response(&raw)
    }
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[tokio::test]
async fn form_encoded_bodies_work_like_json() {
    let api = spawn_api().await;
    // `curl -d force=true` (form content type), Python `requests.post(url, data=...)`
    // (the same, sometimes with a charset), and a bare body with no content type.
    let r = api.send("POST", "/v1/reboot", FORM, b"force=true").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({ "Data": "OK", "Error": "" }));
    let r = api
        .send(
            "POST",
            "/v1/shutdown",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"force=1",
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = api.send("POST", "/v1/update", None, b"force=on").await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = api
        .send("POST", "/v1/purge", FORM, b"appId=1&force=true")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api.send("POST", "/v1/restart", FORM, b"appId=1").await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    let r = api
        .send(
            "POST",
            "/v2/applications/1/restart-service",
            FORM,
            b"serviceName=main",
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    let r = api
        .send(
            "POST",
            "/v2/applications/1/stop-service",
            FORM,
            b"imageId=959262&force=1",
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    // `curl -d '{"force":true}'` without -H sends JSON labelled as a form: it is JSON.
    let r = api
        .send("POST", "/v1/reboot", FORM, br#"{"force": true}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    // Nested keys, as express's extended parser reads them.
    let r = api
        .send(
            "PATCH",
            "/v1/device/host-config",
            FORM,
            b"network%5Bhostname%5D=formhost",
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    assert_eq!(
        api.control.performed(),
        [
            "reboot force=true",
            "shutdown force=true",
            "update force=true",
            "purge app=1 force=true",
            "restart app=1 force=false",
            "restart-service app=1 name:main force=false",
            "stop-service app=1 image:959262 force=true",
            "reboot force=true",
            "patch-host-config force=false",
        ]
    );
    assert_eq!(
        api.control.host_patches.lock().unwrap().last().unwrap().0,
        json!({"network": {"hostname": "formhost"}})
    );

    // Locks and bad values behave as with JSON.
    api.lock();
    let r = api.send("POST", "/v1/reboot", FORM, b"force=false").await;
    assert_eq!(r.status, 423, "{}", r.text());
    let r = api.send("POST", "/v1/reboot", FORM, b"force=banana").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("force"), "{}", r.text());
    let r = api.send("POST", "/v1/purge", FORM, b"appId=one").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("appId"), "{}", r.text());
    assert_eq!(api.control.performed().len(), 9, "nothing more ran");
}

#[tokio::test]
async fn string_values_coerce_like_balenas() {
    let api = spawn_api().await;
    for (body, want) in [
        (r#"{"force":"1"}"#, "reboot force=true"),
        (r#"{"force":"on"}"#, "reboot force=true"),
        (r#"{"force":"true"}"#, "reboot force=true"),
        (r#"{"force":"0"}"#, "reboot force=false"),
        (r#"{"force":"off"}"#, "reboot force=false"),
    ] {
        let r = api.post("/v1/reboot", Some(body)).await;
        assert_eq!(r.status, 202, "{body}: {}", r.text());
        assert_eq!(api.control.performed().last().unwrap(), want, "{body}");
    }
    // "42" is app 42 (which this device does not run: 404, not a 400 for the type).
    let r = api.post("/v1/restart", Some(r#"{"appId":"42"}"#)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("42"), "{}", r.text());
    let r = api.send("POST", "/v1/restart", FORM, b"appId=42").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = api.post("/v1/restart", Some(r#"{"appId":"1"}"#)).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
}

#[tokio::test]
async fn local_target_state_takes_bodies_up_to_balenas_10_mb() {
    let api = spawn_api().await;
    let five_mb = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5 * 1024 * 1024));
    let r = api
        .send(
            "POST",
            "/v2/local/target-state",
            Some("application/json"),
            five_mb.as_bytes(),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
    );
    assert_eq!(*api.control.local_targets.lock().unwrap(), [five_mb.len()]);
    let eleven_mb = format!(r#"{{"pad":"{}"}}"#, "x".repeat(11 * 1024 * 1024));
    let r = api
        .send(
            "POST",
            "/v2/local/target-state",
            Some("application/json"),
            eleven_mb.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(api.control.local_targets.lock().unwrap().len(), 1);
    // Elsewhere the small limit stays.
    let big = format!(r#"{{"force":true,"pad":"{}"}}"#, "x".repeat(100 * 1024));
    let r = api
        .send(
            "POST",
            "/v1/update",
            Some("application/json"),
            big.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 413);
}

// ---- the real device behind the API ----

/// The API serving the agent's real [`edge_agent::device::Device`], its host-config files
/// in a temp dir.
async fn spawn_real() -> (TestApi, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut hooks = edge_agent::device::Hooks::defaults(dir.path());
    hooks.hostname_file = dir.path().join("hostname");
    let key = Arc::new(RwLock::new(KEY.to_string()));
    let device = Arc::new(edge_agent::device::Device::new(
        "7cf02a6b1c2d4e5f8a9b0c1d2e3f4a5b".into(),
        dir.path().to_path_buf(),
        hooks,
        Arc::clone(&key),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = LocalApiState {
        api_key: Arc::clone(&key),
        device: device.clone(),
        control: device,
        metrics: None,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, state, shutdown.clone()));
    let api = TestApi {
        addr,
        key,
        device: Arc::new(FakeDevice {
            healthy: AtomicBool::new(true),
            connected: AtomicBool::new(true),
        }),
        control: Arc::new(FakeControl::default()),
        shutdown,
        task,
    };
    (api, dir)
}

#[tokio::test]
async fn the_real_device_reports_the_port_it_is_bound_to() {
    let (api, _dir) = spawn_real().await;
    let r = api.get("/v1/device").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["api_port"], api.addr.port(), "{}", r.text());
}

async fn patch(api: &TestApi, body: &str) -> Resp {
    api.call(
        "PATCH",
        "/v1/device/host-config",
        Auth::Bearer(KEY),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn host_config_keeps_the_hostname_files_mode_and_validates_every_field() {
    use std::os::unix::fs::PermissionsExt;
    let (api, dir) = spawn_real().await;
    let hostname = dir.path().join("hostname");
    std::fs::write(&hostname, "old\n").unwrap();
    std::fs::set_permissions(&hostname, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    let r = patch(&api, r#"{"network":{"hostname":"kiosk-7"}}"#).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "kiosk-7\n");
    assert_eq!(mode(&hostname), 0o644, "the hostname file keeps its mode");

    // RFC 1123 labels only: no leading or trailing dash, 1-63 characters.
    for bad in ["-rf", "kiosk-", "a_b", "", &"a".repeat(64), "a.b"] {
        let r = patch(&api, &json!({"network": {"hostname": bad}}).to_string()).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(r.text().contains("hostname"), "{bad:?}: {}", r.text());
    }
    assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "kiosk-7\n");

    let good = json!({"network": {"proxy": {
        "type": "socks5", "ip": "192.168.0.199", "port": 8123,
        "login": "user", "password": "s3cret p@ss",
        "noProxy": ["10.0.0.0/8", "example.com", "fd00::/8", "172.16.1.1"],
    }}});
    let r = patch(&api, &good.to_string()).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    let r = api.get("/v1/device/host-config").await;
    assert_eq!(r.json()["network"]["proxy"], good["network"]["proxy"]);
    assert_eq!(r.json()["network"]["hostname"], "kiosk-7");
    // Each bad field is refused with its name, and nothing is written.
    for (field, value) in [
        ("type", json!("ftp")),
        ("port", json!(0)),
        ("port", json!(65536)),
        ("port", json!("80; rm -rf /")),
        ("ip", json!("bad host!")),
        ("ip", json!("-rf")),
        ("login", json!("user\nredsocks {")),
        ("password", json!("p\u{7}")),
        ("noProxy", json!(["a b"])),
        ("noProxy", json!("example.com")),
        ("colour", json!("red")),
    ] {
        let mut proxy = good["network"]["proxy"].clone();
        proxy[field] = value.clone();
        let r = patch(&api, &json!({"network": {"proxy": proxy}}).to_string()).await;
        assert_eq!(r.status, 400, "{field}={value}: {}", r.text());
        assert!(r.text().contains(field), "{field}={value}: {}", r.text());
    }
    let r = api.get("/v1/device/host-config").await;
    assert_eq!(r.json()["network"]["proxy"], good["network"]["proxy"]);
    // http-connect with a port as a string (a form field) works; `{}` removes the proxy.
    let r = patch(
        &api,
        r#"{"network":{"proxy":{"type":"http-connect","ip":"proxy.local","port":"3128"}}}"#,
    )
    .await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    let r = patch(&api, r#"{"network":{"proxy":{}}}"#).await;
    assert_eq!((r.status, r.text()), (200, "OK"));
    let r = api.get("/v1/device/host-config").await;
    assert_eq!(r.json()["network"]["proxy"], json!({}));
}
