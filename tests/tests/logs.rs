//! Device logs end to end: a real agent spools numbered lines, ships them over the real
//! tunnel, the gateway stores them in SQLite; outages, restarts and a full spool lose and
//! duplicate nothing; queries, live tails (SSE, WebSocket) and the CLI see them.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::engine::{build_test_images, engine_available, Container};
use e2e_tests::relay::UdpRelay;
use e2e_tests::*;
use edge_agent::logs::{LogPipeline, LogSink};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;

/// An agent with a log spool in `dir`, dialling `gateway` (the tunnel or a relay).
fn agent_with_logs(
    mut cfg: edge_agent::AgentConfig,
    gateway: std::net::SocketAddr,
    dir: &std::path::Path,
    spool_bytes: u64,
) -> (TestAgent, LogPipeline) {
    cfg.gateway = gateway.to_string();
    let pipeline = LogPipeline::start(&dir.join("logs"), spool_bytes).unwrap();
    let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
    opts.logs = Some(pipeline.clone());
    (TestAgent::spawn_with(cfg, opts), pipeline)
}

/// Every stored line of `uuid` for `service`, oldest first, through the query API.
async fn all_lines(api: &Api, token: &str, uuid: &str, service: &str) -> Vec<Value> {
    all_log_lines(api, token, uuid, service).await
}

/// Asserts the messages are exactly `line 1` .. `line n`, once each, in order.
fn assert_exactly_once_in_order(lines: &[Value], n: usize) {
    let msgs: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let mut seen = BTreeMap::new();
    for m in &msgs {
        *seen.entry(*m).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "duplicated lines: {dups:?}");
    let expected: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !seen.contains_key(e.as_str()))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} lines missing, e.g. {missing:?}",
        n - msgs.len().min(n)
    );
    assert_eq!(msgs, expected, "lines out of order");
}

async fn wait_for_count(api: &Api, token: &str, uuid: &str, service: &str, n: usize) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..600 {
        last = all_lines(api, token, uuid, service).await;
        if last.len() >= n {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("only {} of {n} lines arrived", last.len());
}

/// Produces `line i` every `every`, from `from` up to `to`.
fn produce(sink: LogSink, from: usize, to: usize, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in from..=to {
            sink.push(log_line("printer", format!("line {i}")));
            tokio::time::sleep(every).await;
        }
    })
}

#[tokio::test]
async fn a_30s_tunnel_cut_loses_and_duplicates_nothing() {
    let gw = TestGateway::spawn().await;
    let (viewer, _, _) = tokens(&gw).await;
    let api = Api::new(&gw);
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let relay = UdpRelay::start(gw.tunnel_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, pipeline) = agent_with_logs(cfg, relay.addr, dir.path(), 64 << 20);
    agent.connected().await;

    // 100 lines a second throughout: before, during and after a 30 s outage.
    let producer = produce(pipeline.sink(), 1, 4000, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.set_cut(true);
    // The agent notices (idle timeout 3 s) and keeps spooling.
    tokio::time::timeout(
        Duration::from_secs(20),
        agent
            .state
            .wait_for(|s| !matches!(s, edge_agent::ConnState::Connected)),
    )
    .await
    .expect("agent never noticed the cut")
    .unwrap();
    let during = all_lines(&api, &viewer, &uuid, "printer").await.len();
    tokio::time::sleep(Duration::from_secs(27)).await;
    let still = all_lines(&api, &viewer, &uuid, "printer").await.len();
    assert_eq!(during, still, "nothing can arrive while the tunnel is cut");
    assert!(
        pipeline.stats().last_seq > pipeline.stats().acked,
        "lines wait in the spool"
    );
    relay.set_cut(false);
    producer.await.unwrap();

    let lines = wait_for_count(&api, &viewer, &uuid, "printer", 4000).await;
    assert_exactly_once_in_order(&lines, 4000);
    // Sequence numbers are strictly increasing too.
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // The agent's own events are there as system lines.
    let (_, sys) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/logs?system=true"),
            Some(&viewer),
            None,
        )
        .await;
    let sys: Vec<&str> = sys["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        sys.iter()
            .any(|m| m.starts_with("Connection to the gateway lost")),
        "{sys:?}"
    );
    assert!(
        sys.iter()
            .filter(|m| m.starts_with("Connected to the gateway"))
            .count()
            >= 2,
        "{sys:?}"
    );
    // Fully acknowledged: the spool holds nothing it still needs.
    eventually(Duration::from_secs(10), || async {
        let s = pipeline.stats();
        (s.acked == s.last_seq).then_some(())
    })
    .await
    .expect("the agent never saw every line acknowledged");
    agent.stop().await;
}

#[tokio::test]
async fn a_gateway_restart_loses_nothing_and_logs_f_follows_across_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = test_config(tmp.path().to_path_buf());
    // Fixed ports, so the agent and the CLI find the restarted gateway where it was.
    cfg.tunnel_listen = format!("127.0.0.1:{}", stable_port(true)).parse().unwrap();
    cfg.api_listen = format!("127.0.0.1:{}", stable_port(false)).parse().unwrap();
    let mut gw = TestGateway::spawn_with(cfg.clone()).await;
    let (viewer, _, _) = tokens(&gw).await;
    let dev = gw.add_device(false).await;
    let uuid = dev.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, pipeline) = agent_with_logs(dev, gw.tunnel_addr, dir.path(), 64 << 20);
    agent.connected().await;

    // The operator follows the device's logs with the real CLI.
    let mut cli = std::process::Command::new(bin("gateway"));
    cli.args(["logs", &uuid, "-f", "--service", "printer", "--tail", "0"])
        .env("GATEWAY_API", format!("http://{}", gw.api_addr))
        .env("GATEWAY_TOKEN", &viewer)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cli = Proc::spawn(&mut cli);
    let stdout = cli.0.stdout.take().unwrap();
    let printed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let printed = printed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                printed.lock().unwrap().push(l);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let producer = produce(pipeline.sink(), 1, 1500, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A stopped gateway holds none of its sockets, though its session registry (`gw`)
    // lives on: the next one binds the same ports at once.
    let stopping = Instant::now();
    gw.stop().await;
    eprintln!("gateway stopped in {:?}", stopping.elapsed());
    let udp = tokio::net::UdpSocket::bind(cfg.tunnel_listen).await;
    let api = tokio::net::TcpListener::bind(cfg.api_listen).await;
    let tcp = tokio::net::TcpListener::bind(cfg.tunnel_listen).await;
    assert!(
        udp.is_ok() && api.is_ok() && tcp.is_ok(),
        "sockets still bound after stop(): udp {udp:?}, api {api:?}, tunnel tcp {tcp:?}"
    );
    drop((udp, api, tcp));
    let gw2 = TestGateway::spawn_with(cfg).await;
    drop(gw);
    let gw = gw2;
    producer.await.unwrap();

    let api = Api::new(&gw);
    let lines = wait_for_count(&api, &viewer, &uuid, "printer", 1500).await;
    assert_exactly_once_in_order(&lines, 1500);

    // The CLI printed every line once, in order, across the restart.
    let got = eventually(Duration::from_secs(30), || {
        let printed = printed.clone();
        async move {
            let p = printed.lock().unwrap();
            (p.len() >= 1500).then(|| p.clone())
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the CLI printed only {} lines",
            printed.lock().unwrap().len()
        )
    });
    let msgs: Vec<String> = got
        .iter()
        .map(|l| l.split("] ").nth(1).unwrap_or(l).trim().to_string())
        .collect();
    let expected: Vec<String> = (1..=1500).map(|i| format!("line {i}")).collect();
    assert_eq!(msgs, expected);
    drop(cli);
    agent.stop().await;
}

#[tokio::test]
async fn a_full_spool_drops_the_oldest_and_says_how_many() {
    let gw = TestGateway::spawn().await;
    let (viewer, _, _) = tokens(&gw).await;
    let api = Api::new(&gw);
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let relay = UdpRelay::start(gw.tunnel_addr).await;
    relay.set_cut(true);
    let dir = tempfile::tempdir().unwrap();
    // The smallest spool (two 16 KiB segments); the device is offline from the start.
    let (mut agent, pipeline) = agent_with_logs(cfg, relay.addr, dir.path(), 1);
    let sink = pipeline.sink();
    let pad = "x".repeat(100);
    for i in 1..=3000 {
        sink.push(log_line("printer", format!("line {i} {pad}")));
    }
    eventually(Duration::from_secs(10), || async {
        (pipeline.stats().last_seq >= 3000).then_some(())
    })
    .await
    .unwrap();
    let suppressed = pipeline.stats().suppressed_total;
    assert!(suppressed > 0);
    relay.set_cut(false);
    agent.connected().await;

    let kept = 3000 - suppressed as usize;
    let lines = wait_for_count(&api, &viewer, &uuid, "printer", kept).await;
    assert_eq!(lines.len(), kept);
    // The newest lines survive, in order; the oldest are the ones that went.
    let last = lines.last().unwrap()["message"].as_str().unwrap();
    assert!(last.starts_with("line 3000 "), "{last}");
    let first = lines[0]["message"].as_str().unwrap();
    assert_eq!(first, format!("line {} {pad}", suppressed + 1));
    // And the device said how many it dropped.
    let (_, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/logs?q=suppressed"),
            Some(&viewer),
            None,
        )
        .await;
    let total: u64 = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let m = l["message"].as_str().unwrap();
            assert!(l["isSystem"] == true, "{l}");
            m.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(total, suppressed);
    agent.stop().await;
}

#[tokio::test]
async fn retention_prunes_old_lines_and_caps_each_device() {
    let gw = TestGateway::spawn_custom(|c| {
        c.log_retention = Duration::from_secs(3600);
        c.log_max_lines_per_device = 100;
        c.log_prune_interval = Duration::from_millis(200);
    })
    .await;
    let (viewer, _, _) = tokens(&gw).await;
    let api = Api::new(&gw);
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, pipeline) = agent_with_logs(cfg, gw.tunnel_addr, dir.path(), 64 << 20);
    agent.connected().await;
    let sink = pipeline.sink();
    // Ten lines from two hours ago, then 150 fresh ones.
    for i in 1..=10 {
        let mut l = log_line("old", format!("old {i}"));
        l.timestamp_ms -= 2 * 3600 * 1000;
        sink.push(l);
    }
    for i in 1..=150 {
        sink.push(log_line("printer", format!("line {i}")));
    }
    let v = eventually(Duration::from_secs(20), || async {
        let (_, v) = api
            .call(
                "GET",
                &format!("/v1/devices/{uuid}/logs?limit=1000"),
                Some(&viewer),
                None,
            )
            .await;
        let lines = v["lines"].as_array().unwrap().clone();
        let printer = lines
            .iter()
            .filter(|l| l["serviceName"] == "printer")
            .count();
        let old = lines.iter().filter(|l| l["serviceName"] == "old").count();
        (printer > 0 && old == 0 && lines.len() <= 100).then_some(lines)
    })
    .await
    .expect("old lines were not pruned or the cap not applied");
    // The newest survive the cap.
    assert_eq!(v.last().unwrap()["message"], "line 150");
    agent.stop().await;
}

#[tokio::test]
async fn queries_filter_and_export_ndjson_and_tails_see_new_lines_within_a_second() {
    let gw = TestGateway::spawn().await;
    let (viewer, _, _) = tokens(&gw).await;
    let api = Api::new(&gw);
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, pipeline) = agent_with_logs(cfg, gw.tunnel_addr, dir.path(), 64 << 20);
    agent.connected().await;
    let sink = pipeline.sink();
    for i in 1..=20 {
        let mut l = log_line(if i % 2 == 0 { "web" } else { "db" }, format!("msg {i}"));
        l.is_stderr = i % 5 == 0;
        sink.push(l);
    }
    wait_for_count(&api, &viewer, &uuid, "web", 10).await;

    // Filters: service, stderr, text, tail.
    let get = |q: String| {
        let api = &api;
        let viewer = &viewer;
        let uuid = &uuid;
        async move {
            let (st, v) = api
                .call(
                    "GET",
                    &format!("/v1/devices/{uuid}/logs?{q}"),
                    Some(viewer),
                    None,
                )
                .await;
            assert_eq!(st, 200, "{v}");
            v["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["message"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        get("service=db&stderr=true".into()).await,
        ["msg 5", "msg 15"]
    );
    assert_eq!(
        get("service=web&q=MSG%201".into()).await,
        ["msg 10", "msg 12", "msg 14", "msg 16", "msg 18"]
    );
    assert_eq!(get("service=web&tail=2".into()).await, ["msg 18", "msg 20"]);
    assert!(get(format!(
        "service=web&since={}",
        edge_agent::logs::now_ms() + 60_000
    ))
    .await
    .is_empty());
    assert_eq!(get("service=web&since=1h".into()).await.len(), 10);
    // balena's field names.
    let (_, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/logs?service=db&tail=1"),
            Some(&viewer),
            None,
        )
        .await;
    let l = &v["lines"][0];
    for k in [
        "message",
        "timestamp",
        "isStdErr",
        "isSystem",
        "serviceName",
        "serviceId",
        "seq",
        "id",
    ] {
        assert!(!l[k].is_null(), "missing {k} in {l}");
    }
    // Bad input: a clear 400, unknown device 404, no token 401.
    let (st, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/logs?since=yesterday"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("since"),
        "{v}"
    );
    let (st, _) = api
        .call(
            "GET",
            &format!("/v1/devices/{}/logs", "0".repeat(32)),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = api
        .call("GET", &format!("/v1/devices/{uuid}/logs"), None, None)
        .await;
    assert_eq!(st, 401);

    // NDJSON export: every line, one JSON object per line.
    let client = http_client();
    let req = http::Request::get(format!(
        "http://{}/v1/devices/{uuid}/logs/export?service=web",
        gw.api_addr
    ))
    .header("authorization", format!("Bearer {viewer}"))
    .body(empty())
    .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let rows: Vec<Value> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 10);

    // Live tail over SSE: a new line arrives within a second (best of three tries, so a
    // momentarily busy machine does not decide the result).
    let req = http::Request::get(format!(
        "http://{}/v1/devices/{uuid}/logs/stream?service=web",
        gw.api_addr
    ))
    .header("authorization", format!("Bearer {viewer}"))
    .header("accept", "text/event-stream")
    .body(empty())
    .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    // And over WebSocket.
    let mut ws_req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/v1/devices/{uuid}/logs/ws?service=web",
            gw.api_addr
        ))
        .unwrap();
    ws_req
        .headers_mut()
        .insert("authorization", format!("Bearer {viewer}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut best = Duration::MAX;
    for attempt in 0..3 {
        let msg = format!("live {attempt}");
        let t0 = Instant::now();
        sink.push(log_line("web", msg.clone()));
        let mut buf = String::new();
        let sse_latency = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(chunk) = body.next().await {
                buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
                if buf.contains(&msg) {
                    return t0.elapsed();
                }
            }
            panic!("SSE stream ended");
        })
        .await
        .expect("the SSE tail never saw the new line");
        let ws_msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the WebSocket tail never saw the new line")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(ws_msg.to_text().unwrap()).unwrap();
        assert_eq!(v["message"], msg.as_str());
        best = best.min(sse_latency);
    }
    assert!(
        best < Duration::from_secs(1),
        "best live-tail latency {best:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn container_output_is_collected_once_across_an_agent_restart() {
    if !engine_available("container log collection") {
        return;
    }
    build_test_images();
    let gw = TestGateway::spawn().await;
    let (viewer, _, _) = tokens(&gw).await;
    let api = Api::new(&gw);
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    // A managed service printing numbered lines, 20 a second.
    let name = format!("edge-logs-test-{}", &uuid[..12]);
    let _container = Container::run(&[
        "--name",
        &name,
        "--label",
        "io.edge.managed=1",
        "--label",
        "io.edge.service-name=printer",
        "--label",
        "io.edge.service-id=7",
        "-e",
        "PRINT_INTERVAL_MS=50",
        "edge-test/printer:v1",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let run_agent = |cfg: edge_agent::AgentConfig| {
        let (agent, pipeline) = agent_with_logs(cfg.clone(), gw.tunnel_addr, dir.path(), 64 << 20);
        let collector = tokio::spawn(edge_agent::logs::engine::collect(
            "unix:///var/run/docker.sock".into(),
            pipeline.clone(),
        ));
        (agent, pipeline, collector)
    };
    let (mut agent, _p, collector) = run_agent(cfg.clone());
    agent.connected().await;
    wait_for_count(&api, &viewer, &uuid, "printer", 30).await;
    // The agent goes away (its spool stays) while the service keeps printing.
    collector.abort();
    agent.stop().await;
    drop(_p);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut agent, _p, collector) = run_agent(cfg);
    agent.connected().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = all_lines(&api, &viewer, &uuid, "printer").await;
    let nums: Vec<u64> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["serviceId"], 7);
            l["message"]
                .as_str()
                .unwrap()
                .strip_prefix("line ")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    // Every line the container printed so far, once, in order, none missing in between.
    assert_eq!(nums[0], 1);
    let expected: Vec<u64> = (1..=*nums.last().unwrap()).collect();
    assert_eq!(nums, expected);
    assert!(
        nums.len() > 60,
        "collection went on after the restart: {}",
        nums.len()
    );
    collector.abort();
    agent.stop().await;
}
