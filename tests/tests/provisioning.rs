//! Provisioning with fleet keys, with real `edge-agent` processes against a real gateway.

use std::process::Command;
use std::time::Duration;

use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

fn agent(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(bin("edge-agent"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("EDGE_AGENT_KEY")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn new_key(api: &Api, admin: &str, fleet: &str, body: serde_json::Value) -> String {
    let (s, v) = api
        .call(
            "POST",
            &format!("/v1/fleets/{fleet}/keys"),
            Some(admin),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let key = v["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("epk1."), "{key}");
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_with_keys_and_the_refusals() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let (s, _) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": "factory", "public_url_default": true})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let dir = tempfile::tempdir().unwrap();
    let d1 = dir.path().join("d1");
    let d1s = d1.to_str().unwrap();

    // A one-use key: the first device gets an identity, the second is refused.
    let key = new_key(&api, &admin, "factory", json!({"max_uses": 1})).await;
    let (ok, uuid, err) = agent(&["provision", "--key", &key, "--data-dir", d1s]);
    assert!(ok, "{err}");
    assert_eq!(uuid.len(), 32, "{uuid}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d1.join("identity.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (ok, api_key, _) = agent(&["api-key", "--data-dir", d1s]);
    assert!(ok);
    assert_eq!(api_key.len(), 32);
    assert_eq!(
        std::fs::read_to_string(d1.join("api-key")).unwrap().trim(),
        api_key
    );

    let d2 = dir.path().join("d2");
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        &key,
        "--data-dir",
        d2.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("already used 1 time(s)"), "{err}");
    assert!(!d2.join("identity.toml").exists());

    // The provisioned device runs from its data dir, joins the key's fleet and inherits
    // the fleet's public-URL default.
    let backend = Backend::spawn("factory-made").await;
    let _run = Proc::spawn(
        Command::new(bin("edge-agent"))
            .args([
                "run",
                "--local-api",
                "127.0.0.1:0",
                "--data-dir",
                d1s,
                "--target",
                &backend.addr.to_string(),
            ])
            .env("RUST_LOG", "warn"),
    );
    let c = http_client();
    let host = device_host(&uuid);
    let ok = eventually(Duration::from_secs(30), || async {
        let (s, _, b) = request(&c, gw.http_addr, &host, "GET", "/", empty()).await;
        (s == StatusCode::OK && b == "hello from factory-made").then_some(())
    })
    .await;
    assert!(ok.is_some(), "the provisioned device never served its URL");
    let (_, v) = api
        .call("GET", &format!("/v1/devices/{uuid}"), Some(&admin), None)
        .await;
    assert_eq!(
        (v["fleet"].as_str(), v["online"].as_bool()),
        (Some("factory"), Some(true)),
        "{v}"
    );

    // Wrong secret, wrong CA fingerprint, expired, revoked: each refused with its reason.
    let good =
        protocol::ProvisioningKey::decode(&new_key(&api, &admin, "factory", json!({})).await)
            .unwrap();
    let tampered = protocol::ProvisioningKey {
        secret: format!("{}x", good.secret),
        ..good.clone()
    };
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        &tampered.encode(),
        "--data-dir",
        dir.path().join("d3").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("unknown provisioning key"), "{err}");
    let wrong_ca = protocol::ProvisioningKey {
        ca_fingerprint: "ab".repeat(32),
        ..good.clone()
    };
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        &wrong_ca.encode(),
        "--data-dir",
        dir.path().join("d4").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("does not match the fingerprint"), "{err}");
    let short = new_key(&api, &admin, "factory", json!({"expires_in_secs": 1})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        &short,
        "--data-dir",
        dir.path().join("d5").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("expired"), "{err}");
    let revoked = new_key(&api, &admin, "factory", json!({})).await;
    let (_, keys) = api
        .call("GET", "/v1/fleets/factory/keys", Some(&admin), None)
        .await;
    let id = keys.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = api
        .call("DELETE", &format!("/v1/keys/{id}"), Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        &revoked,
        "--data-dir",
        dir.path().join("d6").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("revoked"), "{err}");
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        "epk1.nonsense",
        "--data-dir",
        dir.path().join("d7").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("not a provisioning key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_registered_uuid_and_first_start_provisioning() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    api.call(
        "POST",
        "/v1/fleets",
        Some(&admin),
        Some(json!({"name": "line"})),
    )
    .await;
    let key = new_key(&api, &admin, "line", json!({})).await;
    let dir = tempfile::tempdir().unwrap();

    // Register first (balena's offline flow), then provision claiming that uuid.
    let want = "5ca1ab1e000000000000000000000001";
    let (s, v) = api
        .call(
            "POST",
            "/v1/devices",
            Some(&admin),
            Some(json!({"uuid": want, "fleet": "line"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let d = dir.path().join("pre");
    let (ok, uuid, err) = agent(&[
        "provision",
        "--key",
        &key,
        "--data-dir",
        d.to_str().unwrap(),
        "--uuid",
        want,
    ]);
    assert!(ok, "{err}");
    assert_eq!(uuid, want);
    // Claimed once; a second claim is refused.
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        &key,
        "--data-dir",
        dir.path().join("again").to_str().unwrap(),
        "--uuid",
        want,
    ]);
    assert!(!ok);
    assert!(err.contains("already provisioned"), "{err}");

    // `--config FILE` works as well as `--data-dir`: the identity goes to that file.
    let file = dir.path().join("cfg/device.toml");
    let (ok, _, err) = agent(&[
        "provision",
        "--key",
        &key,
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let cfg = edge_agent::AgentConfig::load(&file).unwrap();
    assert_eq!(cfg.uuid.len(), 32);
    assert!(dir.path().join("cfg/api-key").exists());

    // `run --key` on a fresh data dir provisions on first start, then connects.
    let backend = Backend::spawn("first-boot").await;
    let fresh = dir.path().join("fresh");
    let _run = Proc::spawn(
        Command::new(bin("edge-agent"))
            .args([
                "run",
                "--local-api",
                "127.0.0.1:0",
                "--data-dir",
                fresh.to_str().unwrap(),
                "--key",
                &key,
            ])
            .args(["--target", &backend.addr.to_string()])
            .env("RUST_LOG", "warn"),
    );
    let online = eventually(Duration::from_secs(30), || async {
        let (_, v) = api
            .call(
                "GET",
                "/v1/devices?fleet=line&online=true",
                Some(&admin),
                None,
            )
            .await;
        (v.as_array().map(|a| a.len()) == Some(1)).then_some(v)
    })
    .await
    .expect("the first-boot device never came online");
    let uuid = online[0]["uuid"].as_str().unwrap();
    assert_ne!(uuid, want);
    assert!(fresh.join("identity.toml").exists());
    // Moving it to another fleet keeps its identity and its tunnel.
    api.call(
        "POST",
        "/v1/fleets",
        Some(&admin),
        Some(json!({"name": "field"})),
    )
    .await;
    let (s, v) = api
        .call(
            "PATCH",
            &format!("/v1/devices/{uuid}"),
            Some(&admin),
            Some(json!({"fleet": "field"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["fleet"].as_str(), v["online"].as_bool()),
        (Some("field"), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_serves_the_local_supervisor_api() {
    let gw = TestGateway::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = gw.add_device(false).await;
    let file = dir.path().join("device.toml");
    std::fs::write(&file, cfg.to_toml()).unwrap();
    let port = free_port_tcp();
    let led = dir.path().join("led");
    let marker = dir.path().join("rebooted");
    let _agent = Proc::spawn(
        Command::new(bin("edge-agent"))
            .args(["run", "--config", file.to_str().unwrap()])
            .args(["--local-api", &format!("127.0.0.1:{port}")])
            .args(["--led", led.to_str().unwrap()])
            .args(["--reboot-command", &format!("touch {}", marker.display())])
            .args([
                "--hostname-file",
                dir.path().join("hostname").to_str().unwrap(),
            ])
            .env("RUST_LOG", "warn"),
    );
    let local = |method: &'static str, path: String, body: Option<&'static str>| async move {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let resp = http_client()
            .request(req.body(e2e_tests::body(body.unwrap_or(""))).unwrap())
            .await
            .ok()?;
        let s = resp.status();
        let b = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        Some((s, String::from_utf8_lossy(&b).into_owned()))
    };
    let ping = eventually(Duration::from_secs(30), || {
        local("GET", "/ping".into(), None)
    })
    .await;
    assert_eq!(ping, Some((StatusCode::OK, "OK".to_string())));
    // Read the key only now: the running agent created it at start-up.
    let (ok, key, err) = agent(&["api-key", "--config", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (s, _) = local("POST", "/v1/blink".into(), None).await.unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = local("POST", format!("/v1/blink?apikey={key}"), None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    // Written (it then toggles every 500 ms while blinking). The agent writes the LED
    // file in place, as it must for a sysfs `brightness` file, so a read can land between
    // a toggle's truncate and its write: wait for a value rather than read once.
    let lit = eventually(Duration::from_secs(10), || {
        let v = std::fs::read_to_string(&led).unwrap_or_default();
        async move { matches!(v.as_str(), "1" | "0").then_some(v) }
    })
    .await;
    assert!(lit.is_some(), "the blink never wrote the LED file");
    let (s, body) = local("GET", format!("/v1/device?apikey={key}"), None)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["supervisor_version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["api_port"], port, "{v}");
    // Learned from the tunnel once connected.
    let ip = eventually(Duration::from_secs(20), || async {
        let (_, body) = local("GET", format!("/v1/device?apikey={key}"), None).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["ip_address"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
    })
    .await;
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    let (s, _) = local("POST", format!("/v1/reboot?apikey={key}"), Some("{}"))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(eventually(Duration::from_secs(10), || async {
        marker.exists().then_some(())
    })
    .await
    .is_some());
    // A held update lock answers 423; force goes through.
    let lock = dir.path().join("locks/7/web");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(lock.join("updates.lock"), "").unwrap();
    std::fs::remove_file(&marker).unwrap();
    let (s, _) = local("POST", format!("/v1/reboot?apikey={key}"), Some("{}"))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::LOCKED);
    assert!(!marker.exists());
    let (s, _) = local(
        "POST",
        format!("/v1/reboot?apikey={key}"),
        Some(r#"{"force":true}"#),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, body) = local("GET", format!("/v2/applications/state?apikey={key}"), None)
        .await
        .unwrap();
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::OK, "{}"),
        "no app runs: the real, empty state"
    );
}
