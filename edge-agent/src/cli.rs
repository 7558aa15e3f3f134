//! The agent's command line: `run` (provisioning on first start, the tunnel, logs, the
//! reconciler), `provision`, `preload`, `api-key` and `completions`. The binary parses
//! [`Cli`], sets up tracing and calls [`run`].

use std::path::PathBuf;

use crate::{provision, Agent, AgentConfig, AgentOptions};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use protocol::{DeviceUuid, ProvisioningKey};
use tokio_util::sync::CancellationToken;

/// Keeps one mutually authenticated QUIC tunnel open to a gateway and serves the device's
/// web UI, terminals and logs through it.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start-up; boxing the big `Run` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Connect to the gateway and serve until stopped (SIGINT/SIGTERM).
    Run {
        #[command(flatten)]
        source: Source,
        /// Provisioning key: provisions on first start when the data dir holds no
        /// identity yet (ignored once provisioned).
        #[arg(long, env = "EDGE_AGENT_KEY", hide_env_values = true)]
        key: Option<String>,
        #[command(flatten)]
        route: RouteArgs,
        /// Idle traffic of the tunnel: `normal` keeps it alive every second (a restarted
        /// gateway is noticed in about 1 s, about 14 MB a day idle); `metered` every 60 s
        /// (under 1 MB a day on QUIC, but gateway restarts and NAT changes are noticed
        /// only at the next keep-alive, and the gateway calls a dead device offline after
        /// about 3 minutes). See docs/transport.md.
        #[arg(long, env = "EDGE_AGENT_LINK", default_value = "normal")]
        link: crate::Link,
        /// QUIC congestion control of what the device sends: `cubic` backs off on every
        /// loss, as TCP does; `bbr` paces to the measured rate and does not take random
        /// loss for congestion, for lossy radio links (at 30 % loss both ways, 113 requests
        /// in 60 s where cubic finished 12; quinn calls its BBR experimental). See
        /// docs/transport.md.
        #[arg(long, env = "EDGE_AGENT_CONGESTION", default_value = "cubic")]
        congestion: transport::quic::Congestion,
        /// Where public-URL traffic goes on the device, HOST:PORT. Default is the file's
        /// `target`, else 127.0.0.1:80.
        #[arg(long, env = "EDGE_AGENT_TARGET")]
        target: Option<String>,
        #[command(flatten)]
        hooks: HookArgs,
        /// Shell for terminal sessions on the host. [default: $SHELL, else /bin/sh]
        #[arg(long, env = "EDGE_AGENT_SHELL")]
        shell: Option<String>,
        /// Most terminal sessions open at once on this device.
        #[arg(long, default_value_t = 4)]
        max_terminals: usize,
        /// Size cap of the on-disk log spool, in MiB; when full the oldest lines go (and a
        /// "suppressed N lines" line says so).
        #[arg(long, default_value_t = 64)]
        log_spool_mib: u64,
        /// Container engine API socket (Docker, balenaEngine, Podman). Container logs,
        /// terminals into services and the reconciler use it; `none` disables them.
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        engine: String,
    },
    /// Provision this device with a fleet provisioning key: generate its key pair, get
    /// its certificate from the gateway, store both in the data dir.
    Provision {
        /// The fleet provisioning key (`gateway key create`).
        #[arg(long, env = "EDGE_AGENT_KEY", hide_env_values = true)]
        key: String,
        /// Where to store the identity: `--data-dir DIR` (as `DIR/identity.toml`) or
        /// `--config FILE`.
        #[command(flatten)]
        source: Source,
        /// Claim this pre-registered uuid instead of getting a new one.
        #[arg(long)]
        uuid: Option<DeviceUuid>,
        #[command(flatten)]
        route: RouteArgs,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Apply an offline update bundle (`gateway bundle create`): load its images into
    /// the engine and run its release, pinned, without any network. Stop a running agent
    /// first; it resumes from the new state when started again, keeps its uuid and
    /// reports the release when next online.
    Preload {
        /// The bundle file.
        file: PathBuf,
        #[command(flatten)]
        source: Source,
        /// Container engine API socket.
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        engine: String,
        /// Root of the per-service update-lock directories. [default: DATA_DIR/locks]
        #[arg(long)]
        locks_dir: Option<PathBuf>,
        /// Pass update locks held by the running services.
        #[arg(long)]
        force: bool,
    },
    /// Drop a pin set by `preload` or local mode, so the gateway's target applies again
    /// (stop the agent first).
    Unpin {
        #[command(flatten)]
        source: Source,
    },
    /// Print the local supervisor API key.
    ApiKey {
        #[command(flatten)]
        source: Source,
    },
}

/// How the agent reaches the gateway.
#[derive(Args)]
struct RouteArgs {
    /// Transport to the gateway: `auto` tries QUIC (UDP) and falls back to TLS over TCP
    /// 300 ms later when QUIC has not connected, then moves back to QUIC once it works;
    /// `quic` or `tcp` use only that one.
    #[arg(long, env = "EDGE_AGENT_TRANSPORT", default_value = "auto")]
    transport: crate::dial::TransportMode,
    /// The gateway's TCP tunnel address, HOST:PORT. When the device file lists several
    /// gateway addresses, give one for all of them, or a comma list with one per gateway
    /// address, paired in order. [default: the same address as each UDP one]
    #[arg(long, env = "EDGE_AGENT_GATEWAY_TCP")]
    gateway_tcp: Option<String>,
    /// HTTP CONNECT proxy for the TCP transport, http://[user:password@]host:port.
    /// [default: $HTTPS_PROXY, else an http-connect proxy set with host-config]
    #[arg(long, env = "HTTPS_PROXY")]
    proxy: Option<transport::proxy::Proxy>,
}

impl RouteArgs {
    /// The route, with the host-config proxy (`proxy_file`) as the default proxy.
    fn route(&self, proxy_file: Option<&std::path::Path>) -> crate::dial::Route {
        crate::dial::Route {
            mode: self.transport,
            gateway_tcp: self.gateway_tcp.clone(),
            proxy: self
                .proxy
                .clone()
                .or_else(|| proxy_file.and_then(host_config_proxy)),
        }
    }
}

/// The proxy set with host-config (balena's `network.proxy`), when it is one the TCP
/// transport can use (`http-connect`).
fn host_config_proxy(path: &std::path::Path) -> Option<transport::proxy::Proxy> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    if v.get("type")?.as_str()? != "http-connect" {
        return None;
    }
    let host = v.get("ip")?.as_str()?;
    let port = v.get("port")?.as_u64()?;
    let creds = match (
        v.get("login").and_then(|l| l.as_str()),
        v.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(l), Some(p)) => format!("{l}:{p}@"),
        _ => String::new(),
    };
    format!("http://{creds}{host}:{port}").parse().ok()
}

/// How device actions take effect, and the local supervisor API.
#[derive(Args)]
struct HookArgs {
    /// Local supervisor API (balena-compatible) listener.
    #[arg(long, default_value = crate::local_api::DEFAULT_LISTEN)]
    local_api: std::net::SocketAddr,
    /// Also serve GET /metrics (Prometheus text: sessions and transport, log spool,
    /// reconciler passes) on the local API, with its API key (docs/metrics.md).
    #[arg(long, env = "EDGE_AGENT_METRICS")]
    metrics: bool,
    /// Command run for the reboot action (split on spaces).
    #[arg(long, default_value = "reboot")]
    reboot_command: String,
    /// Command run for the shutdown action (split on spaces).
    #[arg(long, default_value = "poweroff")]
    shutdown_command: String,
    /// LED brightness file the blink action toggles (e.g. /sys/class/leds/led0/brightness).
    #[arg(long)]
    led: Option<PathBuf>,
    /// Hostname file host-config reads and writes.
    #[arg(long, default_value = "/etc/hostname")]
    hostname_file: PathBuf,
    /// Proxy settings file host-config reads and writes. [default: DATA_DIR/proxy.json]
    #[arg(long)]
    proxy_file: Option<PathBuf>,
    /// Root of the per-service update-lock directories (bind-mounted at /tmp/balena in
    /// each service). [default: DATA_DIR/locks]
    #[arg(long)]
    locks_dir: Option<PathBuf>,
}

impl HookArgs {
    fn hooks(&self, data_dir: &std::path::Path) -> crate::device::Hooks {
        let mut h = crate::device::Hooks::defaults(data_dir);
        let split = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        h.reboot = split(&self.reboot_command);
        h.shutdown = split(&self.shutdown_command);
        h.led = self.led.clone();
        h.hostname_file = self.hostname_file.clone();
        if let Some(p) = &self.proxy_file {
            h.proxy_file = p.clone();
        }
        if let Some(p) = &self.locks_dir {
            h.locks_root = p.clone();
        }
        h
    }
}

/// Where the agent's identity and state live: an identity file (`gateway device add
/// --out FILE`; state goes next to it) or a data dir (`edge-agent provision`).
#[derive(Args)]
#[group(required = true, multiple = false)]
struct Source {
    /// Agent configuration file written by `gateway device add`. Its `gateway` may list
    /// several addresses (`"a.example:443,b.example:443"`): the agent tries them in order
    /// and moves to the next after a failed dial or a lost session.
    #[arg(long, short, env = "EDGE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Data dir holding the identity (`identity.toml`) and the agent's state.
    #[arg(long, env = "EDGE_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl Source {
    /// (identity file, state dir), both absolute: the state dir ends up in bind mounts
    /// (update-lock directories), which the engine refuses as relative paths.
    fn paths(&self) -> (PathBuf, PathBuf) {
        let (file, dir) = self.relative_paths();
        let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        (abs(file), abs(dir))
    }

    fn relative_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.config, &self.data_dir) {
            (Some(file), _) => {
                let dir = file
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."));
                (file.clone(), dir)
            }
            (None, Some(dir)) => (provision::identity_path(dir), dir.clone()),
            (None, None) => unreachable!("clap requires one of --config / --data-dir"),
        }
    }
}

/// Runs one parsed command to its end. `warn_layer` is the tracing layer that copies
/// the agent's own warnings into the device's logs once the spool is open.
pub async fn run(cli: Cli, warn_layer: crate::logs::WarnLayer) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            source,
            key,
            route,
            link,
            congestion,
            target,
            hooks,
            shell,
            max_terminals,
            log_spool_mib,
            engine,
        } => {
            // Before anything opens files: terminals, streams and engine calls all cost fds.
            transport::net::raise_fd_limit();
            let engine_socket = (engine != "none").then_some(engine);
            let (identity, state_dir) = source.paths();
            let shutdown = CancellationToken::new();
            tokio::spawn(transport::signal::cancel_on_signal(shutdown.clone()));
            let route = route.route(Some(&hooks.hooks(&state_dir).proxy_file));
            if !identity.exists() {
                let Some(key) = key else {
                    anyhow::bail!(
                        "{} does not exist: this device is not provisioned yet (pass --key KEY, or use the file from `gateway device add`)",
                        identity.display()
                    );
                };
                let key = ProvisioningKey::decode(&key)?;
                provision_with_retry(&key, &route, None, &identity, &state_dir, &shutdown).await?;
            }
            let cfg = AgentConfig::load(&identity)
                .with_context(|| format!("loading {}", identity.display()))?;
            let mut opts = AgentOptions::default().with_link(link);
            opts.congestion = congestion;
            if link == crate::Link::Metered {
                tracing::info!("metered link: keep-alive every 60 s");
            }
            if let Some(t) = target.or_else(|| cfg.target.clone()) {
                opts.target = t;
            }
            opts.hooks = Some(hooks.hooks(&state_dir));
            opts.route = route;
            opts.local_api = Some(hooks.local_api);
            opts.metrics = hooks.metrics;
            opts.terminal.shell = shell;
            opts.terminal.max_sessions = max_terminals;
            opts.terminal.engine_socket = engine_socket.clone().map(PathBuf::from);
            let pipeline = crate::logs::LogPipeline::start(
                &state_dir.join("logs"),
                log_spool_mib.saturating_mul(1024 * 1024),
            )
            .with_context(|| {
                format!(
                    "opening the log spool in {}",
                    state_dir.join("logs").display()
                )
            })?;
            warn_layer.attach(pipeline.sink());
            pipeline
                .sink()
                .system(format!("Agent {} starting", crate::VERSION));
            if let Some(engine) = engine_socket.clone() {
                tokio::spawn(crate::logs::engine::collect(engine, pipeline.clone()));
            }
            opts.logs = Some(pipeline);
            if let Some(engine) = &engine_socket {
                let locks = hooks.hooks(&state_dir).locks_root;
                let mut rc = crate::reconciler::ReconcilerConfig::new(&state_dir, locks);
                rc.engine_socket = engine.clone();
                opts.reconciler = Some(rc);
            }
            opts.data_dir = Some(state_dir);
            let agent = Agent::new(cfg, opts)?;
            agent.run(shutdown).await?;
        }
        Command::Preload {
            file,
            source,
            engine,
            locks_dir,
            force,
        } => {
            let (_, state_dir) = source.paths();
            eprintln!("loading images from {} ...", file.display());
            let target = crate::reconciler::bundle::preload(&engine, &file)
                .await
                .with_context(|| format!("preloading {}", file.display()))?;
            eprintln!(
                "applying release {} ({} services), pinned",
                target.release,
                target.services.len()
            );
            let mut cfg = crate::reconciler::ReconcilerConfig::new(
                &state_dir,
                locks_dir.unwrap_or_else(|| state_dir.join("locks")),
            );
            cfg.engine_socket = engine;
            let release = target.release.clone();
            let r =
                crate::reconciler::Reconciler::start(cfg, crate::logs::LogSink::disabled()).await?;
            r.set_pinned_target(target, force).await?;
            let mut status = r.status();
            let mut last = String::new();
            let done = loop {
                let st = status.borrow_and_update().clone();
                let line = format!(
                    "{:?} {}",
                    st.update_status,
                    st.services
                        .iter()
                        .map(|s| format!("{}={}", s.name, s.status))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                if line != last {
                    eprintln!("  {line}");
                    last = line;
                }
                if st.release.as_deref() == Some(release.as_str())
                    && st.update_status == crate::reconciler::UpdateStatus::Idle
                {
                    break Ok(());
                }
                if st.update_status == crate::reconciler::UpdateStatus::Failed {
                    break Err(st.error.unwrap_or_else(|| "no reason given".into()));
                }
                if status.changed().await.is_err() {
                    break Err("reconciler stopped".into());
                }
            };
            r.shutdown();
            match done {
                Ok(()) => println!("release {release} is running (pinned on this device)"),
                Err(e) => anyhow::bail!("release {release} did not come up: {e}"),
            }
        }
        Command::Unpin { source } => {
            let (_, state_dir) = source.paths();
            use crate::reconciler::journal::{Journal, JournalFile};
            let mut j = Journal::load(&state_dir)?;
            if !j.pinned {
                println!("nothing is pinned on this device");
            } else {
                j.pinned = false;
                j.save(&state_dir)?;
                println!("unpinned: the gateway's target applies when the agent next connects");
            }
        }
        Command::Provision {
            key,
            source,
            uuid,
            route,
        } => {
            let key = ProvisioningKey::decode(&key)?;
            let (identity, state_dir) = source.paths();
            if identity.exists() {
                anyhow::bail!(
                    "{} already holds an identity; remove it to provision again",
                    identity.display()
                );
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(transport::signal::cancel_on_signal(shutdown.clone()));
            let route = route.route(Some(&state_dir.join("proxy.json")));
            let cfg =
                provision_with_retry(&key, &route, uuid, &identity, &state_dir, &shutdown).await?;
            eprintln!("provisioned; identity stored in {}", identity.display());
            println!("{}", cfg.uuid);
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "edge-agent",
                &mut std::io::stdout(),
            );
        }
        Command::ApiKey { source } => {
            let (_, state_dir) = source.paths();
            println!("{}", provision::api_key(&state_dir)?);
        }
    }
    Ok(())
}

/// Provisions, retrying network failures with backoff (a factory line may boot devices
/// before the network is up); a refusal from the gateway is final.
async fn provision_with_retry(
    key: &ProvisioningKey,
    route: &crate::dial::Route,
    uuid: Option<DeviceUuid>,
    identity: &std::path::Path,
    data_dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<AgentConfig> {
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(30),
    );
    let mut last = String::new();
    loop {
        match provision::provision(key, route, uuid, identity, data_dir).await {
            Ok(cfg) => return Ok(cfg),
            Err(e) if e.is_retryable() => {
                if e.to_string() != last {
                    tracing::warn!(error = %e, "provisioning failed; retrying");
                    last = e.to_string();
                }
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}
