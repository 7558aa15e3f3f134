//! Shared set-up for tests that drive the real Docker Engine: fixture images, the local
//! registry, unique app ids, and a guard that removes everything a test made.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use compose::{parse_compose, target_state};
use edge_agent::logs::{LogRecord, LogSink};
use edge_agent::reconciler::{Reconciler, ReconcilerConfig, ReconcilerStatus};
use protocol::release::{EnvVar, TargetState};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The engine socket the tests use.
pub(crate) fn socket() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

static SETUP: OnceLock<Result<(), String>> = OnceLock::new();

/// Whether the engine is there; builds the fixture images and starts the shared
/// registry once. Without an engine: panics under `CI=true`, otherwise says SKIPPED.
pub(crate) fn engine_ready() -> bool {
    let up = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !up {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "no container engine reachable at {} and CI=true: these tests must not be skipped in CI",
                socket()
            );
        }
        eprintln!("SKIPPED: no container engine reachable at {}", socket());
        return false;
    }
    let res = SETUP.get_or_init(|| {
        sh(&format!(
            "bash {}/tests/fixtures/engine/build-images.sh",
            root().display()
        ))?;
        sh(&format!(
            "bash {}/tests/fixtures/engine/registry.sh start",
            root().display()
        ))?;
        Ok(())
    });
    if let Err(e) = res {
        panic!("fixture set-up failed: {e}");
    }
    true
}

/// Runs a shell command, returning stdout or an error with stderr.
pub(crate) fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A unique app id per test (and per test process).
pub(crate) fn unique_app_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 40_000) * 50 + 1_000_000;
    base + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Pushes fixture `image` (e.g. `edge-test/web:v1`) to the registry on `port` under a
/// repository unique to `app`, removes the local copy of that reference, and returns it:
/// a reconciler given it has to really pull.
pub(crate) fn push_unique(port: u16, app: u32, image: &str) -> String {
    let name = image.trim_start_matches("edge-test/");
    let reference = format!("127.0.0.1:{port}/t{app}/{name}");
    sh(&format!(
        "docker tag {image} {reference} && docker push -q {reference} >/dev/null && docker rmi {reference} >/dev/null"
    ))
    .unwrap();
    reference
}

/// A registry of the test's own (so stopping it does not disturb other tests).
pub(crate) struct OwnRegistry {
    pub(crate) port: u16,
}

impl OwnRegistry {
    pub(crate) fn start() -> OwnRegistry {
        let port = free_port();
        let r = OwnRegistry { port };
        r.up();
        r
    }
    fn script(&self, arg: &str) -> Result<String, String> {
        sh(&format!(
            "REGISTRY_PORT={} bash {}/tests/fixtures/engine/registry.sh {arg}",
            self.port,
            root().display()
        ))
    }
    pub(crate) fn up(&self) {
        self.script("start").unwrap();
    }
    pub(crate) fn down(&self) {
        self.script("stop").unwrap();
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.script("clean");
    }
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes every container, volume and network of `app` when dropped, pass or fail.
pub(crate) struct Cleanup {
    pub(crate) app: u32,
    pub(crate) dir: tempfile::TempDir,
    /// Reconcilers to stop first, or their next pass would recreate what we remove.
    running: Mutex<Vec<Reconciler>>,
    /// Child processes to kill first.
    children: Mutex<Vec<std::process::Child>>,
}

impl Cleanup {
    pub(crate) fn new(app: u32) -> Cleanup {
        Cleanup {
            app,
            dir: tempfile::tempdir().unwrap(),
            running: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        }
    }
    /// Starts a reconciler that is stopped before the clean-up.
    pub(crate) async fn reconciler(&self, cfg: ReconcilerConfig, logs: LogSink) -> Reconciler {
        let r = Reconciler::start(cfg, logs).await.unwrap();
        self.running.lock().unwrap().push(r.clone());
        r
    }
    /// Kills `child` (if still running) before the clean-up.
    pub(crate) fn adopt(&self, child: std::process::Child) {
        self.children.lock().unwrap().push(child);
    }
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub(crate) fn locks_root(&self) -> PathBuf {
        self.dir.path().join("locks")
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for r in self.running.lock().unwrap().drain(..) {
            r.shutdown();
        }
        for mut c in self.children.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Let a pass that was running see the cancellation.
        std::thread::sleep(Duration::from_millis(300));
        let f = format!("--filter label=io.edge.app-id={}", self.app);
        let _ = sh(&format!(
            "docker ps -aq {f} | xargs -r docker rm -f >/dev/null; \
             docker volume ls -q {f} | xargs -r docker volume rm -f >/dev/null; \
             docker network ls -q {f} | xargs -r docker network rm >/dev/null"
        ));
    }
}

/// Log lines the reconciler emitted, with their timestamps.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub Arc<Mutex<Vec<LogRecord>>>);

impl Captured {
    pub(crate) fn sink() -> (LogSink, Captured) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cap = Captured::default();
        let c = cap.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                c.0.lock().unwrap().push(r);
            }
        });
        (LogSink::new(tx), cap)
    }
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| match &r.service {
                Some(s) => format!("[{s}] {}", r.message),
                None => r.message.clone(),
            })
            .collect()
    }
    pub(crate) fn first_ts(&self, needle: &str) -> Option<i64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.message.contains(needle))
            .map(|r| r.timestamp_ms)
    }
}

/// Test settings: small windows and fast polls.
pub(crate) fn test_config(c: &Cleanup) -> ReconcilerConfig {
    let mut cfg = ReconcilerConfig::new(c.data_dir(), c.locks_root());
    cfg.engine_socket = socket();
    cfg.health_window = Duration::from_secs(20);
    cfg.stable_for = Duration::from_millis(1500);
    cfg.stop_grace = Duration::from_secs(2);
    cfg.poll_interval = Duration::from_millis(500);
    cfg.lock_poll = Duration::from_millis(200);
    cfg.pull_backoff = Duration::from_millis(200);
    cfg.pull_backoff_max = Duration::from_secs(2);
    cfg.handover_timeout = Duration::from_secs(10);
    cfg
}

/// A target from compose text.
pub(crate) fn target(app: u32, release: &str, compose: &str, device_env: &[EnvVar]) -> TargetState {
    let c = parse_compose(compose).unwrap_or_else(|e| panic!("{e}"));
    target_state(app, "test-app", release, &c, &[], device_env)
}

/// Waits for a status matching `pred`, or panics with the last status after `secs`.
pub(crate) async fn wait_status(
    r: &Reconciler,
    secs: u64,
    what: &str,
    pred: impl Fn(&ReconcilerStatus) -> bool,
) -> ReconcilerStatus {
    let mut rx = r.status();
    let res = tokio::time::timeout(Duration::from_secs(secs), rx.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match res {
        Ok(Ok(s)) => s,
        _ => panic!(
            "timed out after {secs}s waiting for {what}; last status: {:#?}",
            *r.status().borrow()
        ),
    }
}

/// Waits until the reconciler runs `release` and is idle.
pub(crate) async fn wait_running(r: &Reconciler, release: &str, secs: u64) -> ReconcilerStatus {
    wait_status(r, secs, &format!("release {release} idle"), |s| {
        s.update_status == edge_agent::reconciler::UpdateStatus::Idle
            && s.release.as_deref() == Some(release)
            && s.last_good_release.as_deref() == Some(release)
    })
    .await
}

/// Containers of `app`, by service name: (id, config hash, StartedAt).
pub(crate) fn containers(app: u32) -> HashMap<String, Vec<(String, String, String)>> {
    let ids = sh(&format!(
        "docker ps -aq --no-trunc --filter label=io.edge.app-id={app}"
    ))
    .unwrap();
    let mut out: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let info = match sh(&format!(
            "docker inspect -f '{{{{index .Config.Labels \"io.edge.service-name\"}}}} {{{{index .Config.Labels \"io.edge.config-hash\"}}}} {{{{.State.StartedAt}}}}' {id}"
        ))
        {
            Ok(info) => info,
            // Removed between `ps` and `inspect`.
            Err(_) => continue,
        };
        let mut parts = info.split_whitespace();
        let svc = parts.next().unwrap_or_default().to_string();
        let hash = parts.next().unwrap_or_default().to_string();
        let started = parts.next().unwrap_or_default().to_string();
        out.entry(svc)
            .or_default()
            .push((id.to_string(), hash, started));
    }
    out
}

/// The single container id of `service` (panics when there is not exactly one).
pub(crate) fn only_container(app: u32, service: &str) -> String {
    let all = containers(app);
    let list = all.get(service).cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "containers of {service}: {all:?}");
    list[0].0.clone()
}
