//! The tunnel itself: mutual authentication, registration, protocol errors, restarts.
//! Some tests play one side of the protocol by hand (a fake gateway or a fake agent built
//! from the same `certs` and `protocol` crates) to send what a well-behaved peer never
//! would.

use std::sync::Arc;
use std::time::Duration;

use e2e_tests::*;
use edge_agent::wire::{self, FrameReader};
use edge_agent::ConnState;
use http::StatusCode;
use protocol::{
    AppErrorCode, ControlMessage, ErrorCode, HttpHeader, StreamHeader, TargetStatus,
    MAX_CONTROL_FRAME,
};

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

/// A device certificate from the gateway's CA, as a quinn client config.
fn fake_agent_client(gw: &TestGateway, identity: &certs::DeviceIdentity) -> quinn::ClientConfig {
    let ca = certs::Ca::load_or_create(&gw.data_dir).unwrap();
    let tls = certs::client_config(ca.cert_pem(), identity).unwrap();
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}

async fn fake_agent_connect(gw: &TestGateway) -> quinn::Connection {
    let cfg = gw.add_device(true).await;
    let identity = cfg.identity().unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(fake_agent_client(gw, &identity));
    ep.connect(gw.tunnel_addr, certs::TUNNEL_SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_mismatch_gets_a_clear_error_and_close() {
    let gw = TestGateway::spawn().await;
    let conn = fake_agent_connect(&gw).await;
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
        panic!("expected an error, got {reply:?}")
    };
    assert_eq!(code, ErrorCode::VersionMismatch);
    assert!(
        message.contains("[99]") && message.contains("[1]"),
        "{message}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    let text = wire::describe_close(&closed);
    assert!(text.contains("no common protocol version"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_agent_stream_closes_only_that_stream() {
    let gw = TestGateway::spawn().await;
    let conn = fake_agent_connect(&gw).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut bytes = StreamHeader::Control.to_vec().unwrap();
    ControlMessage::hello("fake").to_frame().encode(&mut bytes);
    send.write_all(&bytes).await.unwrap();
    let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
    let welcome = ControlMessage::from_frame(&reader.next().await.unwrap()).unwrap();
    assert!(matches!(
        welcome,
        ControlMessage::Welcome { version: 1, .. }
    ));

    // Garbage where a stream header belongs: that stream is reset with PROTOCOL_ERROR.
    let (mut bad_send, mut bad_recv) = conn.open_bi().await.unwrap();
    bad_send
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let err = bad_recv.read_to_end(1024).await.unwrap_err();
    assert!(
        matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))
            if code == wire::varint(AppErrorCode::ProtocolError)),
        "{err:?}"
    );
    // The connection and its control stream are still fine.
    wire::write_frame(&mut send, &ControlMessage::Heartbeat { seq: 7 }.to_frame())
        .await
        .unwrap();
    let ack = ControlMessage::from_frame(&reader.next().await.unwrap()).unwrap();
    assert_eq!(ack, ControlMessage::HeartbeatAck { seq: 7 });
    assert!(conn.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_stream_header_at_the_agent_closes_only_that_stream() {
    // A fake gateway: our CA, our server certificate, driven by hand.
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::load_or_create(dir.path()).unwrap();
    let server = ca.load_or_create_server(dir.path()).unwrap();
    let tls = certs::server_config(ca.cert_pem(), &server).unwrap();
    let server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
    ));
    let ep = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let identity = ca.issue_device(certs::random_uuid()).unwrap();
    let cfg = edge_agent::AgentConfig {
        uuid: identity.uuid.to_string(),
        gateway: ep.local_addr().unwrap().to_string(),
        server_name: certs::TUNNEL_SERVER_NAME.into(),
        ca_cert: ca.cert_pem().into(),
        cert: identity.cert_pem,
        key: identity.key_pem,
        target: None,
    };
    let backend = Backend::spawn("behind-agent").await;
    let _agent = TestAgent::spawn(cfg, backend.addr);

    let conn = ep.accept().await.unwrap().await.unwrap();
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
    let err = bad_recv.read_to_end(1024).await.unwrap_err();
    assert!(
        matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))
            if code == wire::varint(AppErrorCode::FrameTooLarge)),
        "{err:?}"
    );
    let (mut garbage_send, mut garbage_recv) = conn.open_bi().await.unwrap();
    garbage_send.write_all(b"hello?").await.unwrap();
    let err = garbage_recv.read_to_end(1024).await.unwrap_err();
    assert!(
        matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))
            if code == wire::varint(AppErrorCode::ProtocolError)),
        "{err:?}"
    );

    // The good stream still completes an HTTP exchange.
    good_send
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = good_recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(answer[0], TargetStatus::Connected as u8);
    let text = String::from_utf8_lossy(&answer[1..]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello from behind-agent"), "{text}");
    assert!(
        conn.close_reason().is_none(),
        "the agent dropped the connection"
    );
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
