//! Releases end to end: an operator publishes a compose file for a fleet on the gateway,
//! the real agent gets the target over the tunnel and converges on the real Docker Engine,
//! reports progress back, and the service's web UI is served at the device's public URL.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::engine::{build_test_images, engine_available};
use e2e_tests::*;
use serde_json::{json, Value};

const WEB_V1: &str =
    "services:\n  web:\n    image: edge-test/web:v1\n    ports:\n      - \"127.0.0.1:{port}:80\"\n";
const WEB_V2: &str =
    "services:\n  web:\n    image: edge-test/web:v2\n    ports:\n      - \"127.0.0.1:{port}:80\"\n";

#[tokio::test]
async fn compose_errors_name_the_line_and_key_and_releases_are_immutable() {
    let gw = TestGateway::spawn().await;
    let (viewer, operator, admin) = tokens(&gw).await;
    let api = Api::new(&gw);
    let (st, _) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": "kiosks"})),
        )
        .await;
    assert_eq!(st, 201);
    let bad = "services:\n  web:\n    image: edge-test/web:v1\n    ports:\n      - \"80x\"\n";
    let (st, v) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/releases",
            Some(&operator),
            Some(json!({"compose": bad})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("line 5") && msg.contains("services.web.ports[0]"),
        "{msg}"
    );
    let unknown = "services:\n  web:\n    image: x\n    imagee: y\n";
    let (st, v) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/releases",
            Some(&operator),
            Some(json!({"compose": unknown})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("imagee"),
        "{v}"
    );
    // Viewers read, operators publish.
    let good = WEB_V1.replace("{port}", "18080");
    let (st, _) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/releases",
            Some(&viewer),
            Some(json!({"compose": good})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, r1) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/releases",
            Some(&operator),
            Some(json!({"compose": good})),
        )
        .await;
    assert_eq!(st, 201, "{r1}");
    assert_eq!(r1["seq"], 1);
    assert_eq!(r1["hash"].as_str().unwrap().len(), 64);
    // The same content again is the same release.
    let (st, again) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/releases",
            Some(&operator),
            Some(json!({"compose": good})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(again["id"], r1["id"]);
    assert_eq!(again["created"], false);
    let (st, shown) = api
        .call(
            "GET",
            &format!("/v1/releases/{}", r1["id"].as_str().unwrap()),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(shown["compose"], good.as_str());
    // A pin must name a release of the same fleet.
    let (st, v) = api
        .call(
            "PUT",
            "/v1/fleets/kiosks/pin",
            Some(&operator),
            Some(json!({"release": "nope"})),
        )
        .await;
    assert_eq!(st, 404, "{v}");
}

/// The tests that run containers take turns: each holds the engine's published ports and
/// CPU for about a minute, and in parallel they slow each other past their timeouts on
/// a 2-core machine.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Removes every container and volume of app `app_id` (a test's own) when dropped.
struct AppCleanup(u32);

impl Drop for AppCleanup {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.edge.app-id={}", self.0),
            ])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

async fn get_page(gw: &TestGateway, uuid: &str) -> (u16, String) {
    let (st, _, body) = request(
        &http_client(),
        gw.http_addr,
        &device_host(uuid),
        "GET",
        "/",
        empty(),
    )
    .await;
    (st.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

async fn state(api: &Api, token: &str, uuid: &str) -> Value {
    let (st, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/state"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Waits until the device reports running `release` with every service Running.
async fn runs(api: &Api, token: &str, uuid: &str, release: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..900 {
        let v = state(api, token, uuid).await;
        let r = &v["reported"]["reconciler"];
        if r["release"] == release
            && r["update_status"] == "idle"
            && r["services"]
                .as_array()
                .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["status"] == "Running"))
        {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("device never ran release {release}; last state: {last:#}");
}

/// A gateway with one fleet for a test that runs containers: holds the engine turn and
/// removes the fleet's containers at the end.
struct EngineFleet {
    gw: TestGateway,
    viewer: String,
    operator: String,
    api: Api,
    fleet: String,
    _cleanup: AppCleanup,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl EngineFleet {
    async fn start(prefix: &str) -> Self {
        let turn = ENGINE.lock().await;
        build_test_images();
        let gw = TestGateway::spawn().await;
        let (viewer, operator, admin) = tokens(&gw).await;
        let api = Api::new(&gw);
        let fleet = format!("{prefix}-{}", std::process::id());
        let (st, _) = api
            .call(
                "POST",
                "/v1/fleets",
                Some(&admin),
                Some(json!({"name": fleet})),
            )
            .await;
        assert_eq!(st, 201);
        Self {
            _cleanup: AppCleanup(gateway::targets::app_id(&fleet)),
            gw,
            viewer,
            operator,
            api,
            fleet,
            _turn: turn,
        }
    }
}

/// Reconciler settings for tests: short stability window, stop grace and poll interval.
fn fast_reconciler(dir: &std::path::Path) -> edge_agent::reconciler::ReconcilerConfig {
    let mut rc = edge_agent::reconciler::ReconcilerConfig::new(dir, dir.join("locks"));
    rc.stable_for = Duration::from_secs(1);
    rc.stop_grace = Duration::from_secs(1);
    rc.poll_interval = Duration::from_secs(1);
    rc
}

/// `GET /` on a service's published host port, through curl.
async fn host_page(port: u16) -> Option<String> {
    let r = tokio::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/")])
        .output()
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&r.stdout).into_owned())
}

#[tokio::test]
async fn a_published_release_runs_on_the_device_and_is_served_at_its_public_url() {
    if !engine_available("releases on the device's engine") {
        return;
    }
    let ef = EngineFleet::start("rel").await;
    let (gw, api, fleet) = (&ef.gw, &ef.api, ef.fleet.clone());
    let (viewer, operator) = (ef.viewer.clone(), ef.operator.clone());

    // One device in the fleet, its public URL on, its web UI at the service's host port.
    let cfg = gw.add_device(true).await;
    let uuid = cfg.uuid.clone();
    let (st, v) = api
        .call(
            "PATCH",
            &format!("/v1/devices/{uuid}"),
            Some(&operator),
            Some(json!({"fleet": fleet})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let port = stable_port(false);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = fast_agent_options(format!("127.0.0.1:{port}").parse().unwrap());
    opts.data_dir = Some(dir.path().to_path_buf());
    let mut hooks = edge_agent::device::Hooks::defaults(dir.path());
    hooks.reboot = vec!["true".into()];
    opts.hooks = Some(hooks);
    let mut rc = fast_reconciler(dir.path());
    rc.health_window = Duration::from_secs(30);
    opts.reconciler = Some(rc);
    let pipeline =
        edge_agent::logs::LogPipeline::start(&dir.path().join("logs"), 64 << 20).unwrap();
    opts.logs = Some(pipeline);
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;

    // Publish v1: the device converges and the page is served through the tunnel.
    let (st, r1) = api
        .call(
            "POST",
            &format!("/v1/fleets/{fleet}/releases"),
            Some(&operator),
            Some(json!({"compose": WEB_V1.replace("{port}", &port.to_string())})),
        )
        .await;
    assert_eq!(st, 201, "{r1}");
    let r1 = r1["id"].as_str().unwrap().to_string();
    let v = runs(api, &viewer, &uuid, &r1).await;
    assert_eq!(v["target_release"], r1.as_str());
    assert_eq!(v["target_source"], "fleet_latest");
    let page = eventually(Duration::from_secs(20), || async {
        let (st, body) = get_page(gw, &uuid).await;
        (st == 200).then_some(body)
    })
    .await
    .expect("the service's page was never served at the public URL");
    assert_eq!(page, "web v1\n");

    // The operator's watch command sees it done and exits 0.
    // (tokio's Command: the gateway runs on this test's runtime and must keep serving.)
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin("gateway"))
            .args(["device", "show", &uuid, "--watch"])
            .env("GATEWAY_API", format!("http://{}", gw.api_addr))
            .env("GATEWAY_TOKEN", &viewer)
            .output(),
    )
    .await
    .expect("device show --watch did not finish")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("web") && text.contains("Running") && text.contains(&r1),
        "{text}"
    );

    // Pin the device to v1, publish v2: the device stays put while its fleet moves on.
    let (st, _) = api
        .call(
            "PUT",
            &format!("/v1/devices/{uuid}/pin"),
            Some(&operator),
            Some(json!({"release": r1})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, r2) = api
        .call(
            "POST",
            &format!("/v1/fleets/{fleet}/releases"),
            Some(&operator),
            Some(json!({"compose": WEB_V2.replace("{port}", &port.to_string())})),
        )
        .await;
    assert_eq!(st, 201, "{r2}");
    let r2 = r2["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = state(api, &viewer, &uuid).await;
    assert_eq!(v["target_release"], r1.as_str());
    assert_eq!(v["target_source"], "device_pin");
    assert_eq!(v["reported"]["reconciler"]["release"], r1.as_str());
    let (_, body) = get_page(gw, &uuid).await;
    assert_eq!(body, "web v1\n");

    // Unpin: it follows the fleet to v2.
    let (st, _) = api
        .call(
            "PUT",
            &format!("/v1/devices/{uuid}/pin"),
            Some(&operator),
            Some(json!({"release": null})),
        )
        .await;
    assert_eq!(st, 200);
    runs(api, &viewer, &uuid, &r2).await;
    let page = eventually(Duration::from_secs(20), || async {
        let (st, body) = get_page(gw, &uuid).await;
        (st == 200 && body == "web v2\n").then_some(body)
    })
    .await;
    assert!(page.is_some(), "v2 never served");

    // The agent's events reached the device's logs.
    let (_, logs) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/logs?system=true&limit=1000"),
            Some(&viewer),
            None,
        )
        .await;
    let msgs: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("target") || m.contains("started") || m.contains("Started")),
        "{msgs:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn an_offline_bundle_applies_without_the_gateway_and_local_mode_sets_a_target() {
    if !engine_available("offline bundles") {
        return;
    }
    let ef = EngineFleet::start("offline").await;
    let (gw, api, fleet) = (&ef.gw, &ef.api, ef.fleet.clone());
    let (viewer, operator) = (ef.viewer.clone(), ef.operator.clone());
    let port = stable_port(false);
    let mut ids = Vec::new();
    for compose in [WEB_V1, WEB_V2] {
        let (st, r) = api
            .call(
                "POST",
                &format!("/v1/fleets/{fleet}/releases"),
                Some(&operator),
                Some(json!({"compose": compose.replace("{port}", &port.to_string())})),
            )
            .await;
        assert_eq!(st, 201, "{r}");
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("update.bundle");
    // The operator writes release 1 and its images into one file...
    let out = tokio::process::Command::new(bin("gateway"))
        .args(["bundle", "create", "--release", &ids[0], "-o"])
        .arg(&bundle)
        .env("GATEWAY_API", format!("http://{}", gw.api_addr))
        .env("GATEWAY_TOKEN", &viewer)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&bundle).unwrap().len() > 1_000_000);
    // ...and the device applies it with no gateway at all.
    let data = tmp.path().join("device");
    let out = tokio::process::Command::new(bin("edge-agent"))
        .args(["preload"])
        .arg(&bundle)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("release {} is running", ids[0])),
        "{text}"
    );
    let page = eventually(Duration::from_secs(10), || async {
        let body = host_page(port).await?;
        (body == "web v1\n").then_some(body)
    })
    .await;
    assert!(page.is_some(), "the preloaded release does not serve");

    // Local mode: the device's own supervisor API applies release 2's target state.
    let (st, target) = api
        .call(
            "GET",
            &format!("/v1/releases/{}/target", ids[1]),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let cfg = gw.add_device(false).await;
    let local = format!("127.0.0.1:{}", stable_port(false));
    let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
    opts.data_dir = Some(data.clone());
    opts.local_api = Some(local.parse().unwrap());
    opts.reconciler = Some(fast_reconciler(&data));
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let key = edge_agent::provision::api_key(&data).unwrap();
    // The reconciler starts once the engine first answers, which can be after the agent is
    // connected on a loaded machine: until then the local API says it runs none.
    let post = || async {
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &target.to_string(),
                &format!("http://{local}/v2/local/target-state?apikey={key}"),
            ])
            .output()
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        (!answer.contains("runs no reconciler")).then_some(answer)
    };
    let answer = eventually(Duration::from_secs(60), post)
        .await
        .expect("the agent's reconciler never started");
    assert!(answer.contains("success"), "{answer}");
    let page = eventually(Duration::from_secs(60), || async {
        let body = host_page(port).await?;
        (body == "web v2\n").then_some(body)
    })
    .await;
    assert!(page.is_some(), "local mode never ran release 2");
    // The local API reports it, balena-style, once the release counts as good.
    let v = eventually(Duration::from_secs(30), || async {
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                &format!("http://{local}/v2/applications/state?apikey={key}"),
            ])
            .output()
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v[&fleet]["commit"] == ids[1].as_str()).then_some(v)
    })
    .await
    .expect("the local API never reported release 2 as running");
    assert_eq!(v[&fleet]["services"]["web"]["status"], "Running", "{v}");
    agent.stop().await;
}
