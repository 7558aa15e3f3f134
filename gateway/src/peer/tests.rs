//! The holding side of the peer link over real QUIC: who may open a peer link, and
//! what an unknown device gets.

use super::*;

/// A peer endpoint of a fresh CA on 127.0.0.1, serving an empty session table.
async fn holder(dir: &std::path::Path) -> (certs::Ca, SocketAddr, CancellationToken) {
    let ca = certs::Ca::create_new(dir).unwrap();
    let id = ca.issue_node("holder").unwrap();
    let server = server_config(certs::peer_server_config(ca.cert_pem(), &id).unwrap()).unwrap();
    let socket = transport::net::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let ep = transport::quic::endpoint(socket, Some(server), None).unwrap();
    let addr = ep.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        ep,
        Arc::new(Sessions::default()),
        8,
        stop.clone(),
        TaskTracker::new(),
    ));
    (ca, addr, stop)
}

/// Dials `addr` with `tls` and asks for an `Http` stream to some device: the holder's
/// answer, or the error that prevented one.
async fn ask(addr: SocketAddr, mut tls: rustls::ClientConfig) -> Result<PeerAnswer, String> {
    tls.alpn_protocols = vec![certs::PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let socket = transport::net::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    let ep = transport::quic::endpoint(socket, None, None).unwrap();
    let work = async {
        let conn = transport::quic::connect(
            &ep,
            quinn::ClientConfig::new(Arc::new(quic)),
            addr,
            certs::PEER_SERVER_NAME,
        )
        .await
        .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let device: DeviceUuid = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let mut first = PeerOpen { device }.encode().to_vec();
        first.extend(
            StreamHeader::Http(protocol::HttpHeader::default())
                .to_vec()
                .unwrap(),
        );
        send.write_all(&first).await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(PeerAnswer::from_u8(b[0]))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "no answer in 10 s".to_string())?
}

#[tokio::test]
async fn a_node_of_the_fleet_gets_not_here_for_a_device_it_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, addr, _stop) = holder(dir.path()).await;
    let me = ca.issue_node("asker").unwrap();
    let tls = certs::peer_client_config(ca.cert_pem(), &me).unwrap();
    assert_eq!(ask(addr, tls).await, Ok(PeerAnswer::NotHere));
}

#[tokio::test]
async fn a_device_certificate_cannot_open_a_peer_link() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, addr, _stop) = holder(dir.path()).await;
    let device = ca.issue_device(certs::random_uuid()).unwrap();
    let tls = certs::client_config(ca.cert_pem(), &device).unwrap();
    let got = ask(addr, tls).await;
    assert!(
        got.is_err(),
        "a device certificate got a peer answer: {got:?}"
    );
}

#[tokio::test]
async fn a_node_certificate_of_another_ca_cannot_open_a_peer_link() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, addr, _stop) = holder(dir.path()).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = certs::Ca::create_new(other_dir.path()).unwrap();
    let foreign = other.issue_node("intruder").unwrap();
    // It trusts our CA (so that only the holder's check of its certificate can fail).
    let tls = certs::peer_client_config(ca.cert_pem(), &foreign).unwrap();
    let got = ask(addr, tls).await;
    assert!(got.is_err(), "another CA's node got a peer answer: {got:?}");
}
