//! The web terminal end to end: a real gateway, a real agent with real PTYs (and a real
//! container engine), WebSocket clients, the `gateway ssh` CLI under tmux and the xterm.js
//! page in headless Chromium.

use std::process::Command;
use std::time::Duration;

use e2e_tests::browser::Browser;
use e2e_tests::terminal::{open, read_until, type_line};
use e2e_tests::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A gateway, tokens and one connected agent whose host shell is `/bin/sh`.
struct Setup {
    gw: TestGateway,
    _agent: TestAgent,
    uuid: String,
    viewer: String,
    operator: String,
    admin: String,
}

async fn setup(max_sessions: usize) -> Setup {
    let gw = TestGateway::spawn().await;
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
    opts.terminal.shell = Some("/bin/sh".into());
    opts.terminal.max_sessions = max_sessions;
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let (viewer, operator, admin) = tokens(&gw).await;
    Setup {
        gw,
        _agent: agent,
        uuid,
        viewer,
        operator,
        admin,
    }
}

async fn audit(s: &Setup) -> Vec<Value> {
    let api = Api::new(&s.gw);
    let (status, v) = api
        .call("GET", "/v1/audit?limit=100", Some(&s.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    v.as_array().unwrap().clone()
}

#[tokio::test]
async fn host_shell_output_resize_exit_status_and_audit() {
    let s = setup(4).await;
    let mut ws = open(&s.gw, &s.uuid, Some(&s.operator), "cols=100&rows=30")
        .await
        .unwrap();
    type_line(&mut ws, "echo $((6*7))").await;
    read_until(&mut ws, Duration::from_secs(10), |s| {
        s.output.contains("42")
    })
    .await;
    // The initial size reached the PTY.
    type_line(&mut ws, "stty size").await;
    read_until(&mut ws, Duration::from_secs(10), |s| {
        s.output.contains("30 100")
    })
    .await;
    // A resize reaches it too.
    ws.send(Message::Text(
        json!({"type":"resize","cols":120,"rows":40})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    type_line(&mut ws, "stty size").await;
    read_until(&mut ws, Duration::from_secs(10), |s| {
        s.output.contains("40 120")
    })
    .await;
    // The exit status comes back as a message and as the close code (4000 + status).
    type_line(&mut ws, "exit 7").await;
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| s.close.is_some()).await;
    assert_eq!(seen.exit, Some(7), "{seen:?}");
    assert_eq!(seen.close.as_ref().map(|c| c.0), Some(4007), "{seen:?}");

    // Audited: who, device, target, and the exit status at the end.
    let entries = eventually(Duration::from_secs(5), || async {
        let entries = audit(&s).await;
        entries
            .iter()
            .any(|e| e["action"] == "terminal.close")
            .then_some(entries)
    })
    .await
    .expect("terminal.close audited");
    let open_entry = entries
        .iter()
        .find(|e| e["action"] == "terminal.open")
        .unwrap();
    assert_eq!(open_entry["target"], s.uuid.as_str());
    assert_eq!(open_entry["detail"]["target"], "host");
    assert!(open_entry["actor"].as_str().unwrap().starts_with("token:"));
    let close = entries
        .iter()
        .find(|e| e["action"] == "terminal.close")
        .unwrap();
    assert_eq!(close["detail"]["exit_code"], 7, "{close}");
    assert!(close["detail"]["duration_ms"].as_u64().is_some(), "{close}");
}

#[tokio::test]
async fn a_command_killed_by_a_signal_reports_128_plus_n() {
    let s = setup(4).await;
    let mut ws = open(&s.gw, &s.uuid, Some(&s.operator), "").await.unwrap();
    type_line(&mut ws, "kill -KILL $$").await;
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| s.close.is_some()).await;
    assert_eq!(seen.exit, Some(128 + 9), "{seen:?}");
}

#[tokio::test]
async fn roles_and_refusals_before_the_upgrade() {
    let s = setup(4).await;
    let (status, body) = open(&s.gw, &s.uuid, Some(&s.viewer), "")
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("role (viewer) cannot open terminals; operator or admin needed"),
        "{body}"
    );
    let (status, _) = open(&s.gw, &s.uuid, None, "").await.err().unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The token as a query parameter (what browsers do) works, and is checked the same.
    let (status, _) = open(&s.gw, &s.uuid, None, &format!("token={}", s.viewer))
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut ws = open(&s.gw, &s.uuid, None, &format!("token={}", s.admin))
        .await
        .unwrap();
    type_line(&mut ws, "exit 0").await;
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| s.close.is_some()).await;
    assert_eq!(seen.exit, Some(0));
    // Unknown device, offline device, bad size, bad service name.
    let unknown = "0123456789abcdef0123456789abcdef";
    let (status, _) = open(&s.gw, unknown, Some(&s.operator), "")
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let offline = s.gw.add_device(false).await;
    let (status, body) = open(&s.gw, &offline.uuid, Some(&s.operator), "")
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "device_offline");
    let (status, _) = open(&s.gw, &s.uuid, Some(&s.operator), "cols=0")
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = open(&s.gw, &s.uuid, Some(&s.operator), "service=a%2Fb")
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A plain GET (no upgrade) gets a JSON error, not a hang.
    let (status, body) = Api::new(&s.gw)
        .call(
            "GET",
            &format!("/v1/devices/{}/terminal", s.uuid),
            Some(&s.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "{body}");
}

#[tokio::test]
async fn session_cap_per_device() {
    let s = setup(2).await;
    let mut a = open(&s.gw, &s.uuid, Some(&s.operator), "").await.unwrap();
    let mut b = open(&s.gw, &s.uuid, Some(&s.operator), "").await.unwrap();
    // Both really started before the third is tried.
    type_line(&mut a, "echo $((1+1))").await;
    read_until(&mut a, Duration::from_secs(10), |s| s.output.contains('2')).await;
    type_line(&mut b, "echo $((2+2))").await;
    read_until(&mut b, Duration::from_secs(10), |s| s.output.contains('4')).await;
    let mut c = open(&s.gw, &s.uuid, Some(&s.operator), "").await.unwrap();
    let seen = read_until(&mut c, Duration::from_secs(10), |s| s.close.is_some()).await;
    assert_eq!(
        seen.error.as_deref(),
        Some("too many terminal sessions (2)"),
        "{seen:?}"
    );
    type_line(&mut a, "exit").await;
    read_until(&mut a, Duration::from_secs(10), |s| s.close.is_some()).await;
    // A slot is free again.
    let mut d = eventually(Duration::from_secs(5), || async {
        let mut d = open(&s.gw, &s.uuid, Some(&s.operator), "").await.ok()?;
        type_line(&mut d, "echo $((3+3))").await;
        let seen = read_until(&mut d, Duration::from_secs(10), |s| {
            s.output.contains('6') || s.close.is_some()
        })
        .await;
        seen.error.is_none().then_some(d)
    })
    .await
    .expect("a session opens after one ended");
    type_line(&mut d, "exit").await;
}

/// The first `=N,M=` in `out`.
fn pids_in(out: &str) -> Option<Vec<u32>> {
    out.split('=').find_map(|part| {
        let (a, b) = part.split_once(',')?;
        Some(vec![a.parse().ok()?, b.parse().ok()?])
    })
}

/// Whether `pid` still runs. The shell must be gone entirely (the agent reaps it); an
/// orphaned job is reaped by whatever init this machine runs, so its zombie is not ours.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn closing_the_socket_kills_and_reaps_the_shell_and_its_children() {
    let s = setup(4).await;
    let mut ws = open(&s.gw, &s.uuid, Some(&s.operator), "").await.unwrap();
    // A shell with a background child; print both pids as =SHELL,CHILD= (the echoed
    // command line holds `=$$,$!=`, which does not parse).
    type_line(&mut ws, "sleep 1000 & echo =$$,$!=").await;
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| {
        pids_in(&s.output).is_some()
    })
    .await;
    let pids = pids_in(&seen.output).unwrap();
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    drop(ws);
    let gone = eventually(Duration::from_secs(10), || async {
        let shell_reaped = !std::path::Path::new(&format!("/proc/{}", pids[0])).exists();
        (shell_reaped && !alive(pids[1])).then_some(())
    })
    .await;
    assert!(gone.is_some(), "shell or child still present: {pids:?}");
    // The audit says the client left.
    let entries = eventually(Duration::from_secs(5), || async {
        let e = audit(&s).await;
        e.iter()
            .any(|e| e["action"] == "terminal.close")
            .then_some(e)
    })
    .await
    .unwrap();
    let close = entries
        .iter()
        .find(|e| e["action"] == "terminal.close")
        .unwrap();
    assert_eq!(close["detail"]["ended"], "client closed", "{close}");
}

#[tokio::test]
async fn idle_sessions_are_closed() {
    let gw = TestGateway::spawn_custom(|c| c.terminal_idle_timeout = Duration::from_secs(1)).await;
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
    opts.terminal.shell = Some("/bin/sh".into());
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let (_, operator, _) = tokens(&gw).await;
    let mut ws = open(&gw, &uuid, Some(&operator), "").await.unwrap();
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| s.close.is_some()).await;
    assert!(
        seen.error.as_deref().unwrap_or("").contains("idle"),
        "{seen:?}"
    );
    drop(agent);
}

// ---- a service container on the real engine ----

use e2e_tests::engine::Container;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[tokio::test]
async fn exec_into_a_service_container() {
    if !e2e_tests::engine::engine_available("exec into a service container") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new("bash")
        .arg(root.join("tests/fixtures/engine/build-images.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-images.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = format!("term{}", std::process::id());
    let name = format!("edge-test-terminal-{}", std::process::id());
    let run = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--hostname", "svc-host-7"])
        .args([
            "--label",
            "io.edge.managed=1",
            "--label",
            "io.edge.app-id=1",
        ])
        .args(["--label", &format!("io.edge.service-name={service}")])
        .args([
            "edge-test/busybox:latest",
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 1000 & wait $!",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let _container = Container(name);

    let s = setup(4).await;
    let mut ws = open(
        &s.gw,
        &s.uuid,
        Some(&s.operator),
        &format!("service={service}&cols=90&rows=20"),
    )
    .await
    .unwrap();
    type_line(&mut ws, "cat /etc/hostname; echo $((6*7))").await;
    let seen = read_until(&mut ws, Duration::from_secs(20), |s| {
        s.output.contains("svc-host-7") && s.output.contains("42")
    })
    .await;
    assert!(seen.output.contains("svc-host-7"));
    type_line(&mut ws, "stty size").await;
    read_until(&mut ws, Duration::from_secs(10), |s| {
        s.output.contains("20 90")
    })
    .await;
    ws.send(Message::Text(
        json!({"type":"resize","cols":101,"rows":33})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    type_line(&mut ws, "stty size").await;
    read_until(&mut ws, Duration::from_secs(10), |s| {
        s.output.contains("33 101")
    })
    .await;
    type_line(&mut ws, "exit 5").await;
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| s.close.is_some()).await;
    assert_eq!(seen.exit, Some(5), "{seen:?}");

    // An unknown service: an error message and a clean close.
    let mut ws = open(&s.gw, &s.uuid, Some(&s.operator), "service=nosuchservice")
        .await
        .unwrap();
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| s.close.is_some()).await;
    assert_eq!(
        seen.error.as_deref(),
        Some("no running container for service nosuchservice"),
        "{seen:?}"
    );
    assert_eq!(seen.close.as_ref().map(|c| c.0), Some(1011));
}

// ---- the CLI ----

fn ssh_cmd(s: &Setup, token: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin("gateway"));
    c.args(["ssh", "--api", &format!("http://{}", s.gw.api_addr)])
        .args(["--token", token, &s.uuid])
        .env("RUST_LOG", "warn");
    c
}

#[tokio::test]
async fn cli_scripted_stdin_and_exit_status() {
    use tokio::io::AsyncWriteExt;
    // Built before the gateway starts: a long build must not starve its runtime.
    bin("gateway");
    let s = setup(4).await;
    let mut child = ssh_cmd(&s, &s.operator)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo $((6*7))\nexit 7\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("gateway ssh finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(stdout.contains("42"), "{stdout}");

    // Without a trailing exit, the end of stdin ends the shell (Ctrl-D): status 0.
    let mut child = ssh_cmd(&s, &s.operator)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"true\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("gateway ssh finished")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A viewer gets a clear refusal.
    let out = ssh_cmd(&s, &s.viewer)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr
            .contains("your token's role (viewer) cannot open terminals; operator or admin needed"),
        "{stderr}"
    );
}

/// An isolated tmux server, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn new() -> Self {
        Self(format!("edge-term-{}", std::process::id()))
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pane(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "s"])
    }

    async fn wait_pane(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        eventually(Duration::from_secs(20), || async {
            let p = self.pane();
            f(&p).then_some(p)
        })
        .await
        .unwrap_or_else(|| {
            let history = self.run(&["capture-pane", "-p", "-S", "-200", "-t", "s"]);
            panic!("pane never showed {what}:\n{history}")
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[tokio::test]
async fn cli_under_a_real_terminal_raw_mode_resize_ctrl_c_exit_and_restore() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(!in_ci(), "tmux is missing and CI=true");
        println!("SKIPPED: tmux is not installed");
        return;
    }
    // Built before the gateway starts: a long build must not starve its runtime.
    bin("gateway");
    let s = setup(4).await;
    let dir = tempfile::tempdir().unwrap();
    let stty_after = dir.path().join("stty-after.txt");
    let script = format!(
        "{} ssh --api http://{} --token {} {}; echo EXITED=$?; stty -a > {}; sleep 60",
        bin("gateway").display(),
        s.gw.api_addr,
        s.operator,
        s.uuid,
        stty_after.display()
    );
    let tmux = Tmux::new();
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "s",
        "-x",
        "100",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    // The remote prompt (root's sh: "# ").
    tmux.wait_pane("the remote prompt", |p| p.contains('#'))
        .await;
    tmux.run(&["send-keys", "-t", "s", "echo $((6*7))", "Enter"]);
    tmux.wait_pane("42", |p| p.lines().any(|l| l.trim() == "42"))
        .await;
    // The remote PTY has the pane's size, and follows it.
    let size = |t: &Tmux| {
        t.run(&["display", "-p", "-t", "s", "#{pane_height} #{pane_width}"])
            .trim()
            .to_string()
    };
    let before = size(&tmux);
    tmux.run(&["send-keys", "-t", "s", "stty size", "Enter"]);
    tmux.wait_pane(&before, |p| p.lines().any(|l| l.trim() == before))
        .await;
    tmux.run(&["resize-window", "-t", "s", "-x", "120", "-y", "40"]);
    let after = size(&tmux);
    assert_ne!(before, after);
    tmux.run(&["send-keys", "-t", "s", "clear; stty size", "Enter"]);
    tmux.wait_pane(&after, |p| p.lines().any(|l| l.trim() == after))
        .await;
    // Ctrl-C interrupts the remote command, not the CLI.
    tmux.run(&["send-keys", "-t", "s", "sleep 100", "Enter"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tmux.run(&["send-keys", "-t", "s", "C-c"]);
    tmux.run(&["send-keys", "-t", "s", "echo still-$((1+1))", "Enter"]);
    // Typed-ahead input may interleave with the prompt ("# still-2"): match the output
    // line, not the echoed command line.
    tmux.wait_pane("still-2", |p| {
        p.lines()
            .any(|l| l.trim_end().ends_with("still-2") && !l.contains("echo"))
    })
    .await;
    // The remote exit status becomes the CLI's, and the terminal is restored.
    tmux.run(&["send-keys", "-t", "s", "exit 3", "Enter"]);
    tmux.wait_pane("EXITED=3", |p| p.contains("EXITED=3")).await;
    let stty = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&stty_after)
            .ok()
            .filter(|s| s.contains("icanon"))
    })
    .await
    .expect("stty -a ran after the session");
    let flags: Vec<&str> = stty.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(flags.contains(&flag), "{flag} not restored:\n{stty}");
    }
}

// ---- the web page in headless Chromium ----

#[tokio::test]
async fn web_page_in_headless_chromium() {
    let s = setup(4).await;
    let Some(browser) = Browser::start().await else {
        assert!(!in_ci(), "chromedriver is missing and CI=true");
        println!("SKIPPED: chromedriver not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let url = format!(
        "http://{}/terminal/{}#token={}",
        s.gw.api_addr, s.uuid, s.operator
    );
    browser
        .session_call("POST", "/url", json!({"url": url}))
        .await;
    eventually(Duration::from_secs(20), || async {
        (browser.script("return document.body.dataset.state").await == "open").then_some(())
    })
    .await
    .expect("the page's terminal connected");
    // The token left the address bar.
    let href = browser.script("return location.href").await;
    assert!(!href.as_str().unwrap().contains("token"), "{href}");
    let el = browser
        .session_call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": ".xterm-helper-textarea"}),
        )
        .await;
    let id = el["value"]["element-6066-11e4-a52e-4f735466cecf"]
        .as_str()
        .unwrap_or_else(|| panic!("no xterm textarea: {el}"))
        .to_string();
    browser
        .session_call(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": "echo hello\u{E007}"}),
        )
        .await;
    let rows = eventually(Duration::from_secs(20), || async {
        let text = browser
            .script("return document.querySelector('.xterm-rows').innerText")
            .await;
        let text = text.as_str().unwrap_or("").to_string();
        text.lines().any(|l| l.trim() == "hello").then_some(text)
    })
    .await
    .expect("`hello` shown in the page's terminal");
    assert!(rows.contains("echo hello"), "{rows}");
    // The page fitted the terminal to the window (wider than the default 80 columns).
    type_in(&browser, &id, "stty size\u{E007}").await;
    let size = eventually(Duration::from_secs(20), || async {
        let text = browser
            .script("return document.querySelector('.xterm-rows').innerText")
            .await;
        text.as_str()?
            .lines()
            .map(str::trim)
            .find(|l| {
                let mut parts = l.split(' ');
                matches!((parts.next(), parts.next(), parts.next()),
                    (Some(a), Some(b), None) if a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok())
            })
            .map(String::from)
    })
    .await
    .expect("stty size output");
    let cols: u16 = size.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(cols > 80, "fitted to a 1000 px wide window: {size}");
    // The exit status is shown when the session ends.
    type_in(&browser, &id, "exit 4\u{E007}").await;
    eventually(Duration::from_secs(20), || async {
        (browser.script("return document.body.dataset.exit").await == "4").then_some(())
    })
    .await
    .expect("exit status shown");
    let status = browser
        .script("return document.getElementById('status').textContent")
        .await;
    assert_eq!(status, "exited with status 4");
    let _ = browser
        .call("DELETE", &format!("/session/{}", browser.session), None)
        .await;
}

async fn type_in(browser: &Browser, id: &str, text: &str) {
    browser
        .session_call(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
}

// ---- benchmark (run by bench/terminal/run.sh) ----

/// Percentile of sorted samples, in microseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        mean,
        pct(&samples, 1.0)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/terminal/run.sh"]
async fn bench_keystroke_echo() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let warmup = 100;
    let bin_dir = std::env::var("BENCH_BIN_DIR").ok();
    let binary = |name: &str| match &bin_dir {
        Some(d) => std::path::Path::new(d).join(name),
        None => bin(name),
    };
    // Gateway and agent as separate processes, as deployed.
    let dir = tempfile::tempdir().unwrap();
    let (http, api, tunnel) = (free_port_tcp(), free_port_tcp(), free_port_udp());
    let _gw = Proc::spawn(
        Command::new(binary("gateway"))
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--tunnel-listen", &format!("127.0.0.1:{tunnel}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .env("RUST_LOG", "warn"),
    );
    // Only `serve` creates a data dir: wait for it before the offline commands.
    assert!(eventually(Duration::from_secs(20), || async {
        dir.path().join("gateway.db").exists().then_some(())
    })
    .await
    .is_some());
    let out = Command::new(binary("gateway"))
        .args(["device", "add", "--data-dir"])
        .arg(dir.path())
        .args(["--gateway", &format!("127.0.0.1:{tunnel}"), "--out"])
        .arg(dir.path().join("agent.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let uuid = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = Command::new(binary("gateway"))
        .args(["token", "create", "--role", "operator", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let _agent = Proc::spawn(
        Command::new(binary("edge-agent"))
            .args(["run", "--config"])
            .arg(dir.path().join("agent.toml"))
            .args(["--local-api", "127.0.0.1:0", "--shell", "/bin/sh"])
            .env("RUST_LOG", "warn"),
    );
    let url = format!("ws://127.0.0.1:{api}/v1/devices/{uuid}/terminal?cols=80&rows=24");
    let mut ws = eventually(Duration::from_secs(30), || async {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .ok()
            .map(|(ws, _)| ws)
    })
    .await
    .expect("terminal opened through the gateway");
    // Wait for the prompt, then measure: one byte typed, its echo back (the PTY's line
    // discipline echoes it; the shell is not involved until Enter).
    read_until(&mut ws, Duration::from_secs(10), |s| {
        s.output.contains('#') || s.output.contains('$')
    })
    .await;
    let mut tunnel_samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = std::time::Instant::now();
        ws.send(Message::Binary(b"x".to_vec().into()))
            .await
            .unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.contains(&b'x') => break,
                Some(Ok(_)) => {}
                other => panic!("terminal ended: {other:?}"),
            }
        }
        if i >= warmup {
            tunnel_samples.push(t.elapsed());
        }
        // Clear the line now and then (Ctrl-U) so the line buffer never fills.
        if i % 200 == 199 {
            ws.send(Message::Binary(b"\x15".to_vec().into()))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), ws.next()).await
            {
            }
        }
    }
    ws.send(Message::Binary(b"\x15exit\r".to_vec().into()))
        .await
        .unwrap();

    // The limit: the same shell on a local PTY, same keystrokes.
    let (pty, pts) = pty_process::open().unwrap();
    pty.resize(pty_process::Size::new(24, 80)).unwrap();
    let mut child = pty_process::Command::new("/bin/sh").spawn(pts).unwrap();
    let (mut r, mut w) = pty.into_split();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.contains(&b'#') && !seen.contains(&b'$') {
        let k = r.read(&mut buf).await.unwrap();
        seen.extend_from_slice(&buf[..k]);
    }
    let mut local_samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = std::time::Instant::now();
        w.write_all(b"x").await.unwrap();
        loop {
            let k = r.read(&mut buf).await.unwrap();
            if buf[..k].contains(&b'x') {
                break;
            }
        }
        if i >= warmup {
            local_samples.push(t.elapsed());
        }
        if i % 200 == 199 {
            w.write_all(b"\x15").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(20), r.read(&mut buf)).await
            {
            }
        }
    }
    w.write_all(b"\x15exit\r").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;

    println!("| path | samples | p50 µs | p99 µs | mean µs | max µs |");
    println!("|---|---|---|---|---|---|");
    println!("{}", summary("local PTY (limit)", local_samples));
    println!(
        "{}",
        summary("gateway WS → QUIC → agent PTY → back", tunnel_samples)
    );
}

#[tokio::test]
async fn cli_over_an_https_api() {
    use tokio::io::AsyncWriteExt;
    bin("gateway");
    let pki = tempfile::tempdir().unwrap();
    let ca = certs::Ca::load_or_create(pki.path()).unwrap();
    let server = ca.issue_server(&["localhost".to_string()]).unwrap();
    let (cert, key) = (pki.path().join("api.pem"), pki.path().join("api.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let gw = TestGateway::spawn_custom(|c| {
        c.api_tls_cert = Some(cert.clone());
        c.api_tls_key = Some(key.clone());
    })
    .await;
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
    opts.terminal.shell = Some("/bin/sh".into());
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let (_, operator, _) = tokens(&gw).await;
    let mut child = tokio::process::Command::new(bin("gateway"))
        .args([
            "ssh",
            "--api",
            &format!("https://localhost:{}", gw.api_addr.port()),
        ])
        .arg("--api-ca")
        .arg(pki.path().join("ca.pem"))
        .args(["--token", &operator, &uuid])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"echo tls-$((40+2))\nexit 9\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("gateway ssh finished")
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tls-42"),
        "{out:?}"
    );
}
