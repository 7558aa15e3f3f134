//! The TLS-over-TCP tunnel listener against hostile and odd peers, a CONNECT proxy, and a
//! fleet with devices on both transports. In-process gateway and agents on real sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
