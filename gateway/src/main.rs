//! `gateway`: serve device tunnels and public device URLs, and manage devices.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gateway::api::auth::Role;
use gateway::client::ApiClient;
use gateway::config::{bounds, duration_within};
use gateway::{Gateway, ServeConfig};
use http::Method;
use protocol::DeviceUuid;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// jemalloc with its background purge thread instead of glibc's malloc: after a burst
/// (thousands of visitor streams) the freed memory goes back to the kernel within
/// seconds, where glibc (and mimalloc) kept it (BENCHMARKS.md, "Memory after a
/// slow-POST burst").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    Serve(Box<ServeArgs>),
    /// Manage devices in a gateway's data dir (works beside a running `serve`).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Run a gateway, one agent and a sample device web app in one process, no root needed.
    #[cfg(feature = "demo")]
    Demo {
        /// Public HTTP listener of the demo gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
    },
    /// List devices as a table (via the management API).
    Devices {
        #[command(flatten)]
        api: ApiArgs,
        /// Only devices of this fleet.
        #[arg(long)]
        fleet: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage fleets (via the management API).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage fleet provisioning keys (via the management API).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run an action on a device (via the management API): blink, reboot, shutdown,
    /// restart, stop-service, start-service, purge, update, regenerate-api-key,
    /// host-config. Offline devices get it when they reconnect (within --ttl).
    Action {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// The action.
        action: String,
        /// Override update locks, as balena's `force`.
        #[arg(long)]
        force: bool,
        /// App id (restart, stop-service, start-service, purge).
        #[arg(long)]
        app: Option<u32>,
        /// Service name (restart of one service, stop-service, start-service).
        #[arg(long)]
        service: Option<String>,
        /// host-config: a JSON patch, e.g. '{"network":{"hostname":"kiosk-7"}}'.
        #[arg(long)]
        patch: Option<String>,
        /// How long the action waits for an offline device (1s..=3650d).
        #[arg(long, value_parser = duration_within(bounds::ACTION_TTL), default_value = "24h")]
        ttl: std::time::Duration,
        /// Return once queued instead of waiting for the result.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout, e.g.
    /// `gateway completions bash > /etc/bash_completion.d/gateway`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Publish and list releases (compose files) of a fleet (via the management API).
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Offline updates: write a release and its images into one file for
    /// `edge-agent preload`.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Print a device's logs (via the management API); `-f` keeps following new lines,
    /// across reconnects of the device or of this command.
    Logs {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// Keep printing new lines as they arrive.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only this service's lines.
        #[arg(long)]
        service: Option<String>,
        /// Lines from this long ago (`30s`, `15m`, `1h`, `7d`) or unix milliseconds.
        #[arg(long, value_parser = gateway::logs_cli::parse_since)]
        since: Option<String>,
        /// Only lines containing this text (ASCII case-insensitive).
        #[arg(long)]
        grep: Option<String>,
        /// Print each line as JSON (balena's field names plus `id`, `seq`, `device`).
        #[arg(long)]
        json: bool,
        /// Without --since: how many of the newest lines to print first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Open a shell on a device's host, or in one of its service containers, over its
    /// tunnel (operator or admin token). Ctrl-C goes to the device; the remote exit status
    /// becomes this command's exit status. Works with a non-terminal stdin too (scripted).
    Ssh {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// Service name: a shell in that service's running container instead of the host.
        service: Option<String>,
    },
    /// Show the audit log, newest first (via the management API).
    Audit {
        #[command(flatten)]
        api: ApiArgs,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Where the management API is and how to authenticate.
#[derive(Args)]
struct ApiArgs {
    /// Management API base URL.
    #[arg(long, env = "GATEWAY_API", default_value = "http://127.0.0.1:8081")]
    api: String,
    /// API token (see `gateway token create`).
    #[arg(long, env = "GATEWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) that signed an https API's certificate.
    #[arg(long, env = "GATEWAY_API_CA")]
    api_ca: Option<PathBuf>,
}

impl ApiArgs {
    fn client(&self) -> ApiClient {
        let ca = self.api_ca.as_ref().map(|p| {
            std::fs::read_to_string(p).unwrap_or_else(|e| {
                eprintln!("Error: cannot read --api-ca {}: {e}", p.display());
                std::process::exit(2)
            })
        });
        ApiClient::with_ca(&self.api, self.token.clone(), ca.as_deref()).unwrap_or_else(|e| {
            eprintln!("Error: {e}");
            std::process::exit(2)
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn enabled(self) -> bool {
        matches!(self, Self::On)
    }
}

#[derive(Subcommand)]
enum FleetCommand {
    /// List fleets.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create a fleet.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// Fleet name.
        name: String,
        /// Devices that join this fleet get their public URL switched on.
        #[arg(long)]
        public_url_default: bool,
    },
    /// Delete an empty fleet.
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        /// Fleet name.
        name: String,
    },
    /// Pin the fleet to a release, or with no release, go back to tracking its latest.
    Pin {
        #[command(flatten)]
        api: ApiArgs,
        /// Fleet name.
        name: String,
        /// Release id.
        release: Option<String>,
    },
    /// Switch the public URL of every device in the fleet (and the fleet's default).
    PublicUrl {
        #[command(flatten)]
        api: ApiArgs,
        /// Fleet name.
        name: String,
        /// on or off.
        state: OnOff,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Write the release's target state and its images (exported from an engine that
    /// has them, e.g. after `docker pull`) into FILE.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// Release id.
        #[arg(long)]
        release: String,
        /// Engine API socket to export the images from.
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        engine: String,
        /// Output file.
        #[arg(short, long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Publish a compose file as a new release of a fleet. Devices tracking the fleet's
    /// latest release start updating at once.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// The fleet.
        #[arg(long)]
        fleet: String,
        /// The compose file (services, volumes, networks; see docs/releases.md).
        file: PathBuf,
    },
    /// List a fleet's releases, newest first.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// The fleet.
        #[arg(long)]
        fleet: String,
    },
    /// Print a release's compose file.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Release id.
        id: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a provisioning key for a fleet; prints it once. It carries the gateway's
    /// tunnel address and CA fingerprint: `edge-agent provision --key KEY` needs nothing
    /// else.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// The fleet devices provisioned with this key join.
        #[arg(long)]
        fleet: String,
        /// Expire after this long (e.g. 24h, 30m, 7d; at most 3650d). Default: never.
        #[arg(long, value_parser = duration_within(bounds::KEY_EXPIRY))]
        expires: Option<std::time::Duration>,
        /// At most this many devices. Default: unlimited.
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List a fleet's keys (never their secrets).
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Fleet name.
        #[arg(long)]
        fleet: String,
    },
    /// Revoke a key by id.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// Key id (as listed).
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token offline in a data dir (bootstraps the first admin; works beside a
    /// running `serve`). Prints the token once.
    Create {
        /// The gateway's data dir.
        #[arg(long, default_value = "./gateway-data")]
        data_dir: PathBuf,
        /// viewer (read), operator (act on devices) or admin (manage fleets and tokens).
        #[arg(long)]
        role: String,
        /// A label for the token.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// Token id (as listed).
        id: String,
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
    /// Tunnel listener over TLS on TCP, for devices whose network blocks UDP.
    /// [default: the --tunnel-listen address and port, on TCP]
    #[arg(long)]
    tunnel_tcp_listen: Option<SocketAddr>,
    /// Management API listener (TCP). [default: 127.0.0.1:8081]
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve the management API over HTTPS.
    #[arg(long, requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// PEM private key for --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// Tunnel address devices dial, written into provisioning keys. [default: the bound
    /// tunnel address]
    #[arg(long)]
    advertise_tunnel: Option<String>,
    /// A silent TCP tunnel counts as dead after this long (500ms..=1d); QUIC tunnels
    /// take the agent's own idle timeout, up to 240 s or this if longer, and a device
    /// is offline after three missed keep-alives. [default: 15s]
    #[arg(long, value_parser = duration_within(bounds::IDLE_TIMEOUT))]
    idle_timeout: Option<std::time::Duration>,
    /// Keep-alive (HTTP/2 ping) interval of TCP tunnels and the heartbeat interval asked
    /// of agents, below --idle-timeout (10ms..=1d). [default: 5s]
    #[arg(long, value_parser = duration_within(bounds::KEEP_ALIVE))]
    keep_alive: Option<std::time::Duration>,
    /// Visitors get a 504 when the device has not answered within this time (1ms..=1d).
    /// [default: 60s]
    #[arg(long, value_parser = duration_within(bounds::UPSTREAM_TIMEOUT))]
    upstream_timeout: Option<std::time::Duration>,
    /// Visitors and API clients must send a complete request head within this time of
    /// connecting (TLS handshake included), and between keep-alive requests (1ms..=1d).
    /// [default: 10s]
    #[arg(long, value_parser = duration_within(bounds::HEADER_READ_TIMEOUT))]
    header_read_timeout: Option<std::time::Duration>,
    /// Largest request head a visitor may send, in bytes (8192..=1048576). [default: 65536]
    #[arg(long)]
    max_header_bytes: Option<usize>,
    /// Terminal sessions with no bytes either way for this long are closed (1s..=7d).
    /// [default: 15m]
    #[arg(long, value_parser = duration_within(bounds::TERMINAL_IDLE_TIMEOUT))]
    terminal_idle_timeout: Option<std::time::Duration>,
    /// A browser origin (e.g. https://console.example.com) whose pages may open the
    /// terminal and log WebSockets besides the API's own; repeatable. [default: none]
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// A visitor's request body that sends nothing for this long is cut off (408, and the
    /// stream to the device is reset) (1ms..=1d). [default: 30s]
    #[arg(long, value_parser = duration_within(bounds::REQUEST_BODY_IDLE_TIMEOUT))]
    request_body_idle_timeout: Option<std::time::Duration>,
    /// Most public-URL streams open at once to one device; visitors over it get a 503
    /// with Retry-After. At most 3840 (the agent's cap less room for terminals).
    /// [default: 1024]
    #[arg(long)]
    max_streams_per_device: Option<usize>,
    /// Open visitor connections at most, all clients together. [default: derived from the
    /// file-descriptor limit, minus --api-max-connections and 256; 64 to 50000]
    #[arg(long)]
    max_connections: Option<usize>,
    /// Open visitor connections at most from one client address (IPv6: one /64).
    /// [default: 256]
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Open management API connections at most. [default: 256]
    #[arg(long)]
    api_max_connections: Option<usize>,
    /// Open management API connections at most from one client address. [default: 64]
    #[arg(long)]
    api_max_connections_per_ip: Option<usize>,
    /// Visitor and API connections with no request open for this long are closed
    /// (1ms..=1d). [default: 60s]
    #[arg(long, value_parser = duration_within(bounds::CONNECTION_IDLE_TIMEOUT))]
    connection_idle_timeout: Option<std::time::Duration>,
    /// Failed API token checks from one address before it gets 429 for a while (0: off).
    /// [default: 10]
    #[arg(long)]
    auth_failures_before_backoff: Option<u32>,
    /// First 429 window after too many failed token checks; doubles with each further
    /// failure (1ms..=1d). [default: 1s]
    #[arg(long, value_parser = duration_within(bounds::AUTH_BACKOFF))]
    auth_backoff: Option<std::time::Duration>,
    /// Longest 429 window; an address quiet this long is forgotten (1ms..=1d).
    /// [default: 5m]
    #[arg(long, value_parser = duration_within(bounds::AUTH_BACKOFF))]
    auth_backoff_max: Option<std::time::Duration>,
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
        if self.advertise_tunnel.is_some() {
            cfg.advertise_tunnel = self.advertise_tunnel;
        }
        if self.tunnel_tcp_listen.is_some() {
            cfg.tunnel_tcp_listen = self.tunnel_tcp_listen;
        }
        if self.api_tls_cert.is_some() {
            cfg.api_tls_cert = self.api_tls_cert;
            cfg.api_tls_key = self.api_tls_key;
        }
        if !self.allowed_origins.is_empty() {
            cfg.allowed_origins = self.allowed_origins;
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
            max_header_bytes,
            terminal_idle_timeout,
            request_body_idle_timeout,
            max_streams_per_device,
            max_connections_per_ip,
            api_max_connections,
            api_max_connections_per_ip,
            connection_idle_timeout,
            auth_failures_before_backoff,
            auth_backoff,
            auth_backoff_max
        );
        if self.max_connections.is_some() {
            cfg.max_connections = self.max_connections;
        }
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
    /// List the devices registered in a data dir (offline; `gateway devices` asks the API).
    List {
        /// The gateway's data dir.
        #[arg(long, default_value = "./gateway-data")]
        data_dir: PathBuf,
    },
    /// Register a device ahead of provisioning (it then provisions with
    /// `edge-agent provision --key KEY --uuid UUID`). Prints the uuid.
    Register {
        #[command(flatten)]
        api: ApiArgs,
        /// Use this uuid; default is a random one.
        #[arg(long)]
        uuid: Option<DeviceUuid>,
        /// Put it in this fleet.
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Show one device (via the management API).
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// Follow the device's update: release, per-service status and download progress,
        /// redrawn until it runs its target (exit 1 if the update fails).
        #[arg(long)]
        watch: bool,
    },
    /// Pin a device to a release of its fleet, or with no release, follow the fleet again.
    Pin {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// Release id.
        release: Option<String>,
    },
    /// Rename a device.
    Rename {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// New name.
        name: String,
    },
    /// Move a device to another fleet (its identity is kept).
    Move {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// Target fleet.
        fleet: String,
    },
    /// Switch a device's public URL.
    PublicUrl {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// on or off.
        state: OnOff,
    },
    /// Delete a device: its tunnel is closed now and its certificate refused from now on.
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
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
            // Before binding: every visitor and API connection costs a file descriptor.
            transport::net::raise_fd_limit();
            let cfg = (*args).into_config()?;
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
            certs::write_atomic(&out, cfg.to_toml().as_bytes(), true)
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
            let (_, store) = gateway::datadir::open_existing(&data_dir).await?;
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
        Command::Devices { api, fleet, json } => {
            let path = match &fleet {
                Some(f) => format!("/v1/devices?fleet={f}"),
                None => "/v1/devices".to_string(),
            };
            let v = api.client().call(Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_devices(&v);
            }
        }
        Command::Device(DeviceCommand::Show {
            api,
            uuid,
            watch: true,
        }) => {
            gateway::release_cli::watch(&api.client(), uuid, false).await?;
        }
        Command::Device(DeviceCommand::Pin { api, uuid, release }) => {
            gateway::release_cli::pin(
                &api.client(),
                &format!("/v1/devices/{uuid}/pin"),
                release.as_deref(),
            )
            .await?;
            match release {
                Some(r) => println!("device {uuid} pinned to release {r}"),
                None => println!("device {uuid} follows its fleet's release again"),
            }
        }
        Command::Fleet(FleetCommand::Pin { api, name, release }) => {
            gateway::release_cli::pin(
                &api.client(),
                &format!("/v1/fleets/{name}/pin"),
                release.as_deref(),
            )
            .await?;
            match release {
                Some(r) => println!("fleet {name} pinned to release {r}"),
                None => println!("fleet {name} tracks its latest release again"),
            }
        }
        Command::Bundle(BundleCommand::Create {
            api,
            release,
            engine,
            out,
        }) => {
            let v = api
                .client()
                .call(Method::GET, &format!("/v1/releases/{release}/target"), None)
                .await?;
            let target: protocol::release::TargetState =
                serde_json::from_value(v).context("unexpected target state from the API")?;
            eprintln!(
                "exporting {} images of release {release} from {engine} ...",
                target.services.len()
            );
            let summary = bundle::create_bundle(&engine, &target, &out)
                .await
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: release {} with {} images ({:.1} MiB)",
                out.display(),
                summary.release,
                summary.images.len(),
                summary.bytes as f64 / (1024.0 * 1024.0)
            );
        }
        Command::Release(ReleaseCommand::Create { api, fleet, file }) => {
            gateway::release_cli::create(&api.client(), &fleet, &file).await?;
        }
        Command::Release(ReleaseCommand::List { api, fleet }) => {
            gateway::release_cli::list(&api.client(), &fleet).await?;
        }
        Command::Release(ReleaseCommand::Show { api, id }) => {
            let v = api
                .client()
                .call(Method::GET, &format!("/v1/releases/{id}"), None)
                .await?;
            print!("{}", v["compose"].as_str().unwrap_or_default());
        }
        Command::Device(DeviceCommand::Show { api, uuid, .. }) => {
            let v = api
                .client()
                .call(Method::GET, &format!("/v1/devices/{uuid}"), None)
                .await?;
            print_device(&v);
        }
        Command::Device(DeviceCommand::Rename { api, uuid, name }) => {
            let v = api
                .client()
                .call(
                    Method::PATCH,
                    &format!("/v1/devices/{uuid}"),
                    Some(json!({"name": name})),
                )
                .await?;
            print_device(&v);
        }
        Command::Device(DeviceCommand::Move { api, uuid, fleet }) => {
            let v = api
                .client()
                .call(
                    Method::PATCH,
                    &format!("/v1/devices/{uuid}"),
                    Some(json!({"fleet": fleet})),
                )
                .await?;
            print_device(&v);
        }
        Command::Device(DeviceCommand::PublicUrl { api, uuid, state }) => {
            let v = api
                .client()
                .call(
                    Method::PUT,
                    &format!("/v1/devices/{uuid}/public-url"),
                    Some(json!({"enabled": state.enabled()})),
                )
                .await?;
            print_device(&v);
        }
        Command::Device(DeviceCommand::Delete { api, uuid }) => {
            api.client()
                .call(Method::DELETE, &format!("/v1/devices/{uuid}"), None)
                .await?;
            println!("device {uuid} deleted; its tunnel is closed and its certificate refused");
        }
        Command::Fleet(FleetCommand::List { api }) => {
            let v = api.client().call(Method::GET, "/v1/fleets", None).await?;
            println!("{:<24}  {:>7}  PUBLIC URL DEFAULT", "NAME", "DEVICES");
            for f in v.as_array().into_iter().flatten() {
                println!(
                    "{:<24}  {:>7}  {}",
                    f["name"].as_str().unwrap_or("?"),
                    f["devices"],
                    if f["public_url_default"] == true {
                        "on"
                    } else {
                        "off"
                    }
                );
            }
        }
        Command::Fleet(FleetCommand::Create {
            api,
            name,
            public_url_default,
        }) => {
            api.client()
                .call(
                    Method::POST,
                    "/v1/fleets",
                    Some(json!({"name": name, "public_url_default": public_url_default})),
                )
                .await?;
            println!("fleet {name} created");
        }
        Command::Fleet(FleetCommand::Delete { api, name }) => {
            api.client()
                .call(Method::DELETE, &format!("/v1/fleets/{name}"), None)
                .await?;
            println!("fleet {name} deleted");
        }
        Command::Fleet(FleetCommand::PublicUrl { api, name, state }) => {
            let v = api
                .client()
                .call(
                    Method::PUT,
                    &format!("/v1/fleets/{name}/public-url"),
                    Some(json!({"enabled": state.enabled()})),
                )
                .await?;
            println!(
                "public URL {} for {} device(s) of fleet {name}, and for devices that join it later",
                if state.enabled() { "on" } else { "off" },
                v["devices_switched"]
            );
        }
        Command::Key(KeyCommand::Create {
            api,
            fleet,
            expires,
            uses,
        }) => {
            let v = api
                .client()
                .call(
                    Method::POST,
                    &format!("/v1/fleets/{fleet}/keys"),
                    Some(json!({
                        "expires_in_secs": expires.map(|d| d.as_secs().max(1)),
                        "max_uses": uses,
                    })),
                )
                .await?;
            eprintln!(
                "provisioning key {} for fleet {fleet} created; it is shown only now:",
                v["id"].as_str().unwrap_or("?")
            );
            println!("{}", v["key"].as_str().unwrap_or_default());
        }
        Command::Key(KeyCommand::List { api, fleet }) => {
            let v = api
                .client()
                .call(Method::GET, &format!("/v1/fleets/{fleet}/keys"), None)
                .await?;
            println!(
                "{:<10}  {:>5}  {:>8}  {:<10}  STATE",
                "ID", "USES", "LIMIT", "EXPIRES"
            );
            let now = gateway::store::now_unix();
            for k in v.as_array().into_iter().flatten() {
                let state = if k["revoked"] == true {
                    "revoked"
                } else if k["expires_at"].as_i64().is_some_and(|e| e <= now) {
                    "expired"
                } else if k["max_uses"]
                    .as_i64()
                    .is_some_and(|m| k["uses"].as_i64() >= Some(m))
                {
                    "used up"
                } else {
                    "active"
                };
                println!(
                    "{:<10}  {:>5}  {:>8}  {:<10}  {state}",
                    k["id"].as_str().unwrap_or("?"),
                    k["uses"],
                    k["max_uses"]
                        .as_i64()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                    k["expires_at"]
                        .as_i64()
                        .map(|e| if e > now {
                            format!("in {}s", e - now)
                        } else {
                            "past".into()
                        })
                        .unwrap_or_else(|| "never".into()),
                );
            }
        }
        Command::Key(KeyCommand::Revoke { api, id }) => {
            api.client()
                .call(Method::DELETE, &format!("/v1/keys/{id}"), None)
                .await?;
            println!("provisioning key {id} revoked");
        }
        Command::Device(DeviceCommand::Register { api, uuid, fleet }) => {
            let v = api
                .client()
                .call(
                    Method::POST,
                    "/v1/devices",
                    Some(json!({"uuid": uuid.map(|u| u.to_string()), "fleet": fleet})),
                )
                .await?;
            println!("{}", v["uuid"].as_str().unwrap_or_default());
        }
        Command::Token(TokenCommand::Create {
            data_dir,
            role,
            name,
        }) => {
            let role = Role::parse(&role).with_context(|| {
                format!("--role must be viewer, operator or admin, not {role:?}")
            })?;
            let (id, token) = gateway::create_token(&data_dir, role, &name).await?;
            eprintln!(
                "token {id} ({}) created; it is shown only now:",
                role.as_str()
            );
            println!("{token}");
        }
        Command::Token(TokenCommand::List { api }) => {
            let v = api.client().call(Method::GET, "/v1/tokens", None).await?;
            println!("{:<10}  {:<9}  {:<20}  LAST USED", "ID", "ROLE", "NAME");
            for t in v.as_array().into_iter().flatten() {
                println!(
                    "{:<10}  {:<9}  {:<20}  {}",
                    t["id"].as_str().unwrap_or("?"),
                    t["role"].as_str().unwrap_or("?"),
                    t["name"].as_str().unwrap_or("?"),
                    t["last_used"]
                        .as_i64()
                        .map(ago)
                        .unwrap_or_else(|| "never".into())
                );
            }
        }
        Command::Token(TokenCommand::Revoke { api, id }) => {
            api.client()
                .call(Method::DELETE, &format!("/v1/tokens/{id}"), None)
                .await?;
            println!("token {id} revoked");
        }
        Command::Action {
            api,
            uuid,
            action,
            force,
            app,
            service,
            patch,
            ttl,
            no_wait,
        } => {
            let mut params = serde_json::Map::new();
            if let Some(a) = app {
                params.insert("appId".into(), json!(a));
            }
            if let Some(s) = service {
                params.insert("serviceName".into(), json!(s));
            }
            if let Some(p) = patch {
                let v: serde_json::Value =
                    serde_json::from_str(&p).context("--patch must be JSON")?;
                params.insert("patch".into(), v);
            }
            let client = api.client();
            let a = client
                .call(
                    Method::POST,
                    &format!("/v1/devices/{uuid}/actions"),
                    Some(json!({"action": action, "params": params, "force": force, "ttl_secs": ttl.as_secs().max(1)})),
                )
                .await?;
            let id = a["id"].as_str().unwrap_or_default().to_string();
            if a["device_online"] != true {
                let until =
                    a["expires_at"].as_i64().unwrap_or_default() - gateway::store::now_unix();
                println!(
                    "device {uuid} is offline: {action} queued as {id}; it runs when the device reconnects within {}",
                    human_secs(until)
                );
                return Ok(());
            }
            if no_wait {
                println!("{id}");
                return Ok(());
            }
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0;
            let result = loop {
                let v = client
                    .call(Method::GET, &format!("/v1/actions/{id}"), None)
                    .await?;
                match v["status"].as_str() {
                    Some("succeeded" | "failed" | "expired") => break v,
                    status => {
                        eprint!(
                            "\r{} {action} on {uuid}: {}",
                            frames[i % 4],
                            status.unwrap_or("?")
                        );
                        i += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            };
            eprint!("\r\x1b[K");
            let detail = match &result["detail"] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => format!(": {s}"),
                other => format!(": {other}"),
            };
            match result["status"].as_str() {
                Some("succeeded") => println!("{action} on {uuid} succeeded{detail}"),
                Some(status) => anyhow::bail!("{action} on {uuid} {status}{detail}"),
                None => anyhow::bail!("unexpected answer {result}"),
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gateway",
                &mut std::io::stdout(),
            );
        }
        Command::Logs {
            api,
            uuid,
            follow,
            service,
            since,
            grep,
            json,
            tail,
        } => {
            let args = gateway::logs_cli::LogsArgs {
                follow,
                service,
                since,
                grep,
                json,
                tail,
            };
            gateway::logs_cli::run(&api.client(), uuid, &args).await?;
        }
        Command::Ssh { api, uuid, service } => {
            let ca = api.api_ca.as_ref().map(|p| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read --api-ca {}", p.display()))
            });
            let ca = ca.transpose()?;
            // Exit right here on every path: stdin is read on a blocking thread that a
            // runtime shutdown would wait for (until the next key press).
            match gateway::ssh::run(
                &api.api,
                api.token.as_deref(),
                ca.as_deref(),
                uuid,
                service.as_deref(),
            )
            .await
            {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("Error: {e}");
                    std::process::exit(255)
                }
            }
        }
        Command::Audit { api, limit } => {
            let v = api
                .client()
                .call(Method::GET, &format!("/v1/audit?limit={limit}"), None)
                .await?;
            for e in v.as_array().into_iter().flatten() {
                println!(
                    "{:>8}  {:<10}  {:<18}  {:<20}  {}  {}",
                    e["seq"],
                    e["at"].as_i64().map(ago).unwrap_or_default(),
                    e["actor"].as_str().unwrap_or("?"),
                    e["action"].as_str().unwrap_or("?"),
                    e["target"].as_str().unwrap_or("?"),
                    e["detail"]
                );
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo { http_listen } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            gateway::demo::run(http_listen, shutdown).await?;
        }
    }
    Ok(())
}

fn print_devices(v: &serde_json::Value) {
    println!(
        "{:<32}  {:<16}  {:<16}  {:<6}  {:<14}  {:<10}  PUBLIC URL",
        "UUID", "NAME", "FLEET", "ONLINE", "TRANSPORT/RTT", "LAST SEEN"
    );
    for d in v.as_array().into_iter().flatten() {
        println!(
            "{:<32}  {:<16}  {:<16}  {:<6}  {:<14}  {:<10}  {}",
            d["uuid"].as_str().unwrap_or("?"),
            d["name"].as_str().unwrap_or("-"),
            d["fleet"].as_str().unwrap_or("-"),
            if d["online"] == true { "yes" } else { "no" },
            transport_cell(d),
            d["last_seen"]
                .as_i64()
                .map(ago)
                .unwrap_or_else(|| "never".into()),
            d["url"].as_str().unwrap_or("off")
        );
    }
}

/// `quic 1.2ms` for an online device, `-` otherwise.
fn transport_cell(d: &serde_json::Value) -> String {
    match (d["transport"].as_str(), d["rtt_ms"].as_f64()) {
        (Some(t), Some(rtt)) => format!("{t} {rtt}ms"),
        (Some(t), None) => t.to_string(),
        _ => "-".into(),
    }
}

fn print_device(d: &serde_json::Value) {
    for key in [
        "uuid",
        "name",
        "fleet",
        "online",
        "transport",
        "rtt_ms",
        "public_url",
        "url",
        "last_seen",
        "created_at",
    ] {
        let v = &d[key];
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!("{key:<11} {text}");
    }
}

/// A duration for people: `45s`, `12m`, `2h`, `1h30m` (rounded to the minute, so a TTL
/// of 2h read a second later still says 2h).
fn human_secs(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = (s + 30) / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
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

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn durations_round_to_the_minute() {
        assert_eq!(human_secs(7199), "2h");
        assert_eq!(human_secs(7200), "2h");
        assert_eq!(human_secs(5400), "1h30m");
        assert_eq!(human_secs(86_399), "24h");
        assert_eq!(human_secs(600), "10m");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(-5), "0s");
    }
}
