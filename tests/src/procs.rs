//! The shipped binaries as processes: `gateway serve`, `gateway device add`, and a public
//! URL probed with a real HTTP client.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::StatusCode;

use crate::{bin, empty, eventually, http_client, Proc};

/// A running `gateway serve` and the ports it was given.
pub struct ServeProc {
    pub proc: Proc,
    pub http: u16,
    pub tunnel: u16,
}

/// `gateway serve` on loopback with the given public HTTP and tunnel ports, plus `extra`
/// flags (which replace the defaults they name).
pub fn serve(data: &Path, http: u16, tunnel: u16, extra: &[&str]) -> ServeProc {
    let proc = Proc::spawn(&mut serve_command(data, http, tunnel, extra));
    ServeProc { proc, http, tunnel }
}

/// The command [`serve`] runs, for a test that wants its output.
pub fn serve_command(data: &Path, http: u16, tunnel: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("gateway"));
    cmd.args(["serve", "--data-dir"]).arg(data);
    let defaults = [
        ("--domain", "devices.localhost".to_string()),
        ("--http-listen", format!("127.0.0.1:{http}")),
        ("--tunnel-listen", format!("127.0.0.1:{tunnel}")),
        ("--api-listen", "127.0.0.1:0".to_string()),
    ];
    // A flag given twice is an error: `extra` replaces the default.
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            cmd.args([flag, &value]);
        }
    }
    cmd.args(extra).env("RUST_LOG", "warn");
    cmd
}

/// Waits until `serve` has created its data dir (only `serve` creates one; offline
/// commands need it).
pub async fn wait_for_data_dir(data: &Path) {
    assert!(
        eventually(Duration::from_secs(20), || async {
            data.join("gateway.db").exists().then_some(())
        })
        .await
        .is_some(),
        "gateway serve did not create {}",
        data.display()
    );
}

/// GET / on the device through the gateway; `None` when the gateway is not reachable.
pub async fn try_get(http: u16, host: &str) -> Option<(StatusCode, bytes::Bytes)> {
    let req = http::Request::builder()
        .uri(format!("http://127.0.0.1:{http}/"))
        .header("host", host)
        .body(empty())
        .unwrap();
    send(req).await
}

/// Sends `req` and reads the whole answer; `None` when nothing answers within 5 s.
async fn send(req: http::Request<crate::TestBody>) -> Option<(StatusCode, bytes::Bytes)> {
    let resp = tokio::time::timeout(Duration::from_secs(5), http_client().request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    Some((status, body))
}

/// Polls the device's public URL until it answers `want`, for at most `limit`.
pub async fn wait_status(http: u16, host: &str, want: StatusCode, limit: Duration) -> bool {
    eventually(limit, || async {
        try_get(http, host)
            .await
            .filter(|(s, _)| *s == want)
            .map(|_| ())
    })
    .await
    .is_some()
}

/// `gateway device add --public-url` on `data`, writing the agent's config to `out`;
/// returns the new device's uuid.
pub fn device_add(data: &Path, tunnel: u16, out: &Path) -> String {
    let output = Command::new(bin("gateway"))
        .args(["device", "add", "--data-dir"])
        .arg(data)
        .args(["--public-url", "--gateway", &format!("127.0.0.1:{tunnel}")])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let uuid = stdout.lines().last().unwrap().trim().to_string();
    assert_eq!(uuid.len(), 32, "{stdout}");
    assert!(uuid
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    uuid
}

/// `edge-agent run` with the config `cfg`, serving `target` as the device's web UI.
pub fn agent(cfg: &Path, target: std::net::SocketAddr, extra: &[&str]) -> Proc {
    Proc::spawn(&mut agent_command(cfg, target, extra))
}

/// The command [`agent`] runs, for a test that wants its output.
pub fn agent_command(cfg: &Path, target: std::net::SocketAddr, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("edge-agent"));
    cmd.args(["run", "--local-api", "127.0.0.1:0", "--config"])
        .arg(cfg)
        .args(["--target", &target.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn");
    cmd
}

/// `gateway token create --role admin` on `data`: a bearer token for the API.
pub fn admin_token(data: &Path) -> String {
    let o = Command::new(bin("gateway"))
        .args(["token", "create", "--role", "admin", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A management API call with a bearer token; the JSON answer, or `None` when the
/// gateway does not answer.
pub async fn api_json(
    api: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Option<(StatusCode, serde_json::Value)> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{api}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => crate::body(b.to_string()),
            None => empty(),
        })
        .unwrap();
    let (status, bytes) = send(req).await?;
    Some((status, serde_json::from_slice(&bytes).unwrap_or_default()))
}

/// An agent process (`--engine none`) logging at info, its log lines (on stdout)
/// collected as they come.
pub fn logged_agent(
    cfg: &Path,
    target: std::net::SocketAddr,
) -> (Proc, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let mut cmd = agent_command(cfg, target, &["--engine", "none"]);
    cmd.env("RUST_LOG", "edge_agent=info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped());
    let mut proc = Proc::spawn(&mut cmd);
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = proc.0.stdout.take().unwrap();
    let sink = std::sync::Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    (proc, lines)
}
