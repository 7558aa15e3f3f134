//! Gateway nodes on one PostgreSQL database, as an operator runs them: `gateway serve
//! --database URL --node-id ID --peer-listen ADDR`, and the offline commands with the same
//! `--database`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, try_get, ServeProc};
use crate::{bin, eventually};

/// `gateway ARGS --data-dir DATA --database URL`, run to its end.
fn run_offline(data: &Path, database: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("gateway"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--database", database])
        .output()
        .unwrap()
}

/// `gateway ARGS --data-dir DATA --database URL`, which must succeed; its stdout.
pub fn offline(data: &Path, database: &str, args: &[&str]) -> String {
    let o = run_offline(data, database, args);
    assert!(o.status.success(), "gateway {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// `gateway ARGS --data-dir DATA --database URL`, which must fail; its stderr.
pub fn offline_fails(data: &Path, database: &str, args: &[&str]) -> String {
    let o = run_offline(data, database, args);
    assert!(!o.status.success(), "gateway {args:?} succeeded: {o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether a `serve` answers on its public port within 30 s (any answer: it is up).
pub async fn serving(http: u16) -> bool {
    eventually(Duration::from_secs(30), || {
        try_get(http, "nobody.devices.localhost")
    })
    .await
    .is_some()
}

/// `token create --role admin` and `device add --public-url` with `--database`, offline:
/// the admin token and the new device's uuid (its agent configuration written to `out`).
pub fn token_and_device(data: &Path, url: &str, tunnel: u16, out: &Path) -> (String, String) {
    let token = offline(data, url, &["token", "create", "--role", "admin"]);
    let gateway = format!("127.0.0.1:{tunnel}");
    let added = offline(
        data,
        url,
        &[
            "device",
            "add",
            "--public-url",
            "--gateway",
            &gateway,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let uuid = added.lines().last().unwrap().trim().to_string();
    assert_eq!(uuid.len(), 32, "{added}");
    (token.trim().to_string(), uuid)
}

/// Gives the node with data dir `to` the fleet CA of the node in `from` (the files,
/// as `docs/cluster.md` says an operator shares them).
pub fn share_ca(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// One node of the cluster on `url`: `serve` with its node id, peer address and, when
/// given, management API port.
pub fn node(
    data: &Path,
    url: &str,
    id: &str,
    ports: (u16, u16, u16),
    api: Option<u16>,
) -> ServeProc {
    let (http, tunnel, peer) = ports;
    let peer = format!("127.0.0.1:{peer}");
    let api = api.map(|p| format!("127.0.0.1:{p}"));
    let mut args = vec!["--database", url, "--node-id", id, "--peer-listen", &peer];
    if let Some(api) = &api {
        args.extend(["--api-listen", api.as_str()]);
    }
    procs::serve(data, http, tunnel, &args)
}

/// Two nodes on the database at `url`, with data dirs under `dir`: node a, holding the
/// CA and one registered device (its agent is the test's to start), and node b with an
/// API listener and a's CA. Both serve when this returns.
pub struct TwoNodes {
    pub a: ServeProc,
    pub b: ServeProc,
    /// Node b's management API port.
    pub api_b: u16,
    /// An admin token.
    pub token: String,
    pub uuid: String,
    /// The device's file, dialling node a.
    pub device_file: std::path::PathBuf,
}

/// See [`TwoNodes`].
pub async fn two_nodes(dir: &Path, url: &str) -> TwoNodes {
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));
    let (http_a, tunnel_a) = (crate::free_port_tcp(), crate::free_port_udp());
    let a = node(
        &data_a,
        url,
        "a",
        (http_a, tunnel_a, crate::free_port_udp()),
        None,
    );
    assert!(serving(http_a).await, "node a did not start");
    let device_file = dir.join("device").join("device.toml");
    std::fs::create_dir_all(device_file.parent().unwrap()).unwrap();
    let (token, uuid) = token_and_device(&data_a, url, tunnel_a, &device_file);
    share_ca(&data_a, &data_b);
    let (http_b, api_b) = (crate::free_port_tcp(), crate::free_port_tcp());
    let b = node(
        &data_b,
        url,
        "b",
        (http_b, crate::free_port_udp(), crate::free_port_udp()),
        Some(api_b),
    );
    assert!(serving(http_b).await, "node b did not start");
    TwoNodes {
        a,
        b,
        api_b,
        token,
        uuid,
        device_file,
    }
}

/// Runs `sql` on `url` with psql (Debian's `postgresql-client`, installed with the server).
pub fn psql(url: &str, sql: &str) {
    let o = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(o.status.success(), "psql {sql:?}: {o:?}");
}

/// Runs `sql` on `url` with psql; its one value.
pub fn psql_value(url: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-t", "-A", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(o.status.success(), "psql {sql:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// One node's place: data dir, id and ports (public HTTP, tunnel, peer link, API).
pub struct NodeSpec {
    pub data: std::path::PathBuf,
    pub id: String,
    pub http: u16,
    pub tunnel: u16,
    pub peer: u16,
    pub api: u16,
}

impl NodeSpec {
    /// Fresh ports for node `id`, its data dir under `dir`.
    pub fn new(dir: &Path, id: &str) -> Self {
        Self {
            data: dir.join(id),
            id: id.to_string(),
            http: crate::free_port_tcp(),
            tunnel: crate::free_port_udp(),
            peer: crate::free_port_udp(),
            api: crate::free_port_tcp(),
        }
    }

    /// `serve` of this node on the database at `url`.
    pub fn start(&self, url: &str) -> ServeProc {
        let ports = (self.http, self.tunnel, self.peer);
        node(&self.data, url, &self.id, ports, Some(self.api))
    }

    /// The node's management API.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.api))
    }
}

/// Starts `specs` on `url`, the first one first (it makes the fleet CA, which the others
/// then copy); waits until each one serves.
pub async fn start_nodes(specs: &[NodeSpec], urls: &[&str]) -> Vec<ServeProc> {
    let mut procs = vec![specs[0].start(urls[0])];
    assert!(
        serving(specs[0].http).await,
        "node {} did not start",
        specs[0].id
    );
    for (s, url) in specs.iter().zip(urls).skip(1) {
        share_ca(&specs[0].data, &s.data);
        procs.push(s.start(url));
    }
    for s in &specs[1..] {
        assert!(serving(s.http).await, "node {} did not start", s.id);
    }
    procs
}

/// `device add --public-url` with a gateway list (the tunnel ports of `tunnels`, in
/// order), its file written to `out`; the new uuid.
pub fn add_device(data: &Path, url: &str, tunnels: &[u16], out: &Path) -> String {
    let list: Vec<String> = tunnels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let added = offline(
        data,
        url,
        &[
            "device",
            "add",
            "--public-url",
            "--gateway",
            &list.join(","),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let uuid = added.lines().last().unwrap().trim().to_string();
    assert_eq!(uuid.len(), 32, "{added}");
    uuid
}

/// `url` with its `host:port` replaced by `127.0.0.1:port` (the database through a relay).
pub fn via_port(url: &str, port: u16) -> String {
    let (scheme_user, rest) = url.split_once('@').expect("postgres://user@host:port/db");
    let (_, db) = rest.split_once('/').expect("a database name");
    format!("{scheme_user}@127.0.0.1:{port}/{db}")
}

/// The `host:port` of the server in `url`.
pub fn server_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once('@').expect("user@").1;
    rest.split('/').next().unwrap().parse().expect("host:port")
}

/// Whether the device answers through `http` with 200 and a page naming `name`.
pub async fn serves(http: u16, host: &str, name: &str) -> bool {
    matches!(try_get(http, host).await,
        Some((s, body)) if s == http::StatusCode::OK
            && String::from_utf8_lossy(&body).contains(name))
}

/// Waits until every `(host, name)` answers with its own page through `http`, for at most
/// `limit` in all; the first that does not.
pub async fn all_served(
    devices: &[(String, String)],
    http: u16,
    limit: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    for (host, name) in devices {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ok = eventually(left, || async {
            serves(http, host, name).await.then_some(())
        })
        .await
        .is_some();
        if !ok {
            let last = try_get(http, host).await.map(|(s, _)| s);
            return Err(format!(
                "{host} ({name}) through port {http}: last answer {last:?}"
            ));
        }
    }
    Ok(())
}

/// How many devices' routes name node `id` (psql on `url`).
pub fn routed_to(url: &str, id: &str) -> usize {
    psql_value(
        url,
        &format!("SELECT count(*) FROM device_routes WHERE node = '{id}'"),
    )
    .parse()
    .unwrap()
}

/// Whether node `id`'s lease runs, by the database's clock.
pub fn lease_runs(url: &str, id: &str) -> bool {
    psql_value(
        url,
        &format!(
            "SELECT count(*) FROM nodes WHERE id = '{id}' AND lease_until > \
             CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        ),
    ) == "1"
}

/// A device of the cluster tests: a real `edge-agent run --engine none` process with a
/// data dir of its own, a host shell (`/bin/sh`, `DEVICE_NAME` in its environment) and a
/// blink LED file, serving a backend page that names it. Its log (info, on stdout) goes to
/// `agent.log` in its dir, where [`ClusterDevice::blinks`] counts the blinks it ran.
pub struct ClusterDevice {
    pub uuid: String,
    pub host: String,
    pub name: String,
    pub dir: std::path::PathBuf,
    pub backend: crate::Backend,
    pub agent: crate::Proc,
}

impl ClusterDevice {
    /// Adds device `name` (gateway list: `tunnels`, in order) through the node with data
    /// dir `data`, and starts its agent.
    pub async fn start(
        data: &Path,
        url: &str,
        tunnels: &[u16],
        dir: std::path::PathBuf,
        name: &str,
    ) -> Self {
        let out = dir.join("device.toml");
        let uuid = add_device(data, url, tunnels, &out);
        let backend = crate::Backend::spawn(name).await;
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let led = dir.join("led");
        let mut cmd = procs::agent_command(
            &out,
            backend.addr,
            &["--engine", "none", "--shell", "/bin/sh"],
        );
        cmd.args(["--led".as_ref(), led.as_os_str()])
            .env("RUST_LOG", "edge_agent=info")
            .env("NO_COLOR", "1")
            .env("DEVICE_NAME", name)
            .stdout(log);
        Self {
            host: crate::device_host(&uuid),
            uuid,
            name: name.to_string(),
            agent: crate::Proc::spawn(&mut cmd),
            backend,
            dir,
        }
    }

    /// How many blinks the agent ran (its "blink requested" log lines).
    pub fn blinks(&self) -> usize {
        std::fs::read_to_string(self.dir.join("agent.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("blink requested"))
            .count()
    }

    /// `(host, name)`, for [`all_served`].
    pub fn page(&self) -> (String, String) {
        (self.host.clone(), self.name.clone())
    }
}

/// Queues a blink for `uuid` through the API at `api` and waits (30 s at most) until it
/// has run; its final status.
pub async fn blink_through(api: std::net::SocketAddr, token: &str, uuid: &str) -> String {
    let path = format!("/v1/devices/{uuid}/actions");
    let body = serde_json::json!({"action": "blink"});
    let Some((s, v)) = procs::api_json(api, token, "POST", &path, Some(body)).await else {
        return format!("the API at {api} did not answer");
    };
    if s != http::StatusCode::ACCEPTED {
        return format!("queueing answered {s}: {v}");
    }
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let done = eventually(Duration::from_secs(30), || async {
        let (_, v) = procs::api_json(api, token, "GET", &format!("/v1/actions/{id}"), None).await?;
        let status = v["status"].as_str()?.to_string();
        matches!(status.as_str(), "succeeded" | "failed" | "expired").then_some(status)
    })
    .await;
    done.unwrap_or_else(|| format!("action {id} did not finish within 30 s"))
}

/// The stored log lines of `uuid` (up to 10,000, oldest first) through the API at `api`.
pub async fn device_logs(
    api: std::net::SocketAddr,
    token: &str,
    uuid: &str,
) -> Option<Vec<serde_json::Value>> {
    let path = format!("/v1/devices/{uuid}/logs?limit=10000");
    let (s, v) = procs::api_json(api, token, "GET", &path, None).await?;
    (s == http::StatusCode::OK).then(|| v["lines"].as_array().cloned().unwrap_or_default())
}

/// Opens the terminal WebSocket of `uuid` on the API at `api`, runs `echo` of the device's
/// `DEVICE_NAME` and a sum, and returns what came back (10 s at most).
pub async fn terminal_echo(api: std::net::SocketAddr, token: &str, uuid: &str) -> String {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{api}/v1/devices/{uuid}/terminal?cols=80&rows=24");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    );
    let mut ws = match connect.await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return format!("terminal refused: {e}"),
        Err(_) => return "terminal did not open within 10 s".into(),
    };
    crate::terminal::type_line(&mut ws, "echo \"on-$DEVICE_NAME-$((6*7))\"; exit").await;
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        while let Some(Ok(m)) = ws.next().await {
            match m {
                tokio_tungstenite::tungstenite::Message::Binary(b) => {
                    out.push_str(&String::from_utf8_lossy(&b));
                }
                tokio_tungstenite::tungstenite::Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    out
}
