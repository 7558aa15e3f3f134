//! The TLS-over-TCP tunnel listener against hostile and odd peers, a CONNECT proxy, and a
//! fleet with devices on both transports. In-process gateway and agents on real sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::terminal;
use e2e_tests::*;
use edge_agent::dial::TransportMode;
use http::StatusCode;
use protocol::AppErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::TransportKind;

fn on(mode: TransportMode, target: std::net::SocketAddr) -> edge_agent::AgentOptions {
    let mut o = fast_agent_options(target);
    o.route.mode = mode;
    o
}

async fn get(gw: &TestGateway, uuid: &str) -> (StatusCode, bytes::Bytes) {
    let c = http_client();
    let (s, _, b) = request(&c, gw.http_addr, &device_host(uuid), "GET", "/", empty()).await;
    (s, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_fleet_reaches_each_devices_own_backend() {
    let gw = TestGateway::spawn().await;
    let (b_tcp, b_quic) = (
        Backend::spawn("on-tcp").await,
        Backend::spawn("on-quic").await,
    );
    let (c_tcp, c_quic) = (gw.add_device(true).await, gw.add_device(true).await);
    let mut a_tcp = TestAgent::spawn_with(c_tcp.clone(), on(TransportMode::Tcp, b_tcp.addr));
    let mut a_quic = TestAgent::spawn_with(c_quic.clone(), on(TransportMode::Quic, b_quic.addr));
    a_tcp.connected().await;
    a_quic.connected().await;
    let kind =
        |c: &edge_agent::AgentConfig| gw.sessions.path(&c.uuid.parse().unwrap()).unwrap().kind;
    assert_eq!(kind(&c_tcp), TransportKind::Tcp);
    assert_eq!(kind(&c_quic), TransportKind::Quic);
    for _ in 0..20 {
        assert_eq!(
            get(&gw, &c_tcp.uuid).await,
            (StatusCode::OK, "hello from on-tcp".into())
        );
        assert_eq!(
            get(&gw, &c_quic.uuid).await,
            (StatusCode::OK, "hello from on-quic".into())
        );
    }
    // The API says which is which.
    let (_, _, admin) = tokens(&gw).await;
    let api = Api::new(&gw);
    let (s, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{}", c_tcp.uuid),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["transport"], "tcp", "{v}");
    assert!(v["rtt_ms"].as_f64().is_some(), "{v}");
}

/// A minimal HTTP CONNECT proxy on loopback; counts the tunnels it opened.
async fn connect_proxy() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&opened);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split_whitespace().next())
                else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, opened)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tcp_fallback_goes_through_an_http_connect_proxy() {
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("proxied").await;
    let cfg = gw.add_device(true).await;
    let (proxy, opened) = connect_proxy().await;
    let mut opts = on(TransportMode::Tcp, backend.addr);
    opts.route.proxy = Some(format!("http://{proxy}").parse().unwrap());
    let mut agent = TestAgent::spawn_with(cfg.clone(), opts);
    agent.connected().await;
    assert!(
        opened.load(Ordering::SeqCst) >= 1,
        "the agent bypassed the proxy"
    );
    assert_eq!(
        get(&gw, &cfg.uuid).await,
        (StatusCode::OK, "hello from proxied".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_peers_on_the_tcp_port_are_refused_and_others_keep_working() {
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("steady").await;
    let good = gw.add_device(true).await;
    let mut agent = TestAgent::spawn_with(good.clone(), on(TransportMode::Tcp, backend.addr));
    agent.connected().await;
    let ca = certs::Ca::load_or_create(&gw.data_dir).unwrap();

    // Garbage bytes: the connection is closed, nothing else happens.
    let mut junk = tokio::net::TcpStream::connect(gw.tunnel_tcp_addr)
        .await
        .unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // At most a TLS alert record (content type 21) comes back, then the end.
    let mut answer = Vec::new();
    // (A reset instead of a clean end is a refusal too.)
    let _ = tokio::time::timeout(Duration::from_secs(15), junk.read_to_end(&mut answer))
        .await
        .expect("garbage connection left open");
    assert!(
        answer.is_empty() || (answer[0] == 21 && answer.len() <= 16),
        "garbage got an answer other than a TLS alert: {answer:?}"
    );

    // TLS without a client certificate, on the tunnel ALPN: refused as no device.
    let mut anonymous = certs::provisioning_client_config(&ca.fingerprint()).unwrap();
    anonymous.alpn_protocols = vec![certs::ALPN.to_vec()];
    let conn = dial_tunnel(
        TransportKind::Tcp,
        gw.tunnel_addr,
        gw.tunnel_tcp_addr,
        anonymous,
    )
    .await
    .expect("TLS itself succeeds: the certificate is optional until the ALPN is known");
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert_eq!(
        closed.app_code(),
        Some(AppErrorCode::UnknownDevice),
        "{closed}"
    );

    // A certificate from another CA: the handshake fails (or the connection closes).
    let other = tempfile::tempdir().unwrap();
    let rogue = certs::Ca::load_or_create(other.path()).unwrap();
    let forged = rogue.issue_device(good.uuid.parse().unwrap()).unwrap();
    let tls = certs::client_config(ca.cert_pem(), &forged).unwrap();
    match dial_tunnel(TransportKind::Tcp, gw.tunnel_addr, gw.tunnel_tcp_addr, tls).await {
        Err(_) => {}
        Ok(c) => {
            let r = tokio::time::timeout(Duration::from_secs(10), c.closed()).await;
            assert!(r.is_ok(), "a forged certificate kept a connection");
        }
    }

    // A revoked device: refused with UnknownDevice.
    let doomed = gw.add_device(true).await;
    let (_, _, admin) = tokens(&gw).await;
    let (s, v) = Api::new(&gw)
        .call(
            "DELETE",
            &format!("/v1/devices/{}", doomed.uuid),
            Some(&admin),
            None,
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let tls = certs::client_config(ca.cert_pem(), &doomed.identity().unwrap()).unwrap();
    let conn = dial_tunnel(TransportKind::Tcp, gw.tunnel_addr, gw.tunnel_tcp_addr, tls)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert_eq!(
        closed.app_code(),
        Some(AppErrorCode::UnknownDevice),
        "{closed}"
    );

    // A half-open connection (connects, never speaks) costs nothing visible.
    let _silent = tokio::net::TcpStream::connect(gw.tunnel_tcp_addr)
        .await
        .unwrap();

    // More agent-opened streams than allowed: the extra ones wait or are refused, the
    // connection and the good device stay up.
    let tls = certs::client_config(
        ca.cert_pem(),
        &gw.add_device(true).await.identity().unwrap(),
    )
    .unwrap();
    let greedy = dial_tunnel(TransportKind::Tcp, gw.tunnel_addr, gw.tunnel_tcp_addr, tls)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(200), greedy.open_bi()).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    // The gateway lets an agent open 16 streams at once (control and logs need two).
    assert!(
        held.len() <= 32,
        "{} agent streams opened at once",
        held.len()
    );

    // Through all of it, the good device answered.
    assert_eq!(
        get(&gw, &good.uuid).await,
        (StatusCode::OK, "hello from steady".into())
    );
    assert_eq!(
        gw.sessions.path(&good.uuid.parse().unwrap()).unwrap().kind,
        TransportKind::Tcp
    );
}

/// An agent whose TCP socket stops being read (a wedged device, or a middlebox that
/// holds the bytes) while a visitor uploads to it: the gateway's writes to it block, but
/// nothing else does. Other devices on TCP keep answering, the stuck connection is closed
/// once its keep-alives go unanswered, the visitor gets an end instead of a hang, and the
/// device comes back when its socket is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_that_stops_reading_is_dropped_and_others_keep_working() {
    let gw = TestGateway::spawn().await;
    let stuck_backend = Backend::spawn("stuck").await;
    let steady_backend = Backend::spawn("steady").await;
    let stuck = gw.add_device(true).await;
    let steady = gw.add_device(true).await;
    let stuck_id: protocol::DeviceUuid = stuck.uuid.parse().unwrap();
    let relay = e2e_tests::relay::UdpRelay::start(gw.tunnel_tcp_addr).await;
    let mut opts = on(TransportMode::Tcp, stuck_backend.addr);
    opts.route.gateway_tcp = Some(relay.addr.to_string());
    // The agent would notice its unanswered heartbeats and leave on its own; it is slow
    // to here, so that what is tested is the gateway noticing.
    opts.idle_timeout = Duration::from_secs(300);
    let mut a = TestAgent::spawn_with(stuck.clone(), opts);
    let mut b = TestAgent::spawn_with(steady.clone(), on(TransportMode::Tcp, steady_backend.addr));
    a.connected().await;
    b.connected().await;
    let first = gw.sessions.get(&stuck_id).expect("online").id;

    relay.set_stall(true);
    // A 64 MiB upload to the stuck device: more than every window and socket buffer on
    // the way, so the gateway's writes to that connection block.
    let upload = {
        let (addr, host) = (gw.http_addr, device_host(&stuck.uuid));
        tokio::spawn(async move {
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/count"))
                .header("host", host)
                .body(body(vec![b'u'; 64 << 20]))
                .unwrap();
            // An error page, or the connection closed: either is an end.
            http_client().request(req).await.map(|r| r.status()).ok()
        })
    };
    // Meanwhile the other device answers, again and again.
    let stalled = std::time::Instant::now();
    let dropped = eventually(Duration::from_secs(60), || async {
        let (s, body) = get(&gw, &steady.uuid).await;
        assert_eq!((s, &body[..]), (StatusCode::OK, &b"hello from steady"[..]));
        (gw.sessions.get(&stuck_id).map(|s| s.id) != Some(first)).then_some(())
    })
    .await;
    assert!(
        dropped.is_some(),
        "the gateway kept a connection whose peer stopped reading"
    );
    eprintln!(
        "stuck connection dropped {:?} after the stall",
        stalled.elapsed()
    );
    let status = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the visitor's upload hangs after its device was dropped")
        .unwrap();
    assert!(
        status.is_none_or(|s| s.is_server_error()),
        "upload to a stuck device: {status:?}"
    );

    // Read again: the device reconnects and serves.
    relay.set_stall(false);
    let back = eventually(Duration::from_secs(60), || async {
        let (s, body) = get(&gw, &stuck.uuid).await;
        (s == StatusCode::OK && &body[..] == b"hello from stuck").then_some(())
    })
    .await;
    assert!(back.is_some(), "the device did not come back");
}

/// A flood of TCP connections that never start their handshake, from one address: the
/// gateway holds at most its per-address share of them open (512, half of the 1,024
/// pending handshakes it allows in all: devices behind one NAT address must not be
/// refused in a reconnect herd) and closes the rest at once, so they cannot eat its file
/// descriptors; a device elsewhere still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_tcp_handshakes_from_one_address_are_capped() {
    const FLOOD: usize = 700;
    const SHARE: usize = 512;
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("elsewhere").await;
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(s.connect(gw.tunnel_tcp_addr).await.unwrap());
    }
    // Closed at once (an end or a reset), or held waiting for a ClientHello.
    let held = futures_util::future::join_all(flood.iter_mut().map(|s| async move {
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .is_err()
    }))
    .await
    .into_iter()
    .filter(|h| *h)
    .count();
    assert!(
        (1..=SHARE).contains(&held),
        "{held} of {FLOOD} idle connections from one address held open"
    );

    // A device from another address connects over TCP while the flood holds its share.
    let device = gw.add_device(true).await;
    let uuid = device.uuid.clone();
    let mut agent = TestAgent::spawn_with(device, on(TransportMode::Tcp, backend.addr));
    agent.connected().await;
    let (s, body) = get(&gw, &uuid).await;
    assert_eq!(
        (s, &body[..]),
        (StatusCode::OK, &b"hello from elsewhere"[..])
    );
    drop(flood);
}

/// Types `input` into the terminal and waits (20 s) for `want` in its output.
async fn type_and_wait(ws: &mut terminal::Ws, input: &str, want: &str) -> Result<(), String> {
    terminal::type_line(ws, input).await;
    let seen = terminal::read_until(ws, Duration::from_secs(20), |s| s.output.contains(want)).await;
    if seen.output.contains(want) {
        Ok(())
    } else {
        Err(format!(
            "no {want:?} in the terminal's output: {:?}",
            seen.output
        ))
    }
}

/// A terminal opened while the device is on the TCP fallback keeps working after the
/// device moves back to QUIC: the old connection stays up for the streams still open on
/// it (terminals as well as public-URL streams), while new ones use the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminal_open_on_tcp_survives_the_move_back_to_quic() {
    let gw = TestGateway::spawn().await;
    let (_, operator, _) = tokens(&gw).await;
    let backend = Backend::spawn("mover").await;
    let device = gw.add_device(true).await;
    let uuid = device.uuid.clone();
    let id: protocol::DeviceUuid = uuid.parse().unwrap();
    let relay = e2e_tests::relay::UdpRelay::start(gw.tunnel_addr).await;
    relay.set_cut(true);
    let mut opts = on(TransportMode::Auto, backend.addr);
    opts.route.gateway_tcp = Some(gw.tunnel_tcp_addr.to_string());
    opts.terminal.shell = Some("/bin/sh".into());
    let mut cfg = device;
    cfg.gateway = relay.addr.to_string();
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let kind = |k| gw.sessions.get(&id).map(|s| s.conn.stats().kind) == Some(k);
    assert!(kind(TransportKind::Tcp), "not on the TCP fallback");

    let mut ws = tokio::time::timeout(
        Duration::from_secs(20),
        terminal::open(&gw, &uuid, Some(&operator), "cols=80&rows=24"),
    )
    .await
    .expect("terminal did not open within 20 s")
    .expect("terminal refused");
    type_and_wait(&mut ws, "echo $((6*7))", "42").await.unwrap();

    relay.set_cut(false);
    let moved = eventually(Duration::from_secs(60), || async {
        kind(TransportKind::Quic).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the agent never moved back to QUIC");
    // The public URL is served on the new connection...
    let (s, body) = get(&gw, &uuid).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"hello from mover"[..]));
    // ...and the terminal, still on the old one, answers.
    type_and_wait(&mut ws, "echo $((7*8))", "56")
        .await
        .expect("the terminal was cut by the move");
}
