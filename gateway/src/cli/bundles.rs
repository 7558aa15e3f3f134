//! `gateway bundle ...`: offline bundles of a release for devices without a network.

use super::*;

#[derive(Subcommand)]
pub(super) enum BundleCommand {
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

pub(super) async fn run(cmd: BundleCommand) -> anyhow::Result<()> {
    match cmd {
        BundleCommand::Create {
            api,
            release,
            engine,
            out,
        } => {
            let target: protocol::release::TargetState = api
                .client()
                .get(&format!("/v1/releases/{release}/target"))
                .await?;
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
    }
    Ok(())
}
