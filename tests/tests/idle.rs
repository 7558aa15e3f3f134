//! What an idle tunnel costs on the wire. On QUIC only the agent keeps the tunnel alive,
//! at its own cadence (`--link normal|metered`): the gateway sends no keep-alives of its
//! own, which would cost a device on a metered link megabytes a day. In-process gateway
//! and agent, counted at the UDP relay between them.

use std::time::Duration;

use e2e_tests::relay::UdpRelay;
use e2e_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_quic_tunnel_moves_only_at_the_agents_cadence() {
    // The tests' gateway asks for heartbeats every 500 ms and used to ping at that rate.
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("quiet").await;
    let device = gw.add_device(true).await;
    let id: protocol::DeviceUuid = device.uuid.parse().unwrap();
    let relay = UdpRelay::start(gw.tunnel_addr).await;
    let mut opts = fast_agent_options(backend.addr);
    opts.route.mode = edge_agent::dial::TransportMode::Quic;
    // A metered link scaled down: a keep-alive every 4 s, dead after 20 s of silence.
    opts.keep_alive = Duration::from_secs(4);
    opts.idle_timeout = Duration::from_secs(20);
    let mut cfg = device;
    cfg.gateway = relay.addr.to_string();
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let session = gw.sessions.get(&id).expect("online").id;

    // An observation window: what the idle tunnel sends in 12 s.
    let (up0, down0) = relay.udp_counts();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (up1, down1) = relay.udp_counts();
    let (up, down) = (up1.0 - up0.0, down1.0 - down0.0);
    eprintln!(
        "12 s idle: agent sent {up} datagrams ({} B), gateway {down} ({} B)",
        up1.1 - up0.1,
        down1.1 - down0.1
    );
    // Still the same session: the gateway's liveness watch (three missed 4 s
    // keep-alives) and QUIC's idle timeout both accept the slow cadence.
    assert_eq!(gw.sessions.get(&id).map(|s| s.id), Some(session));
    // About one heartbeat each way every 4 s and the acknowledgements; a gateway that
    // pinged every 500 ms of its own would send 24 and more.
    assert!(
        down <= 15,
        "the gateway sent {down} datagrams in 12 s on an idle tunnel"
    );
    assert!(
        up <= 15,
        "the agent sent {up} datagrams in 12 s at a 4 s cadence"
    );
    let (s, _, body) = request(
        &http_client(),
        gw.http_addr,
        &device_host(&id.to_string()),
        "GET",
        "/",
        empty(),
    )
    .await;
    assert_eq!(
        (s, &body[..]),
        (http::StatusCode::OK, &b"hello from quiet"[..])
    );
}

/// On TCP the gateway pings too (to find dead peers), but no more often than the agent
/// said it pings itself in its hello: a metered agent is not charged for a second,
/// faster cadence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tcp_the_gateway_pings_no_faster_than_the_agent() {
    // The tests' gateway pings every 500 ms by its own setting.
    let gw = TestGateway::spawn().await;
    let backend = Backend::spawn("quiet").await;
    let device = gw.add_device(true).await;
    let id: protocol::DeviceUuid = device.uuid.parse().unwrap();
    let relay = UdpRelay::start(gw.tunnel_tcp_addr).await;
    let mut opts = fast_agent_options(backend.addr);
    opts.route.mode = edge_agent::dial::TransportMode::Tcp;
    opts.route.gateway_tcp = Some(relay.addr.to_string());
    opts.keep_alive = Duration::from_secs(4);
    opts.idle_timeout = Duration::from_secs(20);
    let mut agent = TestAgent::spawn_with(device, opts);
    agent.connected().await;
    let session = gw.sessions.get(&id).expect("online").id;

    let (up0, down0) = relay.tcp_bytes();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (up1, down1) = relay.tcp_bytes();
    let (up, down) = (up1 - up0, down1 - down0);
    eprintln!("12 s idle on TCP: agent sent {up} B, gateway {down} B");
    assert_eq!(gw.sessions.get(&id).map(|s| s.id), Some(session));
    // A ping costs about 40 bytes of TLS record; 24 of them from a gateway at 500 ms,
    // plus about one heartbeat answer (~80 B) every 4 s.
    assert!(
        down <= 700,
        "the gateway sent {down} bytes in 12 s on an idle TCP tunnel"
    );
}
