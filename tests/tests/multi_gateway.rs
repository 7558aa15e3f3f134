//! Devices with several gateway addresses, with the shipped binaries: an agent whose
//! first address has nothing listening comes online on the next one; an agent on two
//! gateways that know it (the second one started on a copy of the first one's data dir:
//! same CA, same database) moves to the second when the first is `kill -9`ed; and a
//! provisioning key that lists a dead address first still provisions, writing the whole
//! list into the device file.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::procs::{self, try_get, wait_for_data_dir, wait_status};
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

/// `gateway device add --public-url --gateway LIST`: the device's uuid, or the command's
/// stderr when it failed.
fn device_add_list(data: &Path, list: &str, out: &Path) -> Result<String, String> {
    let o = Command::new(bin("gateway"))
        .args(["device", "add", "--data-dir"])
        .arg(data)
        .args(["--public-url", "--gateway", list, "--out"])
        .arg(out)
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let uuid = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(uuid.len(), 32, "{uuid}");
    Ok(uuid)
}

/// Waits until `serve` answers HTTP at all (its data dir is then complete).
async fn answering(http: u16) {
    assert!(
        eventually(Duration::from_secs(30), || try_get(
            http,
            "nothing.localhost"
        ))
        .await
        .is_some(),
        "gateway serve on {http} never answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_first_gateway_address_is_dead_comes_online_on_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let (http, tunnel) = (free_port_tcp(), free_port_udp());
    let _gw = procs::serve(&data, http, tunnel, &[]);
    wait_for_data_dir(&data).await;
    answering(http).await;

    // A bad entry is refused by name, and registers nothing.
    let cfg = dir.path().join("device.toml");
    let err = device_add_list(&data, "127.0.0.1:1,nonsense", &cfg).unwrap_err();
    assert!(
        err.contains("address 2 of 2, \"nonsense\" is not HOST:PORT"),
        "{err}"
    );
    assert!(!cfg.exists());

    // Nothing listens on the first address, UDP or TCP.
    let dead = free_port_udp();
    let live = format!("127.0.0.1:{tunnel}");
    let list = format!("127.0.0.1:{dead},{live}");
    let uuid = device_add_list(&data, &list, &cfg).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(&format!("gateway = \"{list}\"")), "{text}");

    let backend = Backend::spawn("second-address").await;
    let (_agent, log) = procs::logged_agent(&cfg, backend.addr);
    // One failed dial of the dead address (QUIC waits its 10 s handshake timeout), then
    // the live one at once.
    assert!(
        wait_status(
            http,
            &device_host(&uuid),
            StatusCode::OK,
            Duration::from_secs(30)
        )
        .await,
        "the device never came online through its second address; agent log:\n{}",
        log.lock().unwrap().join("\n")
    );
    // The log names the address actually dialled.
    let connected = eventually(Duration::from_secs(5), || {
        let (log, live) = (Arc::clone(&log), live.clone());
        async move {
            log.lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("connected") && l.contains(&live))
                .cloned()
        }
    })
    .await;
    let lines = log.lock().unwrap().join("\n");
    assert!(connected.is_some(), "{lines}");
    assert!(
        lines
            .lines()
            .any(|l| l.contains("connecting") && l.contains(&format!("127.0.0.1:{dead}"))),
        "{lines}"
    );
}

/// Copies a stopped gateway's data dir (CA, tunnel certificate, database) to `to`.
fn copy_data_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "serve.lock" || !entry.file_type().unwrap().is_file() {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_moves_to_its_second_gateway_when_the_first_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    // A comes back on the same ports after the copy: ports below the ephemeral range.
    let (http_a, tunnel_a) = (stable_port(false), stable_port(true));
    let (http_b, tunnel_b) = (free_port_tcp(), free_port_udp());
    let mut a = procs::serve(&data_a, http_a, tunnel_a, &[]);
    wait_for_data_dir(&data_a).await;
    answering(http_a).await;
    // Register the device while A is stopped, and copy A's data dir for B: both know the
    // device and share the CA its certificate chains to.
    a.proc.kill9();
    let cfg = dir.path().join("device.toml");
    let list = format!("127.0.0.1:{tunnel_a},127.0.0.1:{tunnel_b}");
    let uuid = device_add_list(&data_a, &list, &cfg).unwrap();
    copy_data_dir(&data_a, &data_b);
    let mut a = procs::serve(&data_a, http_a, tunnel_a, &[]);
    let _b = procs::serve(&data_b, http_b, tunnel_b, &[]);
    answering(http_a).await;
    answering(http_b).await;

    let host = device_host(&uuid);
    let backend = Backend::spawn("failover").await;
    let (_agent, log) = procs::logged_agent(&cfg, backend.addr);
    let dump = || log.lock().unwrap().join("\n");
    assert!(
        wait_status(http_a, &host, StatusCode::OK, Duration::from_secs(30)).await,
        "the device never came online on A; agent log:\n{}",
        dump()
    );
    // It is on A, the first address: B knows the device but has no tunnel to it.
    let (status, _) = try_get(http_b, &host).await.expect("B answers");
    assert_ne!(status, StatusCode::OK, "the device is on A, not B");

    a.proc.kill9();
    // The agent notices A is gone (its liveness window, about 8 s) and dials B next,
    // without a backoff.
    assert!(
        wait_status(http_b, &host, StatusCode::OK, Duration::from_secs(30)).await,
        "the device never came online on B after A was killed; agent log:\n{}",
        dump()
    );
    let (_, body) = try_get(http_b, &host).await.unwrap();
    assert_eq!(body, "hello from failover");
    assert!(
        dump()
            .lines()
            .any(|l| l.contains("connected") && l.contains(&format!("127.0.0.1:{tunnel_b}"))),
        "{}",
        dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_listing_a_dead_address_first_provisions_and_keeps_the_list() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": "multi", "public_url_default": true})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets/multi/keys",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let key = protocol::ProvisioningKey::decode(v["key"].as_str().unwrap()).unwrap();
    let dead = free_port_udp();
    let list = format!("127.0.0.1:{dead},{}", key.gateway);
    let listed = protocol::ProvisioningKey {
        gateway: list.clone(),
        ..key
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("device");
    let o = Command::new(bin("edge-agent"))
        .args(["provision", "--key", &listed.encode(), "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .env_remove("EDGE_AGENT_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Its log (on stdout) said which address failed before the next one worked.
    assert!(
        stdout.contains(&format!("127.0.0.1:{dead}")) && stdout.contains("trying the next"),
        "{stdout}"
    );
    let uuid = stdout.lines().last().unwrap().trim().to_string();
    assert_eq!(uuid.len(), 32, "{uuid}");
    let cfg = edge_agent::AgentConfig::load(&data.join("identity.toml")).unwrap();
    assert_eq!(cfg.gateway, list);
    assert_eq!(cfg.uuid, uuid);
}
