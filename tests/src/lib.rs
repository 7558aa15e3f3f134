//! Shared helpers for the end-to-end tests: in-process gateways and agents on real
//! sockets, a real HTTP backend standing in for a device's web UI, real HTTP clients, and
//! the built binaries for process-level tests.
#![allow(unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway::{Gateway, ServeConfig};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Installs a tracing subscriber once (RUST_LOG controls it; quiet by default).
pub mod access;
pub mod browser;
pub mod cluster;
pub mod dashboard;
pub mod engine;
pub mod in_netns;
pub mod netns;
pub mod procs;
pub mod relay;
pub mod terminal;

pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A gateway running in this process on `127.0.0.1:0` ports.
pub struct TestGateway {
    pub http_addr: SocketAddr,
    pub tunnel_addr: SocketAddr,
    /// The tunnel over TCP (the same port number as `tunnel_addr` by default).
    pub tunnel_tcp_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub sessions: std::sync::Arc<gateway::sessions::Sessions>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// Short timeouts so failure paths are observable quickly in tests.
pub fn test_config(data_dir: PathBuf) -> ServeConfig {
    ServeConfig {
        data_dir,
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tunnel_listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        idle_timeout: Duration::from_secs(3),
        keep_alive: Duration::from_millis(500),
        // Generous: the whole suite shares two cores. Tests of the timeouts themselves
        // shorten them with `spawn_custom`.
        upstream_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(10),
        // api.rs probes every endpoint with a bogus token from one address; the back-off
        // itself is tested with its own thresholds (limits.rs).
        auth_failures_before_backoff: 1000,
        // Load tests open hundreds of connections from 127.0.0.1; the per-address caps
        // are tested with their own values (limits.rs).
        max_connections_per_ip: 100_000,
        api_max_connections_per_ip: 100_000,
        max_connections: Some(100_000),
        ..ServeConfig::default()
    }
}

impl TestGateway {
    pub async fn spawn() -> Self {
        Self::spawn_custom(|_| {}).await
    }

    /// Spawns with [`test_config`] adjusted by `f`, on a fresh temp data dir.
    pub async fn spawn_custom(f: impl FnOnce(&mut ServeConfig)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = test_config(tmp.path().to_path_buf());
        f(&mut cfg);
        let mut g = Self::spawn_with(cfg).await;
        g._tmp = Some(tmp);
        g
    }

    pub async fn spawn_with(cfg: ServeConfig) -> Self {
        init_tracing();
        let data_dir = cfg.data_dir.clone();
        // A restarted gateway may race the old socket's release: retry briefly.
        let mut attempt = 0;
        let gw = loop {
            match Gateway::bind(cfg.clone()).await {
                Ok(g) => break g,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "bind retry");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("gateway bind: {e}"),
            }
        };
        let shutdown = CancellationToken::new();
        let http_addr = gw.http_addr();
        let tunnel_addr = gw.tunnel_addr();
        let tunnel_tcp_addr = gw.tunnel_tcp_addr();
        let api_addr = gw.api_addr();
        let sessions = gw.sessions();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move { gw.run(token).await.unwrap() });
        Self {
            http_addr,
            tunnel_addr,
            tunnel_tcp_addr,
            api_addr,
            data_dir,
            sessions,
            shutdown,
            handle: Some(handle),
            _tmp: None,
        }
    }

    /// Registers a device and returns its agent configuration.
    pub async fn add_device(&self, public_url: bool) -> edge_agent::AgentConfig {
        gateway::add_device(
            &self.data_dir,
            None,
            None,
            public_url,
            &self.tunnel_addr.to_string(),
        )
        .await
        .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    /// Stops the gateway and waits for it to finish; keeps the data dir.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    /// Takes the temp dir out so a restarted gateway can reuse it.
    pub fn take_tmp(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An agent running in this process.
pub struct TestAgent {
    pub state: tokio::sync::watch::Receiver<edge_agent::ConnState>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

pub fn fast_agent_options(target: SocketAddr) -> edge_agent::AgentOptions {
    edge_agent::AgentOptions {
        target: target.to_string(),
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_millis(500),
        keep_alive: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(3),
        route: edge_agent::dial::Route {
            mode: agent_transport(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The transport in-process agents dial: `tcp` in the test binary `over_tcp` (which runs
/// the end-to-end families again over the TCP fallback), `auto` everywhere else.
pub fn agent_transport() -> edge_agent::dial::TransportMode {
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.starts_with("over_tcp") {
        edge_agent::dial::TransportMode::Tcp
    } else {
        edge_agent::dial::TransportMode::Auto
    }
}

/// Both transports, for tests that play one side of the protocol by hand on each.
pub const TRANSPORTS: [transport::TransportKind; 2] = [
    transport::TransportKind::Quic,
    transport::TransportKind::Tcp,
];

/// Dials a gateway's tunnel with `tls` (a device's or a provisioning client config) over
/// `kind`: `udp` for QUIC, `tcp` for TLS over TCP.
pub async fn dial_tunnel(
    kind: transport::TransportKind,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<transport::Connection, transport::ConnectError> {
    match kind {
        transport::TransportKind::Quic => {
            let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| transport::ConnectError::Tls(e.to_string()))?;
            let socket = transport::net::udp_socket("127.0.0.1:0".parse().unwrap())?;
            let ep = transport::quic::endpoint(socket, None, None)?;
            transport::quic::connect(
                &ep,
                quinn::ClientConfig::new(std::sync::Arc::new(quic)),
                udp,
                certs::TUNNEL_SERVER_NAME,
            )
            .await
        }
        transport::TransportKind::Tcp => {
            let stream = tokio::net::TcpStream::connect(tcp).await?;
            transport::tls_tcp::connect(
                stream,
                std::sync::Arc::new(tls),
                certs::TUNNEL_SERVER_NAME,
                &Default::default(),
            )
            .await
        }
    }
}

impl TestAgent {
    pub fn spawn(cfg: edge_agent::AgentConfig, target: SocketAddr) -> Self {
        Self::spawn_with(cfg, fast_agent_options(target))
    }

    pub fn spawn_with(cfg: edge_agent::AgentConfig, opts: edge_agent::AgentOptions) -> Self {
        init_tracing();
        let agent = edge_agent::Agent::new(cfg, opts).unwrap();
        let state = agent.state();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move { agent.run(token).await.unwrap() });
        Self {
            state,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Waits until the agent is connected (panics after 20 s).
    pub async fn connected(&mut self) {
        self.connected_within(Duration::from_secs(20)).await
    }

    /// Waits until the agent is connected (panics after `limit`).
    pub async fn connected_within(&mut self, limit: Duration) {
        tokio::time::timeout(
            limit,
            self.state
                .wait_for(|s| *s == edge_agent::ConnState::Connected),
        )
        .await
        .unwrap_or_else(|_| panic!("agent did not connect within {limit:?}"))
        .unwrap();
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A real HTTP server standing in for a device's web UI.
///
/// Routes: `/` (`hello from NAME`), `/echo` (streams the body back), `/count` (counts
/// body bytes), `/bytes/N` (streams N bytes), `/headers` (request headers, one per line),
/// `/slow` (answers after 30 s), `/ws` (WebSocket echo).
pub struct Backend {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Backend {
    pub async fn spawn(name: &str) -> Self {
        Self::spawn_at("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// [`Backend::spawn`] on `addr` (another address than loopback, for devices in a
    /// network namespace).
    pub async fn spawn_at(addr: SocketAddr, name: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(backend_route(req, &name).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, shutdown }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

async fn backend_route(mut req: Request<Incoming>, name: &str) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/" => Response::new(full(format!("hello from {name}"))),
        "/echo" => Response::new(req.into_body().map_err(|e| e.into()).boxed()),
        "/count" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(f) = body.frame().await {
                // A visitor that went away mid-upload ends the count.
                let Ok(f) = f else { break };
                if let Ok(d) = f.into_data() {
                    n += d.len() as u64;
                }
            }
            Response::new(full(n.to_string()))
        }
        "/headers" => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(s))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(full("finally"))
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .cloned()
                .unwrap_or_else(|| http::HeaderValue::from_static(""));
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        p if p.starts_with("/bytes/") => {
            let n: u64 = p["/bytes/".len()..].parse().unwrap();
            Response::new(generated_body(n))
        }
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// A streamed body of `n` bytes produced chunk by chunk (never held whole).
pub fn generated_body(n: u64) -> TestBody {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK as u64) as usize;
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..take))),
                left - take as u64,
            ))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A plain HTTP/1.1 client (its own connection pool).
pub fn http_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `method path` to the gateway with `Host: <uuid>.devices.localhost`.
pub async fn request(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
    gw: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: TestBody,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{gw}{path}"))
        .header("host", host)
        .body(body)
        .unwrap();
    let resp = client.request(req).await.expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

pub fn empty() -> TestBody {
    full("")
}

pub fn body(s: impl Into<Bytes>) -> TestBody {
    full(s)
}

pub fn device_host(uuid: &str) -> String {
    format!("{uuid}.devices.localhost")
}

/// Resident set size of this process in KiB.
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// Resident set size of process `pid` (or `self`) in KiB.
pub fn rss_kib_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Path of a workspace binary, built once per test process so process-level tests run
/// the code under test (a no-op when it is fresh).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Cargo sets these for this test binary; build scripts (ring's) watch some of them,
        // so passing them on would make this build and the next `cargo test` rebuild each
        // other's dependencies every time.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k == "CARGO_CRATE_NAME"
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "OUT_DIR"
            {
                cmd.env_remove(k.as_ref());
            }
        }
        let status = cmd
            .args([
                "build",
                "--quiet",
                "-p",
                "gateway",
                "-p",
                "edge-agent",
                "--bins",
                // `gateway demo` (processes.rs) and `gateway bundle create`
                // (releases.rs) are test subjects too.
                "--features",
                "gateway/demo,gateway/bundle-create",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} not found", path.display());
    if name == "edge-agent" && agent_transport() == edge_agent::dial::TransportMode::Tcp {
        return tcp_agent_wrapper(&path);
    }
    path
}

/// A script that runs `agent` with `EDGE_AGENT_TRANSPORT=tcp`, so that process-level
/// tests in the `over_tcp` binary run their agents on the TCP fallback too.
fn tcp_agent_wrapper(agent: &std::path::Path) -> PathBuf {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            use std::os::unix::fs::PermissionsExt;
            let path = agent.with_file_name("edge-agent-over-tcp");
            let tmp = agent.with_file_name(format!("edge-agent-over-tcp.{}", std::process::id()));
            let script = format!(
                "#!/bin/sh\nEDGE_AGENT_TRANSPORT=tcp exec '{}' \"$@\"\n",
                agent.display()
            );
            std::fs::write(&tmp, script).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        })
        .clone()
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A log line of service `service` (id 1, stdout) stamped now, as a device's container
/// would write it.
pub fn log_line(service: &str, message: String) -> edge_agent::logs::LogRecord {
    edge_agent::logs::LogRecord {
        timestamp_ms: edge_agent::logs::now_ms(),
        service: Some(service.into()),
        service_id: Some(1),
        is_stderr: false,
        is_system: false,
        message,
        source: None,
    }
}

/// A free local port (bound and released; good enough for tests that restart a server on
/// the same port).
pub fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port whose TCP twin is free too: the gateway's TCP tunnel listener takes
/// the same port number as its UDP one by default.
pub fn free_port_udp() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A management API client speaking raw HTTP, for asserting on statuses and bodies.
pub struct Api {
    addr: std::net::SocketAddr,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
}

impl Api {
    pub fn new(gw: &TestGateway) -> Self {
        Self::at(gw.api_addr)
    }

    /// A client of the management API at `addr` (a `gateway serve` process).
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: http_client(),
        }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (http::StatusCode, serde_json::Value) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = self
            .client
            .request(req.body(crate::body(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("non-JSON answer {bytes:?} to {method} {path}: {e}"))
        };
        (status, value)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (http::StatusCode, serde_json::Value) {
        match body {
            Some(b) => {
                self.raw(
                    method,
                    path,
                    token,
                    Some("application/json"),
                    b.to_string().into_bytes(),
                )
                .await
            }
            None => self.raw(method, path, token, None, Vec::new()).await,
        }
    }
}

/// Every stored log line of `uuid` for `service`, oldest first, through the query API
/// (page by page).
pub async fn all_log_lines(
    api: &Api,
    token: &str,
    uuid: &str,
    service: &str,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (st, v) = api
            .call(
                "GET",
                &format!("/v1/devices/{uuid}/logs?service={service}&after={after}&limit=5000"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let lines = v["lines"].as_array().unwrap().clone();
        let done = v["next_after"].is_null();
        if let Some(l) = lines.last() {
            after = l["id"].as_i64().unwrap();
        }
        out.extend(lines);
        if done {
            return out;
        }
    }
}

/// Creates viewer, operator and admin tokens offline; returns them in that order.
pub async fn tokens(gw: &TestGateway) -> (String, String, String) {
    use gateway::api::auth::Role;
    let (_, viewer) = gateway::create_token(&gw.data_dir, None, Role::Viewer, "v")
        .await
        .unwrap();
    let (_, operator) = gateway::create_token(&gw.data_dir, None, Role::Operator, "o")
        .await
        .unwrap();
    let (_, admin) = gateway::create_token(&gw.data_dir, None, Role::Admin, "a")
        .await
        .unwrap();
    (viewer, operator, admin)
}

/// A free port below the kernel's ephemeral range (which starts at 32768 by default), for
/// a server that must come back on the same port after a restart: a port picked by
/// binding to 0 is ephemeral, and a socket another test opens meanwhile may get it.
pub fn stable_port(udp: bool) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 5_000) as u16;
    loop {
        let p = start + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        // A UDP tunnel port needs its TCP twin as well (the TCP tunnel listener).
        let free = if udp {
            std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        } else {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        };
        if free {
            return p;
        }
    }
}
