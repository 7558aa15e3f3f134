//! Hostile and careless visitors on the public HTTP side: slow-POST floods against one
//! device, stalled uploads, idle streams' memory on the agent, and header hygiene (two
//! `Host` headers, absolute-form URIs, forged `X-Real-IP` / `Forwarded`). Real gateway,
//! real agents (in process, and the `edge-agent` binary for memory), raw TCP visitors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::terminal;
use e2e_tests::*;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use protocol::DeviceUuid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request as the device's web server received it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of header `name`, in order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A device web server that records each request's head and counts body bytes as they
/// arrive (so a test can wait until held uploads have really reached the device). It
/// answers `NAME BODY_BYTES` once the request body has ended.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    body_bytes: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl Recorder {
    async fn spawn(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let (token, name) = (shutdown.clone(), name.to_string());
        let (seen2, bytes2) = (Arc::clone(&seen), Arc::clone(&body_bytes));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let (name, seen, bytes) = (name.clone(), Arc::clone(&seen2), Arc::clone(&bytes2));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (name, seen, bytes) =
                            (name.clone(), Arc::clone(&seen), Arc::clone(&bytes));
                        async move {
                            seen.lock().unwrap().push(Seen {
                                path: req.uri().path().to_string(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("?").to_string())
                                    })
                                    .collect(),
                            });
                            let mut body = req.into_body();
                            let mut n = 0u64;
                            while let Some(Ok(f)) = body.frame().await {
                                if let Ok(d) = f.into_data() {
                                    n += d.len() as u64;
                                    bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(body_of(
                                format!("{name} {n}"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            body_bytes,
            shutdown,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn body_of(s: String) -> TestBody {
    body(s)
}

/// Writes `head` on a fresh connection and reads the answer until the gateway closes it
/// (or `limit` passes). Returns the answer and how long it took.
async fn raw_exchange(addr: SocketAddr, head: &str, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, tcp.read_to_end(&mut buf)).await;
    (String::from_utf8_lossy(&buf).to_string(), started.elapsed())
}

/// A slow POST: a head announcing 100 MB, one body byte, then one byte a second while
/// `dribble` holds; the connection stays open afterwards. Resolves to the gateway's
/// answer once the gateway ends the connection (or after `limit`).
fn slow_post(
    addr: SocketAddr,
    host: String,
    dribble: Arc<AtomicBool>,
    limit: Duration,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000000\r\n\r\nx");
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(limit, rd.read_to_end(&mut buf)).await;
            String::from_utf8_lossy(&buf).to_string()
        });
        if wr.write_all(head.as_bytes()).await.is_ok() {
            while dribble.load(Ordering::Relaxed) && !reader.is_finished() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if wr.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
        let answer = reader.await.unwrap();
        drop(wr);
        answer
    })
}

fn http_streams(gw: &TestGateway, uuid: &str) -> usize {
    let uuid: DeviceUuid = uuid.parse().unwrap();
    gw.sessions
        .get(&uuid)
        .map(|s| s.http_streams())
        .unwrap_or(usize::MAX)
}

/// Runs `echo $((6*7))` in a host terminal of `uuid` and waits for `42`.
async fn terminal_round_trip(gw: &TestGateway, uuid: &str, token: &str) {
    let mut ws = tokio::time::timeout(
        Duration::from_secs(20),
        terminal::open(gw, uuid, Some(token), "cols=80&rows=24"),
    )
    .await
    .expect("terminal did not open within 20 s")
    .expect("terminal refused");
    terminal::type_line(&mut ws, "echo $((6*7))").await;
    let seen = terminal::read_until(&mut ws, Duration::from_secs(20), |s| {
        s.output.contains("42")
    })
    .await;
    assert!(
        seen.output.contains("42"),
        "terminal output: {:?}",
        seen.output
    );
    let _ = ws.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_post_flood_is_capped_per_device() {
    const LIMIT: usize = 32;
    const FLOOD: usize = 200;
    let gw = TestGateway::spawn_custom(|c| {
        c.max_streams_per_device = LIMIT;
        c.request_body_idle_timeout = Duration::from_secs(3);
    })
    .await;
    let (_, operator, _) = tokens(&gw).await;
    let flooded_backend = Recorder::spawn("flooded").await;
    let other_backend = Recorder::spawn("other").await;
    let flooded = gw.add_device(true).await;
    let other = gw.add_device(true).await;
    let (flooded_uuid, flooded_host) = (flooded.uuid.clone(), device_host(&flooded.uuid));
    let other_host = device_host(&other.uuid);
    let mut opts = fast_agent_options(flooded_backend.addr);
    opts.terminal.shell = Some("/bin/sh".into());
    let mut a = TestAgent::spawn_with(flooded, opts);
    let mut b = TestAgent::spawn(other, other_backend.addr);
    a.connected().await;
    b.connected().await;

    let dribble = Arc::new(AtomicBool::new(true));
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            slow_post(
                gw.http_addr,
                flooded_host.clone(),
                Arc::clone(&dribble),
                Duration::from_secs(60),
            )
        })
        .collect();

    // (a) Once the device's share is taken, a new visitor gets a clear 503 at once. No
    // visitor asks before that: a finished request leaves its stream idle in the proxy's
    // pool, counted in the share, and the next request would reuse it and pass.
    let taken = eventually(Duration::from_secs(30), || async {
        (http_streams(&gw, &flooded_uuid) == LIMIT).then_some(())
    })
    .await;
    assert!(
        taken.is_some(),
        "{FLOOD} slow POSTs hold only {} streams",
        http_streams(&gw, &flooded_uuid)
    );
    let c = http_client();
    let full = eventually(Duration::from_secs(30), || async {
        let req = http::Request::builder()
            .uri(gw.url("/"))
            .header("host", &flooded_host)
            .body(empty())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), c.request(req))
            .await
            .ok()?
            .ok()?;
        (resp.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(
        full.is_some(),
        "no 503 while {FLOOD} slow POSTs hold the device"
    );
    let started = Instant::now();
    let (s, h, body) = request(&c, gw.http_addr, &flooded_host, "GET", "/", empty()).await;
    let took = started.elapsed();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("too many concurrent requests to this device"),
        "{body:?}"
    );
    // "At once": no waiting on the device. 5 s is a wide margin for a loaded machine.
    assert!(took < Duration::from_secs(5), "the 503 took {took:?}");
    assert_eq!(http_streams(&gw, &flooded_uuid), LIMIT);

    // (b) Another device on the same gateway is served normally.
    let (s, _, body) = request(&c, gw.http_addr, &other_host, "GET", "/", empty()).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"other 0"[..]));

    // (c) The flooded device's own control traffic still works: a terminal round trip.
    terminal_round_trip(&gw, &flooded_uuid, &operator).await;

    // (d) The slow visitors stop sending; after the body idle timeout (3 s) their streams
    // are gone and the device serves again.
    dribble.store(false, Ordering::Relaxed);
    let freed = eventually(Duration::from_secs(20), || async {
        (http_streams(&gw, &flooded_uuid) == 0).then_some(())
    })
    .await;
    assert!(
        freed.is_some(),
        "{} streams still open after the idle timeout",
        http_streams(&gw, &flooded_uuid)
    );
    let (s, _, body) = request(&c, gw.http_addr, &flooded_host, "GET", "/", empty()).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"flooded 0"[..]));
    // Every flooding connection was answered (503 or 408) or closed; none hangs.
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for t in flood {
        let answer = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a slow visitor's connection was never ended")
            .unwrap();
        let status = answer.lines().next().unwrap_or("(closed)").to_string();
        *answers.entry(status).or_default() += 1;
    }
    let busy = answers
        .get("HTTP/1.1 503 Service Unavailable")
        .copied()
        .unwrap_or(0);
    assert!(busy >= FLOOD - LIMIT, "{answers:?}");
    // The device never saw more than its share.
    let uploads = flooded_backend
        .seen()
        .iter()
        .filter(|s| s.path == "/upload")
        .count();
    assert!(
        uploads <= LIMIT,
        "{uploads} slow uploads reached the device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_idle_timeout_cuts_a_stalled_upload_not_a_slow_one() {
    let idle = Duration::from_secs(2);
    let gw = TestGateway::spawn_custom(|c| c.request_body_idle_timeout = idle).await;
    let backend = Recorder::spawn("up").await;
    let cfg = gw.add_device(true).await;
    let (uuid, host) = (cfg.uuid.clone(), device_host(&cfg.uuid));
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;

    // Stalled: 100 of 1000 announced bytes, then nothing.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n{}",
        "y".repeat(100)
    );
    let (answer, took) = raw_exchange(gw.http_addr, &head, Duration::from_secs(20)).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?} after {took:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        took >= idle - Duration::from_millis(200),
        "cut early, after {took:?}"
    );
    // Timeout plus a wide margin for a loaded machine.
    assert!(took < idle * 3, "cut only after {took:?}");
    // The stream to the device is gone too.
    let gone = eventually(Duration::from_secs(10), || async {
        (http_streams(&gw, &uuid) == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the device stream outlived the visitor");

    // Slow but steady: a byte every 400 ms for ~5 s (well over the 2 s idle timeout in
    // total, well within it between bytes) is not cut.
    const N: usize = 12;
    let mut tcp = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {N}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..N {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tcp.write_all(b"z").await.unwrap();
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&format!("up {N}")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_host_headers_are_refused_before_the_device() {
    let gw = TestGateway::spawn().await;
    let backend = Recorder::spawn("d").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;

    for second in [
        host.clone(),
        device_host("0123456789abcdef0123456789abcdef"),
    ] {
        let head = format!("GET /twice HTTP/1.1\r\nHost: {host}\r\nHost: {second}\r\n\r\n");
        let (answer, _) = raw_exchange(gw.http_addr, &head, Duration::from_secs(20)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("Host"), "{answer}");
    }
    // The gateway keeps serving, and the device only ever saw the good request.
    let (s, _, _) = request(&http_client(), gw.http_addr, &host, "GET", "/once", empty()).await;
    assert_eq!(s, StatusCode::OK);
    let paths: Vec<String> = backend.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absolute_form_uri_wins_over_host() {
    let gw = TestGateway::spawn().await;
    let (ba, bb) = (Recorder::spawn("a").await, Recorder::spawn("b").await);
    let (ca, cb) = (gw.add_device(true).await, gw.add_device(true).await);
    let (host_a, host_b) = (device_host(&ca.uuid), device_host(&cb.uuid));
    let mut a = TestAgent::spawn(ca, ba.addr);
    let mut b = TestAgent::spawn(cb, bb.addr);
    a.connected().await;
    b.connected().await;

    // RFC 9112 §3.2.2: the request-target's host wins, and the proxy sends a Host made
    // from it.
    let head =
        format!("GET http://{host_a}/abs HTTP/1.1\r\nHost: {host_b}\r\nConnection: close\r\n\r\n");
    let (answer, _) = raw_exchange(gw.http_addr, &head, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("a 0"), "{answer}");
    assert!(bb.seen().is_empty(), "{:?}", bb.seen());
    let seen = ba.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/abs");
    assert_eq!(seen[0].all("host"), [host_a.as_str()]);
    assert_eq!(seen[0].all("x-forwarded-host"), [host_a.as_str()]);

    // An absolute-form URI naming no device is a 404, whatever Host says.
    let head =
        format!("GET http://example.com/ HTTP/1.1\r\nHost: {host_a}\r\nConnection: close\r\n\r\n");
    let (answer, _) = raw_exchange(gw.http_addr, &head, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(ba.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_real_ip_and_forwarded_never_reach_the_device() {
    let gw = TestGateway::spawn().await;
    let backend = Recorder::spawn("d").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;

    let head = format!(
        "GET /who HTTP/1.1\r\nHost: {host}\r\nX-Real-IP: 6.6.6.6\r\nX-Real-IP: 7.7.7.7\r\n\
         Forwarded: for=6.6.6.6;host=evil.example\r\nForwarded: for=7.7.7.7\r\n\
         Connection: close\r\n\r\n"
    );
    let (answer, _) = raw_exchange(gw.http_addr, &head, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // X-Real-IP is the visitor's address as the gateway saw it, nothing else.
    assert_eq!(seen[0].all("x-real-ip"), ["127.0.0.1"]);
    // Forwarded gets the gateway's own element last (RFC 7239 §4), as X-Forwarded-For
    // does; a device trusts only that one.
    let forwarded = seen[0].all("forwarded");
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert_eq!(
        forwarded[0],
        format!(
            "for=6.6.6.6;host=evil.example, for=7.7.7.7, for=127.0.0.1;host=\"{host}\";proto=http"
        )
    );

    // Without visitor headers, the gateway's own values alone.
    let (s, _, _) = request(
        &http_client(),
        gw.http_addr,
        &host,
        "GET",
        "/plain",
        empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let seen = backend.seen();
    assert_eq!(seen[1].all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(
        seen[1].all("forwarded"),
        [format!("for=127.0.0.1;host=\"{host}\";proto=http").as_str()]
    );
}

/// Idle proxied connections cost the agent almost nothing, and what they cost comes back
/// when they close. Uses the real `edge-agent` binary so its RSS is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_streams_cost_the_agent_little_and_memory_comes_back() {
    const VISITORS: usize = 300;
    const FIRST: usize = 16 * 1024;
    let gw =
        TestGateway::spawn_custom(|c| c.request_body_idle_timeout = Duration::from_secs(300)).await;
    let backend = Recorder::spawn("mem").await;
    let cfg = gw.add_device(true).await;
    let (uuid, host) = (cfg.uuid.clone(), device_host(&cfg.uuid));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.toml");
    std::fs::write(&file, cfg.to_toml()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let agent = Proc::spawn(
        std::process::Command::new(bin("edge-agent"))
            .args([
                "run",
                "--local-api",
                "127.0.0.1:0",
                "--engine",
                "none",
                "--config",
            ])
            .arg(&file)
            .args(["--target", &backend.addr.to_string()])
            .env("RUST_LOG", "warn"),
    );
    let pid = agent.pid().to_string();
    let c = http_client();
    let up = eventually(Duration::from_secs(30), || async {
        let req = http::Request::builder()
            .uri(gw.url("/warm"))
            .header("host", &host)
            .body(empty())
            .unwrap();
        let resp = c.request(req).await.ok()?;
        (resp.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(up.is_some(), "the agent never served");
    let baseline = rss_kib_of(&pid);

    // VISITORS uploads, each FIRST bytes into a 10 MB body, then idle.
    let mut held = Vec::new();
    for _ in 0..VISITORS {
        let mut tcp = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
        let head =
            format!("POST /hold HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10000000\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&vec![b'm'; FIRST]).await.unwrap();
        held.push(tcp);
    }
    let want = (VISITORS * FIRST) as u64;
    let arrived = eventually(Duration::from_secs(60), || async {
        (backend.body_bytes.load(Ordering::Relaxed) >= want).then_some(())
    })
    .await;
    assert!(
        arrived.is_some(),
        "only {} of {want} bytes reached the device",
        backend.body_bytes.load(Ordering::Relaxed)
    );
    let held_rss = rss_kib_of(&pid);
    let grown_mib = held_rss.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!("agent RSS: baseline {baseline} KiB, {VISITORS} held streams {held_rss} KiB");
    // Two 64 KiB copy buffers per stream would be 37.5 MiB here; idle streams should cost
    // a few KiB each. 12 MiB leaves room for allocator slack on a loaded machine.
    assert!(
        grown_mib < 12.0,
        "agent RSS grew {grown_mib:.1} MiB for {VISITORS} idle streams ({baseline} -> {held_rss} KiB)"
    );

    assert_eq!(http_streams(&gw, &uuid), VISITORS);

    drop(held);
    let gone = eventually(Duration::from_secs(30), || async {
        (http_streams(&gw, &uuid) == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "{} streams left", http_streams(&gw, &uuid));
    let back = eventually(Duration::from_secs(30), || async {
        let now = rss_kib_of(&pid);
        (now <= baseline + 6 * 1024).then_some(now)
    })
    .await;
    assert!(
        back.is_some(),
        "agent RSS stayed at {} KiB after the visitors left (baseline {baseline} KiB)",
        rss_kib_of(&pid)
    );
    eprintln!("agent RSS after close: {} KiB", back.unwrap());
}

/// RSS of the gateway and the agent before, at the peak of, and after a slow-POST burst
/// (the attack: `Content-Length: 100000000`, one byte every 2 s), as separate
/// processes. A benchmark, not a check: `bench/slowpost/run.sh` runs it for each
/// allocator option and prints one table row per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/slowpost/run.sh"]
async fn bench_slow_post_burst() {
    let env = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let visitors = env("BENCH_VISITORS", 3000) as usize;
    let hold = Duration::from_secs(env("BENCH_HOLD_SECS", 10));
    let label = std::env::var("BENCH_LABEL").unwrap_or_else(|_| "default".into());
    let binary = |name: &str| match std::env::var("BENCH_BIN_DIR") {
        Ok(d) => std::path::Path::new(&d).join(name),
        Err(_) => bin(name),
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let (http, api, tunnel) = (free_port_tcp(), free_port_tcp(), free_port_udp());
    let file = dir.path().join("device.toml");
    let out = std::process::Command::new(binary("gateway"))
        .args(["device", "add", "--public-url", "--data-dir"])
        .arg(&data)
        .args(["--gateway", &format!("127.0.0.1:{tunnel}"), "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let uuid = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let host = device_host(&uuid);
    let backend = Recorder::spawn("bench").await;
    let gw = Proc::spawn(
        std::process::Command::new(binary("gateway"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--tunnel-listen", &format!("127.0.0.1:{tunnel}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--max-streams-per-device", "3840"])
            .args([
                "--request-body-idle-timeout",
                "120s",
                "--upstream-timeout",
                "600s",
            ])
            .env("RUST_LOG", "error"),
    );
    let agent = Proc::spawn(
        std::process::Command::new(binary("edge-agent"))
            .args([
                "run",
                "--local-api",
                "127.0.0.1:0",
                "--engine",
                "none",
                "--config",
            ])
            .arg(&file)
            .args(["--target", &backend.addr.to_string()])
            .env("RUST_LOG", "error"),
    );
    let gw_addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let c = http_client();
    let up = eventually(Duration::from_secs(60), || async {
        let req = http::Request::builder()
            .uri(format!("http://{gw_addr}/"))
            .header("host", &host)
            .body(empty())
            .unwrap();
        let resp = c.request(req).await.ok()?;
        (resp.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(up.is_some(), "the device never served");
    let (gpid, apid) = (gw.pid().to_string(), agent.pid().to_string());
    let before = (rss_kib_of(&gpid), rss_kib_of(&apid));

    let peak = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, gpid, apid) = (peak.clone(), stop.clone(), gpid.clone(), apid.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.0.fetch_max(rss_kib_of(&gpid), Ordering::Relaxed);
                peak.1.fetch_max(rss_kib_of(&apid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let dribble = Arc::new(AtomicBool::new(true));
    let burst_started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..visitors {
        let (host, dribble) = (host.clone(), dribble.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut tcp) = tokio::net::TcpStream::connect(gw_addr).await else {
                return;
            };
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000000\r\n\r\nx"
            );
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while dribble.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if tcp.write_all(b"x").await.is_err() {
                    return;
                }
            }
        }));
    }
    let arrived = eventually(Duration::from_secs(120), || async {
        (backend.body_bytes.load(Ordering::Relaxed) >= visitors as u64).then_some(())
    })
    .await;
    let reached = backend.body_bytes.load(Ordering::Relaxed);
    let ramp = burst_started.elapsed();
    tokio::time::sleep(hold).await;
    let held = (rss_kib_of(&gpid), rss_kib_of(&apid));
    dribble.store(false, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let closed = Instant::now();
    let mut after = Vec::new();
    for secs in [2u64, 10, 30] {
        tokio::time::sleep_until((closed + Duration::from_secs(secs)).into()).await;
        after.push((rss_kib_of(&gpid), rss_kib_of(&apid)));
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    println!(
        "| {label} | {visitors} ({reached} reached the device{}, ramp {:.1} s) | {} / {} / {} / {} / {} / {} | {} / {} / {} / {} / {} / {} |",
        if arrived.is_some() { "" } else { ", NOT ALL" },
        ramp.as_secs_f64(),
        mib(before.0),
        mib(peak.0.load(Ordering::Relaxed)),
        mib(held.0),
        mib(after[0].0),
        mib(after[1].0),
        mib(after[2].0),
        mib(before.1),
        mib(peak.1.load(Ordering::Relaxed)),
        mib(held.1),
        mib(after[0].1),
        mib(after[1].1),
        mib(after[2].1),
    );
    drop((gw, agent));
}

/// The per-device limit is the device's, not one connection's: when the agent moves from
/// the TCP fallback back to QUIC while slow visitors hold its share, the streams still
/// draining on the old connection keep counting, and new visitors keep getting 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_device_limit_holds_across_a_transport_move() {
    const LIMIT: usize = 16;
    let gw = TestGateway::spawn_custom(|c| {
        c.max_streams_per_device = LIMIT;
        c.request_body_idle_timeout = Duration::from_secs(10);
    })
    .await;
    let backend = Recorder::spawn("moved").await;
    let device = gw.add_device(true).await;
    let (uuid, host) = (device.uuid.clone(), device_host(&device.uuid));
    let id: DeviceUuid = uuid.parse().unwrap();
    // UDP reaches the gateway only through a relay that drops everything for now.
    let relay = e2e_tests::relay::UdpRelay::start(gw.tunnel_addr).await;
    relay.set_cut(true);
    let mut opts = fast_agent_options(backend.addr);
    opts.route.mode = edge_agent::dial::TransportMode::Auto;
    opts.route.gateway_tcp = Some(gw.tunnel_tcp_addr.to_string());
    let mut cfg = device;
    cfg.gateway = relay.addr.to_string();
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let kind = |k| gw.sessions.get(&id).map(|s| s.conn.stats().kind) == Some(k);
    assert!(
        kind(transport::TransportKind::Tcp),
        "not on the TCP fallback"
    );

    // Slow visitors take the device's whole share on TCP.
    let dribble = Arc::new(AtomicBool::new(true));
    let flood: Vec<_> = (0..LIMIT)
        .map(|_| {
            slow_post(
                gw.http_addr,
                host.clone(),
                Arc::clone(&dribble),
                Duration::from_secs(60),
            )
        })
        .collect();
    let full = eventually(Duration::from_secs(30), || async {
        (http_streams(&gw, &uuid) == LIMIT).then_some(())
    })
    .await;
    assert!(full.is_some(), "{} streams open", http_streams(&gw, &uuid));

    // UDP passes again: the agent moves to QUIC; the slow uploads stay on TCP.
    relay.set_cut(false);
    let moved = eventually(Duration::from_secs(60), || async {
        kind(transport::TransportKind::Quic).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the agent never moved back to QUIC");
    let c = http_client();
    let (s, _, body) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "a new visitor got past the device's share after the move: {:?}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(http_streams(&gw, &uuid), LIMIT);

    // Once the slow visitors stop, their streams end and the device serves on QUIC.
    dribble.store(false, Ordering::Relaxed);
    let freed = eventually(Duration::from_secs(40), || async {
        (http_streams(&gw, &uuid) == 0).then_some(())
    })
    .await;
    assert!(freed.is_some(), "{} streams left", http_streams(&gw, &uuid));
    let (s, _, body) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"moved 0"[..]));
    for t in flood {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
}
