//! `gateway`: serve device tunnels and public device URLs, and manage devices. The
//! commands live in the library ([`gateway::cli`]); this parses, sets up tracing and
//! runs one.

use clap::Parser;

/// jemalloc with its background purge thread instead of glibc's malloc: after a burst
/// (thousands of visitor streams) the freed memory goes back to the kernel within
/// seconds, where glibc (and mimalloc) kept it (BENCHMARKS.md, "Memory after a
/// slow-POST burst").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = gateway::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    gateway::cli::run(cli).await
}
