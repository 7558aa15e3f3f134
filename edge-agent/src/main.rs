//! `edge-agent`: the device side of the tunnel. The commands live in the library
//! ([`edge_agent::cli`]); this parses, sets up tracing and runs one.

use clap::Parser;

/// jemalloc with its background purge thread instead of glibc's malloc: after a burst
/// (thousands of visitor streams) the freed memory goes back to the kernel within
/// seconds, where glibc (and mimalloc) kept it (BENCHMARKS.md, "Memory after a
/// slow-POST burst").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One thread: the agent is IO-bound and runs on small devices; a single-threaded runtime
// avoids cross-thread wake-ups (measured: ~25% less agent CPU per proxied request than
// the multi-threaded runtime on the bench in BENCHMARKS.md) and keeps RSS small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = edge_agent::cli::Cli::parse();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // The agent's own warnings also go to the device's logs once the spool is open. The
    // layer's own level filter matters for speed: without it, that layer would take an
    // interest in every span and event, so h2's and quinn's trace spans were built on
    // every frame (about 40% of the agent's instructions per request on TCP; bench/
    // callgrind.sh, BENCHMARKS.md).
    let warn_layer = edge_agent::logs::WarnLayer::default();
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        ))
        .with(
            warn_layer
                .clone()
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .init();
    edge_agent::cli::run(cli, warn_layer).await
}
