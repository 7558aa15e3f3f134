//! The reconnection herd: 500 real agents (each its own identity and QUIC connection, in
//! this process) on a real `gateway serve`. The gateway is killed with SIGKILL and started
//! again on the same data dir and ports. Every agent must be back online within a bound,
//! the management API must answer every probe (one every ~100 ms) within 1 s while the
//! herd reconnects, and the gateway must never log `database is locked`.
//!
//! `bench/herd.sh` is the same experiment at full size (5,000 agents, release binaries).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::procs::{self, admin_token, api_json, wait_for_data_dir};
use e2e_tests::*;
use edge_agent::dial::{Route, TransportMode};
use edge_agent::{Agent, AgentConfig, AgentOptions, ConnState};
use http::StatusCode;
use tokio_util::sync::CancellationToken;

/// Agents in the herd (`HERD_AGENTS` overrides it, for trying other sizes by hand).
const AGENTS: usize = 500;
/// All of them must be back online within this long after the restart.
const BACK_WITHIN: Duration = Duration::from_secs(60);
/// Each management API probe must be answered within this long during the herd.
const API_WITHIN: Duration = Duration::from_secs(1);
/// One probe every this long.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// One management API probe: `GET /v1/devices?online=true`.
struct Probe {
    at: Instant,
    took: Duration,
    /// Status and the number of online devices listed; `None` when nothing answered
    /// within 5 s (or the connection was refused).
    answer: Option<(StatusCode, usize)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_500_agents_is_back_after_a_gateway_kill9_and_the_api_stays_responsive() {
    init_tracing();
    // 500 UDP sockets here, plus the gateway's; the usual soft limit is 1,024.
    transport::net::raise_fd_limit();
    let count: usize = std::env::var("HERD_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(AGENTS);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let log = dir.path().join("gateway.log");
    // Ports that stay free across the restart.
    let (http, tunnel, api) = (stable_port(false), stable_port(true), stable_port(false));
    let api_addr: std::net::SocketAddr = ([127, 0, 0, 1], api).into();
    let serve = || {
        Proc::spawn(
            procs::serve_command(
                &data,
                http,
                tunnel,
                &["--api-listen", &api_addr.to_string()],
            )
            .stderr(log_file(&log))
            .stdout(log_file(&log)),
        )
    };
    let mut gw = serve();
    wait_for_data_dir(&data).await;
    let token = admin_token(&data);

    let t = Instant::now();
    let configs = register(&data, count, &format!("127.0.0.1:{tunnel}")).await;
    eprintln!("registered {count} devices in {:.1?}", t.elapsed());

    // The agents' own timings are the shipped defaults (backoff 500 ms doubling to 30 s
    // with full jitter, keep-alive 1 s, idle timeout 15 s): the herd is spread by exactly
    // what a fleet would do.
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let mut states = Vec::with_capacity(count);
    for cfg in configs {
        let opts = AgentOptions {
            // Nothing is proxied in this test.
            target: "127.0.0.1:9".into(),
            route: Route {
                mode: TransportMode::Quic,
                ..Route::default()
            },
            ..AgentOptions::default()
        };
        let agent = Agent::new(cfg, opts).unwrap();
        states.push(agent.state());
        tokio::spawn(agent.run(shutdown.clone()));
    }
    let online = eventually(Duration::from_secs(60), || async {
        online_count(api_addr, &token).await.filter(|n| *n == count)
    })
    .await;
    assert_eq!(online, Some(count), "not every agent connected at first");
    eprintln!("{count} agents online in {:.1?}", t.elapsed());
    // Let the first connections' state reports settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Each agent's own view: when it saw its connection end, and when it was connected
    // again.
    let returns: Vec<_> = states
        .iter()
        .map(|s| {
            let mut s = s.clone();
            tokio::spawn(async move {
                s.wait_for(|s| *s == ConnState::Connected).await.ok()?;
                s.wait_for(|s| *s != ConnState::Connected).await.ok()?;
                let lost = Instant::now();
                s.wait_for(|s| *s == ConnState::Connected).await.ok()?;
                Some((lost, Instant::now()))
            })
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(Mutex::new(Vec::new()));
    let prober = {
        let (stop, token, probes) = (Arc::clone(&stop), token.clone(), Arc::clone(&probes));
        // Its own thread and runtime: the latencies are the gateway's, not the wait for a
        // worker of this busy runtime (the 500 agents).
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(probe_until(api_addr, &token, &stop, &probes))
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    gw.kill9();
    let restarted = Instant::now();
    let _gw2 = serve();
    eprintln!(
        "gateway killed (SIGKILL) and started again in {:.1?}",
        restarted - killed
    );
    // Back: the first probe after the restart that lists every device online.
    let back = eventually(BACK_WITHIN + Duration::from_secs(30), || async {
        let probes = probes.lock().unwrap();
        probes
            .iter()
            .filter(|p| p.at >= restarted)
            .find(|p| p.answer == Some((StatusCode::OK, count)))
            .map(|p| p.at + p.took)
    })
    .await;
    // A few more probes after the last device is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    let probes = std::mem::take(&mut *probes.lock().unwrap());
    // Agents not back by now never will be in this test: stop waiting for them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut agent_view = Vec::new();
    for r in returns {
        if let Ok(Ok(Some(v))) = tokio::time::timeout_at(deadline, r).await {
            agent_view.push(v);
        }
    }
    shutdown.cancel();

    // The gateway's view, from the probes: time from the restart until 50, 90 and 100 %
    // of the devices were listed online.
    let first_answer = probes
        .iter()
        .find(|p| p.at >= restarted && p.answer.is_some())
        .map(|p| p.at + p.took);
    let reached = |share: f64| {
        let want = (count as f64 * share).ceil() as usize;
        probes
            .iter()
            .filter(|p| p.at >= restarted)
            .find(|p| {
                p.answer
                    .is_some_and(|(s, n)| s == StatusCode::OK && n >= want)
            })
            .map(|p| (p.at + p.took - restarted).as_secs_f64())
    };
    eprintln!(
        "gateway view after the restart: API answers after {}; online 50 % after {}, 90 % after {}, 100 % after {}",
        secs(first_answer.map(|a| (a - restarted).as_secs_f64())),
        secs(reached(0.5)),
        secs(reached(0.9)),
        secs(reached(1.0)),
    );
    let mut lost: Vec<Duration> = agent_view
        .iter()
        .map(|(l, _)| l.saturating_duration_since(killed))
        .collect();
    let mut again: Vec<Duration> = agent_view
        .iter()
        .map(|(_, a)| a.saturating_duration_since(restarted))
        .collect();
    lost.sort();
    again.sort();
    eprintln!(
        "agent view ({} of {count} reconnected): connection seen lost {} / {} / {} after the kill, connected again {} / {} / {} after the restart (50 / 90 / 100 %)",
        again.len(),
        secs(pct(&lost, 0.5).map(|d| d.as_secs_f64())),
        secs(pct(&lost, 0.9).map(|d| d.as_secs_f64())),
        secs(pct(&lost, 1.0).map(|d| d.as_secs_f64())),
        secs(pct(&again, 0.5).map(|d| d.as_secs_f64())),
        secs(pct(&again, 0.9).map(|d| d.as_secs_f64())),
        secs(pct(&again, 1.0).map(|d| d.as_secs_f64())),
    );

    // The API during the herd: from the restarted gateway's first answer until every
    // device was back (and 2 s more), each probe answered 200 within the bound.
    let herd: Vec<&Probe> = match first_answer {
        Some(first) => probes.iter().filter(|p| p.at + p.took >= first).collect(),
        None => Vec::new(),
    };
    let mut took: Vec<Duration> = herd.iter().map(|p| p.took).collect();
    took.sort();
    let failed: Vec<String> = herd
        .iter()
        .filter(|p| p.answer.is_none_or(|(s, _)| s != StatusCode::OK))
        .map(|p| {
            format!(
                "{:.1?} after the restart: {:?} in {:.1?}",
                p.at.saturating_duration_since(restarted),
                p.answer.map(|(s, _)| s),
                p.took
            )
        })
        .collect();
    let before: Vec<Duration> = probes
        .iter()
        .filter(|p| p.at < killed)
        .map(|p| p.took)
        .collect();
    eprintln!(
        "API before the kill: {} probes, max {:.1?}; during the herd: {} probes, p50 {:.1?}, p99 {:.1?}, max {:.1?}, {} failed",
        before.len(),
        before.iter().max().copied().unwrap_or_default(),
        took.len(),
        pct(&took, 0.5).unwrap_or_default(),
        pct(&took, 0.99).unwrap_or_default(),
        pct(&took, 1.0).unwrap_or_default(),
        failed.len(),
    );
    let gateway_log = std::fs::read_to_string(&log).unwrap_or_default();
    let locked = gateway_log.matches("database is locked").count();
    eprintln!("gateway log lines with \"database is locked\": {locked}");

    let back = back.map(|b| b - restarted);
    assert!(
        back.is_some_and(|b| b <= BACK_WITHIN),
        "not all {count} agents were back online within {BACK_WITHIN:?} of the restart ({back:?})"
    );
    assert!(
        !took.is_empty(),
        "the restarted gateway's API never answered"
    );
    assert!(
        failed.is_empty(),
        "API probes failed during the herd: {failed:#?}"
    );
    let slowest = *took.last().unwrap();
    assert!(
        slowest < API_WITHIN,
        "the management API took {slowest:?} to answer during the herd (bound {API_WITHIN:?})"
    );
    assert_eq!(
        locked, 0,
        "the gateway logged `database is locked`:\n{gateway_log}"
    );
}

/// Registers `count` devices in the running gateway's data dir (its store, as `gateway
/// device add` does, in one open) and returns their agents' configurations.
async fn register(data: &Path, count: usize, gateway: &str) -> Vec<AgentConfig> {
    let (ca, store) = gateway::datadir::open_existing_in(data, None)
        .await
        .unwrap();
    let mut configs = Vec::with_capacity(count);
    for _ in 0..count {
        let uuid = certs::random_uuid();
        let id = ca.issue_device(uuid).unwrap();
        store.add_device(uuid, false).await.unwrap();
        configs.push(AgentConfig {
            uuid: uuid.to_string(),
            gateway: gateway.to_string(),
            server_name: certs::TUNNEL_SERVER_NAME.into(),
            ca_cert: ca.cert_pem().into(),
            cert: id.cert_pem,
            key: id.key_pem,
            target: None,
        });
    }
    store.close().await;
    configs
}

/// How many devices `GET /v1/devices?online=true` lists; `None` unless it answers 200.
async fn online_count(api: std::net::SocketAddr, token: &str) -> Option<usize> {
    match api_json(api, token, "GET", "/v1/devices?online=true", None).await? {
        (StatusCode::OK, serde_json::Value::Array(list)) => Some(list.len()),
        _ => None,
    }
}

/// Probes the API every [`PROBE_EVERY`] (the next one starts at once when one took
/// longer) until `stop`, adding each probe to `probes`.
async fn probe_until(
    api: std::net::SocketAddr,
    token: &str,
    stop: &AtomicBool,
    probes: &Mutex<Vec<Probe>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let answer = api_json(api, token, "GET", "/v1/devices?online=true", None)
            .await
            .map(|(s, v)| (s, v.as_array().map_or(0, Vec::len)));
        let took = at.elapsed();
        probes.lock().unwrap().push(Probe { at, took, answer });
        tokio::time::sleep(PROBE_EVERY.saturating_sub(took)).await;
    }
}

/// The `share` quantile of sorted `v` (nearest rank).
fn pct(v: &[Duration], share: f64) -> Option<Duration> {
    let rank = ((v.len() as f64 * share).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied()
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "never".into(), |s| format!("{s:.1} s"))
}

fn log_file(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}
