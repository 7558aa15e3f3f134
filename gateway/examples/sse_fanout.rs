//! The dashboard's SSE fan-out under flapping devices: registers DEVICES devices in a
//! gateway's data dir and runs one real agent per device in this process, each connecting,
//! staying a while, stopping and coming back (one presence event each way); for each phase
//! (a number of open `/events` streams, signed in with an API token) it measures, over the
//! phase's window, the gateway's CPU time (from `/proc/PID/stat`), the presence changes
//! the agents made, and when each stream got each offline event, counted from the moment
//! the agent was told to stop. Used by `bench/dashboard/fanout.sh`.
//!
//! ```text
//! cargo run --release -p gateway --example sse_fanout -- \
//!   DATA_DIR TUNNEL_ADDR API_ADDR TOKEN GATEWAY_PID
//! ```
//!
//! Environment: `FANOUT_PHASES` (open streams per phase, default `0,20,0,20`),
//! `FANOUT_DEVICES` (default 100), `FANOUT_SECS` (each phase's window, default 10),
//! `FANOUT_FLAP_MS` (a device stays connected, then away, for a random time up to twice
//! this; default 1000), `SWARM_TRANSPORT` (`quic` or `tcp`, default `quic`).
//! Prints one Markdown table row per phase.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_agent::dial::{Route, TransportMode};
use edge_agent::{Agent, AgentConfig, AgentOptions, ConnState};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} does not parse")),
        Err(_) => Ok(default),
    }
}

/// User + system CPU time of `pid` so far.
fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // CLK_TCK is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// What the agents did: when each device was last told to stop, and counters.
#[derive(Default)]
struct Flaps {
    stopped_at: Mutex<HashMap<String, Instant>>,
    changes: AtomicU64,
}

/// One simple HTTP/1.1 exchange; status, headers, body.
async fn exchange(
    api: SocketAddr,
    req: http::Request<String>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, hyper::body::Incoming)> {
    let tcp = tokio::net::TcpStream::connect(api).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    Ok((parts.status, parts.headers, body))
}

fn cookie(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

/// Signs in to the dashboard with `token`: the session cookie (`gw_session=…`).
async fn sign_in(api: SocketAddr, token: &str) -> anyhow::Result<String> {
    let get = http::Request::get("/login")
        .header("host", api.to_string())
        .body(String::new())?;
    let (_, h, _) = exchange(api, get).await?;
    let login = cookie(&h, "gw_login").ok_or_else(|| anyhow::anyhow!("no gw_login cookie"))?;
    let nonce = login
        .split_once('=')
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let post = http::Request::post("/login")
        .header("host", api.to_string())
        .header("cookie", &login)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={nonce}&token={token}"))?;
    let (status, h, _) = exchange(api, post).await?;
    cookie(&h, "gw_session")
        .ok_or_else(|| anyhow::anyhow!("sign-in answered {status} without a session"))
}

/// One `/events` stream: for each offline event, the delay since its agent was told to
/// stop goes to `delays`. Ends with `stop`.
async fn stream(
    api: SocketAddr,
    session: String,
    flaps: Arc<Flaps>,
    delays: Arc<Mutex<Vec<Duration>>>,
    events: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let req = http::Request::get("/events")
        .header("host", api.to_string())
        .header("cookie", session)
        .header("accept", "text/event-stream")
        .body(String::new())?;
    let (status, _, mut body) = exchange(api, req).await?;
    anyhow::ensure!(status == http::StatusCode::OK, "/events answered {status}");
    let mut buf = String::new();
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            f = body.frame() => f,
        };
        let Some(frame) = frame else { return Ok(()) };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let Some(json) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) else {
                continue;
            };
            events.fetch_add(1, Ordering::Relaxed);
            if v["online"] == false {
                let uuid = v["uuid"].as_str().unwrap_or("");
                if let Some(t) = flaps.stopped_at.lock().unwrap().get(uuid) {
                    delays.lock().unwrap().push(now.duration_since(*t));
                }
            }
        }
    }
}

/// One device: connect, stay, stop, stay away, again, until `shutdown`.
async fn flap(
    cfg: AgentConfig,
    mode: TransportMode,
    half: Duration,
    flaps: Arc<Flaps>,
    shutdown: CancellationToken,
) {
    let pause = |half: Duration| half.mul_f64(rand::random::<f64>() * 2.0);
    // Spread the first connects.
    tokio::time::sleep(pause(half)).await;
    while !shutdown.is_cancelled() {
        let options = AgentOptions {
            route: Route {
                mode,
                ..Route::default()
            },
            ..AgentOptions::default()
        };
        let Ok(agent) = Agent::new(cfg.clone(), options) else {
            return;
        };
        let mut state = agent.state();
        let stop = CancellationToken::new();
        let run = tokio::spawn(agent.run(stop.clone()));
        // The state's guard is dropped with this statement, before any other await.
        let up = matches!(
            tokio::time::timeout(
                Duration::from_secs(30),
                state.wait_for(|s| *s == ConnState::Connected),
            )
            .await,
            Ok(Ok(_))
        );
        if up {
            flaps.changes.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(pause(half)) => {}
                _ = shutdown.cancelled() => {}
            }
            flaps
                .stopped_at
                .lock()
                .unwrap()
                .insert(cfg.uuid.clone(), Instant::now());
            flaps.changes.fetch_add(1, Ordering::Relaxed);
        }
        stop.cancel();
        let _ = run.await;
        tokio::select! {
            _ = tokio::time::sleep(pause(half)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: sse_fanout DATA_DIR TUNNEL_ADDR API_ADDR TOKEN GATEWAY_PID"
    );
    let data_dir = std::path::PathBuf::from(&args[1]);
    let tunnel = args[2].clone();
    let api: SocketAddr = args[3].parse()?;
    let token = args[4].clone();
    let pid: u32 = args[5].parse()?;
    let phases: Vec<usize> = env_or("FANOUT_PHASES", "0,20,0,20".to_string())?
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("FANOUT_PHASES is a comma list of stream counts"))?;
    let devices: usize = env_or("FANOUT_DEVICES", 100)?;
    let secs: u64 = env_or("FANOUT_SECS", 10)?;
    let half = Duration::from_millis(env_or("FANOUT_FLAP_MS", 1000)?);
    let mode: TransportMode = env_or("SWARM_TRANSPORT", "quic".to_string())?
        .parse()
        .map_err(|e| anyhow::anyhow!("SWARM_TRANSPORT: {e}"))?;

    let ca = certs::Ca::load_or_create(&data_dir)?;
    let store = gateway::store::Store::open_database(None, &data_dir).await?;
    let mut configs = Vec::with_capacity(devices);
    for _ in 0..devices {
        let uuid = certs::random_uuid();
        store.add_device(uuid, false).await?;
        let id = ca.issue_device(uuid)?;
        configs.push(AgentConfig {
            uuid: uuid.to_string(),
            gateway: tunnel.clone(),
            server_name: certs::TUNNEL_SERVER_NAME.into(),
            ca_cert: ca.cert_pem().into(),
            cert: id.cert_pem,
            key: id.key_pem,
            target: None,
        });
    }
    store.close().await;

    let flaps = Arc::new(Flaps::default());
    let shutdown = CancellationToken::new();
    for cfg in configs {
        tokio::spawn(flap(cfg, mode, half, Arc::clone(&flaps), shutdown.clone()));
    }
    // Until the flapping is in its stride.
    tokio::time::sleep(half * 4).await;
    let session = sign_in(api, &token).await?;
    println!("| open streams | presence changes | events delivered | gateway CPU ms | CPU ms per change | offline event delay p50 / p90 / p99 / max ms |");
    println!("|---:|---:|---:|---:|---:|---|");
    for &streams in &phases {
        let delays = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for _ in 0..streams {
            tasks.push(tokio::spawn(stream(
                api,
                session.clone(),
                Arc::clone(&flaps),
                Arc::clone(&delays),
                Arc::clone(&events),
                stop.clone(),
            )));
        }
        // The streams open before the window starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (cpu0, changes0) = (cpu_of(pid)?, flaps.changes.load(Ordering::Relaxed));
        events.store(0, Ordering::Relaxed);
        delays.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (cpu1, changes1) = (cpu_of(pid)?, flaps.changes.load(Ordering::Relaxed));
        let delivered = events.load(Ordering::Relaxed);
        stop.cancel();
        for t in tasks {
            if let Ok(Err(e)) = t.await {
                eprintln!("stream failed: {e}");
            }
        }
        let changes = changes1 - changes0;
        let cpu = (cpu1 - cpu0).as_secs_f64() * 1000.0;
        let mut d = std::mem::take(&mut *delays.lock().unwrap());
        d.sort();
        let delay = if d.is_empty() {
            "—".to_string()
        } else {
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                percentile(&d, 0.5),
                percentile(&d, 0.9),
                percentile(&d, 0.99),
                percentile(&d, 1.0)
            )
        };
        println!(
            "| {streams} | {changes} | {delivered} | {cpu:.0} | {:.3} | {delay} |",
            cpu / changes.max(1) as f64
        );
    }
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}
