//! The shipped binaries as separate processes: the documented commands, `kill -9` of
//! either side, and the demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::procs::{self, device_add, try_get, wait_status, ServeProc};
use e2e_tests::*;
use http::StatusCode;

fn serve(data: &std::path::Path, http: u16, tunnel: u16, idle: &str) -> ServeProc {
    procs::serve(
        data,
        http,
        tunnel,
        &["--idle-timeout", idle, "--keep-alive", "500ms"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_commands_and_gateway_kill9_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let backend = Backend::spawn("real-device").await;
    let (http, tunnel) = (free_port_tcp(), free_port_udp());
    let mut gw = serve(&data, http, tunnel, "2s");
    // Only `serve` creates a data dir: wait for it before the offline command.
    assert!(eventually(Duration::from_secs(20), || async {
        data.join("gateway.db").exists().then_some(())
    })
    .await
    .is_some());

    // Added while `serve` runs: accepted without a restart.
    let out = dir.path().join("device.toml");
    // The dashed form of a uuid is normalised.
    let output = Command::new(bin("gateway"))
        .args(["device", "add", "--data-dir"])
        .arg(&data)
        .args([
            "--uuid",
            "A1B2C3D4-0000-4000-8000-00000000beef",
            "--public-url",
        ])
        .args(["--gateway", &format!("127.0.0.1:{tunnel}"), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let uuid = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(uuid, "a1b2c3d400004000800000000000beef");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the agent file holds a private key");
    let host = device_host(&uuid);

    let _agent = Proc::spawn(
        Command::new(bin("edge-agent"))
            .args(["run", "--local-api", "127.0.0.1:0", "--config"])
            .arg(&out)
            .args(["--target", &backend.addr.to_string()])
            .env("RUST_LOG", "warn"),
    );
    assert!(
        wait_status(http, &host, StatusCode::OK, Duration::from_secs(30)).await,
        "device never became reachable"
    );
    let (_, body) = try_get(http, &host).await.unwrap();
    assert_eq!(body, "hello from real-device");

    // kill -9 the gateway, start it again with the same data dir: the agent comes back
    // by itself and the URL works again.
    gw.proc.kill9();
    assert!(try_get(http, &host).await.is_none());
    let _gw2 = serve(&data, gw.http, gw.tunnel, "2s");
    assert!(
        wait_status(http, &host, StatusCode::OK, Duration::from_secs(60)).await,
        "device did not come back after the gateway restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_agent_is_noticed_and_shown_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let backend = Backend::spawn("doomed").await;
    let (http, tunnel) = (free_port_tcp(), free_port_udp());
    let _gw = serve(&data, http, tunnel, "2s");
    let out = dir.path().join("device.toml");
    // Wait for serve to have created the data dir so both processes share one CA.
    assert!(eventually(Duration::from_secs(20), || async {
        data.join("gateway.db").exists().then_some(())
    })
    .await
    .is_some());
    let uuid = device_add(&data, tunnel, &out);
    let host = device_host(&uuid);
    let mut agent = Proc::spawn(
        Command::new(bin("edge-agent"))
            .args(["run", "--local-api", "127.0.0.1:0", "--config"])
            .arg(&out)
            .args(["--target", &backend.addr.to_string()])
            .env("RUST_LOG", "warn"),
    );
    assert!(wait_status(http, &host, StatusCode::OK, Duration::from_secs(30)).await);
    let list = || {
        let o = Command::new(bin("gateway"))
            .args(["device", "list", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    let line = list()
        .lines()
        .find(|l| l.starts_with(&uuid))
        .unwrap()
        .to_string();
    assert!(line.contains(" yes "), "{line}");

    // No goodbye: the process vanishes and its UDP socket with it.
    agent.kill9();
    assert!(
        wait_status(
            http,
            &host,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(20)
        )
        .await,
        "the dead tunnel was not noticed"
    );
    let line = list()
        .lines()
        .find(|l| l.starts_with(&uuid))
        .unwrap()
        .to_string();
    assert!(line.contains(" no "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_working_public_url() {
    let mut child = Proc::spawn(
        Command::new(bin("gateway"))
            .args(["demo", "--http-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("public URL: ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("demo printed no public URL");
    // http://<uuid>.devices.localhost:<port>/
    let rest = url.strip_prefix("http://").unwrap();
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').unwrap();
    let uuid = host.strip_suffix(".devices.localhost").unwrap();
    assert_eq!(uuid.len(), 32);
    let (status, body) = try_get(port.parse().unwrap(), host).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).contains(&format!("Hello from device <code>{uuid}</code>")),
        "{body:?}"
    );
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "domain = \"devices.example\"\nhttp_lisen = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let o = Command::new(bin("gateway"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown field `http_lisen`"), "{err}");
    assert!(err.contains("line 2"), "{err}");

    let o = Command::new(bin("gateway"))
        .args(["serve", "--domain", "not a domain", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("`domain`"));

    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(&agent_cfg, "uuid = \"nope\"\n").unwrap();
    let o = Command::new(bin("edge-agent"))
        .args(["run", "--local-api", "127.0.0.1:0", "--config"])
        .arg(&agent_cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing field `gateway`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_against_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let (http, tunnel, api_port) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let _gw = Proc::spawn(
        Command::new(bin("gateway"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--tunnel-listen", &format!("127.0.0.1:{tunnel}")])
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .env("RUST_LOG", "warn"),
    );
    let api = format!("http://127.0.0.1:{api_port}");
    assert!(eventually(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", api_port))
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .is_some());
    let run = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(bin("gateway"));
        c.args(args)
            .env("GATEWAY_API", &api)
            .env_remove("GATEWAY_TOKEN");
        if let Some(t) = token {
            c.env("GATEWAY_TOKEN", t);
        }
        let o = c.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let data_s = data.to_str().unwrap();
    let (ok, admin, _) = run(
        &["token", "create", "--data-dir", data_s, "--role", "admin"],
        None,
    );
    assert!(ok);
    let admin = admin.trim().to_string();
    assert!(admin.starts_with("gw_"), "{admin}");
    let (ok, viewer, _) = run(
        &["token", "create", "--data-dir", data_s, "--role", "viewer"],
        None,
    );
    assert!(ok);
    let viewer = viewer.trim().to_string();

    let out = dir.path().join("d.toml");
    let uuid = device_add(&data, tunnel, &out);
    let (ok, _, err) = run(&["fleet", "create", "lobby"], Some(&admin));
    assert!(ok, "{err}");
    let (ok, stdout, err) = run(&["device", "move", &uuid, "lobby"], Some(&admin));
    assert!(ok, "{err}");
    assert!(stdout.contains("fleet       lobby"), "{stdout}");
    let (ok, stdout, _) = run(&["devices"], Some(&viewer));
    assert!(ok);
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&uuid))
        .expect("device row");
    assert!(row.contains("lobby") && row.contains(" no "), "{row}");

    // Clear errors: wrong role, unknown device, no token, unreachable API.
    let (ok, _, err) = run(&["device", "public-url", &uuid, "off"], Some(&viewer));
    assert!(!ok);
    assert!(
        err.contains("needs the operator role") && err.contains("forbidden"),
        "{err}"
    );
    let (ok, _, err) = run(
        &["device", "show", "0123456789abcdef0123456789abcdef"],
        Some(&admin),
    );
    assert!(!ok);
    assert!(
        err.contains("no device 0123456789abcdef0123456789abcdef"),
        "{err}"
    );
    let (ok, _, err) = run(&["devices"], None);
    assert!(!ok);
    assert!(err.contains("no API token"), "{err}");
    let (ok, _, err) = run(&["devices", "--api", "http://127.0.0.1:9"], Some(&admin));
    assert!(!ok);
    assert!(err.contains("cannot reach the management API"), "{err}");
    // Actions for an offline device are queued, and the CLI says until when.
    let (ok, stdout, err) = run(&["action", &uuid, "reboot", "--ttl", "2h"], Some(&admin));
    assert!(ok, "{err}");
    assert!(
        stdout.contains("is offline: reboot queued") && stdout.contains("within 2h"),
        "{stdout}"
    );
    let (ok, _, err) = run(&["action", &uuid, "reboot"], Some(&viewer));
    assert!(!ok);
    assert!(err.contains("needs the operator role"), "{err}");
    let (ok, stdout, _) = run(&["audit"], Some(&admin));
    assert!(ok);
    assert!(
        stdout.contains("device.update") && stdout.contains("fleet.create"),
        "{stdout}"
    );
}
