//! `gateway`: serve device tunnels and public device URLs, and manage devices.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gateway::config::parse_duration;
use gateway::{Gateway, ServeConfig};
use protocol::DeviceUuid;
use tokio_util::sync::CancellationToken;

/// Gateway for fleets of devices behind NAT: devices dial in over one mutually
/// authenticated QUIC tunnel each, and their web UIs are served at
/// http://<uuid>.<domain>/.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: tunnel endpoint (UDP) and public HTTP router (TCP).
    Serve(ServeArgs),
    /// Manage devices in a gateway's data dir (works beside a running `serve`).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Run a gateway, one agent and a sample device web app in one process, no root needed.
    Demo {
        /// Public HTTP listener of the demo gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with any of the keys below (flags win over the file).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data dir: CA, tunnel certificate, database. [default: ./gateway-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Devices are served at http://<uuid>.<domain>/. [default: devices.localhost]
    #[arg(long)]
    domain: Option<String>,
    /// Public HTTP listener (TCP). [default: 0.0.0.0:80]
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Tunnel listener (UDP, QUIC). [default: 0.0.0.0:443]
    #[arg(long)]
    tunnel_listen: Option<SocketAddr>,
    /// Management API listener (TCP). [default: 127.0.0.1:8081]
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// A silent tunnel counts as dead after this long (e.g. 15s). [default: 15s]
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<std::time::Duration>,
    /// QUIC keep-alive interval. [default: 5s]
    #[arg(long, value_parser = parse_duration)]
    keep_alive: Option<std::time::Duration>,
    /// Visitors get a 504 when the device has not answered within this time. [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    upstream_timeout: Option<std::time::Duration>,
    /// Visitors must send their request headers within this time. [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    header_read_timeout: Option<std::time::Duration>,
    /// Largest request head a visitor may send, in bytes. [default: 65536]
    #[arg(long)]
    max_header_bytes: Option<usize>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<ServeConfig> {
        let mut cfg = match &self.config {
            Some(path) => ServeConfig::load(path)?,
            None => ServeConfig::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { cfg.$field = v; } )* };
        }
        apply!(
            data_dir,
            domain,
            http_listen,
            tunnel_listen,
            api_listen,
            idle_timeout,
            keep_alive,
            upstream_timeout,
            header_read_timeout,
            max_header_bytes
        );
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device and write the one file its agent needs (identity, CA, gateway
    /// address). Prints the device uuid.
    Add {
        /// The gateway's data dir.
        #[arg(long, default_value = "./gateway-data")]
        data_dir: PathBuf,
        /// Use this uuid (32 hex characters; dashed form accepted) instead of a random one.
        #[arg(long)]
        uuid: Option<DeviceUuid>,
        /// Serve this device's web UI at its public URL.
        #[arg(long)]
        public_url: bool,
        /// Tunnel address the agent dials, HOST:PORT (as reachable from the device).
        #[arg(long)]
        gateway: String,
        /// Where to write the agent configuration file (mode 0600: it holds the device key).
        #[arg(long)]
        out: PathBuf,
    },
    /// List the devices registered in a data dir.
    List {
        /// The gateway's data dir.
        #[arg(long, default_value = "./gateway-data")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            let cfg = args.into_config()?;
            let gateway = Gateway::bind(cfg).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            gateway.run(shutdown).await?;
        }
        Command::Device(DeviceCommand::Add {
            data_dir,
            uuid,
            public_url,
            gateway,
            out,
        }) => {
            if !gateway.contains(':') {
                anyhow::bail!("--gateway must be HOST:PORT, got {gateway:?}");
            }
            let cfg = gateway::add_device(&data_dir, uuid, public_url, &gateway).await?;
            write_private(&out, cfg.to_toml().as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "device registered; copy {} to the device and run: edge-agent run --config {}",
                out.display(),
                out.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default()
            );
            println!("{}", cfg.uuid);
        }
        Command::Device(DeviceCommand::List { data_dir }) => {
            let store = gateway::store::Store::open(&data_dir).await?;
            println!(
                "{:<32}  {:<7}  {:<10}  LAST SEEN",
                "UUID", "ONLINE", "PUBLIC URL"
            );
            for d in store.devices().await? {
                println!(
                    "{:<32}  {:<7}  {:<10}  {}",
                    d.uuid,
                    if d.online { "yes" } else { "no" },
                    if d.public_url { "on" } else { "off" },
                    d.last_seen.map(ago).unwrap_or_else(|| "never".into())
                );
            }
        }
        Command::Demo { http_listen } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            gateway::demo::run(http_listen, shutdown).await?;
        }
    }
    Ok(())
}

fn ago(unix: i64) -> String {
    let secs = (gateway::store::now_unix() - unix).max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
