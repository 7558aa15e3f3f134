//! `edge-agent`: the device side of the tunnel.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_agent::{Agent, AgentConfig, AgentOptions};
use tokio_util::sync::CancellationToken;

/// Keeps one mutually authenticated QUIC tunnel open to a gateway and serves the device's
/// web UI, terminals and logs through it.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the gateway and serve until stopped (SIGINT/SIGTERM).
    Run {
        /// Agent configuration file, as written by `gateway device add --out FILE`.
        #[arg(long, short, env = "EDGE_AGENT_CONFIG")]
        config: PathBuf,
        /// Where public-URL traffic goes on the device, HOST:PORT. Default is the file's
        /// `target`, else 127.0.0.1:80.
        #[arg(long, env = "EDGE_AGENT_TARGET")]
        target: Option<String>,
    },
}

// One thread: the agent is IO-bound and runs on small devices; a single-threaded runtime
// avoids cross-thread wake-ups (measured: ~25% less agent CPU per proxied request than
// the multi-threaded runtime on the bench in BENCHMARKS.md) and keeps RSS small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli.command {
        Command::Run { config, target } => {
            let cfg = AgentConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            let mut opts = AgentOptions::default();
            if let Some(t) = target.or_else(|| cfg.target.clone()) {
                opts.target = t;
            }
            let agent = Agent::new(cfg, opts)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            agent.run(shutdown).await?;
        }
    }
    Ok(())
}

async fn signal_shutdown(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}
