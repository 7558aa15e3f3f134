//! The TLS-over-TCP fallback with the shipped binaries: a device on a network that drops
//! UDP comes online over TCP, everything works there, and it moves back to QUIC once UDP
//! passes again, losing and repeating nothing. UDP is dropped by the relay in
//! `tests/src/relay.rs`, between the agent and the gateway's UDP port.

use std::time::{Duration, Instant};

use e2e_tests::procs::{self, admin_token, api_json, device_add, wait_for_data_dir, wait_status};
use e2e_tests::relay::UdpRelay;
use e2e_tests::*;
use http::StatusCode;

/// The device's `transport` as the API shows it, once it is online.
async fn transport_of(api: std::net::SocketAddr, token: &str, uuid: &str) -> Option<String> {
    let (status, v) = api_json(api, token, "GET", &format!("/v1/devices/{uuid}"), None).await?;
    (status == StatusCode::OK && v["online"] == true)
        .then(|| v["transport"].as_str().unwrap_or_default().to_string())
}

async fn wait_transport(
    api: std::net::SocketAddr,
    token: &str,
    uuid: &str,
    want: &str,
    limit: Duration,
) -> bool {
    eventually(limit, || async {
        transport_of(api, token, uuid)
            .await
            .filter(|t| t == want)
            .map(|_| ())
    })
    .await
    .is_some()
}

/// Every line the gateway stored for `uuid`, oldest first.
async fn stored_lines(
    api: std::net::SocketAddr,
    token: &str,
    uuid: &str,
) -> Vec<serde_json::Value> {
    let (status, v) = api_json(api, token, "GET", &format!("/v1/devices/{uuid}/logs"), None)
        .await
        .expect("API answers");
    assert_eq!(status, StatusCode::OK, "{v}");
    v["lines"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_device_comes_online_over_tcp_and_returns_to_quic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let backend = Backend::spawn("behind-a-firewall").await;
    let (http, tunnel, api_port) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    // TCP on the same port number as UDP, as by default.
    let _gw = procs::serve(
        &data,
        http,
        tunnel,
        &["--api-listen", &api.to_string(), "--keep-alive", "1s"],
    );
    wait_for_data_dir(&data).await;
    let token = admin_token(&data);

    // The agent reaches UDP only through the relay, which drops everything for now.
    let relay = UdpRelay::start(format!("127.0.0.1:{tunnel}").parse().unwrap()).await;
    relay.set_cut(true);
    let cfg = dir.path().join("device.toml");
    let uuid = device_add(&data, relay.addr.port(), &cfg);
    let host = device_host(&uuid);
    let reboots = dir.path().join("reboots");
    let reboot = dir.path().join("reboot.sh");
    std::fs::write(
        &reboot,
        format!("#!/bin/sh\necho rebooted >> '{}'\n", reboots.display()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&reboot, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let started = Instant::now();
    let _agent = procs::agent(
        &cfg,
        backend.addr,
        &[
            "--gateway-tcp",
            &format!("127.0.0.1:{tunnel}"),
            "--reboot-command",
            reboot.to_str().unwrap(),
            "--engine",
            "none",
        ],
    );

    // Online over TCP within 5 s of start (asserted with margin for a loaded machine).
    assert!(
        wait_transport(api, &token, &uuid, "tcp", Duration::from_secs(30)).await,
        "the device never came online over TCP"
    );
    let online_after = started.elapsed();
    eprintln!("online over TCP {online_after:?} after start");
    assert!(
        online_after < Duration::from_secs(10),
        "online over TCP only after {online_after:?} (target 5 s)"
    );
    // The URL and an action work over TCP.
    assert!(wait_status(http, &host, StatusCode::OK, Duration::from_secs(10)).await);
    let (status, action) = api_json(
        api,
        &token,
        "POST",
        &format!("/v1/devices/{uuid}/actions"),
        Some(serde_json::json!({"action": "reboot"})),
    )
    .await
    .unwrap();
    assert!(status.is_success(), "{status} {action}");
    assert!(
        eventually(Duration::from_secs(20), || async {
            std::fs::read_to_string(&reboots)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .await
        .is_some(),
        "the action never ran over TCP"
    );

    // UDP passes again: back on QUIC within 60 s, URL still working.
    relay.set_cut(false);
    let unblocked = Instant::now();
    assert!(
        wait_transport(api, &token, &uuid, "quic", Duration::from_secs(60)).await,
        "the device did not move back to QUIC within 60 s"
    );
    eprintln!(
        "back on QUIC {:?} after UDP was unblocked",
        unblocked.elapsed()
    );
    assert!(wait_status(http, &host, StatusCode::OK, Duration::from_secs(10)).await);

    // Nothing ran twice, nothing was lost or stored twice across the move: the agent's
    // own log lines (connects, the action) arrive with consecutive sequence numbers.
    assert_eq!(
        std::fs::read_to_string(&reboots).unwrap().lines().count(),
        1,
        "the reboot action ran more than once"
    );
    let lines = eventually(Duration::from_secs(20), || async {
        let lines = stored_lines(api, &token, &uuid).await;
        lines
            .iter()
            .any(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Connected to the gateway"))
                    && l["seq"].as_u64() > Some(3)
            })
            .then_some(lines)
    })
    .await
    .expect("the connect after the move never reached the gateway's log store");
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert!(!seqs.is_empty());
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "a gap or a duplicate in the stored lines: {seqs:?}"
        );
    }
    let received = lines
        .iter()
        .filter(|l| l["message"].as_str() == Some("Action reboot received"))
        .count();
    assert_eq!(received, 1, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_blackholed_mid_session_moves_the_device_to_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let backend = Backend::spawn("survives-a-blackhole").await;
    let (http, tunnel, api_port) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let _gw = procs::serve(&data, http, tunnel, &["--api-listen", &api.to_string()]);
    wait_for_data_dir(&data).await;
    let token = admin_token(&data);
    let relay = UdpRelay::start(format!("127.0.0.1:{tunnel}").parse().unwrap()).await;
    let cfg = dir.path().join("device.toml");
    let uuid = device_add(&data, relay.addr.port(), &cfg);
    let host = device_host(&uuid);
    // Default timings: 1 s keep-alive, 15 s idle timeout.
    let _agent = procs::agent(
        &cfg,
        backend.addr,
        &[
            "--gateway-tcp",
            &format!("127.0.0.1:{tunnel}"),
            "--engine",
            "none",
        ],
    );
    assert!(
        wait_transport(api, &token, &uuid, "quic", Duration::from_secs(30)).await,
        "the device never came online over QUIC"
    );

    // UDP vanishes while connected: the device is reachable again over TCP within the
    // idle timeout plus 5 s (asserted with margin).
    relay.set_cut(true);
    let cut = Instant::now();
    assert!(
        wait_transport(api, &token, &uuid, "tcp", Duration::from_secs(60)).await,
        "the device never moved to TCP"
    );
    let moved = cut.elapsed();
    eprintln!("on TCP {moved:?} after UDP was blackholed");
    assert!(
        moved < Duration::from_secs(15 + 5 + 10),
        "the device was unreachable for {moved:?}"
    );
    assert!(wait_status(http, &host, StatusCode::OK, Duration::from_secs(10)).await);
}
