//! Public device URLs through real tunnels: real gateway, real agents, real HTTP servers
//! and clients on loopback sockets.

use std::time::Duration;

use bytes::Bytes;
use e2e_tests::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_and_post_with_forwarded_headers() {
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("device-a").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;
    let c = http_client();

    let (s, _, b) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, "hello from device-a");

    let (s, _, b) = request(&c, gw.http_addr, &host, "POST", "/echo", body("ping 123")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, "ping 123");

    // Host in any case and with a port selects the same device.
    let upper = format!("{}:{}", host.to_uppercase(), gw.http_addr.port());
    let (s, _, b) = request(&c, gw.http_addr, &upper, "GET", "/", empty()).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello from device-a"[..]));

    // Forwarded headers are added; hop-by-hop headers (and those named by Connection) go.
    let req = http::Request::builder()
        .uri(gw.url("/headers"))
        .header("host", &host)
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(
        text.contains(&format!("x-forwarded-host: {host}\n")),
        "{text}"
    );
    assert!(text.contains(&format!("host: {host}\n")), "{text}");
    assert!(text.contains("x-end-to-end: kept\n"), "{text}");
    assert!(!text.contains("x-hop"), "{text}");
    assert!(!text.contains("keep-alive: timeout"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_from_many_connections() {
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("busy").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;

    let mut tasks = Vec::new();
    for i in 0..200 {
        let host = host.clone();
        let addr = gw.http_addr;
        tasks.push(tokio::spawn(async move {
            // A fresh client per task: 200 visitor connections.
            let c = http_client();
            let payload = format!("request number {i}");
            let (s, _, b) = request(&c, addr, &host, "POST", "/echo", body(payload.clone())).await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(b, payload);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_prior_knowledge_client() {
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("h2").await;
    let cfg = gw.add_device(true).await;
    let uuid = cfg.uuid.clone();
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;

    let c = h2_client();
    // HTTP/2 carries the host in :authority, not a Host header.
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri(format!(
                "http://{}.devices.localhost:{}/echo",
                uuid,
                gw.http_addr.port()
            ))
            .method("POST")
            .version(http::Version::HTTP_2)
            .body(body("over h2"))
            .unwrap();
        // Connect to 127.0.0.1 regardless of the name (glibc does not resolve *.localhost).
        let (s, b) = h2_request_to(&c, gw.http_addr, req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b, "over h2");
    }
}

/// Sends an HTTP/2 request whose URI names the device, over a TCP connection to `addr`.
async fn h2_request_to(
    _c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    addr: std::net::SocketAddr,
    req: http::Request<TestBody>,
) -> (StatusCode, Bytes) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let s = resp.status();
    let b = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (s, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrade_passes_through() {
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("ws").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;

    let tcp = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{host}/ws"),
    )
    .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        let msg = format!("echo {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    let big = vec![7u8; 1 << 20];
    ws.send(tokio_tungstenite::tungstenite::Message::binary(big.clone()))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_statuses_are_pages() {
    let gw = TestGateway::spawn_custom(|c| c.upstream_timeout = Duration::from_secs(2)).await;
    let backend = Backend::spawn("slowpoke").await;
    let c = http_client();

    // Unknown device (valid uuid shape, never registered) and a non-device host: 404.
    let (s, h, b) = request(
        &c,
        gw.http_addr,
        &device_host("0123456789abcdef0123456789abcdef"),
        "GET",
        "/",
        empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(String::from_utf8_lossy(&b).contains("no device"), "{b:?}");
    let (s, _, _) = request(&c, gw.http_addr, "example.com", "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Registered, public URL on, agent not running: 503.
    let offline = gw.add_device(true).await;
    let (s, _, b) = request(
        &c,
        gw.http_addr,
        &device_host(&offline.uuid),
        "GET",
        "/",
        empty(),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&b).contains("offline"), "{b:?}");

    // Public URL disabled (the default): 404 whether or not the device is online.
    let private = gw.add_device(false).await;
    let private_host = device_host(&private.uuid);
    let (s, _, _) = request(&c, gw.http_addr, &private_host, "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let mut private_agent = TestAgent::spawn(private, backend.addr);
    private_agent.connected().await;
    let (s, _, b) = request(&c, gw.http_addr, &private_host, "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&b).contains("disabled"), "{b:?}");

    // Online, nothing listening on the device port: 502. The port is held by a socket
    // bound but not listening, so connections to it are refused and no other test can
    // take it meanwhile (a listener dropped at once freed the port, and a parallel
    // test's server that took it made this a "closed without an answer" 502).
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_port = held.local_addr().unwrap();
    let refused = gw.add_device(true).await;
    let refused_host = device_host(&refused.uuid);
    let mut a = TestAgent::spawn(refused, closed_port);
    a.connected().await;
    let (s, _, b) = request(&c, gw.http_addr, &refused_host, "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&b).contains("nothing is listening"),
        "{b:?}"
    );

    // Online, the device's server does not answer in time: 504 (upstream timeout 2 s).
    let slow = gw.add_device(true).await;
    let slow_host = device_host(&slow.uuid);
    let mut a2 = TestAgent::spawn(slow, backend.addr);
    a2.connected().await;
    let req = http::Request::builder()
        .uri(gw.url("/slow"))
        .header("host", &slow_host)
        .header("accept", "text/html,application/xhtml+xml")
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    // Browsers get HTML.
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("<h1>504 Gateway Timeout</h1>"));
    // The device's other requests are unaffected.
    let (s, _, b) = request(&c, gw.http_addr, &slow_host, "GET", "/", empty()).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello from slowpoke"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_never_see_each_others_traffic() {
    let gw = TestGateway::spawn().await;
    let mut hosts = Vec::new();
    let mut keep = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let backend = Backend::spawn(name).await;
        let cfg = gw.add_device(true).await;
        hosts.push((device_host(&cfg.uuid), name));
        let mut agent = TestAgent::spawn(cfg, backend.addr);
        agent.connected().await;
        keep.push((backend, agent));
    }
    let mut tasks = Vec::new();
    for round in 0..30 {
        for (host, name) in hosts.clone() {
            let addr = gw.http_addr;
            tasks.push(tokio::spawn(async move {
                let c = http_client();
                let (s, _, b) = request(&c, addr, &host, "GET", "/", empty()).await;
                assert_eq!(s, StatusCode::OK);
                assert_eq!(b, format!("hello from {name}"), "round {round}");
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn newer_session_replaces_older() {
    let gw = TestGateway::spawn().await;
    let old_backend = Backend::spawn("old").await;
    let new_backend = Backend::spawn("new").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut first = TestAgent::spawn(cfg.clone(), old_backend.addr);
    first.connected().await;
    let c = http_client();
    let (_, _, b) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
    assert_eq!(b, "hello from old");

    let mut second = TestAgent::spawn(cfg, new_backend.addr);
    second.connected().await;
    // The first one is told why it was dropped.
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let edge_agent::ConnState::BackingOff { reason } = first.state.borrow().clone() {
                return reason;
            }
            first.state.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("replaced"), "{reason}");
    first.stop().await;
    let got = eventually(Duration::from_secs(10), || async {
        let (_, _, b) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
        (b == "hello from new").then_some(())
    })
    .await;
    assert!(got.is_some(), "the newer session did not take over");
    assert_eq!(gw.sessions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_header_visitor_does_not_delay_others() {
    let gw = TestGateway::spawn_custom(|c| c.header_read_timeout = Duration::from_secs(2)).await;
    let backend = Backend::spawn("fast").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;

    // Several slowloris visitors, each dribbling a request head one byte at a time.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let addr = gw.http_addr;
        let host = host.clone();
        slow.push(tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(50)
            );
            let mut sent = 0;
            for b in head.bytes() {
                if tcp.write_all(&[b]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let mut buf = Vec::new();
            let _ = tcp.read_to_end(&mut buf).await;
            (sent, head.len(), String::from_utf8_lossy(&buf).to_string())
        }));
    }
    // Meanwhile, normal visitors are served, many times over.
    let c = http_client();
    for _ in 0..50 {
        let (s, _, b) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello from fast"[..]));
    }
    for t in slow {
        let (sent, total, answer) = t.await.unwrap();
        // The gateway cut the slow visitor off (408 or close) before its head was complete.
        assert!(sent < total, "slow visitor was allowed to finish its head");
        assert!(!answer.contains("hello from fast"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_head_is_refused() {
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("b").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;
    let mut tcp = tokio::net::TcpStream::connect(gw.http_addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // The gateway keeps serving.
    let c = http_client();
    let (s, _, _) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::OK);
}

/// Gateway and agent as separate processes (the shipped binaries), so their RSS is their
/// own: measured in this test process, the figure also held the backend, the client and
/// the allocator's slack. glibc opens a new arena whenever a thread finds its arena
/// locked, so on a loaded machine more arenas each kept freed memory and the in-process
/// figure grew with load (10 arenas and twice the growth of `MALLOC_ARENA_MAX=1` here;
/// 342 MiB once on a loaded machine). The binaries use jemalloc, whose threads keep the
/// arena they were given at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_bodies_stream_with_bounded_memory() {
    use std::process::Command;
    const SIZE: u64 = 256 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let (http, tunnel) = (free_port_tcp(), free_port_udp());
    let backend = Backend::spawn("bulk").await;
    let gw = Proc::spawn(
        Command::new(bin("gateway"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--tunnel-listen", &format!("127.0.0.1:{tunnel}")])
            .args(["--api-listen", "127.0.0.1:0", "--upstream-timeout", "300s"])
            .env("RUST_LOG", "warn"),
    );
    // `device add` needs the data dir `serve` creates.
    eventually(Duration::from_secs(60), || async {
        data.join("gateway.db").exists().then_some(())
    })
    .await
    .expect("gateway serve created its data dir");
    let file = dir.path().join("device.toml");
    let out = Command::new(bin("gateway"))
        .args(["device", "add", "--public-url", "--data-dir"])
        .arg(&data)
        .args(["--gateway", &format!("127.0.0.1:{tunnel}"), "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let uuid = String::from_utf8(out.stdout).unwrap();
    let host = device_host(uuid.lines().last().unwrap().trim());
    let agent = Proc::spawn(
        Command::new(bin("edge-agent"))
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
    let gw_addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let c = http_client();
    let up = eventually(Duration::from_secs(60), || async {
        let req = http::Request::builder()
            .uri(format!("http://{gw_addr}/"))
            .header("host", &host)
            .body(empty())
            .unwrap();
        // Refused until the gateway listens: keep polling.
        let resp = c.request(req).await.ok()?;
        (resp.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(up.is_some(), "the device never served");
    let (gpid, apid) = (gw.pid().to_string(), agent.pid().to_string());
    let rss = move || rss_kib_of(&gpid) + rss_kib_of(&apid);

    let baseline = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let peak = peak.clone();
        let stop = stop.clone();
        let rss = rss.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Upload: the device counts what arrives.
    let (s, _, b) = request(&c, gw_addr, &host, "POST", "/count", generated_body(SIZE)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, SIZE.to_string());
    // Download: count while streaming, never collecting the body.
    let req = http::Request::builder()
        .uri(format!("http://{gw_addr}/bytes/{SIZE}"))
        .header("host", &host)
        .body(empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len() as u64;
        }
    }
    assert_eq!(n, SIZE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let grown_mib = (peak.load(std::sync::atomic::Ordering::Relaxed) - baseline) / 1024;
    eprintln!(
        "large bodies: gateway + agent RSS baseline {baseline} KiB, grew {grown_mib} MiB at peak"
    );
    // 512 MiB moved; what may queue is bounded by the QUIC windows (4 MiB per stream on
    // each side) and hyper's buffers, far below one body. 64 MiB is a wide margin.
    assert!(
        grown_mib < 64,
        "gateway + agent RSS grew by {grown_mib} MiB while moving 2 x 256 MiB"
    );
}
