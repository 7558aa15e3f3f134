//! The reconciler against the real Docker Engine and a real local registry.
//!
//! Every test uses its own app id (so they run in parallel), its own temp data dir, and a
//! guard that removes its containers, volumes and networks even when it fails. Without an
//! engine the tests print SKIPPED, unless `CI=true`, where they fail.

mod support;

use std::time::{Duration, Instant};

use edge_agent::reconciler::{bundle, Reconciler, ReconcilerError, UpdateStatus};
use protocol::release::EnvVar;
use support::engine::*;

/// Seconds since midnight of an RFC 3339 `StartedAt` (same-day comparisons only).
fn secs_of_day(ts: &str) -> f64 {
    let t = ts
        .split('T')
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    let m: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    let s: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s
}

fn started(app: u32, service: &str) -> f64 {
    let all = containers(app);
    secs_of_day(&all[service][0].2)
}

fn three_services(db: &str, web: &str) -> String {
    format!(
        r#"
services:
  db:
    image: {db}
    environment:
      DB_READY_AFTER: "3"
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      timeout: 1s
      retries: 3
      start_period: 30s
    labels:
      io.edge.stop-grace-period: "1"
  api:
    image: {web}
    depends_on:
      db:
        condition: service_healthy
  proxy:
    image: {web}
    depends_on:
      db:
        condition: service_healthy
      api:
        condition: service_started
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_start_in_health_order_with_pulls() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let db = push_unique(5000, app, "edge-test/db:v1");
    let web = push_unique(5000, app, "edge-test/web:v1");
    let (logs, cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    let t0 = Instant::now();
    r.set_target(target(app, "r1", &three_services(&db, &web), &[]), false)
        .await
        .unwrap();
    // Progress is reported while downloading.
    let mut rx = r.status();
    let mut saw_download = false;
    let mut saw_service_downloading = false;
    let status = loop {
        let s = rx.borrow_and_update().clone();
        if s.update_status == UpdateStatus::Downloading || !s.images.is_empty() {
            saw_download = true;
        }
        if s.services
            .iter()
            .any(|x| x.status == "Downloading" && x.download_progress.is_some())
        {
            saw_service_downloading = true;
        }
        if s.update_status == UpdateStatus::Idle && s.release.as_deref() == Some("r1") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{s:#?}");
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    };
    eprintln!("release -> all healthy (with pulls): {:?}", t0.elapsed());
    assert!(saw_download, "no download progress was reported");
    assert!(
        saw_service_downloading,
        "services were not reported as Downloading"
    );
    assert!(
        status.images.iter().all(|i| i.download_progress == 100),
        "{status:#?}"
    );
    assert_eq!(status.images.len(), 2, "{status:#?}");
    for s in &status.services {
        assert_eq!(s.status, "Running", "{status:#?}");
        assert_eq!(s.release.as_deref(), Some("r1"));
    }
    let (db_t, api_t, proxy_t) = (
        started(app, "db"),
        started(app, "api"),
        started(app, "proxy"),
    );
    eprintln!("started: db {db_t:.2} api {api_t:.2} proxy {proxy_t:.2}");
    assert!(
        api_t - db_t >= 2.5,
        "api must wait for db to be healthy (~3 s)"
    );
    assert!(proxy_t >= api_t, "proxy starts after api");
    let lines = cap.lines();
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("Downloading image {db}")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("Downloaded image {web}")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "[db] Service started"),
        "{lines:#?}"
    );

    // The no-op pass touches nothing.
    let before = containers(app);
    r.set_target(target(app, "r1", &three_services(&db, &web), &[]), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(containers(app), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_one_service_restarts_only_it_and_keeps_volume_data() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let compose = |web: &str| {
        format!(
            r#"
services:
  store:
    image: edge-test/printer:v1
    environment:
      PRINT_INTERVAL_MS: "1000"
    volumes:
      - data:/data
  web:
    image: {web}
volumes:
  data: {{}}
"#
        )
    };
    let (logs, _cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    r.set_target(target(app, "r1", &compose("edge-test/web:v1"), &[]), false)
        .await
        .unwrap();
    wait_running(&r, "r1", 60).await;
    let store = only_container(app, "store");
    let web1 = only_container(app, "web");
    sh(&format!(
        "docker exec {store} sh -c 'echo keep-me > /data/file'"
    ))
    .unwrap();

    r.set_target(target(app, "r2", &compose("edge-test/web:v2"), &[]), false)
        .await
        .unwrap();
    wait_running(&r, "r2", 60).await;
    assert_eq!(
        only_container(app, "store"),
        store,
        "store must not be touched"
    );
    let web2 = only_container(app, "web");
    assert_ne!(web2, web1, "web must be recreated");

    // A new release id with identical services restarts nothing.
    r.set_target(target(app, "r3", &compose("edge-test/web:v2"), &[]), false)
        .await
        .unwrap();
    let s = wait_running(&r, "r3", 30).await;
    assert_eq!(only_container(app, "store"), store);
    assert_eq!(only_container(app, "web"), web2);
    assert!(
        s.services
            .iter()
            .all(|s| s.release.as_deref() == Some("r3")),
        "{s:#?}"
    );

    // The volume kept its data through all of that; purge empties it.
    let data = sh(&format!("docker exec {store} cat /data/file")).unwrap();
    assert_eq!(data, "keep-me");
    r.purge(false).await.unwrap();
    let store2 = only_container(app, "store");
    assert_ne!(store2, store);
    assert!(
        sh(&format!("docker exec {store2} cat /data/file")).is_err(),
        "purge empties volumes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_env_change_recreates_only_affected_services() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let compose =
        "services:\n  a:\n    image: edge-test/web:v1\n  b:\n    image: edge-test/web:v1\n";
    let (logs, _cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    r.set_target(target(app, "r1", compose, &[]), false)
        .await
        .unwrap();
    wait_running(&r, "r1", 60).await;
    let (a, b) = (only_container(app, "a"), only_container(app, "b"));
    let env = vec![EnvVar {
        service: "a".into(),
        name: "COLOR".into(),
        value: "blue".into(),
    }];
    let mut t = target(app, "r1", compose, &env);
    t.release = "r1".into();
    r.set_target(t, false).await.unwrap();
    // Same release id, different env: wait for the pass to finish on it.
    let s = r.settled().await;
    assert_eq!(s.update_status, UpdateStatus::Idle, "{s:#?}");
    let a2 = only_container(app, "a");
    assert_ne!(a2, a, "a is recreated");
    assert_eq!(only_container(app, "b"), b, "b is untouched");
    let env_a = sh(&format!(
        "docker inspect -f '{{{{json .Config.Env}}}}' {a2}"
    ))
    .unwrap();
    assert!(env_a.contains("\"COLOR=blue\""), "{env_a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_lock_makes_the_update_wait_and_force_goes_through() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let compose = |img: &str| {
        format!("services:\n  main:\n    image: {img}\n  side:\n    image: edge-test/printer:v1\n")
    };
    let (logs, cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    r.set_target(target(app, "r1", &compose("edge-test/web:v1"), &[]), false)
        .await
        .unwrap();
    wait_running(&r, "r1", 60).await;
    let main1 = only_container(app, "main");
    // The service takes the lock from inside its container, as balena apps do.
    sh(&format!(
        "docker exec {main1} touch /tmp/balena/updates.lock"
    ))
    .unwrap();
    assert!(guard
        .locks_root()
        .join(app.to_string())
        .join("main")
        .join("updates.lock")
        .exists());

    r.set_target(target(app, "r2", &compose("edge-test/web:v2"), &[]), false)
        .await
        .unwrap();
    let s = wait_status(&r, 20, "waiting_for_lock", |s| {
        s.update_status == UpdateStatus::WaitingForLock
    })
    .await;
    assert!(s.error.as_deref().unwrap_or("").contains("main"), "{s:#?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(only_container(app, "main"), main1, "locked: nothing killed");
    assert_eq!(
        r.status().borrow().update_status,
        UpdateStatus::WaitingForLock
    );
    // Actions honour the lock too.
    match r.restart_service("side", false).await {
        Err(ReconcilerError::Locked { services }) => assert_eq!(services, vec!["main".to_string()]),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(matches!(
        r.restart_service("nope", true).await,
        Err(ReconcilerError::NotFound(_))
    ));

    r.set_target(target(app, "r2", &compose("edge-test/web:v2"), &[]), true)
        .await
        .unwrap();
    wait_running(&r, "r2", 60).await;
    assert_ne!(only_container(app, "main"), main1);
    assert!(cap
        .lines()
        .iter()
        .any(|l| l.contains("blocked by update locks in main")));
}

/// Polls `http://127.0.0.1:port/` every 20 ms, recording (ms since epoch, body or None).
fn poll_http(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(i64, Option<String>)>> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let now = edge_agent::logs::now_ms();
            let body = (|| {
                let mut s = std::net::TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_millis(200),
                )
                .ok()?;
                s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
                let mut buf = String::new();
                s.read_to_string(&mut buf).ok()?;
                buf.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
            })();
            out.push((now, body));
            std::thread::sleep(Duration::from_millis(20));
        }
        out
    })
}

/// Runs a v1 → v2 update of a web service with `strategy`, polling it over HTTP.
/// Returns (downtime ms, time the new image finished downloading, last v1 answer,
/// whether every probe between the update's start and the download's end got v1).
async fn update_with_strategy(strategy: &str) -> (i64, i64, i64, bool) {
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let port = free_port();
    let v2 = push_unique(5000, app, "edge-test/web:v2");
    let compose = |img: &str| {
        format!(
            "services:\n  web:\n    image: {img}\n    ports: [\"127.0.0.1:{port}:80\"]\n    labels:\n      io.balena.update.strategy: {strategy}\n      io.edge.stop-grace-period: \"2\"\n"
        )
    };
    let (logs, cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    r.set_target(target(app, "r1", &compose("edge-test/web:v1"), &[]), false)
        .await
        .unwrap();
    wait_running(&r, "r1", 60).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_http(port, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let update_start = edge_agent::logs::now_ms();
    r.set_target(target(app, "r2", &compose(&v2), &[]), false)
        .await
        .unwrap();
    wait_running(&r, "r2", 60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = poller.join().unwrap();
    let last_v1 = samples
        .iter()
        .filter(|(_, b)| b.as_deref() == Some("web v1"))
        .map(|(t, _)| *t)
        .max()
        .expect("v1 answered");
    let first_v2 = samples
        .iter()
        .filter(|(_, b)| b.as_deref() == Some("web v2"))
        .map(|(t, _)| *t)
        .min()
        .expect("v2 answers");
    let downloaded = cap
        .first_ts(&format!("Downloaded image {v2}"))
        .expect("downloaded");
    let served_during_download = samples
        .iter()
        .filter(|(t, _)| *t >= update_start && *t < downloaded)
        .all(|(_, b)| b.as_deref() == Some("web v1"));
    (
        first_v2 - last_v1,
        downloaded,
        last_v1,
        served_during_download,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_then_kill_keeps_the_old_container_serving_until_the_image_is_there() {
    if !engine_ready() {
        return;
    }
    let (downtime, downloaded, last_v1, served) = update_with_strategy("download-then-kill").await;
    eprintln!("download-then-kill: downtime {downtime} ms");
    assert!(served, "v1 answered every probe while v2 was downloading");
    assert!(
        last_v1 + 60 >= downloaded,
        "v1 kept serving until the new image was present (last v1 {last_v1}, downloaded {downloaded})"
    );
    let (downtime_k, downloaded_k, last_v1_k, _) = update_with_strategy("kill-then-download").await;
    eprintln!("kill-then-download: downtime {downtime_k} ms");
    assert!(last_v1_k <= downloaded_k, "kill-then-download kills first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_runs_old_and_new_together_until_handover_complete() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let compose = |img: &str, cmd: &str| {
        format!(
            "services:\n  web:\n    image: {img}\n    command: {cmd}\n    labels:\n      io.balena.update.strategy: hand-over\n      io.balena.update.handover-timeout: \"15000\"\n      io.edge.stop-grace-period: \"1\"\n"
        )
    };
    let (logs, cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    let plain = r#"["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait $!"]"#;
    r.set_target(
        target(app, "r1", &compose("edge-test/web:v1", plain), &[]),
        false,
    )
    .await
    .unwrap();
    wait_running(&r, "r1", 60).await;
    let old = only_container(app, "web");
    // The new one signals hand-over after 3 s.
    let handing = r#"["sh", "-c", "trap 'exit 0' TERM; (sleep 3; touch /tmp/balena/handover-complete) & httpd -f -p 80 -h /www & wait $!"]"#;
    let t0 = Instant::now();
    r.set_target(
        target(app, "r2", &compose("edge-test/web:v2", handing), &[]),
        false,
    )
    .await
    .unwrap();
    // Both run at once during the hand-over.
    let mut both = false;
    while t0.elapsed() < Duration::from_secs(10) {
        if containers(app).get("web").map(|v| v.len()) == Some(2) {
            both = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(both, "old and new web must run side by side");
    assert!(
        sh(&format!("docker inspect {old}")).is_ok(),
        "old still there"
    );
    wait_running(&r, "r2", 60).await;
    let new = only_container(app, "web");
    assert_ne!(new, old);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "old killed only after handover-complete ({took:?})"
    );
    assert!(
        cap.lines().iter().any(|l| l == "[web] Hand-over complete"),
        "{:#?}",
        cap.lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_healthcheck_rolls_back_and_says_why() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let good = "services:\n  web:\n    image: edge-test/web:v1\n  other:\n    image: edge-test/printer:v1\n";
    let bad = "services:\n  web:\n    image: edge-test/web:v2\n    healthcheck:\n      test: [\"CMD\", \"false\"]\n      interval: 1s\n      retries: 1\n  other:\n    image: edge-test/printer:v1\n";
    let (logs, cap) = Captured::sink();
    let mut cfg = test_config(&guard);
    cfg.health_window = Duration::from_secs(10);
    let r = guard.reconciler(cfg, logs).await;
    r.set_target(target(app, "good", good, &[]), false)
        .await
        .unwrap();
    wait_running(&r, "good", 60).await;
    let other = only_container(app, "other");
    r.set_target(target(app, "bad", bad, &[]), false)
        .await
        .unwrap();
    let s = wait_status(&r, 60, "rollback finished", |s| {
        s.update_status == UpdateStatus::Idle
            && s.error.as_deref().unwrap_or("").contains("rolled back")
    })
    .await;
    eprintln!("error: {:?}", s.error);
    assert_eq!(s.release.as_deref(), Some("good"));
    assert_eq!(s.target_release.as_deref(), Some("bad"));
    assert!(
        s.error.as_deref().unwrap().contains("web is unhealthy"),
        "{s:#?}"
    );
    let web = only_container(app, "web");
    let img = sh(&format!("docker inspect -f '{{{{.Config.Image}}}}' {web}")).unwrap();
    assert_eq!(img, "edge-test/web:v1");
    assert_eq!(
        only_container(app, "other"),
        other,
        "unchanged service untouched"
    );
    assert!(
        cap.lines().iter().any(|l| l.starts_with("Rolling back to release good because service web is unhealthy")),
        "{:#?}",
        cap.lines()
    );
    // Not retried: it stays on the good release.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(only_container(app, "web"), web);

    // A crash-looping release rolls back too.
    let crash = "services:\n  web:\n    image: edge-test/crasher:v1\n  other:\n    image: edge-test/printer:v1\n";
    r.set_target(target(app, "crash", crash, &[]), false)
        .await
        .unwrap();
    let s = wait_status(&r, 60, "crash rollback", |s| {
        s.update_status == UpdateStatus::Idle
            && s.error
                .as_deref()
                .unwrap_or("")
                .contains("release crash failed")
    })
    .await;
    assert!(s.error.as_deref().unwrap().contains("web"), "{s:#?}");
    assert_eq!(s.release.as_deref(), Some("good"));
}

/// Child process entry: runs a reconciler on `RECONCILER_CHILD_DIR` with the target in
/// `RECONCILER_CHILD_TARGET` until killed. A no-op in normal test runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_reconciler_process() {
    let Ok(dir) = std::env::var("RECONCILER_CHILD_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut cfg =
        edge_agent::reconciler::ReconcilerConfig::new(dir.join("data"), dir.join("locks"));
    cfg.engine_socket = socket();
    cfg.stable_for = Duration::from_millis(1500);
    cfg.stop_grace = Duration::from_secs(1);
    let r = Reconciler::start(cfg, edge_agent::logs::LogSink::disabled())
        .await
        .unwrap();
    let t = std::fs::read(std::env::var("RECONCILER_CHILD_TARGET").unwrap()).unwrap();
    r.set_target(serde_json::from_slice(&t).unwrap(), false)
        .await
        .unwrap();
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Starts the child reconciler on `guard`'s dir; returns its pid. The guard kills it
/// at the end whatever happens.
fn spawn_child(guard: &Cleanup, t: &protocol::release::TargetState) -> u32 {
    let dir = guard.dir.path();
    let path = dir.join(format!("target-{}.json", t.release));
    std::fs::write(&path, serde_json::to_vec(t).unwrap()).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_reconciler_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RECONCILER_CHILD_DIR", dir)
        .env("RECONCILER_CHILD_TARGET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    guard.adopt(child);
    pid
}

/// SIGKILL, and wait until the process is gone.
fn kill9(pid: u32) {
    sh(&format!("kill -9 {pid}; while kill -0 {pid} 2>/dev/null && ! grep -q '^State:.*Z' /proc/{pid}/status; do sleep 0.01; done")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_update_converges_after_restart() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let compose = |web: &str, db: &str, extra: bool| {
        format!(
            "services:\n  db:\n    image: {db}\n    environment:\n      DB_READY_AFTER: \"2\"\n    labels:\n      io.edge.stop-grace-period: \"1\"\n  web:\n    image: {web}\n    depends_on:\n      db:\n        condition: service_healthy\n{}",
            if extra { "  extra:\n    image: edge-test/printer:v1\n" } else { "" }
        )
    };
    let r1 = target(
        app,
        "r1",
        &compose("edge-test/web:v1", "edge-test/db:v1", true),
        &[],
    );
    let child = spawn_child(&guard, &r1);
    let t0 = Instant::now();
    loop {
        let c = containers(app);
        if c.len() == 3 && c.values().all(|v| v.len() == 1) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "r1 never came up: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kill9(child);

    // r2 changes web and db (db from the registry: a real pull), drops `extra`; kill the
    // agent as soon as the update is under way.
    let db2 = push_unique(5000, app, "edge-test/db:v1");
    let r2 = target(app, "r2", &compose("edge-test/web:v2", &db2, false), &[]);
    let child = spawn_child(&guard, &r2);
    let journal = guard.data_dir().join("reconciler").join("journal.json");
    let t0 = Instant::now();
    loop {
        let j = std::fs::read_to_string(&journal).unwrap_or_default();
        if j.contains("\"in_flight\": \"") && j.contains("\"release\": \"r2\"") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "update never started: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    kill9(child);
    let j = std::fs::read_to_string(&journal).unwrap();
    eprintln!(
        "killed with in-flight step: {:?}",
        j.lines().find(|l| l.contains("in_flight"))
    );
    eprintln!(
        "containers at kill: {:?}",
        containers(app)
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect::<Vec<_>>()
    );

    // Start again (in process, same data dir): it resumes r2 from the journal.
    let (logs, cap) = Captured::sink();
    let mut cfg = test_config(&guard);
    cfg.stop_grace = Duration::from_secs(1);
    let r = guard.reconciler(cfg, logs).await;
    wait_running(&r, "r2", 90).await;
    let c = containers(app);
    assert_eq!(c.len(), 2, "exactly web and db, no orphans: {c:?}");
    for (svc, list) in &c {
        assert_eq!(list.len(), 1, "one container for {svc}: {c:?}");
        assert_eq!(list[0].1, r2.services[svc].config_hash(), "{svc} runs r2");
    }
    assert!(
        cap.lines()
            .iter()
            .any(|l| l.starts_with("Resuming after an interrupted update"))
            || !j.contains("\"in_flight\": \"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_backs_off_with_a_clear_state_then_succeeds() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let reg = OwnRegistry::start();
    let web = push_unique(reg.port, app, "edge-test/web:v2");
    reg.down();
    let (logs, cap) = Captured::sink();
    let mut cfg = test_config(&guard);
    cfg.pull_retries = 30;
    cfg.pull_backoff = Duration::from_millis(300);
    cfg.pull_backoff_max = Duration::from_secs(1);
    let r = guard.reconciler(cfg, logs).await;
    r.set_target(
        target(
            app,
            "r1",
            &format!("services:\n  web:\n    image: {web}\n"),
            &[],
        ),
        false,
    )
    .await
    .unwrap();
    let s = wait_status(&r, 20, "download retry reported", |s| {
        s.update_status == UpdateStatus::Downloading
            && s.error.as_deref().unwrap_or("").contains("attempt 2/")
    })
    .await;
    eprintln!("reported while the registry is down: {:?}", s.error);
    assert!(s.error.as_deref().unwrap().contains(&web));
    assert!(s.error.as_deref().unwrap().contains("retrying in"));
    reg.up();
    let s = wait_running(&r, "r1", 60).await;
    assert_eq!(s.error, None);
    assert_eq!(s.services[0].status, "Running");
    assert!(cap
        .lines()
        .iter()
        .any(|l| l.starts_with(&format!("Failed to download image {web}"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_applies_with_the_registry_stopped() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let reg = OwnRegistry::start();
    let web = push_unique(reg.port, app, "edge-test/web:v2");
    let db = push_unique(reg.port, app, "edge-test/db:v1");
    // The "build machine" engine has the images (pulled from the registry).
    sh(&format!(
        "docker pull -q {web} >/dev/null && docker pull -q {db} >/dev/null"
    ))
    .unwrap();
    let t = target(
        app,
        "bundled",
        &format!("services:\n  web:\n    image: {web}\n    depends_on: [db]\n  db:\n    image: {db}\n    environment:\n      DB_READY_AFTER: \"1\"\n"),
        &[],
    );
    let file = guard.dir.path().join("release.bundle");
    let summary = bundle::create_bundle(&socket(), &t, &file).await.unwrap();
    assert_eq!(summary.images.len(), 2);
    assert!(summary.bytes > 1_000_000, "{summary:?}");

    // The device: no registry, no images.
    reg.down();
    sh(&format!("docker rmi {web} {db} >/dev/null")).unwrap();
    let loaded = bundle::preload(&socket(), &file).await.unwrap();
    assert_eq!(loaded, t);
    let (logs, cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    r.set_pinned_target(loaded, false).await.unwrap();
    wait_running(&r, "bundled", 60).await;
    assert!(
        !cap.lines()
            .iter()
            .any(|l| l.starts_with("Downloading image")),
        "nothing pulled"
    );
    let s = r.status().borrow().clone();
    assert!(s.services.iter().all(|s| s.status == "Running"), "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_restart_actions_act_on_real_containers() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let (logs, _cap) = Captured::sink();
    let r = guard.reconciler(test_config(&guard), logs).await;
    r.set_target(
        target(
            app,
            "r1",
            "services:\n  web:\n    image: edge-test/web:v1\n",
            &[],
        ),
        false,
    )
    .await
    .unwrap();
    wait_running(&r, "r1", 60).await;
    let c1 = only_container(app, "web");
    r.stop_service("web", false).await.unwrap();
    let s = wait_status(&r, 10, "web stopped", |s| s.services[0].status == "Stopped").await;
    assert_eq!(s.update_status, UpdateStatus::Idle);
    // A pass does not start it again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = sh(&format!("docker inspect -f '{{{{.State.Running}}}}' {c1}")).unwrap();
    assert_eq!(running, "false");
    r.start_service("web").await.unwrap();
    wait_status(&r, 10, "web running", |s| s.services[0].status == "Running").await;
    assert_eq!(only_container(app, "web"), c1);
    r.restart_service("web", false).await.unwrap();
    let c2 = only_container(app, "web");
    assert_ne!(c2, c1, "restart recreates");
    wait_status(&r, 10, "web running", |s| {
        s.services[0].status == "Running" && s.services[0].container_id.as_deref() == Some(&c2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_do_not_wait_behind_a_health_window() {
    if !engine_ready() {
        return;
    }
    let app = unique_app_id();
    let guard = Cleanup::new(app);
    let (logs, _cap) = Captured::sink();
    let mut cfg = test_config(&guard);
    cfg.health_window = Duration::from_secs(60);
    let r = guard.reconciler(cfg, logs).await;
    // db never becomes ready: the pass sits in its health window.
    let compose = "services:\n  db:\n    image: edge-test/db:v1\n    environment:\n      DB_READY_AFTER: \"100000\"\n    labels:\n      io.edge.stop-grace-period: \"1\"\n  web:\n    image: edge-test/web:v1\n";
    r.set_target(target(app, "r1", compose, &[]), false)
        .await
        .unwrap();
    wait_status(&r, 30, "db starting", |s| {
        s.services
            .iter()
            .any(|x| x.name == "db" && x.health.as_deref() == Some("starting"))
    })
    .await;
    let web = only_container(app, "web");
    let t0 = Instant::now();
    r.restart_service("web", false).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "restart took {:?}",
        t0.elapsed()
    );
    assert_ne!(only_container(app, "web"), web, "restart recreates");
    assert_eq!(r.status().borrow().update_status, UpdateStatus::Updating);
}
