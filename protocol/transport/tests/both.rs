//! The connection abstraction on both transports, over real sockets on loopback with
//! real certificates: every test runs once on QUIC and once on TLS/TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::AppErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use transport::tls_tcp::MuxConfig;
use transport::{Connection, ConnectionError, ReadError, TransportKind, WriteError};

struct Pki {
    ca: certs::Ca,
    server: certs::ServerIdentity,
    device: certs::DeviceIdentity,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::load_or_create(dir.path()).unwrap();
    let server = ca.issue_server(&[]).unwrap();
    let device = ca.issue_device(certs::random_uuid()).unwrap();
    Pki { ca, server, device }
}

fn mux() -> MuxConfig {
    MuxConfig {
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(2),
        ..MuxConfig::default()
    }
}

/// A gateway-side and an agent-side connection of `kind`, the agent presenting `device`.
async fn connect(
    kind: TransportKind,
    pki: &Pki,
    device: &certs::DeviceIdentity,
) -> (Connection, Connection) {
    let server_tls = certs::server_config(pki.ca.cert_pem(), &pki.server).unwrap();
    let client_tls = certs::client_config(pki.ca.cert_pem(), device).unwrap();
    match kind {
        TransportKind::Quic => {
            let mut t = quinn::TransportConfig::default();
            t.keep_alive_interval(Some(Duration::from_millis(200)));
            t.max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()));
            transport::quic::loopback_pair(server_tls, client_tls, certs::TUNNEL_SERVER_NAME, t)
                .await
                .unwrap()
        }
        TransportKind::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server_tls = Arc::new(server_tls);
            let (g, a) = tokio::join!(
                async {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let tls = transport::tls_tcp::accept_tls(tcp, |_| Some(server_tls))
                        .await
                        .unwrap();
                    transport::tls_tcp::accept(tls, &mux()).await.unwrap()
                },
                async {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    transport::tls_tcp::connect(
                        tcp,
                        Arc::new(client_tls),
                        certs::TUNNEL_SERVER_NAME,
                        &mux(),
                    )
                    .await
                    .unwrap()
                }
            );
            (g, a)
        }
    }
}

const KINDS: [TransportKind; 2] = [TransportKind::Quic, TransportKind::Tcp];

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

#[tokio::test]
async fn identity_alpn_and_kind() {
    let pki = pki();
    for kind in KINDS {
        let (g, a) = connect(kind, &pki, &pki.device).await;
        assert_eq!(g.kind(), kind);
        assert_eq!(a.kind(), kind);
        assert_eq!(g.alpn().as_deref(), Some(certs::ALPN), "{kind}");
        let leaf = g.peer_certificates().expect("device certificate")[0].clone();
        assert_eq!(
            certs::device_uuid_from_cert(&leaf).unwrap(),
            pki.device.uuid
        );
        assert!(
            a.peer_certificates().is_some(),
            "{kind}: agent sees the gateway chain"
        );
        assert_eq!(g.remote_address().ip(), std::net::Ipv4Addr::LOCALHOST);
    }
}

/// Both sides open streams; bytes flow both ways; finish is an end of stream.
#[tokio::test]
async fn streams_open_from_both_sides() {
    let pki = pki();
    for kind in KINDS {
        let (g, a) = connect(kind, &pki, &pki.device).await;
        // Agent-opened (control, logs) and gateway-opened (HTTP, terminal) streams.
        for (opener, acceptor) in [(&a, &g), (&g, &a), (&a, &g), (&g, &a)] {
            let (mut s, mut r) = within("open", opener.open_bi()).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let (mut ps, mut pr) = within("accept", acceptor.accept_bi()).await.unwrap();
            let mut buf = [0u8; 4];
            pr.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping", "{kind}");
            ps.write_all(b"pong!").await.unwrap();
            ps.finish().unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"pong!", "{kind}");
            s.finish().unwrap();
            assert_eq!(
                pr.read_chunk(16).await.unwrap(),
                None,
                "{kind}: end of stream"
            );
        }
    }
}

/// A stream nobody reads does not block the others (per-stream flow control).
#[tokio::test]
async fn a_stuck_stream_does_not_block_others() {
    let pki = pki();
    for kind in KINDS {
        let (g, a) = connect(kind, &pki, &pki.device).await;
        let (mut stuck, _stuck_r) = g.open_bi().await.unwrap();
        // Fill the stuck stream's window (4 MiB) and more: the writer blocks.
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..(16 * 16) {
                if stuck.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let (_peer_s, _peer_r) = a.accept_bi().await.unwrap(); // accepted, never read
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !writer.is_finished(),
            "{kind}: 16 MiB cannot fit one stream's window"
        );
        // Another stream still carries data both ways at once.
        for _ in 0..3 {
            let (mut s, mut r) = within("open", g.open_bi()).await.unwrap();
            s.write_all(&vec![b'y'; 256 * 1024]).await.unwrap();
            s.finish().unwrap();
            let (mut ps, mut pr) = within("accept", a.accept_bi()).await.unwrap();
            let mut got = Vec::new();
            within("read", pr.read_to_end(&mut got)).await.unwrap();
            assert_eq!(got.len(), 256 * 1024, "{kind}");
            ps.write_all(b"ok").await.unwrap();
            ps.finish().unwrap();
            let mut back = Vec::new();
            within("read back", r.read_to_end(&mut back)).await.unwrap();
            assert_eq!(back, b"ok");
        }
        writer.abort();
    }
}

/// A reset carries our application code on both transports.
#[tokio::test]
async fn resets_carry_the_application_code() {
    let pki = pki();
    for kind in KINDS {
        let (g, a) = connect(kind, &pki, &pki.device).await;
        let (mut s, _r) = g.open_bi().await.unwrap();
        s.write_all(b"x").await.unwrap();
        let (_ps, mut pr) = a.accept_bi().await.unwrap();
        let mut one = [0u8; 1];
        pr.read_exact(&mut one).await.unwrap();
        s.reset(AppErrorCode::FrameTooLarge);
        let err = within("read", pr.read_chunk(10)).await.unwrap_err();
        assert_eq!(err, ReadError::Reset(6), "{kind}");
        assert_eq!(err.reset_code(), Some(AppErrorCode::FrameTooLarge));

        // The receiver's stop reaches the writer with its code.
        let (mut s, _r) = a.open_bi().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let (_ps, mut pr) = g.accept_bi().await.unwrap();
        pr.read_exact(&mut [0u8; 5]).await.unwrap();
        pr.stop(AppErrorCode::UnsupportedStream);
        let res = within("write after stop", async {
            loop {
                if let Err(e) = s.write_all(&[0u8; 1024]).await {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(res, WriteError::Stopped(7), "{kind}");
    }
}

/// What one side writes and finishes before stopping the other direction still arrives
/// (the agent's "target refused" answer does exactly this).
#[tokio::test]
async fn finish_then_stop_delivers_what_was_written() {
    let pki = pki();
    for kind in KINDS {
        let (g, a) = connect(kind, &pki, &pki.device).await;
        for _ in 0..20 {
            let (mut s, mut r) = g.open_bi().await.unwrap();
            s.write_all(b"request body that will not be read")
                .await
                .unwrap();
            let (mut ps, mut pr) = a.accept_bi().await.unwrap();
            ps.write_all(&[2]).await.unwrap();
            ps.finish().unwrap();
            pr.stop(AppErrorCode::NoError);
            drop((ps, pr));
            let mut status = Vec::new();
            within("status", r.read_to_end(&mut status)).await.unwrap();
            assert_eq!(status, [2], "{kind}");
        }
    }
}

/// A close says why, with our code and reason, and ends every stream.
#[tokio::test]
async fn close_carries_code_and_reason() {
    let pki = pki();
    for kind in KINDS {
        let (g, a) = connect(kind, &pki, &pki.device).await;
        let (_s, mut r) = a.open_bi().await.unwrap();
        g.close(AppErrorCode::UnknownDevice, b"device revoked");
        let why = within("closed", a.closed()).await;
        assert_eq!(
            why.app_code(),
            Some(AppErrorCode::UnknownDevice),
            "{kind}: {why}"
        );
        assert_eq!(why.reason(), "device revoked");
        assert!(why.to_string().contains("device revoked"), "{why}");
        assert!(matches!(
            within("read", r.read_chunk(10)).await,
            Err(ReadError::ConnectionLost(_))
        ));
        assert_eq!(g.close_reason(), Some(ConnectionError::LocallyClosed));
        assert!(a.open_bi().await.is_err(), "{kind}");
        // And the other way round.
        let (g, a) = connect(kind, &pki, &pki.device).await;
        a.close(AppErrorCode::Shutdown, b"agent shutting down");
        let why = within("closed", g.closed()).await;
        assert_eq!(
            why.app_code(),
            Some(AppErrorCode::Shutdown),
            "{kind}: {why}"
        );
        assert!(within("accept", g.accept_bi()).await.is_err());
    }
}

/// Dropping every handle closes the connection, as on quinn.
#[tokio::test]
async fn dropping_all_handles_closes() {
    let pki = pki();
    for kind in KINDS {
        let (g, a) = connect(kind, &pki, &pki.device).await;
        drop(a);
        let why = within("closed", g.closed()).await;
        assert!(
            matches!(why, ConnectionError::ApplicationClosed { code: 0, .. }),
            "{kind}: {why:?}"
        );
    }
}

/// A certificate from another CA is refused in the handshake.
#[tokio::test]
async fn foreign_certificates_are_refused() {
    let pki = pki();
    let other = pki_other();
    let server_tls = Arc::new(certs::server_config(pki.ca.cert_pem(), &pki.server).unwrap());
    let client_tls = Arc::new(certs::client_config(pki.ca.cert_pem(), &other).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        transport::tls_tcp::accept_tls(tcp, |_| Some(server_tls))
            .await
            .map(|_| ())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client =
        transport::tls_tcp::connect(tcp, client_tls, certs::TUNNEL_SERVER_NAME, &mux()).await;
    let server = within("server", server).await.unwrap();
    assert!(
        server.is_err() || client.is_err(),
        "a foreign client certificate was accepted"
    );
}

fn pki_other() -> certs::DeviceIdentity {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::load_or_create(dir.path()).unwrap();
    ca.issue_device(certs::random_uuid()).unwrap()
}

struct Relay {
    addr: SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio_util::sync::CancellationToken,
}

/// A TCP relay to `target` that can blackhole bytes (`frozen`) or drop both sockets
/// (`cut`, as a process death does: the kernel closes them).
async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut = tokio_util::sync::CancellationToken::new();
    let (f, c) = (Arc::clone(&frozen), cut.clone());
    tokio::spawn(async move {
        let (down, _) = listener.accept().await.unwrap();
        let up = TcpStream::connect(target).await.unwrap();
        let (mut dr, mut dw) = down.into_split();
        let (mut ur, mut uw) = up.into_split();
        let f2 = Arc::clone(&f);
        tokio::select! {
            _ = pipe(&mut dr, &mut uw, f2) => {}
            _ = pipe(&mut ur, &mut dw, f) => {}
            _ = c.cancelled() => {}
        }
    });
    Relay { addr, frozen, cut }
}

async fn tcp_via_relay(pki: &Pki) -> (Connection, Connection, Relay) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = relay(listener.local_addr().unwrap()).await;
    let server_tls = Arc::new(certs::server_config(pki.ca.cert_pem(), &pki.server).unwrap());
    let client_tls = Arc::new(certs::client_config(pki.ca.cert_pem(), &pki.device).unwrap());
    let (g, a) = tokio::join!(
        async {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = transport::tls_tcp::accept_tls(tcp, |_| Some(server_tls))
                .await
                .unwrap();
            transport::tls_tcp::accept(tls, &mux()).await.unwrap()
        },
        async {
            let tcp = TcpStream::connect(r.addr).await.unwrap();
            transport::tls_tcp::connect(tcp, client_tls, certs::TUNNEL_SERVER_NAME, &mux())
                .await
                .unwrap()
        }
    );
    (g, a, r)
}

/// A TCP peer that stops answering (keep-alive pings go unanswered) is declared dead
/// within the idle timeout; a peer whose sockets close without a close message (a
/// killed process) is noticed at once.
#[tokio::test]
async fn dead_tcp_peers_are_noticed() {
    let pki = pki();
    let (g, a, r) = tcp_via_relay(&pki).await;
    // RTT is measured by the keep-alive pings (every 200 ms here).
    let rtt = within("rtt", async {
        loop {
            if g.stats().rtt > Duration::ZERO && a.stats().rtt > Duration::ZERO {
                return g.stats().rtt;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    r.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let why = within("gateway notices", g.closed()).await;
    assert_eq!(why, ConnectionError::TimedOut);
    // idle timeout 2 s after the last answered ping (plus the ping interval).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The agent times out too, or sees the relay hang up once the gateway gave up.
    let why = within("agent notices", a.closed()).await;
    assert!(
        matches!(why, ConnectionError::TimedOut | ConnectionError::Reset),
        "{why:?}"
    );

    let (g, a, r) = tcp_via_relay(&pki).await;
    r.cut.cancel();
    assert_eq!(
        within("gateway notices", g.closed()).await,
        ConnectionError::Reset
    );
    assert_eq!(
        within("agent notices", a.closed()).await,
        ConnectionError::Reset
    );
}

async fn pipe(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            // A blackhole: bytes vanish.
            continue;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Through an HTTP CONNECT proxy.
#[tokio::test]
async fn tcp_through_a_connect_proxy() {
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = listener.local_addr().unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr: SocketAddr = proxy.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        let (mut c, _) = proxy.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(c.read_u8().await.unwrap());
        }
        let text = String::from_utf8(head).unwrap();
        *seen2.lock().unwrap() = text.clone();
        let target = text.split_whitespace().nth(1).unwrap().to_string();
        let mut up = TcpStream::connect(target).await.unwrap();
        c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
    });
    let server_tls = Arc::new(certs::server_config(pki.ca.cert_pem(), &pki.server).unwrap());
    let client_tls = Arc::new(certs::client_config(pki.ca.cert_pem(), &pki.device).unwrap());
    let p: transport::proxy::Proxy = format!("http://u:secret@{proxy_addr}").parse().unwrap();
    let (g, a) = tokio::join!(
        async {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = transport::tls_tcp::accept_tls(tcp, |_| Some(server_tls))
                .await
                .unwrap();
            transport::tls_tcp::accept(tls, &mux()).await.unwrap()
        },
        async {
            let tcp = transport::proxy::connect(&p, &gw_addr.to_string(), Duration::from_secs(5))
                .await
                .unwrap();
            transport::tls_tcp::connect(tcp, client_tls, certs::TUNNEL_SERVER_NAME, &mux())
                .await
                .unwrap()
        }
    );
    let text = seen.lock().unwrap().clone();
    assert!(
        text.starts_with(&format!("CONNECT {gw_addr} HTTP/1.1\r\n")),
        "{text}"
    );
    assert!(
        text.contains("Proxy-Authorization: Basic dTpzZWNyZXQ="),
        "{text}"
    );
    let (mut s, _r) = a.open_bi().await.unwrap();
    s.write_all(b"via proxy").await.unwrap();
    let (_ps, mut pr) = g.accept_bi().await.unwrap();
    let mut buf = [0u8; 9];
    pr.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"via proxy");

    // A proxy that refuses says so.
    let refusing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raddr = refusing.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut c, _) = refusing.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(c.read_u8().await.unwrap());
        }
        c.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            .await
            .unwrap();
    });
    let p: transport::proxy::Proxy = raddr.to_string().parse().unwrap();
    let err = transport::proxy::connect(&p, "gateway.example:443", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}
