//! The process's cancellation root, the same in both binaries: SIGINT or SIGTERM cancels
//! one token, and everything that runs (tunnels, listeners, the reconciler) shuts down
//! from it in order.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM. Spawn it once per process:
/// `tokio::spawn(transport::signal::cancel_on_signal(shutdown.clone()))`.
///
/// # Panics
///
/// If the SIGTERM handler cannot be installed (no signal support in this runtime), which
/// happens at start, before anything is served.
pub async fn cancel_on_signal(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        // Cancelled from elsewhere (a finished command): nothing to wait for.
        _ = token.cancelled() => return,
    }
    tracing::info!("shutting down");
    token.cancel();
}
