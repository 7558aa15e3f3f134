//! `gateway device ...` and `gateway devices`: register, list, show, rename, move, pin and
//! delete devices, and print them.

use super::*;

#[derive(Subcommand)]
pub(super) enum DeviceCommand {
    /// Register a device and write the one file its agent needs (identity, CA, gateway
    /// address). Prints the device uuid.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// Use this uuid (32 hex characters; dashed form accepted) instead of a random one.
        #[arg(long)]
        uuid: Option<DeviceUuid>,
        /// Serve this device's web UI at its public URL.
        #[arg(long)]
        public_url: bool,
        /// Put it in this fleet (which must exist), so it runs the fleet's release from
        /// its first connect; the fleet's public-URL default applies too.
        #[arg(long)]
        fleet: Option<String>,
        /// Tunnel address the agent dials, HOST:PORT (as reachable from the device); or
        /// several, comma-separated (`a.example:443,b.example:443`), for a gateway with
        /// several nodes: the agent tries them in order and moves to the next when one
        /// fails.
        #[arg(long)]
        gateway: String,
        /// Where to write the agent configuration file (mode 0600: it holds the device key).
        #[arg(long)]
        out: PathBuf,
    },
    /// List the devices registered in a data dir (offline; `gateway devices` asks the API).
    List {
        #[command(flatten)]
        store: StoreArgs,
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
    /// Who may visit the device's public URL: `public`, `basic --user U --password-file
    /// P`, `link` (share links, see `device share`) or `inherit` (its fleet's default),
    /// each with an optional `--allow` list of addresses. Without MODE, shows the setting.
    Access {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        #[command(flatten)]
        access: access::AccessArgs,
    },
    /// Print a signed link to the device's public URL that lets its holder in until it
    /// expires (the device's access mode must be `link`).
    Share {
        #[command(flatten)]
        api: ApiArgs,
        /// Device uuid.
        uuid: DeviceUuid,
        /// How long the link is valid (`90s`, `2h`, `7d`; up to a year).
        #[arg(
            long = "for",
            value_name = "DURATION",
            value_parser = duration_within(access::SHARE_FOR)
        )]
        valid_for: std::time::Duration,
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
            store,
            uuid,
            public_url,
            fleet,
            gateway,
            out,
        } => {
            // Checked before the device is registered: a bad entry registers nothing.
            let gateway = protocol::host::gateway_addresses(&gateway)
                .map_err(|e| anyhow::anyhow!("--gateway must be HOST:PORT[,HOST:PORT...]: {e}"))?
                .join(",");
            let joins = match &fleet {
                Some(f) => Some(existing_fleet(&store, f).await?),
                None => None,
            };
            let public_url =
                public_url || joins.as_ref().is_some_and(|(_, f)| f.public_url_default);
            let cfg = crate::add_device(
                &store.data_dir,
                store.database(),
                uuid,
                public_url,
                &gateway,
            )
            .await?;
            if let Some((db, f)) = joins {
                let uuid: DeviceUuid = cfg.uuid.parse()?;
                let moved = db.update_device(uuid, None, Some(Some(&f.name))).await;
                if !matches!(moved, Ok(true)) {
                    // The fleet went away since the check (deleted meanwhile): take the
                    // device back rather than leave one the operator did not ask for.
                    let _ = db.revoke_device(uuid).await;
                    db.close().await;
                    match moved {
                        Err(e) => anyhow::bail!("device {uuid} not added: fleet {}: {e}", f.name),
                        Ok(_) => anyhow::bail!("device {uuid} not added: it vanished meanwhile"),
                    }
                }
                db.close().await;
            }
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
        DeviceCommand::List { store: at } => {
            let (_, store) = crate::datadir::open_existing_in(&at.data_dir, at.database()).await?;
            let mut t = Table::new(["UUID", "ONLINE", "PUBLIC URL", "FLEET", "LAST SEEN"]);
            for d in store.devices().await? {
                t.row([
                    d.uuid.to_string(),
                    if d.online { "yes" } else { "no" }.into(),
                    if d.public_url { "on" } else { "off" }.into(),
                    d.fleet.unwrap_or_else(|| "-".into()),
                    d.last_seen.map(ago).unwrap_or_else(|| "never".into()),
                ]);
            }
            t.print();
        }
        DeviceCommand::Show {
            api,
            uuid,
            watch: true,
        } => {
            rollout::watch(&api.client(), uuid, false).await?;
        }
        DeviceCommand::Pin { api, uuid, release } => {
            rollout::pin(
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
            let d: types::Device = api.client().get(&format!("/v1/devices/{uuid}")).await?;
            print_device(&d);
        }
        DeviceCommand::Rename { api, uuid, name } => {
            let patch = types::DevicePatch {
                name: Some(name),
                ..Default::default()
            };
            let d: types::Device = api
                .client()
                .send_json(Method::PATCH, &format!("/v1/devices/{uuid}"), &patch)
                .await?;
            print_device(&d);
        }
        DeviceCommand::Move { api, uuid, fleet } => {
            let patch = types::DevicePatch {
                fleet: Some(Some(fleet)),
                ..Default::default()
            };
            let d: types::Device = api
                .client()
                .send_json(Method::PATCH, &format!("/v1/devices/{uuid}"), &patch)
                .await?;
            print_device(&d);
        }
        DeviceCommand::PublicUrl { api, uuid, state } => {
            let d: types::Device = api
                .client()
                .send_json(
                    Method::PUT,
                    &format!("/v1/devices/{uuid}/public-url"),
                    &types::Switch {
                        enabled: state.enabled(),
                    },
                )
                .await?;
            print_device(&d);
        }
        DeviceCommand::Access { api, uuid, access } => {
            access::device(&api, uuid, access).await?;
        }
        DeviceCommand::Share {
            api,
            uuid,
            valid_for,
        } => {
            access::share(&api, uuid, valid_for).await?;
        }
        DeviceCommand::Delete { api, uuid } => {
            api.client().delete(&format!("/v1/devices/{uuid}")).await?;
            println!("device {uuid} deleted; its tunnel is closed and its certificate refused");
        }
        DeviceCommand::Register { api, uuid, fleet } => {
            let d: types::Device = api
                .client()
                .send_json(
                    Method::POST,
                    "/v1/devices",
                    &types::Register {
                        uuid: uuid.map(|u| u.to_string()),
                        fleet,
                    },
                )
                .await?;
            println!("{}", d.uuid);
        }
    }
    Ok(())
}

/// The fleet `name` of the data dir's store, with the store open (to put the new device
/// in it); an error naming the fleets that exist when there is no such fleet.
async fn existing_fleet(
    at: &StoreArgs,
    name: &str,
) -> anyhow::Result<(crate::store::Store, crate::store::FleetRecord)> {
    let (_, db) = crate::datadir::open_existing_in(&at.data_dir, at.database()).await?;
    if let Some(f) = db.fleet(name).await? {
        return Ok((db, f));
    }
    let fleets: Vec<String> = db
        .fleets()
        .await?
        .into_iter()
        .map(|(f, _)| f.name)
        .collect();
    db.close().await;
    let known = if fleets.is_empty() {
        "there are no fleets yet".to_string()
    } else {
        format!("fleets: {}", fleets.join(", "))
    };
    anyhow::bail!(
        "no fleet {name:?} ({known}); create it with `gateway fleet create {name}`; nothing was written"
    )
}

pub(super) fn print_devices(devices: &[types::Device]) {
    let mut t = Table::new([
        "UUID",
        "NAME",
        "FLEET",
        "ONLINE",
        "TRANSPORT/RTT",
        "LAST SEEN",
        "PUBLIC URL",
    ]);
    for d in devices {
        t.row([
            d.uuid.clone(),
            d.name.clone(),
            d.fleet.clone().unwrap_or_else(|| "-".into()),
            if d.online { "yes" } else { "no" }.into(),
            transport_cell(d),
            d.last_seen.map(ago).unwrap_or_else(|| "never".into()),
            d.url.clone().unwrap_or_else(|| "off".into()),
        ]);
    }
    t.print();
}

/// `quic 1.2ms` for an online device, `-` otherwise.
fn transport_cell(d: &types::Device) -> String {
    match (&d.transport, d.rtt_ms) {
        (Some(t), Some(rtt)) => format!("{t} {rtt}ms"),
        (Some(t), None) => t.clone(),
        _ => "-".into(),
    }
}

pub(super) fn print_device(d: &types::Device) {
    let rows = [
        ("uuid", json_text(&d.uuid)),
        ("name", json_text(&d.name)),
        ("fleet", json_text(&d.fleet)),
        ("online", json_text(&d.online)),
        ("transport", json_text(&d.transport)),
        ("rtt_ms", json_text(&d.rtt_ms)),
        ("public_url", json_text(&d.public_url)),
        ("url", json_text(&d.url)),
        ("last_seen", json_text(&d.last_seen)),
        ("created_at", json_text(&d.created_at)),
    ];
    // Key and value, no header: `fleet       lobby`.
    let mut t = Table::bare();
    for (key, text) in rows {
        t.row([key.to_string(), text]);
    }
    t.print();
}

/// A field as the table shows it: text as is, null as `-`, anything else as JSON (so a
/// round-trip time of 1.0 reads `1.0`, as the API sent it).
fn json_text(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) | Err(_) => "-".into(),
        Ok(other) => other.to_string(),
    }
}
