//! The shipped binaries inside network namespaces ([`crate::netns`]): `gateway serve` on
//! a namespace's own address, `edge-agent run` in another, and the offline commands on
//! the host.
//!
//! Ports are fixed ([`HTTP`], [`TUNNEL`], [`API`], [`PEER`]): each namespace has an
//! address of its own that nothing else on the machine binds, so a fixed port cannot
//! clash, and a restarted node comes back on the same address and ports.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::Ns;
use crate::{bin, eventually, Proc};

/// Public HTTP port of a gateway in a namespace.
pub const HTTP: u16 = 8080;
/// Tunnel port (UDP for QUIC, TCP for the fallback).
pub const TUNNEL: u16 = 4433;
/// Management API port.
pub const API: u16 = 8081;
/// Peer-link port of a cluster node (UDP).
pub const PEER: u16 = 7443;

/// `gateway serve` in `ns` on its address (public HTTP, tunnel, API), with data dir
/// `data` and `extra` flags; its log (warnings) goes to `data/../<ns>.log`.
pub fn serve(ns: &Ns, data: &Path, extra: &[&str]) -> Proc {
    let mut cmd = ns.command(bin("gateway"));
    cmd.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--domain", "devices.localhost"])
        .args(["--http-listen", &ns.at(HTTP).to_string()])
        .args(["--tunnel-listen", &ns.at(TUNNEL).to_string()])
        .args(["--api-listen", &ns.at(API).to_string()])
        .args(extra)
        .env("RUST_LOG", "warn");
    Proc::spawn(&mut cmd)
}

/// Whether the gateway in `ns` answers on its public port within `limit` (any answer).
pub async fn serving(ns: &Ns, limit: Duration) -> bool {
    let addr = ns.at(HTTP);
    eventually(limit, || async {
        get(addr, "nobody.devices.localhost").await.map(|_| ())
    })
    .await
    .is_some()
}

/// GET / for `host` through the gateway's public port at `addr`: status and body, or
/// `None` when nothing answers within 5 s.
pub async fn get(addr: SocketAddr, host: &str) -> Option<(http::StatusCode, bytes::Bytes)> {
    let req = http::Request::builder()
        .uri(format!("http://{addr}/"))
        .header("host", host)
        .body(crate::empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), crate::http_client().request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status();
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .ok()?
    .ok()?
    .to_bytes();
    Some((status, body))
}

/// `gateway device add --public-url --gateway LIST --out OUT` on the host (with
/// `--database URL` when given); the new uuid.
pub fn device_add(
    data: &Path,
    database: Option<&str>,
    gateways: &[SocketAddr],
    out: &Path,
) -> String {
    let list: Vec<String> = gateways.iter().map(ToString::to_string).collect();
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut cmd = Command::new(bin("gateway"));
    cmd.args(["device", "add", "--data-dir"])
        .arg(data)
        .args(["--public-url", "--gateway", &list.join(",")])
        .arg("--out")
        .arg(out);
    if let Some(url) = database {
        cmd.args(["--database", url]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "device add: {o:?}");
    let stdout = String::from_utf8(o.stdout).unwrap();
    let uuid = stdout.lines().last().unwrap_or_default().trim().to_string();
    assert_eq!(uuid.len(), 32, "{stdout}");
    uuid
}

/// `edge-agent run --engine none` in `ns` with the device file `cfg`, serving `target`,
/// plus `extra` flags; its log (info) goes to `log`.
pub fn agent(ns: &Ns, cfg: &Path, target: SocketAddr, extra: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = ns.command(bin("edge-agent"));
    cmd.args([
        "run",
        "--local-api",
        "127.0.0.1:0",
        "--engine",
        "none",
        "--config",
    ])
    .arg(cfg)
    .args(["--target", &target.to_string()])
    .args(extra)
    .env("RUST_LOG", "edge_agent=info")
    .env("NO_COLOR", "1")
    .stdout(log)
    .stderr(Stdio::null());
    Proc::spawn(&mut cmd)
}

/// How many times the agent that logs to `log` connected ("connected" lines).
pub fn connects(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" connected") && l.contains("gateway="))
        .count()
}

/// A TCP forwarder in this process from `listen` to `to`: how a process in a namespace
/// reaches a server that listens on the host's loopback only (the tests' PostgreSQL).
/// Stops accepting when dropped.
pub struct TcpForward {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TcpForward {
    pub async fn start(listen: SocketAddr, to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for TcpForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
