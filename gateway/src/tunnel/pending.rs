//! Caps on TCP tunnel connections still in their handshake, in all and per address.

use std::sync::Arc;

use tracing::warn;

/// TCP connections still in their TLS or multiplexer handshake, at most.
const MAX_PENDING_TCP_HANDSHAKES: usize = 1024;
/// The same, from one IP address. Devices behind one NAT share an address, but each
/// finishes its handshake in a round trip or two, so only a flood fills this.
const MAX_PENDING_TCP_HANDSHAKES_PER_IP: usize = 64;

/// Counts TCP tunnel connections in their handshake.
#[derive(Debug, Default)]
pub(super) struct PendingHandshakes {
    per_ip: dashmap::DashMap<std::net::IpAddr, usize>,
    total: std::sync::atomic::AtomicUsize,
    /// When a refusal was last logged (milliseconds on `started`), to log one a second.
    last_warned_ms: std::sync::atomic::AtomicU64,
    started: std::sync::OnceLock<std::time::Instant>,
}

/// One counted handshake; uncounted when dropped.
pub(super) struct PendingSlot {
    pending: Arc<PendingHandshakes>,
    ip: std::net::IpAddr,
}

impl PendingHandshakes {
    pub(super) fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PendingSlot> {
        use std::sync::atomic::Ordering;
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if total >= MAX_PENDING_TCP_HANDSHAKES || *n >= MAX_PENDING_TCP_HANDSHAKES_PER_IP {
            drop(n);
            self.release(ip, false);
            return None;
        }
        *n += 1;
        Some(PendingSlot {
            pending: Arc::clone(self),
            ip,
        })
    }

    /// Uncounts one handshake (`counted`: it had taken a per-address slot too).
    fn release(&self, ip: std::net::IpAddr, counted: bool) {
        use std::sync::atomic::Ordering;
        self.total.fetch_sub(1, Ordering::AcqRel);
        if counted {
            self.per_ip.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        } else {
            self.per_ip.remove_if(&ip, |_, n| *n == 0);
        }
    }

    /// Logs a refused connection, at most once a second.
    pub(super) fn refused(&self, remote: std::net::SocketAddr) {
        use std::sync::atomic::Ordering;
        let started = self.started.get_or_init(std::time::Instant::now);
        let now = started.elapsed().as_millis() as u64;
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 1_000)
            && self
                .last_warned_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                %remote,
                max = MAX_PENDING_TCP_HANDSHAKES,
                max_per_ip = MAX_PENDING_TCP_HANDSHAKES_PER_IP,
                "too many TCP tunnel handshakes in progress; closing new connections"
            );
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending.release(self.ip, true);
    }
}
