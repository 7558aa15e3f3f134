//! The tasks that drive a connection: HTTP/2 keep-alive pings, the agent side (HTTP/2
//! server) and the gateway side (HTTP/2 client with its pool of reverse streams).

use super::*;

/// Keep-alive: pings every `keep_alive`; returns once a ping goes unanswered for
/// `idle_timeout` (or pings cannot be sent: the connection is ending anyway).
pub(super) async fn keep_alive(
    mut pp: Option<h2::PingPong>,
    shared: Arc<Shared>,
    cfg: MuxConfig,
) -> ConnectionError {
    let Some(pp) = pp.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        let slower = Duration::from_millis(shared.slower_keep_alive_ms.load(Ordering::Relaxed));
        tokio::time::sleep(cfg.keep_alive.max(slower)).await;
        let start = Instant::now();
        match tokio::time::timeout(cfg.idle_timeout, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {
                let rtt = start.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
                shared.rtt_micros.store(rtt, Ordering::Relaxed);
            }
            // The connection failed; its driver reports why.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return ConnectionError::TimedOut,
        }
    }
}

/// The agent's connection task: accepts the gateway's requests and sorts them by path.
pub(super) async fn agent_driver(
    shared: Arc<Shared>,
    handle: Weak<Handle>,
    mut conn: h2::server::Connection<TlsClientStream, Bytes>,
    incoming: mpsc::UnboundedSender<Pair>,
    reverse: mpsc::UnboundedSender<ReverseRequest>,
    cfg: MuxConfig,
) {
    let ka = keep_alive(conn.ping_pong(), Arc::clone(&shared), cfg);
    tokio::pin!(ka);
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, mut respond))) => {
                    let (parts, body) = req.into_parts();
                    match parts.uri.path() {
                        PATH_STREAM => match (respond.send_response(ok_response(), false), handle.upgrade()) {
                            (Ok(send), Some(h)) => {
                                let _ = incoming.send(pair(&h, send, RecvState::Open(body), None));
                            }
                            (Ok(mut send), None) => send.send_reset(Reason::REFUSED_STREAM),
                            (Err(e), _) => debug!(error = %e, "cannot answer a gateway stream"),
                        },
                        PATH_REVERSE => {
                            let _ = reverse.send((body, respond));
                        }
                        other => {
                            debug!(path = other, "refusing a stream of unknown kind");
                            respond.send_reset(Reason::REFUSED_STREAM);
                        }
                    }
                }
                Some(Err(e)) => {
                    shared.end(connection_error(&e));
                    break;
                }
                // The gateway closed the connection without a close message.
                None => {
                    shared.end(ConnectionError::Reset);
                    break;
                }
            },
            reason = &mut ka => {
                shared.end(reason);
                break;
            }
            // A local close (which also fires `done`): linger so the close message goes
            // out; the peer's close message (`done` alone): hang up at once.
            _ = shared.done.cancelled() => {
                if shared.closing.is_cancelled() {
                    linger(std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
                }
                break;
            }
        }
    }
    // Dropping the connection closes the socket; every stream fails with the reason.
}

/// Drives a closing connection until the peer hangs up or the linger time passes.
pub(super) async fn linger<F: std::future::Future>(drive: F) {
    let _ = tokio::time::timeout(CLOSE_LINGER, drive).await;
}

/// The gateway's connection task: drives h2, holds the meta stream, keeps the reverse
/// pool full and hands answered reverse streams to `accept_bi`.
pub(super) struct GatewayDriver {
    pub(super) shared: Arc<Shared>,
    pub(super) handle: Weak<Handle>,
    pub(super) send_request: h2::client::SendRequest<Bytes>,
    pub(super) incoming: mpsc::UnboundedSender<Pair>,
    pub(super) max_agent_streams: usize,
    /// Agent-opened streams alive now (decremented when both halves are dropped).
    pub(super) live: Arc<AtomicUsize>,
    pub(super) replenish: Arc<tokio::sync::Notify>,
}

impl GatewayDriver {
    pub(super) async fn run(
        mut self,
        conn: h2::client::Connection<TlsServerStream, Bytes>,
        cfg: MuxConfig,
    ) {
        let mut conn = conn;
        let ka = keep_alive(conn.ping_pong(), Arc::clone(&self.shared), cfg);
        tokio::pin!(ka);
        let mut pending: FuturesUnordered<ReverseFut> = FuturesUnordered::new();
        self.fill(&mut pending);
        loop {
            tokio::select! {
                r = &mut conn => {
                    self.shared.end(match r {
                        Ok(()) => ConnectionError::Reset,
                        Err(e) => connection_error(&e),
                    });
                    break;
                }
                Some((resp, send)) = pending.next(), if !pending.is_empty() => {
                    if let (Ok(resp), Some(h)) = (resp, self.handle.upgrade()) {
                        let guard = LiveGuard::new(Arc::clone(&self.live), Arc::clone(&self.replenish));
                        let p = pair(&h, send, RecvState::Open(resp.into_body()), Some(guard));
                        let _ = self.incoming.send(p);
                    }
                    self.fill(&mut pending);
                }
                // An agent-opened stream ended: there may be room for a new reverse one.
                _ = self.replenish.notified() => self.fill(&mut pending),
                reason = &mut ka => {
                    self.shared.end(reason);
                    break;
                }
                // A local close (which also fires `done`): linger so the close message
                // goes out; the peer's close message (`done` alone): hang up at once.
                _ = self.shared.done.cancelled() => {
                    if self.shared.closing.is_cancelled() {
                        linger(&mut conn).await;
                    }
                    break;
                }
            }
        }
    }

    /// Opens reverse streams until the pool is full or the agent's limit is reached.
    pub(super) fn fill(&mut self, pending: &mut FuturesUnordered<ReverseFut>) {
        while pending.len() < REVERSE_POOL
            && self.live.load(Ordering::Relaxed) + pending.len() < self.max_agent_streams
        {
            match self.send_request.send_request(request(PATH_REVERSE), false) {
                Ok((resp, send)) => {
                    let fut: ReverseFut = Box::pin(async move { (resp.await, send) });
                    pending.push(fut);
                }
                Err(_) => return,
            }
        }
    }
}

/// Counts an agent-opened stream while either of its halves lives.
pub(super) struct LiveGuard {
    pub(super) live: Arc<AtomicUsize>,
    pub(super) replenish: Arc<tokio::sync::Notify>,
}

impl LiveGuard {
    pub(super) fn new(live: Arc<AtomicUsize>, replenish: Arc<tokio::sync::Notify>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Self { live, replenish }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.replenish.notify_one();
    }
}
