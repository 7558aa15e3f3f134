//! The operator CLI: every `gateway` subcommand, one file per command group. The binary
//! parses [`Cli`], sets up tracing and calls [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::api::auth::Role;
use crate::api::types;
use crate::client::ApiClient;
use crate::config::{bounds, duration_within};
use crate::{Gateway, ServeConfig};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use http::Method;
use protocol::DeviceUuid;
use tokio_util::sync::CancellationToken;

mod access;
#[cfg(feature = "bundle-create")]
mod bundles;
mod device;
mod env;
mod fleet;
mod keys;
mod logs;
mod output;
mod releases;
mod rollout;
mod serve;
mod support;
mod tokens;
mod users;

#[cfg(feature = "bundle-create")]
use bundles::BundleCommand;
use device::{print_devices, DeviceCommand};
use env::EnvCommand;
use fleet::FleetCommand;
use keys::KeyCommand;
use output::{ago, human_secs, Table};
use releases::ReleaseCommand;
use serve::ServeArgs;
use support::SupportCommand;
use tokens::TokenCommand;
use users::UserCommand;

/// Gateway for fleets of devices behind NAT: devices dial in over one mutually
/// authenticated QUIC tunnel each, and their web UIs are served at
/// http://<uuid>.<domain>/.
// The doc comment is also `--help`'s text, where `<uuid>` reads as a placeholder.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
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
    /// Environment variables of a fleet or a device, for every service or one (via the
    /// management API): `env set --fleet F NAME=VALUE`, `env unset --device U NAME`,
    /// `env list --fleet F [--service S]`.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Time-limited support access: a token for one fleet or device that expires by
    /// itself, every use audited (docs/support.md).
    #[command(subcommand)]
    Support(SupportCommand),
    /// Manage dashboard users (offline, in the data dir or database): `user add NAME
    /// --role R`, `user list`, `user remove NAME`.
    #[command(subcommand)]
    User(UserCommand),
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
    /// `edge-agent preload` (built with `--features bundle-create`).
    #[cfg(feature = "bundle-create")]
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
        #[arg(long, value_parser = logs::parse_since)]
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
        /// Only entries of this actor (`user:ann`, `token:<id>`, `cli:root`).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action; one ending in `.` is a prefix (`support.`).
        #[arg(long)]
        action: Option<String>,
        /// Only entries about this target (a device uuid, a fleet name, a token id).
        #[arg(long)]
        target: Option<String>,
    },
}

/// Where an offline command finds the gateway's state: the data dir (CA and tunnel
/// certificate, and the SQLite database unless `--database` names a PostgreSQL one).
#[derive(Args)]
struct StoreArgs {
    /// The gateway's data dir.
    #[arg(long, default_value = "./gateway-data")]
    data_dir: PathBuf,
    /// The gateway's PostgreSQL database (postgres://user:password@host:port/database),
    /// when `serve` runs on one; the data dir then holds only the certificates.
    /// [default: the data dir's gateway.db]
    #[arg(long, env = "EDGE_GATEWAY_DATABASE", hide_env_values = true)]
    database: Option<String>,
}

impl StoreArgs {
    fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }
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

/// Runs one parsed command to its end.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Device(cmd) => device::run(cmd).await?,
        Command::Fleet(cmd) => fleet::run(cmd).await?,
        Command::Env(cmd) => env::run(cmd).await?,
        #[cfg(feature = "bundle-create")]
        Command::Bundle(cmd) => bundles::run(cmd).await?,
        Command::Release(cmd) => releases::run(cmd).await?,
        Command::Key(cmd) => keys::run(cmd).await?,
        Command::Token(cmd) => tokens::run(cmd).await?,
        Command::Support(cmd) => support::run(cmd).await?,
        Command::User(cmd) => users::run(cmd).await?,
        Command::Serve(args) => {
            // Before binding: every visitor and API connection costs a file descriptor.
            transport::net::raise_fd_limit();
            let cfg = (*args).into_config()?;
            let gateway = Gateway::bind(cfg).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            gateway.run(shutdown).await?;
        }
        Command::Devices { api, fleet, json } => {
            let filter = types::DeviceFilter {
                fleet,
                ..Default::default()
            };
            let devices: Vec<types::Device> =
                api.client().get_query("/v1/devices", &filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                print_devices(&devices);
            }
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
                params.insert("appId".into(), a.into());
            }
            if let Some(s) = service {
                params.insert("serviceName".into(), s.into());
            }
            if let Some(p) = patch {
                let v: serde_json::Value =
                    serde_json::from_str(&p).context("--patch must be JSON")?;
                params.insert("patch".into(), v);
            }
            let client = api.client();
            let a: types::Action = client
                .send_json(
                    Method::POST,
                    &format!("/v1/devices/{uuid}/actions"),
                    &types::NewAction {
                        action: action.clone(),
                        params,
                        force,
                        ttl_secs: Some(i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)),
                    },
                )
                .await?;
            let id = a.id;
            if a.device_online != Some(true) {
                let until = a.expires_at - crate::store::now_unix();
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
            // On stderr, and only on a terminal: indicatif draws nothing into a pipe.
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}")
                    .expect("a valid template")
                    .tick_chars("|/-\\ "),
            );
            let result = loop {
                let v: types::Action = client.get(&format!("/v1/actions/{id}")).await?;
                if v.is_finished() {
                    break v;
                }
                spinner.set_message(format!("{action} on {uuid}: {}", v.status));
                spinner.tick();
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            spinner.finish_and_clear();
            let detail = match &result.detail {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => format!(": {s}"),
                Some(other) => format!(": {other}"),
            };
            match result.status.as_str() {
                "succeeded" => println!("{action} on {uuid} succeeded{detail}"),
                status => anyhow::bail!("{action} on {uuid} {status}{detail}"),
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
            let args = logs::LogsArgs {
                follow,
                service,
                since,
                grep,
                json,
                tail,
            };
            logs::run(&api.client(), uuid, &args).await?;
        }
        Command::Ssh { api, uuid, service } => {
            let ca = api.api_ca.as_ref().map(|p| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read --api-ca {}", p.display()))
            });
            let ca = ca.transpose()?;
            // Exit right here on every path: stdin is read on a blocking thread that a
            // runtime shutdown would wait for (until the next key press).
            match crate::ssh::run(
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
        Command::Audit {
            api,
            limit,
            actor,
            action,
            target,
        } => {
            let entries: Vec<types::AuditEntry> = api
                .client()
                .get_query(
                    "/v1/audit",
                    &types::AuditQuery {
                        limit: Some(limit.into()),
                        before: None,
                        actor,
                        action,
                        target,
                    },
                )
                .await?;
            let mut t = Table::new(["SEQ", "WHEN", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
            t.right(0);
            for e in entries {
                t.row([
                    e.seq.to_string(),
                    ago(e.at),
                    e.actor,
                    e.action,
                    e.target,
                    e.detail.to_string(),
                ]);
            }
            t.print();
        }
        #[cfg(feature = "demo")]
        Command::Demo { http_listen } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            crate::demo::run(http_listen, shutdown).await?;
        }
    }
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM: the process's cancellation root.
pub async fn signal_shutdown(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}
