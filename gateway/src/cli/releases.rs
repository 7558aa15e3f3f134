//! `gateway release ...`: publish, list and show releases.

use super::*;

#[derive(Subcommand)]
pub(super) enum ReleaseCommand {
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

pub(super) async fn run(cmd: ReleaseCommand) -> anyhow::Result<()> {
    match cmd {
        ReleaseCommand::Create { api, fleet, file } => {
            rollout::create(&api.client(), &fleet, &file).await?;
        }
        ReleaseCommand::List { api, fleet } => {
            rollout::list(&api.client(), &fleet).await?;
        }
        ReleaseCommand::Show { api, id } => {
            let r: types::Release = api.client().get(&format!("/v1/releases/{id}")).await?;
            print!("{}", r.compose.unwrap_or_default());
        }
    }
    Ok(())
}
