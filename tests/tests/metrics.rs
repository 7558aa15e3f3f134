//! Prometheus metrics end to end: a real `gateway serve` process with `--metrics-listen`,
//! a real agent with a log spool, a real device web server. `/metrics` is scraped from
//! both listeners before and after public requests, queued actions, shipped log lines
//! and a refused device, and every scrape is read by a real Prometheus text parser: the
//! one of Python's `prometheus_client` (PyPI, `pip install prometheus_client`), run as
//! `python3 -c`. Without it the tests print `SKIPPED: …`; with `CI=true` they fail
//! instead, as the schemathesis test does.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::*;
use edge_agent::logs::LogPipeline;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Reads a scrape from stdin with `prometheus_client`'s parser and prints every sample
/// (`name{k="v",...}`, labels sorted) and every family's type as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = {}, {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    types[fam.name] = fam.type
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        samples["%s{%s}" % (s.name, labels)] = s.value
json.dump({"samples": samples, "types": types}, sys.stdout)
"#;

/// Whether `prometheus_client` imports. Panics under `CI=true` when it does not.
fn parser_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "Python's prometheus_client is not installed (pip install prometheus_client) and CI=true: /metrics must be parsed"
        );
    }
    eprintln!("SKIPPED: Python's prometheus_client is not installed (pip install prometheus_client); /metrics is not tested");
    false
}

/// One parsed scrape.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses `text` with the real parser (which fails on anything malformed).
    fn parse(text: &str) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the scrape: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let samples = v["samples"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect();
        let types = v["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        Self { samples, types }
    }

    /// The value of sample `key` (`name{labels}`); panics if the scrape lacks it.
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:#?}", self.samples.keys()))
    }
}

/// `GET http://addr/path` with an optional bearer token: status, content type, body.
async fn get(addr: &str, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = http::Request::builder().uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = http_client()
        .request(req.body(empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, ct, String::from_utf8(body.to_vec()).unwrap())
}

/// A JSON call on the management API (`api` is `host:port`), which must succeed.
async fn call(api: &str, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let addr = api.parse().expect("the API address");
    let (status, v) = e2e_tests::procs::api_json(addr, token, method, path, body)
        .await
        .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

/// Scrapes both listeners: the management API's `/metrics` (with `token`) and the
/// `--metrics-listen` one (none), checks the content type, and parses both.
async fn scrape(api: &str, metrics: &str, token: &str) -> (Scrape, Scrape) {
    let (s, ct, text) = get(api, "/metrics", Some(token)).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let from_api = Scrape::parse(&text);
    let (s, ct, text) = get(metrics, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    (from_api, Scrape::parse(&text))
}

/// Every stored log line of `uuid`, any service, through the query API.
async fn stored_lines(api: &str, token: &str, uuid: &str) -> usize {
    let (mut n, mut after) = (0, 0);
    loop {
        let v = call(
            api,
            "GET",
            &format!("/v1/devices/{uuid}/logs?after={after}&limit=5000"),
            token,
            None,
        )
        .await;
        let lines = v["lines"].as_array().unwrap();
        n += lines.len();
        if let Some(l) = lines.last() {
            after = l["id"].as_i64().unwrap();
        }
        if v["next_after"].is_null() {
            return n;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sessions_requests_actions_and_logs() {
    if !parser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let (http_port, tunnel_port, api_port, metrics_port) = (
        free_port_tcp(),
        free_port_udp(),
        free_port_tcp(),
        free_port_tcp(),
    );
    let (api, metrics) = (
        format!("127.0.0.1:{api_port}"),
        format!("127.0.0.1:{metrics_port}"),
    );
    let tunnel = format!("127.0.0.1:{tunnel_port}");
    let _gw = Proc::spawn(
        Command::new(bin("gateway"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--tunnel-listen", &tunnel])
            .args(["--api-listen", &api])
            .args(["--metrics-listen", &metrics])
            .env("RUST_LOG", "warn"),
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            let api_up = tokio::net::TcpStream::connect(&api).await.is_ok();
            let metrics_up = tokio::net::TcpStream::connect(&metrics).await.is_ok();
            (api_up && metrics_up).then_some(())
        })
        .await
        .is_some(),
        "gateway serve did not start"
    );
    use gateway::api::auth::Role;
    let (_, viewer) = gateway::create_token(&data, None, Role::Viewer, "v")
        .await
        .unwrap();
    let (_, admin) = gateway::create_token(&data, None, Role::Admin, "a")
        .await
        .unwrap();

    // The management listener wants a token; the metrics listener serves only /metrics.
    let (s, _, _) = get(&api, "/metrics", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = get(&api, "/metrics", Some("gw_bogus.token")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = get(&metrics, "/v1/devices", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A device with its web server, and an agent that ships logs.
    let backend = Backend::spawn("dev").await;
    let cfg = gateway::add_device(&data, None, None, true, &tunnel)
        .await
        .unwrap();
    let uuid = cfg.uuid.clone();
    let host = device_host(&uuid);
    let pipeline = LogPipeline::start(&dir.path().join("spool"), 64 << 20).unwrap();
    let mut opts = fast_agent_options(backend.addr);
    opts.logs = Some(pipeline.clone());
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let device = call(&api, "GET", &format!("/v1/devices/{uuid}"), &viewer, None).await;
    let transport = device["transport"].as_str().unwrap().to_string();
    let other = if transport == "quic" { "tcp" } else { "quic" };

    // The session counts once it is recorded (just after the welcome).
    let before = eventually(Duration::from_secs(10), || async {
        let (a, m) = scrape(&api, &metrics, &viewer).await;
        let key = format!("gateway_tunnel_handshakes_total{{transport=\"{transport}\"}}");
        (a.get(&key) == 1.0 && m.get(&key) == 1.0).then_some(a)
    })
    .await
    .expect("the session was not counted");
    let sessions =
        |s: &Scrape, t: &str| s.get(&format!("gateway_tunnel_sessions{{transport=\"{t}\"}}"));
    assert_eq!(sessions(&before, &transport), 1.0);
    assert_eq!(sessions(&before, other), 0.0);
    for (family, kind) in [
        ("gateway_tunnel_sessions", "gauge"),
        ("gateway_tunnel_handshakes", "counter"),
        ("gateway_tunnel_handshake_failures", "counter"),
        ("gateway_provisioning", "counter"),
        ("gateway_public_requests", "counter"),
        ("gateway_public_upstream_duration_seconds", "histogram"),
        ("gateway_public_bytes", "counter"),
        ("gateway_public_websocket_upgrades", "counter"),
        ("gateway_terminal_sessions", "counter"),
        ("gateway_terminal_sessions_open", "gauge"),
        ("gateway_log_lines_received", "counter"),
        ("gateway_log_lines_stored", "counter"),
        ("gateway_log_lines_pruned", "counter"),
        ("gateway_actions", "gauge"),
        ("gateway_action_queue_depth", "gauge"),
        ("gateway_store_query_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    // Public requests: three 200s and a POST of 10,000 bytes echoed back, two 404s from
    // the device, one 404 from the gateway (no such device: nothing forwarded).
    let c = http_client();
    for _ in 0..3 {
        let (s, _, _) = request(&c, http_port_addr(http_port), &host, "GET", "/", empty()).await;
        assert_eq!(s, StatusCode::OK);
    }
    let upload = "x".repeat(10_000);
    let (s, _, b) = request(
        &c,
        http_port_addr(http_port),
        &host,
        "POST",
        "/echo",
        body(upload.clone()),
    )
    .await;
    assert_eq!((s, b.len()), (StatusCode::OK, 10_000));
    for _ in 0..2 {
        let (s, _, _) = request(
            &c,
            http_port_addr(http_port),
            &host,
            "GET",
            "/nope",
            empty(),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let nobody = device_host("0123456789abcdef0123456789abcdef");
    let (s, _, _) = request(&c, http_port_addr(http_port), &nobody, "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A WebSocket through the public URL: a 101, then spliced.
    let tcp = tokio::net::TcpStream::connect(http_port_addr(http_port))
        .await
        .unwrap();
    let req = format!("ws://{host}/ws").into_client_request().unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("ping")).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "ping");
    ws.close(None).await.unwrap();

    // A terminal on the device: counted open while it is.
    let url = format!("ws://{api}/v1/devices/{uuid}/terminal?cols=80&rows=24");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let (mut term, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    term.send(Message::Binary(b"echo metrics-$((6*7))\r".to_vec().into()))
        .await
        .unwrap();
    e2e_tests::terminal::read_until(&mut term, Duration::from_secs(20), |s| {
        s.output.contains("metrics-42")
    })
    .await;
    let (open, _) = scrape(&api, &metrics, &viewer).await;
    assert_eq!(open.get("gateway_terminal_sessions_total{}"), 1.0);
    assert_eq!(open.get("gateway_terminal_sessions_open{}"), 1.0);
    term.send(Message::Binary(b"exit\r".to_vec().into()))
        .await
        .unwrap();
    e2e_tests::terminal::read_until(&mut term, Duration::from_secs(20), |s| s.close.is_some())
        .await;

    // Actions: one for the connected device, one queued for a device that is offline.
    let offline = gateway::add_device(&data, None, None, false, &tunnel)
        .await
        .unwrap();
    for (device, action) in [(&uuid, "blink"), (&offline.uuid, "reboot")] {
        call(
            &api,
            "POST",
            &format!("/v1/devices/{device}/actions"),
            &admin,
            Some(json!({"action": action})),
        )
        .await;
    }

    // A deleted device's agent is refused at its handshake.
    let deleted = gateway::add_device(&data, None, None, false, &tunnel)
        .await
        .unwrap();
    call(
        &api,
        "DELETE",
        &format!("/v1/devices/{}", deleted.uuid),
        &admin,
        None,
    )
    .await;
    let mut refused = TestAgent::spawn(deleted, backend.addr);

    // Log lines.
    let sink = pipeline.sink();
    for i in 1..=25 {
        sink.push(log_line("printer", format!("line {i}")));
    }

    // Every count moves by what happened. The log counter is compared with what the store
    // holds (the agent ships lines of its own, "connected" and the like, beside ours).
    let (after, after_m) = eventually(Duration::from_secs(20), || async {
        let (a, m) = scrape(&api, &metrics, &viewer).await;
        let stored = a.get("gateway_log_lines_stored_total{}");
        let revoked = a.get("gateway_tunnel_handshake_failures_total{reason=\"revoked\"}");
        let done = stored >= before.get("gateway_log_lines_stored_total{}") + 25.0
            && stored == stored_lines(&api, &viewer, &uuid).await as f64
            && revoked >= 1.0
            && a.get("gateway_terminal_sessions_open{}") == 0.0;
        done.then_some((a, m))
    })
    .await
    .expect("the log lines and the refused handshake were not counted");
    refused.stop().await;
    let delta = |key: &str| after.get(key) - before.get(key);
    let class = |c: &str| format!("gateway_public_requests_total{{class=\"{c}\"}}");
    assert_eq!(delta(&class("2xx")), 4.0);
    assert_eq!(delta(&class("4xx")), 3.0);
    assert_eq!(delta(&class("1xx")), 1.0);
    for c in ["3xx", "5xx", "other"] {
        assert_eq!(delta(&class(c)), 0.0, "{c}");
    }
    // Seven were forwarded and answered by the device (the 101 included).
    assert_eq!(
        delta("gateway_public_upstream_duration_seconds_count{}"),
        7.0
    );
    assert_eq!(
        delta("gateway_public_upstream_duration_seconds_bucket{le=\"+Inf\"}"),
        7.0
    );
    assert_eq!(delta("gateway_public_websocket_upgrades_total{}"), 1.0);
    assert_eq!(after.get("gateway_terminal_sessions_total{}"), 1.0);
    assert!(delta("gateway_public_upstream_duration_seconds_sum{}") > 0.0);
    // Actions, log batches, API reads and the scrapes themselves ran store statements.
    assert!(delta("gateway_store_query_duration_seconds_count{}") > 10.0);
    assert!(delta("gateway_store_query_duration_seconds_sum{}") > 0.0);
    assert!(delta("gateway_public_bytes_total{direction=\"to_device\"}") >= 10_000.0);
    assert!(delta("gateway_public_bytes_total{direction=\"from_device\"}") >= 10_000.0);
    // Still the one session.
    assert_eq!(sessions(&after, &transport), 1.0);
    assert_eq!(sessions(&after, other), 0.0);
    assert_eq!(
        after.get(&format!(
            "gateway_tunnel_handshakes_total{{transport=\"{transport}\"}}"
        )),
        1.0
    );
    // Two actions in all; the offline device's waits in the queue.
    let actions: f64 = ["pending", "delivered", "succeeded", "failed", "expired"]
        .iter()
        .map(|s| after.get(&format!("gateway_actions{{status=\"{s}\"}}")))
        .sum();
    assert_eq!(actions, 2.0);
    let pending = after.get("gateway_actions{status=\"pending\"}");
    assert!(pending >= 1.0);
    assert_eq!(after.get("gateway_action_queue_depth{}"), pending);
    // Lines: ours arrived, nothing was pruned.
    assert!(delta("gateway_log_lines_stored_total{}") >= 25.0);
    assert!(
        after.get("gateway_log_lines_received_total{}")
            >= after.get("gateway_log_lines_stored_total{}")
    );
    assert_eq!(after.get("gateway_log_lines_pruned_total{}"), 0.0);
    // The metrics listener serves the same series.
    assert_eq!(
        after.samples.keys().collect::<Vec<_>>(),
        after_m.samples.keys().collect::<Vec<_>>()
    );
    assert_eq!(after_m.get(&class("2xx")), after.get(&class("2xx")));

    agent.stop().await;
}

fn http_port_addr(port: u16) -> std::net::SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// The agent's own `/metrics` on its local API (`edge-agent run --metrics`), scraped with
/// its API key and read by the real parser: the session and its transport, the log spool,
/// and a reconnect after the gateway restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_own_metrics_with_its_api_key() {
    if !parser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let (http, tunnel) = (free_port_tcp(), free_port_udp());
    let gw = e2e_tests::procs::serve(&data, http, tunnel, &[]);
    e2e_tests::procs::wait_for_data_dir(&data).await;
    let out = dir.path().join("device").join("device.toml");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    e2e_tests::procs::device_add(&data, tunnel, &out);
    let local = format!("127.0.0.1:{}", free_port_tcp());
    let _agent = Proc::spawn(
        Command::new(bin("edge-agent"))
            .args(["run", "--config", out.to_str().unwrap()])
            .args(["--local-api", &local, "--metrics", "--engine", "none"])
            .args(["--target", "127.0.0.1:9"])
            .env("RUST_LOG", "warn"),
    );
    let listening = eventually(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&local).await.ok()
    })
    .await;
    assert!(listening.is_some(), "the agent's local API never listened");
    // Without the key: refused, as every endpoint but /ping.
    let (s, _, _) = get(&local, "/metrics", None).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "/metrics answered without the API key"
    );
    let key = Command::new(bin("edge-agent"))
        .args(["api-key", "--config", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(key.status.success(), "{key:?}");
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let scrape = || {
        let (local, key) = (local.clone(), key.clone());
        async move {
            let (s, ct, body) = get(&local, "/metrics", Some(&key)).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
            Scrape::parse(&body)
        }
    };
    let connected = eventually(Duration::from_secs(30), || async {
        let m = scrape().await;
        (m.get(r#"edge_agent_connected{transport="quic"}"#) == 1.0).then_some(m)
    })
    .await
    .expect("the agent's metrics never showed its QUIC session");
    assert_eq!(connected.types["edge_agent_connects"], "counter");
    assert_eq!(connected.get("edge_agent_connects_total{}"), 1.0);
    assert_eq!(
        connected.get(r#"edge_agent_connected{transport="tcp"}"#),
        0.0
    );
    // Its own "Connected to the gateway" line is in the spool.
    assert!(connected.get("edge_agent_log_lines_total{}") >= 1.0);
    for series in [
        "edge_agent_log_spool_bytes{}",
        "edge_agent_log_spool_unacked_lines{}",
        "edge_agent_log_lines_dropped_total{}",
    ] {
        connected.get(series);
    }
    // No reconciler runs (--engine none): no reconciler series.
    assert!(
        !connected.types.contains_key("edge_agent_reconciler_passes"),
        "{:?}",
        connected.types
    );

    // The gateway goes away: not connected; back on the same ports: a second session.
    drop(gw);
    let gone = eventually(Duration::from_secs(30), || async {
        let m = scrape().await;
        (m.get(r#"edge_agent_connected{transport="quic"}"#) == 0.0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the agent's metrics still show a session");
    let _gw = e2e_tests::procs::serve(&data, http, tunnel, &[]);
    let back = eventually(Duration::from_secs(60), || async {
        let m = scrape().await;
        (m.get("edge_agent_connects_total{}") >= 2.0
            && m.get(r#"edge_agent_connected{transport="quic"}"#) == 1.0)
            .then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "the reconnect is not counted: {:?}",
        scrape().await.samples
    );
}
