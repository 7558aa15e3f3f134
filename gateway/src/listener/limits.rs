//! Connection caps (total and per client address), the guard that holds a slot for a
//! socket's life, and rate-limited logging of what was refused.

use super::*;

/// Logs a repeated condition at most once per period, with the number of occurrences.
pub(crate) struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    count: u64,
}

impl LogEvery {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            count: 0,
        }
    }

    /// Counts one occurrence at `now`; returns `Some(occurrences since the last line)`
    /// when a line is due.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverLimit {
    Total,
    PerIp,
}

impl OverLimit {
    /// The one-shot answer written to a plain-HTTP client before closing: text for
    /// visitors, the API's error shape for API clients.
    pub(crate) fn response(self, json: bool) -> &'static [u8] {
        match (self, json) {
            (Self::Total, false) => b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 38\r\n\r\nThe gateway has too many connections.\n",
            (Self::PerIp, false) => b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\nToo many connections from your address.\n",
            (Self::Total, true) => b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 94\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the gateway has too many API connections\"}}",
            (Self::PerIp, true) => b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 96\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many API connections from your address\"}}",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Total => "connection refused: total connection cap reached",
            Self::PerIp => "connection refused: per-address connection cap reached",
        }
    }

    pub(crate) fn limit(self, cfg: &ListenerConfig) -> usize {
        match self {
            Self::Total => cfg.max_connections,
            Self::PerIp => cfg.max_connections_per_ip,
        }
    }
}

/// Counts open connections, in total and per client address (also the TCP tunnel
/// listener's connections still in their handshake).
pub(crate) struct ConnLimiter {
    pub(super) total: AtomicUsize,
    pub(super) per_ip: DashMap<IpAddr, usize>,
    max_total: usize,
    max_per_ip: usize,
}

impl ConnLimiter {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            total: AtomicUsize::new(0),
            per_ip: DashMap::default(),
            max_total,
            max_per_ip,
        }
    }

    /// Takes a slot for a connection from `ip`, or says which cap is full.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, OverLimit> {
        let key = client_key(ip);
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(OverLimit::Total);
        }
        {
            // The shard guard ends in this block: never held past the check.
            let mut n = self.per_ip.entry(key).or_insert(0);
            if *n >= self.max_per_ip {
                drop(n);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(OverLimit::PerIp);
            }
            *n += 1;
        }
        Ok(ConnGuard {
            limiter: Arc::clone(self),
            key,
        })
    }
}

/// One open connection's slot; gives it back when dropped.
pub(crate) struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    key: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.limiter.per_ip.entry(self.key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A connection's byte stream holding its [`ConnGuard`]: the slot is held for as long
    /// as the socket is open, also after hyper hands it over in a WebSocket upgrade.
    pub(crate) struct Guarded<T> {
        #[pin]
        inner: T,
        guard: ConnGuard,
    }
}

impl<T> Guarded<T> {
    pub(crate) fn new(inner: T, guard: ConnGuard) -> Self {
        Self { inner, guard }
    }
}

impl<T: AsyncRead> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
