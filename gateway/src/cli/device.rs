//! `gateway device ...` and `gateway devices`: register, list, show, rename, move, pin and
//! delete devices, and print them.

use super::*;

#[derive(Subcommand)]
pub(super) enum DeviceCommand {
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

pub(super) async fn run(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Add {
            data_dir,
            uuid,
            public_url,
            gateway,
            out,
        } => {
            if !gateway.contains(':') {
                anyhow::bail!("--gateway must be HOST:PORT, got {gateway:?}");
            }
            let cfg = crate::add_device(&data_dir, uuid, public_url, &gateway).await?;
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
        DeviceCommand::List { data_dir } => {
            let (_, store) = crate::datadir::open_existing(&data_dir).await?;
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
        DeviceCommand::Show {
            api,
            uuid,
            watch: true,
        } => {
            crate::release_cli::watch(&api.client(), uuid, false).await?;
        }
        DeviceCommand::Pin { api, uuid, release } => {
            crate::release_cli::pin(
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
        DeviceCommand::Show { api, uuid, .. } => {
            let v = api
                .client()
                .call(Method::GET, &format!("/v1/devices/{uuid}"), None)
                .await?;
            print_device(&v);
        }
        DeviceCommand::Rename { api, uuid, name } => {
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
        DeviceCommand::Move { api, uuid, fleet } => {
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
        DeviceCommand::PublicUrl { api, uuid, state } => {
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
        DeviceCommand::Delete { api, uuid } => {
            api.client()
                .call(Method::DELETE, &format!("/v1/devices/{uuid}"), None)
                .await?;
            println!("device {uuid} deleted; its tunnel is closed and its certificate refused");
        }
        DeviceCommand::Register { api, uuid, fleet } => {
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
    }
    Ok(())
}

pub(super) fn print_devices(v: &serde_json::Value) {
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

pub(super) fn print_device(d: &serde_json::Value) {
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
