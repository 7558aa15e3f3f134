//! The gateway's data dir and the values that once destroyed it: the real `gateway serve`
//! binary on partial, empty, mismatched and shared data dirs; config values and flags
//! that wiped logs or panicked; the agent's private-key file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::*;
use http::StatusCode;

/// `gateway serve` on `data` with loopback ports; the API on `api` so tests can tell
/// when it serves.
fn serve_cmd(data: &Path, api: u16) -> Command {
    let mut c = Command::new(bin("gateway"));
    c.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--tunnel-listen", "127.0.0.1:0"])
        // Its own free port: by default the TCP tunnel takes the UDP port's number, which
        // another process may hold on TCP (a serve that then exits made this test wait
        // out its 60 s).
        .args(["--tunnel-tcp-listen", "127.0.0.1:0"])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .env("RUST_LOG", "warn");
    c
}

/// Runs `cmd` to its exit, failing the test (instead of hanging) if it is still running
/// after `limit`: a gateway that should have refused to start serves forever.
fn run_to_exit(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (it should have exited); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exited with a failure of its own (not a panic's 101, not a signal).
fn assert_refused(o: &Output) {
    let code = o.status.code();
    assert!(
        code.is_some() && code != Some(0) && code != Some(101),
        "exit {:?}; stderr: {}",
        o.status,
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

async fn api_answers(api: u16, limit: Duration) -> bool {
    eventually(limit, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", api))
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .is_some()
}

/// A data dir made by the real `gateway serve`, which is then killed.
async fn made_data_dir(root: &Path) -> PathBuf {
    let data = root.join("gw");
    let api = free_port_tcp();
    let mut gw = Proc::spawn(&mut serve_cmd(&data, api));
    assert!(
        api_answers(api, Duration::from_secs(60)).await,
        "serve never came up on a new data dir"
    );
    gw.kill9();
    data
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fingerprint_of(data: &Path) -> String {
    let cert = String::from_utf8(read(&data.join("ca.pem"))).unwrap();
    let der = certs::parse_certs(&cert, "ca").unwrap();
    certs::fingerprint(&der[0])
}

fn device_add(data: &Path, out: &Path) -> Output {
    Command::new(bin("gateway"))
        .args(["device", "add", "--data-dir"])
        .arg(data)
        .args(["--gateway", "127.0.0.1:9", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_dir_is_created_and_a_restart_keeps_its_ca() {
    let root = tempfile::tempdir().unwrap();
    let data = made_data_dir(root.path()).await;
    for f in ["ca.pem", "ca.key", "tunnel.pem", "tunnel.key", "gateway.db"] {
        assert!(data.join(f).exists(), "{f} was not created");
    }
    let (fp, key) = (fingerprint_of(&data), read(&data.join("ca.key")));
    let api = free_port_tcp();
    let _gw = Proc::spawn(&mut serve_cmd(&data, api));
    assert!(api_answers(api, Duration::from_secs(60)).await);
    assert_eq!(fingerprint_of(&data), fp);
    assert_eq!(read(&data.join("ca.key")), key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_is_refused_and_the_other_is_untouched() {
    let root = tempfile::tempdir().unwrap();
    let data = made_data_dir(root.path()).await;
    for (gone, kept) in [("ca.pem", "ca.key"), ("ca.key", "ca.pem")] {
        let saved = read(&data.join(gone));
        let kept_bytes = read(&data.join(kept));
        std::fs::remove_file(data.join(gone)).unwrap();
        let o = run_to_exit(
            &mut serve_cmd(&data, free_port_tcp()),
            Duration::from_secs(60),
        );
        assert_refused(&o);
        let err = stderr(&o);
        assert!(err.contains("incomplete") && err.contains(gone), "{err}");
        assert!(err.contains("present") && err.contains(kept), "{err}");
        assert!(err.contains("backup"), "{err}");
        assert_eq!(read(&data.join(kept)), kept_bytes, "{kept} was changed");
        assert!(!data.join(gone).exists(), "{gone} was recreated");
        std::fs::write(data.join(gone), saved).unwrap();
    }
    // Restored: it serves again.
    let api = free_port_tcp();
    let _gw = Proc::spawn(&mut serve_cmd(&data, api));
    assert!(api_answers(api, Duration::from_secs(60)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_devices_but_no_ca_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = made_data_dir(root.path()).await;
    let o = device_add(&data, &root.path().join("d.toml"));
    assert!(o.status.success(), "{o:?}");
    for f in ["ca.pem", "ca.key", "tunnel.pem", "tunnel.key"] {
        std::fs::remove_file(data.join(f)).unwrap();
    }
    let o = run_to_exit(
        &mut serve_cmd(&data, free_port_tcp()),
        Duration::from_secs(60),
    );
    assert_refused(&o);
    let err = stderr(&o);
    assert!(
        err.contains("missing ca.key, ca.pem, tunnel.key, tunnel.pem; present gateway.db"),
        "{err}"
    );
    assert!(!data.join("ca.key").exists() && !data.join("ca.pem").exists());
    // The offline commands refuse it too, rather than minting a CA.
    let o = device_add(&data, &root.path().join("e.toml"));
    assert_refused(&o);
    assert!(stderr(&o).contains("incomplete"), "{}", stderr(&o));
    assert!(!data.join("ca.key").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = made_data_dir(root.path()).await;
    for f in ["gateway.db-wal", "gateway.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    std::fs::write(data.join("gateway.db"), b"").unwrap();
    let o = run_to_exit(
        &mut serve_cmd(&data, free_port_tcp()),
        Duration::from_secs(60),
    );
    assert_refused(&o);
    let err = stderr(&o);
    assert!(
        err.contains("gateway.db") && err.contains("empty (0 bytes)"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(data.join("gateway.db")).unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_from_elsewhere_does_not_match_the_database() {
    let root = tempfile::tempdir().unwrap();
    let data = made_data_dir(root.path()).await;
    let other = tempfile::tempdir().unwrap();
    let _ = certs::Ca::load_or_create(other.path()).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(other.path().join(f), data.join(f)).unwrap();
    }
    let o = run_to_exit(
        &mut serve_cmd(&data, free_port_tcp()),
        Duration::from_secs(60),
    );
    assert_refused(&o);
    let err = stderr(&o);
    assert!(
        err.contains("this data dir's CA does not match its database"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_serve_per_data_dir_and_offline_commands_beside_it() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("gw");
    let api = free_port_tcp();
    let first = Proc::spawn(&mut serve_cmd(&data, api));
    assert!(api_answers(api, Duration::from_secs(60)).await);

    let o = run_to_exit(
        &mut serve_cmd(&data, free_port_tcp()),
        Duration::from_secs(60),
    );
    assert_refused(&o);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "another `gateway serve` (pid {}) is already using the data dir",
            first.pid()
        )),
        "{err}"
    );

    // The first one still serves, and the offline commands work beside it.
    let out = root.path().join("d.toml");
    let o = device_add(&data, &out);
    assert!(o.status.success(), "{o:?}");
    let o = Command::new(bin("gateway"))
        .args(["token", "create", "--role", "admin", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let resp = http_client()
        .request(
            http::Request::builder()
                .uri(format!("http://127.0.0.1:{api}/v1/devices"))
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let devices: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(devices.as_array().map(Vec::len), Some(1), "{devices}");

    // A mistyped data dir: refused, and nothing is created there.
    let typo = root.path().join("gw-typo");
    let o = device_add(&typo, &root.path().join("e.toml"));
    assert_refused(&o);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "no gateway data dir at {}; start `gateway serve --data-dir {}` once to create it",
            typo.display(),
            typo.display()
        )),
        "{err}"
    );
    assert!(!typo.exists(), "device add created {}", typo.display());
    std::fs::create_dir(&typo).unwrap();
    for args in [
        vec!["token", "create", "--role", "admin", "--data-dir"],
        vec!["device", "list", "--data-dir"],
    ] {
        let o = Command::new(bin("gateway"))
            .args(&args)
            .arg(&typo)
            .output()
            .unwrap();
        assert_refused(&o);
        assert!(stderr(&o).contains("no gateway data dir"), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read_dir(&typo).unwrap().count(),
        0,
        "files created"
    );
    assert!(!root.path().join("e.toml").exists());
}

#[test]
fn duration_flags_out_of_range_are_usage_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = "a1b2c3d4000040008000000000000001";
    let gw = |args: &[&str]| {
        Command::new(bin("gateway"))
            .args(args)
            .env("GATEWAY_API", "http://127.0.0.1:9")
            .env("GATEWAY_TOKEN", "x")
            .output()
            .unwrap()
    };
    let data = dir.path().to_str().unwrap();
    for (args, flag) in [
        (
            vec![
                "serve",
                "--data-dir",
                data,
                "--idle-timeout",
                "100000000000000000s",
            ],
            "--idle-timeout",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                data,
                "--idle-timeout",
                "100000000000000000000s",
            ],
            "--idle-timeout",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                data,
                "--upstream-timeout",
                "99999999999999999999h",
            ],
            "--upstream-timeout",
        ),
        (
            vec!["serve", "--data-dir", data, "--keep-alive", "0s"],
            "--keep-alive",
        ),
        (
            vec!["action", uuid, "reboot", "--ttl", "99999999999999999999h"],
            "--ttl",
        ),
        (
            vec![
                "key",
                "create",
                "--fleet",
                "f",
                "--expires",
                "99999999999999999999h",
            ],
            "--expires",
        ),
        (
            vec!["logs", uuid, "--since", "99999999999999999999h"],
            "--since",
        ),
    ] {
        let o = gw(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A value within range gets past the parser (and then fails to reach the API).
    let o = gw(&["logs", uuid, "--since", "7d"]);
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = gw(&["serve", "--data-dir", data, "--idle-timeout", "25h"]);
    assert!(stderr(&o).contains("the maximum is 1d"), "{}", stderr(&o));
    // None of that created a data dir.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn log_line(seq: u64, ts: i64) -> protocol::LogLine {
    protocol::LogLine {
        seq,
        timestamp: ts,
        message: format!("line {seq}"),
        is_std_err: false,
        is_system: false,
        service_name: Some("app".into()),
        service_id: None,
    }
}

async fn stored_lines(data: &Path, uuid: protocol::DeviceUuid) -> usize {
    let store = gateway::store::Store::open(data).await.unwrap();
    let n = store
        .query_logs(
            uuid,
            &gateway::store::LogQuery {
                limit: Some(10_000),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .len();
    store.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_values_that_wiped_logs_are_refused_and_nothing_is_deleted() {
    let root = tempfile::tempdir().unwrap();
    let data = made_data_dir(root.path()).await;
    let uuid: protocol::DeviceUuid = "a1b2c3d4000040008000000000000002".parse().unwrap();
    {
        let store = gateway::store::Store::open(&data).await.unwrap();
        store.add_device(uuid, false).await.unwrap();
        // Lines from an hour ago, well within any sane retention.
        let ts = edge_agent::logs::now_ms() - 3_600_000;
        let lines: Vec<_> = (1..=50).map(|i| log_line(i, ts + i as i64)).collect();
        store.insert_logs(uuid, "epoch-1", &lines).await.unwrap();
        store.close().await;
    }
    assert_eq!(stored_lines(&data, uuid).await, 50);
    for (text, key) in [
        ("log_retention = \"99999999999999h\"\n", "log_retention"),
        (
            "log_max_lines_per_device = -5\n",
            "log_max_lines_per_device",
        ),
        ("log_retention = 30\n", "log_retention"),
    ] {
        let cfg = root.path().join("gateway.toml");
        std::fs::write(&cfg, text).unwrap();
        let mut cmd = serve_cmd(&data, free_port_tcp());
        cmd.arg("--config").arg(&cfg);
        let o = run_to_exit(&mut cmd, Duration::from_secs(60));
        assert_refused(&o);
        let err = stderr(&o);
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        assert_eq!(stored_lines(&data, uuid).await, 50, "{text} deleted lines");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_api_refuses_a_huge_since_and_reads_days() {
    let gw = TestGateway::spawn().await;
    let (viewer, _, _) = tokens(&gw).await;
    let dev = gw.add_device(false).await;
    let uuid: protocol::DeviceUuid = dev.uuid.parse().unwrap();
    {
        let store = gateway::store::Store::open(&gw.data_dir).await.unwrap();
        let now = edge_agent::logs::now_ms();
        let lines = vec![
            log_line(1, now - 10 * 86_400_000),
            log_line(2, now - 2 * 86_400_000),
            log_line(3, now - 60_000),
        ];
        store.insert_logs(uuid, "e", &lines).await.unwrap();
        store.close().await;
    }
    let api = Api::new(&gw);
    for q in [
        "since=99999999999999999999h",
        "until=99999999999999999999h",
        "since=100000000000000000s",
        "since=-5s",
    ] {
        let (s, v) = api
            .call(
                "GET",
                &format!("/v1/devices/{uuid}/logs?{q}"),
                Some(&viewer),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(v["error"]["code"], "invalid_query", "{q}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(q.split('=').next().unwrap()), "{q}: {msg}");
    }
    // The gateway still serves, and `7d` is a duration.
    for (q, want) in [
        ("since=7d", 2),
        ("since=1w", 2),
        ("since=1h30m", 1),
        ("since=30d", 3),
    ] {
        let (s, v) = api
            .call(
                "GET",
                &format!("/v1/devices/{uuid}/logs?{q}"),
                Some(&viewer),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        assert_eq!(v["lines"].as_array().map(Vec::len), Some(want), "{q}: {v}");
    }
}

#[test]
fn a_huge_idle_timeout_does_not_panic_the_agent_transport() {
    let opts = edge_agent::AgentOptions {
        idle_timeout: Duration::from_secs(100_000_000_000_000_000),
        ..Default::default()
    };
    let _ = edge_agent::tunnel::transport_config(&opts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_readable_device_file_is_made_private_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let gw = TestGateway::spawn().await;
    let cfg = gw.add_device(false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.toml");
    std::fs::write(&file, cfg.to_toml()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = Proc::spawn(
        Command::new(bin("edge-agent"))
            .args([
                "run",
                "--local-api",
                "127.0.0.1:0",
                "--engine",
                "none",
                "--config",
            ])
            .arg(&file)
            .env("RUST_LOG", "warn")
            // The agent logs to stdout.
            .stdout(std::fs::File::create(&log).unwrap()),
    );
    let uuid: protocol::DeviceUuid = cfg.uuid.parse().unwrap();
    // It still runs (the tunnel is the device's only way in): it connects.
    assert!(
        eventually(Duration::from_secs(60), || async {
            gw.sessions.get(&uuid).map(|_| ())
        })
        .await
        .is_some(),
        "the agent did not connect; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    agent.kill9();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is still {mode:o}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARN")
            && text.contains("accessible to other users")
            && text.contains(&format!("chmod 600 {}", file.display())),
        "{text}"
    );
}

#[test]
fn a_toml_error_on_a_key_line_does_not_print_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::load_or_create(dir.path()).unwrap();
    let id = ca.issue_device(certs::random_uuid()).unwrap();
    let pem_lines: Vec<&str> = id
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(pem_lines.len() >= 2);
    // The key's first lines lost in an edit: its base64 lines become TOML syntax errors.
    let text = format!(
        "uuid = \"{}\"\ngateway = \"127.0.0.1:9\"\nca_cert = \"\"\"\n{}\"\"\"\ncert = \"\"\"\n{}\"\"\"\n{}\n-----END PRIVATE KEY-----\n\"\"\"\n",
        id.uuid,
        ca.cert_pem(),
        id.cert_pem,
        pem_lines.join("\n")
    );
    let file = dir.path().join("device.toml");
    std::fs::write(&file, &text).unwrap();
    let o = Command::new(bin("edge-agent"))
        .args([
            "run",
            "--local-api",
            "127.0.0.1:0",
            "--engine",
            "none",
            "--config",
        ])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_refused(&o);
    let err = stderr(&o);
    assert!(
        err.contains("device.toml") && err.contains("line "),
        "{err}"
    );
    for l in &pem_lines {
        assert!(!err.contains(l), "stderr shows a line of the key: {err}");
    }
    // The gateway's config file is redacted the same way.
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, format!("domain = \"a.example\"\n{}\n", pem_lines[0])).unwrap();
    let o = Command::new(bin("gateway"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_refused(&o);
    let err = stderr(&o);
    assert!(err.contains("gateway.toml: line 2"), "{err}");
    assert!(!err.contains(pem_lines[0]), "{err}");
}

/// An offline command run while `serve` is creating a fresh data dir either finds no
/// gateway there yet or waits for the whole dir: never "incomplete" (serve writes the
/// database before the CA, and a `token create` in between was refused as a partial dir,
/// which failed a test started right after `serve`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_never_see_a_data_dir_half_created() {
    for round in 0..3 {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("gw");
        let api = free_port_tcp();
        let _gw = Proc::spawn(&mut serve_cmd(&data, api));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tries = 0;
        loop {
            tries += 1;
            let o = Command::new(bin("gateway"))
                .args(["token", "create", "--role", "viewer", "--data-dir"])
                .arg(&data)
                .output()
                .unwrap();
            if o.status.success() {
                break;
            }
            let err = stderr(&o);
            assert!(
                err.contains("no gateway data dir"),
                "round {round}, try {tries}: an offline command beside a serve creating the dir: {err}"
            );
            assert!(
                Instant::now() < deadline,
                "the data dir was never created: {err}"
            );
        }
        assert!(data.join("ca.key").exists());
    }
}
