//! `gateway fleet ...`: create, list, delete, pin fleets and set their public-URL default.

use super::*;

#[derive(Subcommand)]
pub(super) enum FleetCommand {
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
    /// The default access mode of the fleet's devices' public URLs (a device's own
    /// setting wins): `public`, `basic --user U --password-file P` or `link`, each with
    /// an optional `--allow` list of addresses. Without MODE, shows the setting.
    Access {
        #[command(flatten)]
        api: ApiArgs,
        /// Fleet name.
        name: String,
        #[command(flatten)]
        access: access::AccessArgs,
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

pub(super) async fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Pin { api, name, release } => {
            rollout::pin(
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
        FleetCommand::List { api } => {
            let fleets: Vec<types::Fleet> = api.client().get("/v1/fleets").await?;
            let mut t = Table::new(["NAME", "DEVICES", "PUBLIC URL DEFAULT"]);
            t.right(1);
            for f in fleets {
                t.row([
                    f.name,
                    f.devices.to_string(),
                    if f.public_url_default { "on" } else { "off" }.into(),
                ]);
            }
            t.print();
        }
        FleetCommand::Create {
            api,
            name,
            public_url_default,
        } => {
            let _: types::Fleet = api
                .client()
                .send_json(
                    Method::POST,
                    "/v1/fleets",
                    &types::NewFleet {
                        name: name.clone(),
                        public_url_default,
                    },
                )
                .await?;
            println!("fleet {name} created");
        }
        FleetCommand::Delete { api, name } => {
            api.client().delete(&format!("/v1/fleets/{name}")).await?;
            println!("fleet {name} deleted");
        }
        FleetCommand::Access { api, name, access } => {
            access::fleet(&api, &name, access).await?;
        }
        FleetCommand::PublicUrl { api, name, state } => {
            let v: types::FleetSwitched = api
                .client()
                .send_json(
                    Method::PUT,
                    &format!("/v1/fleets/{name}/public-url"),
                    &types::Switch {
                        enabled: state.enabled(),
                    },
                )
                .await?;
            println!(
                "public URL {} for {} device(s) of fleet {name}, and for devices that join it later",
                if state.enabled() { "on" } else { "off" },
                v.devices_switched
            );
        }
    }
    Ok(())
}
