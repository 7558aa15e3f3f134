//! The operator CLI against a running gateway: `gateway env list|set|unset` for a fleet,
//! a device and one service, and `gateway device add --fleet`. The `gateway` binary runs
//! as its own process; what it did is checked through the management API.

use std::path::Path;

use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

/// What one CLI run gave: success, stdout, stderr.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `gateway ARGS` against `gw`'s API with `token`. tokio's Command: the gateway runs
/// on this test's runtime and must keep serving meanwhile.
async fn gateway(gw: &TestGateway, token: &str, args: &[&str]) -> Out {
    let o = tokio::process::Command::new(bin("gateway"))
        .args(args)
        .env("GATEWAY_API", format!("http://{}", gw.api_addr))
        .env("GATEWAY_TOKEN", token)
        .env_remove("GATEWAY_API_CA")
        .output()
        .await
        .unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `gateway env ARGS`, which must succeed; its stdout.
async fn env_ok(gw: &TestGateway, token: &str, args: &[&str]) -> String {
    let mut all = vec!["env"];
    all.extend_from_slice(args);
    let o = gateway(gw, token, &all).await;
    assert!(o.ok, "gateway {all:?} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

/// `gateway env ARGS`, which must fail; its stderr.
async fn env_err(gw: &TestGateway, token: &str, args: &[&str]) -> String {
    let mut all = vec!["env"];
    all.extend_from_slice(args);
    let o = gateway(gw, token, &all).await;
    assert!(!o.ok, "gateway {all:?} succeeded: {}", o.stdout);
    o.stderr
}

/// The rows of a `gateway env list` table, each split into its cells (columns are two or
/// more spaces apart), header checked and left out.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert_eq!(cells(header), ["NAME", "VALUE", "SERVICE"], "{stdout}");
    lines.map(cells).collect()
}

fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

fn row(name: &str, value: &str, service: &str) -> Vec<String> {
    vec![name.into(), value.into(), service.into()]
}

async fn get(api: &Api, token: &str, path: &str) -> serde_json::Value {
    let (st, v) = api.call("GET", path, Some(token), None).await;
    assert_eq!(st, StatusCode::OK, "GET {path}: {v}");
    v
}

async fn create_fleet(api: &Api, admin: &str, name: &str, public_url_default: bool) {
    let (st, v) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(admin),
            Some(json!({"name": name, "public_url_default": public_url_default})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_set_list_unset_on_a_fleet() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (viewer, operator, admin) = tokens(&gw).await;
    create_fleet(&api, &admin, "kiosks", false).await;

    // Both spellings of set; a value with spaces and `=` in it is kept whole.
    let out = env_ok(&gw, &admin, &["set", "--fleet", "kiosks", "MODE=kiosk"]).await;
    assert_eq!(out.trim(), "MODE set on fleet kiosks");
    env_ok(
        &gw,
        &admin,
        &["set", "--fleet", "kiosks", "GREETING", "hello world = hi"],
    )
    .await;
    let v = get(&api, &viewer, "/v1/fleets/kiosks/env").await;
    assert_eq!(
        v,
        json!({"vars": {"MODE": "kiosk", "GREETING": "hello world = hi"}, "services": {}})
    );

    // Setting one again changes that one and keeps the others.
    let out = env_ok(&gw, &admin, &["set", "--fleet", "kiosks", "MODE=signage"]).await;
    assert_eq!(out.trim(), "MODE updated on fleet kiosks");
    let rows = table_rows(&env_ok(&gw, &viewer, &["list", "--fleet", "kiosks"]).await);
    assert_eq!(
        rows,
        [
            row("GREETING", "hello world = hi", "*"),
            row("MODE", "signage", "*")
        ]
    );
    let json_out = env_ok(&gw, &viewer, &["list", "--fleet", "kiosks", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(listed["vars"]["MODE"], "signage");

    // Unset removes just that one; a second unset says there is nothing to remove.
    let out = env_ok(&gw, &admin, &["unset", "--fleet", "kiosks", "MODE"]).await;
    assert_eq!(out.trim(), "MODE removed from fleet kiosks");
    let v = get(&api, &viewer, "/v1/fleets/kiosks/env").await;
    assert_eq!(v["vars"], json!({"GREETING": "hello world = hi"}));
    let err = env_err(&gw, &admin, &["unset", "--fleet", "kiosks", "MODE"]).await;
    assert!(err.contains("MODE is not set on fleet kiosks"), "{err}");

    // Clear errors, and nothing written by any of them.
    let err = env_err(&gw, &admin, &["set", "--fleet", "kiosks", "1BAD=x"]).await;
    assert!(err.contains("\"1BAD\" is not a variable name"), "{err}");
    let err = env_err(&gw, &admin, &["set", "--fleet", "kiosks", "A-B", "x"]).await;
    assert!(err.contains("is not a variable name"), "{err}");
    let err = env_err(&gw, &admin, &["set", "--fleet", "nosuch", "MODE=x"]).await;
    assert!(err.contains("no fleet \"nosuch\""), "{err}");
    let err = env_err(&gw, &admin, &["list", "--fleet", "nosuch"]).await;
    assert!(err.contains("no fleet \"nosuch\""), "{err}");
    // A fleet's variables are the admin's to change, as in the API.
    let err = env_err(&gw, &operator, &["set", "--fleet", "kiosks", "MODE=x"]).await;
    assert!(err.contains("admin"), "{err}");
    let uuid = "0123456789abcdef0123456789abcdef";
    let err = env_err(
        &gw,
        &admin,
        &["set", "--fleet", "kiosks", "--device", uuid, "MODE=x"],
    )
    .await;
    assert!(err.contains("cannot be used with"), "{err}");
    let err = env_err(&gw, &admin, &["set", "MODE=x"]).await;
    assert!(
        err.contains("required") && err.contains("--fleet") && err.contains("--device"),
        "{err}"
    );
    let v = get(&api, &viewer, "/v1/fleets/kiosks/env").await;
    assert_eq!(
        v,
        json!({"vars": {"GREETING": "hello world = hi"}, "services": {}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_on_a_device_and_on_one_service() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (viewer, operator, admin) = tokens(&gw).await;
    create_fleet(&api, &admin, "kiosks", false).await;
    let (st, dev) = api
        .call(
            "POST",
            "/v1/devices",
            Some(&admin),
            Some(json!({"fleet": "kiosks"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{dev}");
    let uuid = dev["uuid"].as_str().unwrap().to_string();
    let path = format!("/v1/devices/{uuid}/env");

    // A device's variables are the operator's to change.
    let out = env_ok(&gw, &operator, &["set", "--device", &uuid, "LEVEL=debug"]).await;
    assert_eq!(out.trim(), format!("LEVEL set on device {uuid}"));
    let out = env_ok(
        &gw,
        &operator,
        &["set", "--device", &uuid, "--service", "web", "PORT=8080"],
    )
    .await;
    assert_eq!(
        out.trim(),
        format!("PORT set on device {uuid} (service web)")
    );
    env_ok(
        &gw,
        &operator,
        &["set", "--device", &uuid, "--service", "db", "PORT=5432"],
    )
    .await;
    // The same name for all services and for one service are two variables.
    env_ok(
        &gw,
        &operator,
        &[
            "set",
            "--device",
            &uuid,
            "--service",
            "web",
            "LEVEL",
            "info",
        ],
    )
    .await;
    let v = get(&api, &viewer, &path).await;
    assert_eq!(
        v,
        json!({
            "vars": {"LEVEL": "debug"},
            "services": {"db": {"PORT": "5432"}, "web": {"LEVEL": "info", "PORT": "8080"}}
        })
    );

    let rows = table_rows(&env_ok(&gw, &viewer, &["list", "--device", &uuid]).await);
    assert_eq!(
        rows,
        [
            row("LEVEL", "debug", "*"),
            row("PORT", "5432", "db"),
            row("LEVEL", "info", "web"),
            row("PORT", "8080", "web"),
        ]
    );
    let rows = table_rows(
        &env_ok(
            &gw,
            &viewer,
            &["list", "--device", &uuid, "--service", "web"],
        )
        .await,
    );
    assert_eq!(
        rows,
        [row("LEVEL", "info", "web"), row("PORT", "8080", "web")]
    );

    // Unset with --service removes the service's one only.
    let out = env_ok(
        &gw,
        &operator,
        &["unset", "--device", &uuid, "--service", "web", "LEVEL"],
    )
    .await;
    assert_eq!(
        out.trim(),
        format!("LEVEL removed from device {uuid} (service web)")
    );
    env_ok(
        &gw,
        &operator,
        &["unset", "--device", &uuid, "--service", "db", "PORT"],
    )
    .await;
    let v = get(&api, &viewer, &path).await;
    assert_eq!(
        v,
        json!({"vars": {"LEVEL": "debug"}, "services": {"web": {"PORT": "8080"}}})
    );
    let err = env_err(
        &gw,
        &operator,
        &["unset", "--device", &uuid, "--service", "db", "PORT"],
    )
    .await;
    assert!(
        err.contains(&format!("PORT is not set on device {uuid} (service db)")),
        "{err}"
    );

    // An unknown device: the API's message. A malformed uuid: refused before any call.
    let stranger = "0123456789abcdef0123456789abcdef";
    let err = env_err(&gw, &operator, &["set", "--device", stranger, "A=1"]).await;
    assert!(err.contains(&format!("no device {stranger}")), "{err}");
    let err = env_err(&gw, &operator, &["list", "--device", "not-a-uuid"]).await;
    assert!(err.contains("not-a-uuid"), "{err}");
    // A viewer reads but does not write.
    let err = env_err(&gw, &viewer, &["set", "--device", &uuid, "A=1"]).await;
    assert!(err.contains("operator"), "{err}");
    let v = get(&api, &viewer, &path).await;
    assert_eq!(v["vars"], json!({"LEVEL": "debug"}));
}

/// `gateway device add ... --out FILE` against the running gateway's data dir.
async fn device_add(gw: &TestGateway, out: &Path, extra: &[&str]) -> Out {
    let o = tokio::process::Command::new(bin("gateway"))
        .args(["device", "add", "--data-dir"])
        .arg(&gw.data_dir)
        .args(["--gateway", &gw.tunnel_addr.to_string(), "--out"])
        .arg(out)
        .args(extra)
        .env_remove("EDGE_GATEWAY_DATABASE")
        .output()
        .await
        .unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_add_with_a_fleet() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (viewer, _, admin) = tokens(&gw).await;
    create_fleet(&api, &admin, "kiosks", true).await;
    let tmp = tempfile::tempdir().unwrap();

    // An unknown fleet: refused with the fleets there are, and nothing written (no
    // device, no agent file).
    let refused = tmp.path().join("refused.toml");
    let o = device_add(&gw, &refused, &["--fleet", "nosuch"]).await;
    assert!(!o.ok, "{}", o.stdout);
    assert!(
        o.stderr.contains("no fleet \"nosuch\"")
            && o.stderr.contains("fleets: kiosks")
            && o.stderr.contains("nothing was written"),
        "{}",
        o.stderr
    );
    assert!(!refused.exists());
    let devices = get(&api, &viewer, "/v1/devices").await;
    assert_eq!(devices, json!([]));

    // A known fleet: the device is in it from the start, with the fleet's public-URL
    // default, as a provisioned device would be.
    let file = tmp.path().join("device.toml");
    let o = device_add(&gw, &file, &["--fleet", "kiosks"]).await;
    assert!(o.ok, "{}", o.stderr);
    let uuid = o.stdout.trim().to_string();
    assert_eq!(uuid.len(), 32, "{}", o.stdout);
    assert!(file.exists());
    let d = get(&api, &viewer, &format!("/v1/devices/{uuid}")).await;
    assert_eq!(d["fleet"], "kiosks", "{d}");
    assert_eq!(d["public_url"], true, "{d}");

    // The lists show it: `gateway devices --fleet`, and the offline `device list`.
    let o = gateway(&gw, &viewer, &["devices", "--fleet", "kiosks"]).await;
    assert!(o.ok, "{}", o.stderr);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with(&uuid))
        .unwrap_or_else(|| panic!("no row for {uuid}: {}", o.stdout));
    assert_eq!(cells(line)[2], "kiosks", "{line}");
    let o = tokio::process::Command::new(bin("gateway"))
        .args(["device", "list", "--data-dir"])
        .arg(&gw.data_dir)
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&o.stdout);
    let mut lines = listed.lines();
    let header = cells(lines.next().unwrap());
    let fleet_col = header.iter().position(|h| h == "FLEET").expect("FLEET");
    let line = lines.find(|l| l.starts_with(&uuid)).expect("device row");
    assert_eq!(cells(line)[fleet_col], "kiosks", "{listed}");

    // Without --fleet: no fleet, as before.
    let o = device_add(&gw, &tmp.path().join("loose.toml"), &[]).await;
    assert!(o.ok, "{}", o.stderr);
    let loose = o.stdout.trim().to_string();
    let d = get(&api, &viewer, &format!("/v1/devices/{loose}")).await;
    assert_eq!(d["fleet"], serde_json::Value::Null, "{d}");
    assert_eq!(d["public_url"], false, "{d}");
}
