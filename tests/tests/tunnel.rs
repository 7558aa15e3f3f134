//! The tunnel itself: mutual authentication, registration, protocol errors, restarts.
//! Some tests play one side of the protocol by hand (a fake gateway or a fake agent built
//! from the same `certs` and `protocol` crates) to send what a well-behaved peer never
//! would.

use std::sync::Arc;
use std::time::Duration;

use e2e_tests::*;
use edge_agent::ConnState;
use http::StatusCode;
use protocol::{
    AppErrorCode, ControlMessage, ErrorCode, HttpHeader, StreamHeader, TargetStatus,
    MAX_CONTROL_FRAME,
};
use transport::wire::{self, FrameReader};
use transport::TransportKind;

async fn backing_off_reason(agent: &mut TestAgent) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let ConnState::BackingOff { reason } = agent.state.borrow().clone() {
                return reason;
            }
            agent.state.changed().await.unwrap();
        }
    })
    .await
    .expect("agent never reported a failure")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_from_another_ca_is_refused() {
    let gw = TestGateway::spawn().await;
    let good = gw.add_device(true).await;
    let other = tempfile::tempdir().unwrap();
    let rogue_ca = certs::Ca::load_or_create(other.path()).unwrap();
    // Claims the uuid of a registered device, signed by a CA the gateway does not trust.
    let forged = rogue_ca.issue_device(good.uuid.parse().unwrap()).unwrap();
    let cfg = edge_agent::AgentConfig {
        cert: forged.cert_pem,
        key: forged.key_pem,
        ..good.clone()
    };
    let mut agent = TestAgent::spawn(cfg, "127.0.0.1:9".parse().unwrap());
    let reason = backing_off_reason(&mut agent).await;
    assert!(!reason.is_empty());
    assert_eq!(gw.sessions.len(), 0, "a forged certificate got a session");
    let c = http_client();
    let (s, _, _) = request(
        &c,
        gw.http_addr,
        &device_host(&good.uuid),
        "GET",
        "/",
        empty(),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_refuses_a_gateway_it_does_not_trust() {
    let gw = TestGateway::spawn().await;
    let good = gw.add_device(true).await;
    let other = tempfile::tempdir().unwrap();
    let other_ca = certs::Ca::load_or_create(other.path()).unwrap();
    let cfg = edge_agent::AgentConfig {
        ca_cert: other_ca.cert_pem().to_string(),
        ..good
    };
    let mut agent = TestAgent::spawn(cfg, "127.0.0.1:9".parse().unwrap());
    let reason = backing_off_reason(&mut agent).await;
    assert!(
        reason.to_lowercase().contains("certificate") || reason.contains("UnknownIssuer"),
        "{reason}"
    );
    assert_eq!(gw.sessions.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_not_added_is_refused_with_a_clear_reason() {
    let gw = TestGateway::spawn().await;
    let template = gw.add_device(true).await;
    // Signed by the gateway's own CA, but never registered in its store.
    let ca = certs::Ca::load_or_create(&gw.data_dir).unwrap();
    let stranger = ca.issue_device(certs::random_uuid()).unwrap();
    let cfg = edge_agent::AgentConfig {
        uuid: stranger.uuid.to_string(),
        cert: stranger.cert_pem,
        key: stranger.key_pem,
        ..template
    };
    let mut agent = TestAgent::spawn(cfg, "127.0.0.1:9".parse().unwrap());
    let reason = backing_off_reason(&mut agent).await;
    assert!(reason.contains("device unknown or revoked"), "{reason}");
    assert_eq!(gw.sessions.len(), 0);
}

/// Connects as a registered device with a real certificate, over `kind`.
async fn fake_agent_connect(gw: &TestGateway, kind: TransportKind) -> transport::Connection {
    let cfg = gw.add_device(true).await;
    let identity = cfg.identity().unwrap();
    let ca = certs::Ca::load_or_create(&gw.data_dir).unwrap();
    let tls = certs::client_config(ca.cert_pem(), &identity).unwrap();
    dial_tunnel(kind, gw.tunnel_addr, gw.tunnel_tcp_addr, tls)
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// Reads `recv` to its end (at most `limit` bytes).
async fn read_all(
    recv: &mut transport::RecvStream,
    limit: usize,
) -> Result<Vec<u8>, transport::ReadError> {
    let mut out = Vec::new();
    while let Some(chunk) = recv.read_chunk(64 * 1024).await? {
        out.extend_from_slice(&chunk);
        assert!(out.len() <= limit, "more than {limit} bytes");
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_mismatch_gets_a_clear_error_and_close() {
    let gw = TestGateway::spawn().await;
    for kind in TRANSPORTS {
        let conn = fake_agent_connect(&gw, kind).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let mut bytes = StreamHeader::Control.to_vec().unwrap();
        ControlMessage::Hello {
            versions: vec![99],
            capabilities: vec![],
            agent_version: "from the future".into(),
            instance: None,
            keep_alive_ms: None,
        }
        .to_frame()
        .encode(&mut bytes);
        send.write_all(&bytes).await.unwrap();
        let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
        let reply = ControlMessage::from_frame(&reader.next().await.unwrap()).unwrap();
        let ControlMessage::Error { code, message } = reply else {
            panic!("{kind}: expected an error, got {reply:?}")
        };
        assert_eq!(code, ErrorCode::VersionMismatch, "{kind}");
        assert!(
            message.contains("[99]") && message.contains("[1]"),
            "{kind}: {message}"
        );
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap();
        assert_eq!(
            closed.app_code(),
            Some(AppErrorCode::VersionMismatch),
            "{kind}"
        );
        let text = closed.to_string();
        assert!(
            text.contains("no common protocol version"),
            "{kind}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_agent_stream_closes_only_that_stream() {
    let gw = TestGateway::spawn().await;
    for kind in TRANSPORTS {
        let conn = fake_agent_connect(&gw, kind).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let mut bytes = StreamHeader::Control.to_vec().unwrap();
        ControlMessage::hello("fake").to_frame().encode(&mut bytes);
        send.write_all(&bytes).await.unwrap();
        let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
        let welcome = ControlMessage::from_frame(&reader.next().await.unwrap()).unwrap();
        assert!(
            matches!(welcome, ControlMessage::Welcome { version: 1, .. }),
            "{kind}: {welcome:?}"
        );

        // Garbage where a stream header belongs: that stream is reset with PROTOCOL_ERROR.
        let (mut bad_send, mut bad_recv) = conn.open_bi().await.unwrap();
        bad_send
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = read_all(&mut bad_recv, 1024).await.unwrap_err();
        assert_eq!(
            err.reset_code(),
            Some(AppErrorCode::ProtocolError),
            "{kind}: {err:?}"
        );
        // The connection and its control stream are still fine.
        wire::write_frame(&mut send, &ControlMessage::Heartbeat { seq: 7 }.to_frame())
            .await
            .unwrap();
        let ack = ControlMessage::from_frame(&reader.next().await.unwrap()).unwrap();
        assert_eq!(ack, ControlMessage::HeartbeatAck { seq: 7 }, "{kind}");
        assert!(conn.close_reason().is_none(), "{kind}");
    }
}

/// A fake gateway on `kind`: our CA, our server certificate, driven by hand.
enum FakeGateway {
    Quic(quinn::Endpoint),
    Tcp(
        tokio::net::TcpListener,
        std::sync::Arc<rustls::ServerConfig>,
    ),
}

impl FakeGateway {
    fn start(kind: TransportKind, tls: rustls::ServerConfig) -> Self {
        match kind {
            TransportKind::Quic => {
                let mut server = quinn::ServerConfig::with_crypto(Arc::new(
                    quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
                ));
                server.transport_config(Arc::new(quinn::TransportConfig::default()));
                let socket = transport::net::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
                Self::Quic(transport::quic::endpoint(socket, Some(server), None).unwrap())
            }
            TransportKind::Tcp => {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.set_nonblocking(true).unwrap();
                Self::Tcp(tokio::net::TcpListener::from_std(l).unwrap(), Arc::new(tls))
            }
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Self::Quic(ep) => ep.local_addr().unwrap(),
            Self::Tcp(l, _) => l.local_addr().unwrap(),
        }
    }

    async fn accept(&self) -> transport::Connection {
        match self {
            Self::Quic(ep) => transport::quic::accept(ep.accept().await.unwrap())
                .await
                .unwrap(),
            Self::Tcp(l, tls) => {
                let (tcp, _) = l.accept().await.unwrap();
                let tls = Arc::clone(tls);
                let stream = transport::tls_tcp::accept_tls(tcp, move |_| Some(tls))
                    .await
                    .unwrap();
                transport::tls_tcp::accept(stream, &Default::default())
                    .await
                    .unwrap()
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_stream_header_at_the_agent_closes_only_that_stream() {
    for kind in TRANSPORTS {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::Ca::load_or_create(dir.path()).unwrap();
        let server = ca.load_or_create_server(dir.path()).unwrap();
        let tls = certs::server_config(ca.cert_pem(), &server).unwrap();
        let gw = FakeGateway::start(kind, tls);
        let identity = ca.issue_device(certs::random_uuid()).unwrap();
        let cfg = edge_agent::AgentConfig {
            uuid: identity.uuid.to_string(),
            gateway: gw.addr().to_string(),
            server_name: certs::TUNNEL_SERVER_NAME.into(),
            ca_cert: ca.cert_pem().into(),
            cert: identity.cert_pem,
            key: identity.key_pem,
            target: None,
        };
        let backend = Backend::spawn("behind-agent").await;
        let mut opts = fast_agent_options(backend.addr);
        opts.route.mode = match kind {
            TransportKind::Quic => edge_agent::dial::TransportMode::Quic,
            TransportKind::Tcp => edge_agent::dial::TransportMode::Tcp,
        };
        let _agent = TestAgent::spawn_with(cfg, opts);

        let conn = gw.accept().await;
        assert_eq!(conn.kind(), kind);
        let (mut csend, mut crecv) = conn.accept_bi().await.unwrap();
        assert_eq!(
            wire::read_header(&mut crecv).await.unwrap(),
            StreamHeader::Control
        );
        let mut reader = FrameReader::new(crecv, MAX_CONTROL_FRAME);
        assert!(matches!(
            ControlMessage::from_frame(&reader.next().await.unwrap()).unwrap(),
            ControlMessage::Hello { .. }
        ));
        let welcome = ControlMessage::Welcome {
            version: 1,
            capabilities: vec![],
            device: identity.uuid.to_string(),
            heartbeat_interval_ms: 500,
        };
        wire::write_frame(&mut csend, &welcome.to_frame())
            .await
            .unwrap();

        // A good stream opened first and left half-done while the bad one arrives.
        let (mut good_send, mut good_recv) = conn.open_bi().await.unwrap();
        good_send
            .write_all(&StreamHeader::Http(HttpHeader::default()).to_vec().unwrap())
            .await
            .unwrap();
        let (mut bad_send, mut bad_recv) = conn.open_bi().await.unwrap();
        bad_send.write_all(&[0xE7, 1, 0xff, 0xff]).await.unwrap(); // oversized header
        let err = read_all(&mut bad_recv, 1024).await.unwrap_err();
        assert_eq!(
            err.reset_code(),
            Some(AppErrorCode::FrameTooLarge),
            "{kind}: {err:?}"
        );
        let (mut garbage_send, mut garbage_recv) = conn.open_bi().await.unwrap();
        garbage_send.write_all(b"hello?").await.unwrap();
        let err = read_all(&mut garbage_recv, 1024).await.unwrap_err();
        assert_eq!(
            err.reset_code(),
            Some(AppErrorCode::ProtocolError),
            "{kind}: {err:?}"
        );

        // The good stream still completes an HTTP exchange.
        good_send
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut good_recv, 1 << 20).await.unwrap();
        assert_eq!(answer[0], TargetStatus::Connected as u8, "{kind}");
        let text = String::from_utf8_lossy(&answer[1..]);
        assert!(text.starts_with("HTTP/1.1 200"), "{kind}: {text}");
        assert!(text.ends_with("hello from behind-agent"), "{kind}: {text}");
        assert!(
            conn.close_reason().is_none(),
            "{kind}: the agent dropped the connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_restart_agent_reconnects_without_help() {
    let mut gw = TestGateway::spawn().await;
    let backend = Backend::spawn("survivor").await;
    let cfg = gw.add_device(true).await;
    let host = device_host(&cfg.uuid);
    let mut agent = TestAgent::spawn(cfg, backend.addr);
    agent.connected().await;
    let c = http_client();
    let (s, _, _) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
    assert_eq!(s, StatusCode::OK);

    let (http_addr, tunnel_addr, data_dir) = (gw.http_addr, gw.tunnel_addr, gw.data_dir.clone());
    let tmp = gw.take_tmp();
    gw.stop().await;
    // The agent notices and backs off (the reason is "peer is shutting down", or the
    // refusal of a retry that raced the old endpoint's close).
    let reason = backing_off_reason(&mut agent).await;
    assert!(!reason.is_empty());

    let mut cfg = test_config(data_dir);
    cfg.http_listen = http_addr;
    cfg.tunnel_listen = tunnel_addr;
    let gw2 = TestGateway::spawn_with(cfg).await;
    agent.connected().await;
    let c = http_client();
    let (s, _, b) = request(&c, gw2.http_addr, &host, "GET", "/", empty()).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"hello from survivor"[..]));
    drop(tmp);
}

/// An agent that does not announce its keep-alive in its hello (an older agent, or
/// another implementation) and then goes silent is called offline after the gateway's
/// idle timeout (3 s in the tests), not after whatever idle timeout the agent offered
/// (quinn's default 30 s here): the gateway accepts long QUIC idle timeouts only for
/// agents that say how often they ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_agent_without_announced_keep_alive_is_dropped_after_the_idle_timeout() {
    let gw = TestGateway::spawn().await;
    let conn = fake_agent_connect(&gw, TransportKind::Quic).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut bytes = StreamHeader::Control.to_vec().unwrap();
    ControlMessage::Hello {
        versions: vec![1],
        capabilities: vec![],
        agent_version: "quiet".into(),
        instance: None,
        keep_alive_ms: None,
    }
    .to_frame()
    .encode(&mut bytes);
    send.write_all(&bytes).await.unwrap();
    let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
    let welcome = ControlMessage::from_frame(&reader.next().await.unwrap()).unwrap();
    assert!(
        matches!(welcome, ControlMessage::Welcome { .. }),
        "{welcome:?}"
    );
    assert_eq!(gw.sessions.len(), 1);
    // From now on this agent sends nothing (no keep-alives, no heartbeats).
    let started = std::time::Instant::now();
    let gone = eventually(Duration::from_secs(20), || async {
        gw.sessions.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "a silent agent stayed online for 20 s");
    eprintln!("silent agent dropped after {:?}", started.elapsed());
    drop((send, reader, conn));
}
