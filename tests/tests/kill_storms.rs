//! `kill -9` storms with the shipped binaries: the gateway killed again and again under
//! visitor load, every agent back and serving within seconds each time; an agent killed
//! again and again in the middle of an update, converging every time with no orphan
//! container.
//!
//! Three kills by default; `CAMPAIGN=full` (or `CAMPAIGN_KILLS=N`) runs ten (see
//! `campaign/mod.rs`). Every test prints what it measured.

mod campaign;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use campaign::{kills, percentile, visitor_load_until, Outcome};
use e2e_tests::engine::{build_test_images, engine_available};
use e2e_tests::procs::{self, device_add, try_get, wait_for_data_dir};
use e2e_tests::*;
use http::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

// ---- the gateway, killed under load ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_is_back_within_seconds_of_each_gateway_kill9() {
    let n = kills(3, 10);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    // Ports that stay free across the restarts.
    let (http, tunnel) = (stable_port(false), stable_port(true));
    let mut gw = procs::serve(&data, http, tunnel, &[]);
    wait_for_data_dir(&data).await;
    let gw_addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();

    // Three devices, each a real agent process with the shipped timings.
    let mut devices = Vec::new();
    for i in 0..3 {
        // Each agent keeps its state next to its file: one directory each.
        let own = dir.path().join(format!("device-{i}"));
        std::fs::create_dir(&own).unwrap();
        let cfg = own.join("device.toml");
        let uuid = device_add(&data, tunnel, &cfg);
        let backend = Backend::spawn(&format!("storm-{i}")).await;
        let agent = procs::agent(&cfg, backend.addr, &["--engine", "none"]);
        devices.push((device_host(&uuid), backend, agent));
    }
    let hosts: Vec<String> = devices.iter().map(|d| d.0.clone()).collect();
    for h in &hosts {
        assert!(
            procs::wait_status(http, h, StatusCode::OK, Duration::from_secs(30)).await,
            "{h} never served"
        );
    }

    // Visitors on every device throughout the storm.
    let stop = CancellationToken::new();
    let load: Vec<_> = hosts
        .iter()
        .map(|h| {
            tokio::spawn(visitor_load_until(
                gw_addr,
                h.clone(),
                1,
                16 * 1024,
                stop.clone(),
                Duration::from_secs(30),
            ))
        })
        .collect();

    let mut backs = Vec::new();
    for k in 1..=n {
        // Some visitor traffic on the live gateway first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        gw.proc.kill9();
        let killed = Instant::now();
        gw = procs::serve(&data, http, tunnel, &[]);
        // From the moment the restarted gateway answers at all...
        let answered = eventually(Duration::from_secs(30), || async {
            try_get(http, &hosts[0]).await.map(|_| Instant::now())
        })
        .await
        .expect("the restarted gateway never answered");
        // ...until each device serves again.
        let waits = hosts.iter().map(|h| async move {
            let ok = procs::wait_status(http, h, StatusCode::OK, Duration::from_secs(60)).await;
            ok.then(|| answered.elapsed())
        });
        let back: Vec<Option<Duration>> = futures_util::future::join_all(waits).await;
        eprintln!(
            "kill {k}/{n}: the restarted gateway answered {:?} after the kill; devices serving again {back:?} after that",
            answered - killed
        );
        for (h, b) in hosts.iter().zip(&back) {
            let b = b.unwrap_or_else(|| panic!("kill {k}: {h} did not come back within 60 s"));
            // Target 5 s; asserted with margin for a loaded 2-core machine.
            assert!(
                b < Duration::from_secs(10),
                "kill {k}: {h} served again only {b:?} after the gateway did (target 5 s)"
            );
            backs.push(b);
        }
    }
    stop.cancel();
    let mut tally = campaign::Tally::default();
    for l in load {
        tally.merge(&l.await.unwrap());
    }
    eprintln!(
        "{n} gateway kills, 3 agents: back after p50 {:?}, max {:?}; visitors: {}",
        percentile(&backs, 0.5),
        percentile(&backs, 1.0),
        tally.line()
    );
    assert_eq!(tally.get(&Outcome::Corrupt), 0, "{}", tally.line());
    assert_eq!(tally.unclean(), 0, "{}", tally.line());
    assert!(tally.get(&Outcome::Ok) > 0, "{}", tally.line());
}

// ---- an agent, killed in the middle of updates ----

/// Removes every container of app `app_id`, and the images pulled for it, when dropped,
/// pass or fail.
struct AppCleanup(u32);

impl Drop for AppCleanup {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter label=io.edge.app-id={app} | xargs -r docker rm -f; \
                 docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '^127.0.0.1:5000/t{app}-' | xargs -r docker rmi",
                app = self.0
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Pushes fixture `image` to the local registry as a repository of its own and removes
/// the local copy of that reference: the agent has to really pull it.
fn push_fresh(repo: &str, image: &str) -> String {
    let reference = format!("127.0.0.1:5000/{repo}");
    sh(&format!(
        "docker tag {image} {reference} && docker push -q {reference} >/dev/null && docker rmi {reference} >/dev/null"
    ));
    reference
}

/// Containers of `app`: (service label, state, image), sorted.
fn containers(app: u32) -> Vec<(String, String, String)> {
    let out = sh(&format!(
        "docker ps -a --filter label=io.edge.app-id={app} --format '{{{{.Label \"io.edge.service-name\"}}}} {{{{.State}}}} {{{{.Image}}}}'"
    ));
    let mut v: Vec<_> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut p = l.split_whitespace().map(String::from);
            (
                p.next().unwrap_or_default(),
                p.next().unwrap_or_default(),
                p.next().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The device's reported reconciler state.
async fn reported(api: &Api, token: &str, uuid: &str) -> Value {
    let (st, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/state"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["reported"]["reconciler"].clone()
}

/// Whether the device reports running `release`, idle, every service Running.
fn runs(r: &Value, release: &str) -> bool {
    r["release"] == release
        && r["update_status"] == "idle"
        && r["services"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["status"] == "Running"))
}

/// Waits until the device reports running `release` (2 minutes at most).
async fn converged(api: &Api, token: &str, uuid: &str, release: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = reported(api, token, uuid).await;
        if runs(&r, release) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the device never ran {release}; last reported: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn compose(db: &str, web: &str) -> String {
    format!(
        "services:\n  db:\n    image: {db}\n    environment:\n      DB_READY_AFTER: \"1\"\n    labels:\n      io.edge.stop-grace-period: \"1\"\n  web:\n    image: {web}\n    depends_on:\n      db:\n        condition: service_healthy\n    labels:\n      io.edge.stop-grace-period: \"1\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_update_converges_every_time_with_no_orphan_container() {
    if !engine_available("an agent killed in the middle of an update") {
        return;
    }
    build_test_images();
    sh(&format!(
        "bash {}/fixtures/engine/registry.sh start",
        env!("CARGO_MANIFEST_DIR")
    ));
    let n = kills(3, 10);
    let gw = TestGateway::spawn().await;
    let (viewer, operator, admin) = tokens(&gw).await;
    let api = Api::new(&gw);
    let fleet = format!("storm-{}", std::process::id());
    let app = gateway::targets::app_id(&fleet);
    let _cleanup = AppCleanup(app);
    let (st, v) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": fleet})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("device.toml");
    let uuid = device_add(&gw.data_dir, gw.tunnel_addr.port(), &cfg);
    let (st, v) = api
        .call(
            "PATCH",
            &format!("/v1/devices/{uuid}"),
            Some(&operator),
            Some(json!({"fleet": fleet})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let journal = dir.path().join("reconciler").join("journal.json");
    // The real agent, with the real engine and the shipped reconciler settings.
    let start_agent = || {
        procs::agent(
            &cfg,
            "127.0.0.1:9".parse().unwrap(),
            &["--reboot-command", "true"],
        )
    };
    let publish = |db: String, web: String| {
        let api = &api;
        let (operator, fleet) = (&operator, &fleet);
        async move {
            let (st, r) = api
                .call(
                    "POST",
                    &format!("/v1/fleets/{fleet}/releases"),
                    Some(operator),
                    Some(json!({"compose": compose(&db, &web)})),
                )
                .await;
            assert_eq!(st, 201, "{r}");
            r["id"].as_str().unwrap().to_string()
        }
    };
    let check_no_orphans = |k: usize, db: &str, web: &str| {
        let c = containers(app);
        let want = vec![
            ("db".to_string(), "running".to_string(), db.to_string()),
            ("web".to_string(), "running".to_string(), web.to_string()),
        ];
        assert_eq!(
            c, want,
            "after kill {k}: exactly one running container per service, of the release's images"
        );
    };

    // The first release, undisturbed.
    let mut agent = start_agent();
    let (db, web) = (
        push_fresh(&format!("t{app}-0/db:v1"), "edge-test/db:v1"),
        push_fresh(&format!("t{app}-0/web:v1"), "edge-test/web:v1"),
    );
    let r0 = publish(db.clone(), web.clone()).await;
    converged(&api, &viewer, &uuid, &r0).await;
    check_no_orphans(0, &db, &web);

    // Then, again and again: a new release (both images new, so both are pulled and both
    // services replaced), the agent killed at a different point of the update each time,
    // started again.
    let mut times = Vec::new();
    for k in 1..=n {
        let v = if k.is_multiple_of(2) { "v1" } else { "v2" };
        let (db, web) = (
            push_fresh(&format!("t{app}-{k}/db:v1"), "edge-test/db:v1"),
            push_fresh(
                &format!("t{app}-{k}/web:{v}"),
                &format!("edge-test/web:{v}"),
            ),
        );
        let rk = publish(db.clone(), web.clone()).await;
        let in_flight = eventually(Duration::from_secs(60), || async {
            let j: Value = serde_json::from_slice(&std::fs::read(&journal).ok()?).ok()?;
            (j["target"]["release"] == rk.as_str() && j["in_flight"].is_string()).then_some(())
        })
        .await;
        assert!(in_flight.is_some(), "update {k} never started");
        // Where in the update the kill lands: at once, or a little later each time.
        let extra = Duration::from_millis([0, 400, 900, 1600, 2500][k % 5]);
        tokio::time::sleep(extra).await;
        agent.kill9();
        let step = std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|j| j["in_flight"].clone())
            .unwrap_or_default();
        let at_kill: Vec<String> = containers(app)
            .into_iter()
            .map(|(s, st, _)| format!("{s}:{st}"))
            .collect();
        let restarted = Instant::now();
        agent = start_agent();
        converged(&api, &viewer, &uuid, &rk).await;
        let took = restarted.elapsed();
        check_no_orphans(k, &db, &web);
        eprintln!(
            "kill {k}/{n}, {extra:?} into the update, step in flight {step}, containers then {at_kill:?}: converged {took:?} after the restart"
        );
        // The update itself takes some 5 s here (pulls, stops, db healthy, 3 s stable);
        // a restarted agent refused as a copy of its dead predecessor takes 30 s more.
        assert!(
            took < Duration::from_secs(20),
            "kill {k}: converged only {took:?} after the restart"
        );
        times.push(took);
    }
    agent.kill9();
    eprintln!(
        "{n} agent kills mid-update: converged every time, no orphan; after the restart p50 {:?}, max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 1.0)
    );
}
