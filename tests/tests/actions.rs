//! Device actions end to end: API → queue → control stream → agent → configured side
//! effects (marker files in a temp dir) → result back; offline queueing, TTL, order,
//! exactly once, update locks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::*;
use http::StatusCode;
use serde_json::{json, Value};

struct Device {
    dir: tempfile::TempDir,
    cfg: edge_agent::AgentConfig,
}

impl Device {
    async fn new(gw: &TestGateway) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            cfg: gw.add_device(false).await,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self) -> TestAgent {
        let data = self.path("data");
        let mut hooks = edge_agent::device::Hooks::defaults(&data);
        let log = self.path("effects.log");
        let sh = |what: &str| {
            vec![
                "sh".to_string(),
                "-c".to_string(),
                format!("echo {what} >> '{}'", log.display()),
            ]
        };
        hooks.reboot = sh("reboot");
        hooks.shutdown = sh("shutdown");
        hooks.led = Some(self.path("led"));
        hooks.hostname_file = self.path("hostname");
        hooks.locks_root = self.path("locks");
        let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
        opts.data_dir = Some(data);
        opts.hooks = Some(hooks);
        TestAgent::spawn_with(self.cfg.clone(), opts)
    }

    fn effects(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("effects.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

async fn act(api: &Api, token: &str, uuid: &str, body: Value) -> Value {
    let (s, v) = api
        .call(
            "POST",
            &format!("/v1/devices/{uuid}/actions"),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    v
}

async fn wait_done(api: &Api, token: &str, id: &str) -> Value {
    eventually(Duration::from_secs(20), || async {
        let (_, v) = api
            .call("GET", &format!("/v1/actions/{id}"), Some(token), None)
            .await;
        matches!(
            v["status"].as_str(),
            Some("succeeded" | "failed" | "expired")
        )
        .then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("action {id} never finished"))
}

async fn run(api: &Api, token: &str, uuid: &str, body: Value) -> Value {
    let a = act(api, token, uuid, body).await;
    wait_done(api, token, a["id"].as_str().unwrap()).await
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_action_is_observed_on_the_device() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (viewer, operator, _) = tokens(&gw).await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();
    let mut agent = dev.start();
    agent.connected().await;

    // Viewers cannot act.
    let (s, _) = api
        .call(
            "POST",
            &format!("/v1/devices/{uuid}/actions"),
            Some(&viewer),
            Some(json!({"action": "blink"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let v = run(&api, &operator, &uuid, json!({"action": "blink"})).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    // The LED toggles every 500 ms for a while; written at all is what proves the blink.
    assert!(
        matches!(read(&dev.path("led")).as_str(), "1" | "0"),
        "the LED file was not written"
    );

    let v = run(&api, &operator, &uuid, json!({"action": "reboot"})).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let v = run(&api, &operator, &uuid, json!({"action": "shutdown"})).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(dev.effects(), vec!["reboot", "shutdown"]);

    let key_before = read(&dev.path("data/api-key"));
    let v = run(
        &api,
        &operator,
        &uuid,
        json!({"action": "regenerate-api-key"}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let key_after = read(&dev.path("data/api-key"));
    assert!(key_after.len() == 32 && key_after != key_before);

    let patch = json!({"network": {"hostname": "kiosk-7", "proxy": {"type": "socks5", "ip": "10.0.0.1", "port": 1080}}});
    let v = run(
        &api,
        &operator,
        &uuid,
        json!({"action": "host-config", "params": {"patch": patch}}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(read(&dev.path("hostname")), "kiosk-7\n");
    let v = run(&api, &operator, &uuid, json!({"action": "host-config"})).await;
    assert_eq!(v["detail"]["network"]["hostname"], "kiosk-7", "{v}");
    assert_eq!(v["detail"]["network"]["proxy"]["port"], 1080, "{v}");
    let v = run(&api, &operator, &uuid, json!({"action": "host-config", "params": {"patch": {"network": {"hostname": "bad host!"}}}})).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("hostname"), "{v}");

    let v = run(&api, &operator, &uuid, json!({"action": "update"})).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    // Container actions answer with the real state: no app runs here yet.
    let v = run(
        &api,
        &operator,
        &uuid,
        json!({"action": "restart", "params": {"appId": 1}}),
    )
    .await;
    assert_eq!(v["status"], "failed");
    assert!(v["detail"].as_str().unwrap().contains("not running"), "{v}");

    // Unknown actions are refused up front.
    let (s, v) = api
        .call(
            "POST",
            &format!("/v1/devices/{uuid}/actions"),
            Some(&operator),
            Some(json!({"action": "selfdestruct"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_action");
    // Every action is in the device's history and the audit log.
    let (_, list) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/actions"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 9);

    // The agent reported its state on connect; the API shows it.
    let (_, d) = api
        .call("GET", &format!("/v1/devices/{uuid}"), Some(&viewer), None)
        .await;
    assert_eq!(d["agent_version"], env!("CARGO_PKG_VERSION"), "{d}");
    assert_eq!(d["ip_addresses"], json!(["127.0.0.1"]), "{d}");
    assert_eq!(d["public_address"], "127.0.0.1", "{d}");
    assert_eq!(d["status"], "Idle", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_block_unless_forced() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, operator, _) = tokens(&gw).await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();
    let mut agent = dev.start();
    agent.connected().await;
    // Service "main" of app 1 holds balena's lock file.
    let lock_dir = dev.path("locks/1/main");
    std::fs::create_dir_all(&lock_dir).unwrap();
    std::fs::write(lock_dir.join("updates.lock"), "").unwrap();

    let v = run(&api, &operator, &uuid, json!({"action": "reboot"})).await;
    assert_eq!(
        (v["status"].as_str(), v["detail"].as_str()),
        (Some("failed"), Some("locked")),
        "{v}"
    );
    let v = run(
        &api,
        &operator,
        &uuid,
        json!({"action": "restart", "params": {"appId": 1}}),
    )
    .await;
    assert_eq!(v["detail"], "locked", "{v}");
    assert!(dev.effects().is_empty(), "a locked reboot ran");
    let v = run(
        &api,
        &operator,
        &uuid,
        json!({"action": "reboot", "force": true}),
    )
    .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(dev.effects(), vec!["reboot"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_queue_runs_once_in_order_and_expired_never_runs() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, operator, _) = tokens(&gw).await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();

    // Queued while the agent is not running.
    let expiring = act(
        &api,
        &operator,
        &uuid,
        json!({"action": "blink", "ttl_secs": 1}),
    )
    .await;
    assert_eq!(expiring["device_online"], false);
    let first = act(&api, &operator, &uuid, json!({"action": "reboot"})).await;
    let second = act(&api, &operator, &uuid, json!({"action": "shutdown"})).await;
    assert_eq!(first["status"], "pending");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut agent = dev.start();
    agent.connected().await;
    let a = wait_done(&api, &operator, first["id"].as_str().unwrap()).await;
    let b = wait_done(&api, &operator, second["id"].as_str().unwrap()).await;
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert_eq!(
        dev.effects(),
        vec!["reboot", "shutdown"],
        "wrong order or count"
    );
    let e = wait_done(&api, &operator, expiring["id"].as_str().unwrap()).await;
    assert_eq!(e["status"], "expired", "{e}");
    assert!(!dev.path("led").exists(), "an expired action ran");

    // Restarting the agent (same data dir) and reconnecting runs nothing again.
    agent.stop().await;
    let mut agent = dev.start();
    agent.connected().await;
    let v = run(&api, &operator, &uuid, json!({"action": "update"})).await;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(dev.effects(), vec!["reboot", "shutdown"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_actions_survive_a_gateway_restart() {
    let mut gw = TestGateway::spawn().await;
    let (_, operator, _) = tokens(&gw).await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();
    let queued = act(
        &Api::new(&gw),
        &operator,
        &uuid,
        json!({"action": "reboot"}),
    )
    .await;
    let tmp = gw.take_tmp();
    let mut cfg = test_config(gw.data_dir.clone());
    gw.stop().await;
    cfg.tunnel_listen = "127.0.0.1:0".parse().unwrap();
    let gw2 = TestGateway::spawn_with(cfg).await;
    // The device dials the new gateway's port.
    let mut dev = dev;
    dev.cfg.gateway = gw2.tunnel_addr.to_string();
    let mut agent = dev.start();
    agent.connected().await;
    let v = wait_done(&Api::new(&gw2), &operator, queued["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(dev.effects(), vec!["reboot"]);
    drop(tmp);
}
