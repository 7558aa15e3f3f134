//! Log throughput: DEVICES in-process agents (each its own identity, spool and QUIC
//! connection) push LINES log lines each as fast as they can to a `gateway serve` running
//! as its own process (PID given), and the bench measures how long until the gateway has
//! stored them all, and the gateway process's CPU time per 10k lines (from
//! /proc/PID/stat). With `--kill-at N` it also runs a forced-disconnect check: after N
//! lines per device it runs the given restart command (which must kill -9 the gateway and
//! start it again, printing the new pid) and then counts lost and duplicated lines.
//!
//! ```text
//! cargo run --release -p gateway --example logs_bench -- \
//!     DATA_DIR GATEWAY_UDP_ADDR API_URL GATEWAY_PID DEVICES LINES [RESTART_CMD]
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_agent::logs::{LogPipeline, LogRecord};
use edge_agent::{Agent, AgentConfig, AgentOptions, ConnState};
use gateway::api::types::LogPage;
use tokio_util::sync::CancellationToken;

fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 7,
        "usage: logs_bench DATA_DIR GATEWAY_UDP_ADDR API_URL GATEWAY_PID DEVICES LINES [RESTART_CMD]"
    );
    let data_dir = PathBuf::from(&args[1]);
    let gateway = args[2].clone();
    let api_url = args[3].clone();
    let mut gw_pid = args[4].clone();
    let devices: usize = args[5].parse()?;
    let lines: usize = args[6].parse()?;
    let restart = args.get(7).cloned();

    let ca = certs::Ca::load_or_create(&data_dir)?;
    let store = gateway::store::Store::open(&data_dir).await?;
    let (_, token) =
        gateway::create_token(&data_dir, None, gateway::api::auth::Role::Viewer, "bench").await?;
    let mut configs = Vec::new();
    for _ in 0..devices {
        let uuid = certs::random_uuid();
        store.add_device(uuid, false).await?;
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

    let tmp = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let mut states = Vec::new();
    let mut sinks = Vec::new();
    let mut uuids = Vec::new();
    for (i, cfg) in configs.into_iter().enumerate() {
        let pipeline = LogPipeline::start(&tmp.path().join(format!("d{i}")), 256 << 20)?;
        sinks.push(pipeline.sink());
        uuids.push(cfg.uuid.clone());
        let opts = AgentOptions {
            logs: Some(pipeline),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            ..AgentOptions::default()
        };
        let agent = Agent::new(cfg, opts)?;
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
    let client = gateway::client::ApiClient::new(&api_url, Some(token));
    let count = |uuid: String| {
        let client = &client;
        async move {
            let page: LogPage = client
                .get(&format!("/v1/devices/{uuid}/logs?service=bench&tail=1"))
                .await
                .ok()?;
            page.lines
                .first()
                .and_then(|l| l.message.strip_prefix("line "))
                .and_then(|n| n.parse::<usize>().ok())
        }
    };

    let cpu0 = cpu_ticks(&gw_pid);
    let t0 = Instant::now();
    let kill_at = restart.as_ref().map(|_| lines / 2);
    for i in 1..=lines {
        for sink in &sinks {
            sink.push(LogRecord {
                timestamp_ms: edge_agent::logs::now_ms(),
                service: Some("bench".into()),
                service_id: Some(1),
                is_stderr: false,
                is_system: false,
                message: format!("line {i}"),
                source: None,
            });
        }
        if Some(i) == kill_at {
            let cmd = restart.as_ref().expect("restart command");
            let out = tokio::process::Command::new("sh")
                .args(["-c", cmd])
                .output()
                .await?;
            gw_pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
            eprintln!("gateway killed with SIGKILL and restarted (pid {gw_pid})");
        }
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Wait until every device's last line is stored.
    for uuid in &uuids {
        loop {
            if count(uuid.clone()).await == Some(lines) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "timed out");
        }
    }
    let elapsed = t0.elapsed();
    let cpu_secs = if restart.is_some() {
        f64::NAN
    } else {
        (cpu_ticks(&gw_pid) - cpu0) as f64 / 100.0
    };
    let total = devices * lines;
    println!(
        "devices={devices} lines/device={lines} total={total} wall={:.2}s rate={:.0} lines/s gateway_cpu={:.2}s cpu_per_10k={:.3}s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        cpu_secs,
        cpu_secs / (total as f64 / 10_000.0)
    );
    if restart.is_some() {
        // Export every device's lines and count what is missing or doubled.
        let (mut lost, mut dup) = (0usize, 0usize);
        for uuid in &uuids {
            let mut seen = HashSet::new();
            let mut after = 0i64;
            loop {
                let page: LogPage = client
                    .get(&format!(
                        "/v1/devices/{uuid}/logs?service=bench&after={after}&limit=10000"
                    ))
                    .await?;
                for l in &page.lines {
                    if !seen.insert(l.message.clone()) {
                        dup += 1;
                    }
                    after = l.id;
                }
                if page.next_after.is_none() {
                    break;
                }
            }
            lost += lines - seen.len().min(lines);
        }
        println!("forced disconnect (gateway kill -9 + restart mid-stream): lost={lost} duplicated={dup}");
    }
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}
