//! The tunnel's TLS-over-TCP listener, for devices whose network blocks UDP: caps on
//! connections still in their handshake, then the same serving as QUIC's
//! (`serve_incoming`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::{serve_incoming, TunnelCtx};
use crate::listener::{route, ConnLimiter, LogEvery, Route};
use crate::metrics::HandshakeFailure;

/// TCP connections still in their TLS or multiplexer handshake, at most: a TCP
/// connection costs a file descriptor before it proves anything.
const MAX_PENDING_TCP_HANDSHAKES: usize = 1024;
/// The same, from one client address (as the listeners count it): half the total, so
/// that one address never takes every slot. Not a per-visitor limit: thousands of
/// devices can sit behind one carrier-grade NAT address and all reconnect at once after
/// a gateway restart (at 64, 2,000 agents on one address had 2,649 handshakes refused
/// and came back seconds later than over QUIC).
const MAX_PENDING_TCP_HANDSHAKES_PER_IP: usize = MAX_PENDING_TCP_HANDSHAKES / 2;

/// Accepts device connections over TLS on TCP until `shutdown`. The TLS configuration
/// is the QUIC one: the same certificates, verification and ALPNs (tunnel and
/// provisioning); a ClientHello offering neither is refused. When HTTPS visitors share
/// the port, `listener` is fed by `listener::demux`, which sends them elsewhere.
pub(crate) async fn accept_tcp_loop(
    listener: impl Into<crate::listener::AcceptFrom>,
    tls: Arc<rustls::ServerConfig>,
    mux: transport::tls_tcp::MuxConfig,
    ctx: Arc<TunnelCtx>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut listener = listener.into();
    let mux = Arc::new(mux);
    let pending = Arc::new(ConnLimiter::new(
        MAX_PENDING_TCP_HANDSHAKES,
        MAX_PENDING_TCP_HANDSHAKES_PER_IP,
    ));
    let mut refused = LogEvery::new(Duration::from_secs(1));
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors, most likely: keep serving what is open
                    // and try again shortly rather than spinning.
                    warn!(error = %e, "tunnel TCP accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A TCP connection costs a file descriptor before it proves anything: cap the
        // ones still in their handshake, in all and per address, and close the rest at
        // once. Devices that finished theirs are not counted.
        let slot = match pending.try_acquire(remote.ip()) {
            Ok(slot) => slot,
            Err(over) => {
                drop(tcp);
                ctx.metrics.handshake_failed(HandshakeFailure::Limit);
                if let Some(count) = refused.hit(tokio::time::Instant::now()) {
                    warn!(
                        %remote,
                        max = MAX_PENDING_TCP_HANDSHAKES,
                        max_per_ip = MAX_PENDING_TCP_HANDSHAKES_PER_IP,
                        count,
                        "TCP tunnel handshakes: {}", over.message()
                    );
                }
                continue;
            }
        };
        let (ctx, tls, mux) = (Arc::clone(&ctx), Arc::clone(&tls), Arc::clone(&mux));
        tasks.spawn(async move {
            let handshake = async move {
                let _slot = slot;
                let stream = transport::tls_tcp::accept_tls(tcp, |hello| {
                    // The same test the shared port routes by: a tunnel ALPN or nothing.
                    (route(hello.alpn()) == Route::Tunnel).then_some(tls)
                })
                .await?;
                transport::tls_tcp::accept(stream, &mux).await
            };
            serve_incoming(handshake, ctx, remote).await;
        });
    }
}
