//! Device swarm: registers N devices in a gateway's data dir and connects N real agents
//! (each its own identity and connection: a UDP socket and QUIC, or a TCP socket and TLS)
//! from this one process, then holds them idle. Used by `bench/idle.sh` to measure
//! gateway memory per connected device.
//!
//! ```text
//! [SWARM_TRANSPORT=quic|tcp|auto] \
//!   cargo run --release -p gateway --example swarm -- DATA_DIR GATEWAY_ADDR COUNT [HOLD_SECS]
//! ```
//!
//! `SWARM_REPORT_MS=N` prints `report UNIX_MS CONNECTED DROPPED RECONNECTED` every N ms
//! while holding: the agents connected right now, those whose first connection has ended
//! (a gateway restart is noticed one agent at a time), and those connected again since.
//!
//! `SWARM_DATABASE=postgres://…` registers the devices in that database instead of the
//! data dir's SQLite file (a cluster's nodes share it; the data dir still holds the fleet
//! CA). `SWARM_PUBLIC_URL=1` turns each device's public URL on, and `SWARM_TARGET=HOST:PORT`
//! is where the agents send it (default `127.0.0.1:80`). `GATEWAY_ADDR` may be a comma
//! list of nodes, tried in order as a device file's `gateway` is. `bench/failover.sh`
//! uses these.
//!
//! `SWARM_TRANSPORT` is the agents' transport (`edge_agent::dial::TransportMode`), default
//! `quic`. With `tcp` the agents dial TLS over TCP on the same `host:port` as
//! `GATEWAY_ADDR` (the gateway's `--tunnel-tcp-listen` default).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::dial::{Route, TransportMode};
use edge_agent::{Agent, AgentConfig, AgentOptions, ConnState};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: swarm DATA_DIR GATEWAY_ADDR COUNT [HOLD_SECS]"
    );
    let data_dir = std::path::PathBuf::from(&args[1]);
    let gateway = args[2].clone();
    let count: usize = args[3].parse()?;
    let hold: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(30);
    let mode: TransportMode = std::env::var("SWARM_TRANSPORT")
        .unwrap_or_else(|_| "quic".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("SWARM_TRANSPORT: {e}"))?;

    let database = std::env::var("SWARM_DATABASE").ok();
    let public_url = std::env::var("SWARM_PUBLIC_URL").is_ok_and(|v| v == "1");
    let target = std::env::var("SWARM_TARGET").ok();

    let ca = certs::Ca::load_or_create(&data_dir)?;
    let store = gateway::store::Store::open_database(database.as_deref(), &data_dir).await?;
    let t0 = Instant::now();
    let mut configs = Vec::with_capacity(count);
    for _ in 0..count {
        let uuid = certs::random_uuid();
        store.add_device(uuid, public_url).await?;
        let id = ca.issue_device(uuid)?;
        configs.push(AgentConfig {
            uuid: uuid.to_string(),
            gateway: gateway.clone(),
            server_name: certs::TUNNEL_SERVER_NAME.into(),
            ca_cert: ca.cert_pem().into(),
            cert: id.cert_pem,
            key: id.key_pem,
            target: None,
        });
    }
    store.close().await;
    eprintln!("registered {count} devices in {:?}", t0.elapsed());

    let shutdown = CancellationToken::new();
    let t1 = Instant::now();
    eprintln!("connecting {count} agents over {mode} to {gateway}");
    let mut states = Vec::with_capacity(count);
    for cfg in configs {
        let mut options = AgentOptions {
            route: Route {
                mode,
                ..Route::default()
            },
            ..AgentOptions::default()
        };
        if let Some(t) = &target {
            options.target.clone_from(t);
        }
        let agent = Agent::new(cfg, options)?;
        states.push(agent.state());
        tokio::spawn(agent.run(shutdown.clone()));
    }
    for s in &mut states {
        tokio::time::timeout(
            Duration::from_secs(120),
            s.wait_for(|s| *s == ConnState::Connected),
        )
        .await??;
    }
    println!(
        "connected {count} agents over {mode} in {:.2?}",
        t1.elapsed()
    );
    // Agents whose first connection ended, and those connected again since: an agent
    // still `Connected` right after a gateway restart may not have noticed it yet, so
    // the herd is timed by these.
    let dropped = Arc::new(AtomicUsize::new(0));
    let reconnected = Arc::new(AtomicUsize::new(0));
    for s in &states {
        let (mut s, dropped, reconnected) =
            (s.clone(), Arc::clone(&dropped), Arc::clone(&reconnected));
        tokio::spawn(async move {
            if s.wait_for(|s| *s != ConnState::Connected).await.is_err() {
                return;
            }
            dropped.fetch_add(1, Ordering::Relaxed);
            if s.wait_for(|s| *s == ConnState::Connected).await.is_ok() {
                reconnected.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // SWARM_REPORT_MS: print `report unix_ms connected dropped reconnected` lines while
    // holding (bench/herd.sh reads them to time the reconnection herd after a gateway
    // restart).
    let report = std::env::var("SWARM_REPORT_MS")
        .ok()
        .map(|v| v.parse::<u64>())
        .transpose()?
        .map(Duration::from_millis);
    match report {
        Some(every) => {
            let until = Instant::now() + Duration::from_secs(hold);
            while Instant::now() < until {
                tokio::time::sleep(every).await;
                let connected = states
                    .iter()
                    .filter(|s| *s.borrow() == ConnState::Connected)
                    .count();
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                println!(
                    "report {unix_ms} {connected} {} {}",
                    dropped.load(Ordering::Relaxed),
                    reconnected.load(Ordering::Relaxed)
                );
            }
        }
        None => tokio::time::sleep(Duration::from_secs(hold)).await,
    }
    let connected = states
        .iter()
        .filter(|s| *s.borrow() == ConnState::Connected)
        .count();
    println!("still connected after {hold}s: {connected}");
    shutdown.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}
