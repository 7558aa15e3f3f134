//! Reconciler measurements on the real engine (see `bench/reconciler/run.sh`).
//!
//! Needs Docker, the fixture images (`tests/fixtures/engine/build-images.sh`) and the
//! registry on 127.0.0.1:5000 (`tests/fixtures/engine/registry.sh start`). Prints one
//! line per measurement. Everything it creates is labelled with its own app ids and
//! removed at the end.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compose::{parse_compose, target_state};
use edge_agent::logs::LogSink;
use edge_agent::reconciler::{Reconciler, ReconcilerConfig, ReconcilerStatus, UpdateStatus};
use protocol::release::TargetState;

fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn cleanup(app: u32) {
    let f = format!("--filter label=io.edge.app-id={app}");
    sh(&format!(
        "docker ps -aq {f} | xargs -r docker rm -f >/dev/null; \
         docker volume ls -q {f} | xargs -r docker volume rm -f >/dev/null; \
         docker network ls -q {f} | xargs -r docker network rm >/dev/null; true"
    ));
}

fn target(app: u32, release: &str, compose: &str) -> TargetState {
    let c = parse_compose(compose).unwrap();
    target_state(app, "bench", release, &c, &[], &[])
}

async fn idle_on(r: &Reconciler, release: &str) -> ReconcilerStatus {
    let mut rx = r.status();
    let s = rx
        .wait_for(|s| {
            s.update_status == UpdateStatus::Idle && s.release.as_deref() == Some(release)
        })
        .await
        .unwrap()
        .clone();
    s
}

async fn start(dir: &std::path::Path, tweak: impl FnOnce(&mut ReconcilerConfig)) -> Reconciler {
    let mut cfg = ReconcilerConfig::new(dir.join("data"), dir.join("locks"));
    cfg.stop_grace = Duration::from_secs(2);
    tweak(&mut cfg);
    Reconciler::start(cfg, LogSink::disabled()).await.unwrap()
}

fn three(db: &str, web: &str) -> String {
    format!(
        "services:\n  db:\n    image: {db}\n    environment:\n      DB_READY_AFTER: \"1\"\n    healthcheck:\n      test: [\"CMD\", \"test\", \"-f\", \"/tmp/ready\"]\n      interval: 1s\n      retries: 3\n      start_period: 30s\n  api:\n    image: {web}\n    depends_on:\n      db:\n        condition: service_healthy\n  proxy:\n    image: {web}\n    depends_on:\n      db:\n        condition: service_healthy\n      api:\n        condition: service_started\n"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let base = 3_000_000 + (std::process::id() % 10_000) * 10;
    let tmp = tempfile::tempdir().unwrap();
    let (rss0, _) = rss_kib();
    println!("rss before connecting: {rss0} KiB");

    // 1. Release -> all healthy, images present.
    let app = base;
    let r = start(&tmp.path().join("a"), |_| {}).await;
    let t0 = Instant::now();
    r.set_target(
        target(app, "r1", &three("edge-test/db:v1", "edge-test/web:v1")),
        false,
    )
    .await
    .unwrap();
    idle_on(&r, "r1").await;
    println!(
        "3-service release -> idle (images present, db ready after 1 s, stable_for 3 s): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let (rss_idle, hwm) = rss_kib();
    println!("rss idle after the update: {rss_idle} KiB (peak so far {hwm} KiB)");

    // 2. No-op passes: same target, poll as fast as possible, count passes.
    r.shutdown();
    let r = start(&tmp.path().join("a"), |c| c.poll_interval = Duration::ZERO).await;
    idle_on(&r, "r1").await;
    let p0 = r.status().borrow().passes;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = r.status().borrow().passes - p0;
    println!(
        "no-op reconcile pass (list + inspect 3 containers, compare): {:.2} ms ({} passes in 5 s)",
        t0.elapsed().as_secs_f64() * 1000.0 / n as f64,
        n
    );
    r.shutdown();
    cleanup(app);

    // 3. Release -> all healthy with pulls (fresh repositories on the local registry).
    let app = base + 1;
    let db = format!("127.0.0.1:5000/bench{app}/db:v1");
    let web = format!("127.0.0.1:5000/bench{app}/web:v1");
    for (src, dst) in [("edge-test/db:v1", &db), ("edge-test/web:v1", &web)] {
        sh(&format!(
            "docker tag {src} {dst} && docker push -q {dst} >/dev/null && docker rmi {dst} >/dev/null"
        ));
    }
    let r = start(&tmp.path().join("b"), |_| {}).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::SeqCst) {
                max = max.max(rss_kib().0);
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        })
    };
    let t0 = Instant::now();
    r.set_target(target(app, "r1", &three(&db, &web)), false)
        .await
        .unwrap();
    idle_on(&r, "r1").await;
    println!(
        "3-service release -> idle (2 images pulled from 127.0.0.1:5000): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::SeqCst);
    println!("rss max during the update: {} KiB", sampler.join().unwrap());
    r.shutdown();
    cleanup(app);
    sh(&format!("docker rmi {db} {web} >/dev/null; true"));

    // 4. Downtime per strategy: web v1 -> v2 on a published port, probed every 10 ms.
    for (i, strategy) in [
        "download-then-kill",
        "kill-then-download",
        "delete-then-download",
    ]
    .iter()
    .enumerate()
    {
        let app = base + 2 + i as u32;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let v2 = format!("127.0.0.1:5000/bench{app}/web:v2");
        sh(&format!(
            "docker tag edge-test/web:v2 {v2} && docker push -q {v2} >/dev/null && docker rmi {v2} >/dev/null"
        ));
        let compose = |img: &str| {
            format!("services:\n  web:\n    image: {img}\n    ports: [\"127.0.0.1:{port}:80\"]\n    labels:\n      io.balena.update.strategy: {strategy}\n")
        };
        let r = start(&tmp.path().join(format!("s{i}")), |_| {}).await;
        // A private tag of v1: delete-then-download deletes the old image.
        let v1 = format!("bench{app}/web:v1");
        sh(&format!("docker tag edge-test/web:v1 {v1}"));
        r.set_target(target(app, "r1", &compose(&v1)), false)
            .await
            .unwrap();
        idle_on(&r, "r1").await;
        let stop = Arc::new(AtomicBool::new(false));
        let prober = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut last_ok: Option<Instant> = None;
                let mut longest = Duration::ZERO;
                while !stop.load(Ordering::SeqCst) {
                    let probe_start = Instant::now();
                    let ok = (|| {
                        // Short timeouts: a probe stuck on a dying container must not
                        // count as downtime of its own.
                        let mut s = std::net::TcpStream::connect_timeout(
                            &([127, 0, 0, 1], port).into(),
                            Duration::from_millis(100),
                        )
                        .ok()?;
                        s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
                        let mut b = String::new();
                        s.read_to_string(&mut b).ok()?;
                        b.contains("web v").then_some(())
                    })()
                    .is_some();
                    let now = probe_start;
                    if ok {
                        if let Some(l) = last_ok {
                            longest = longest.max(now - l);
                        }
                        last_ok = Some(now);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                longest
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        r.set_target(target(app, "r2", &compose(&v2)), false)
            .await
            .unwrap();
        idle_on(&r, "r2").await;
        let total = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::SeqCst);
        let gap = prober.join().unwrap();
        println!(
            "downtime {strategy}: {:.0} ms (longest gap between good answers; update took {:.2} s incl. pull and stable_for)",
            gap.as_secs_f64() * 1000.0,
            total.as_secs_f64()
        );
        r.shutdown();
        cleanup(app);
        sh(&format!("docker rmi {v2} {v1} >/dev/null 2>&1; true"));
    }
    let (rss, hwm) = rss_kib();
    println!("rss at the end: {rss} KiB, peak {hwm} KiB");
}
