//! The connection handle: opening and accepting streams, closing with a code and a
//! reason, and the meta stream's close messages.

use super::*;

/// A tunnel connection over TLS/TCP (see the module docs). A cheap handle: as on quinn,
/// the connection closes (code 0) once every handle and every stream of it is dropped.
#[derive(Clone)]
pub struct TlsTcpConnection {
    pub(super) handle: Arc<Handle>,
}

impl std::fmt::Debug for TlsTcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTcpConnection")
            .field("remote", &self.handle.shared.remote)
            .finish_non_exhaustive()
    }
}

/// What keeps a connection open: held by every [`TlsTcpConnection`] clone and every
/// stream; the drivers hold it weakly.
pub(super) struct Handle {
    pub(super) shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(0, b"");
    }
}

pub(super) type ReverseFut = Pin<
    Box<
        dyn Future<
                Output = (
                    Result<Response<h2::RecvStream>, h2::Error>,
                    h2::SendStream<Bytes>,
                ),
            > + Send,
    >,
>;

pub(super) type Pair = (SendStream, RecvStream);
pub(super) type ReverseRequest = (h2::RecvStream, h2::server::SendResponse<Bytes>);

pub(super) enum Opener {
    /// The gateway opens `/s` requests.
    Gateway(Mutex<h2::client::SendRequest<Bytes>>),
    /// The agent answers reverse requests the gateway opened ahead of time.
    Agent(tokio::sync::Mutex<mpsc::UnboundedReceiver<ReverseRequest>>),
}

pub(super) struct Shared {
    pub(super) remote: SocketAddr,
    pub(super) alpn: Option<Vec<u8>>,
    pub(super) peer_certs: Option<Vec<CertificateDer<'static>>>,
    pub(super) reason: Mutex<Option<ConnectionError>>,
    /// Fires once `reason` is set: the connection is over for every user.
    pub(super) done: CancellationToken,
    /// Fires on a local close: the driver lingers so the close message goes out.
    pub(super) closing: CancellationToken,
    pub(super) incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pair>>,
    pub(super) opener: Opener,
    pub(super) meta: Mutex<Option<h2::SendStream<Bytes>>>,
    pub(super) rtt_micros: AtomicU64,
    /// Raises the keep-alive interval above the configured one (milliseconds; 0: none):
    /// set once the peer said how often it pings itself.
    pub(super) slower_keep_alive_ms: AtomicU64,
}

impl Shared {
    pub(super) fn new(
        remote: SocketAddr,
        alpn: Option<Vec<u8>>,
        peer_certs: Option<Vec<CertificateDer<'static>>>,
        opener: Opener,
        incoming: mpsc::UnboundedReceiver<Pair>,
    ) -> Self {
        Self {
            remote,
            alpn,
            peer_certs,
            reason: Mutex::new(None),
            done: CancellationToken::new(),
            closing: CancellationToken::new(),
            incoming: tokio::sync::Mutex::new(incoming),
            opener,
            meta: Mutex::new(None),
            rtt_micros: AtomicU64::new(0),
            slower_keep_alive_ms: AtomicU64::new(0),
        }
    }

    /// Records why the connection ended (the first reason wins) and wakes every user.
    pub(super) fn end(&self, reason: ConnectionError) {
        {
            let mut r = self.reason.lock().expect("reason lock");
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.done.cancel();
    }

    pub(super) fn reason(&self) -> ConnectionError {
        self.reason
            .lock()
            .expect("reason lock")
            .clone()
            .unwrap_or(ConnectionError::Reset)
    }

    pub(super) fn ended(&self) -> Option<ConnectionError> {
        self.done.is_cancelled().then(|| self.reason())
    }

    pub(super) fn close(&self, code: u64, reason: &[u8]) {
        {
            let mut r = self.reason.lock().expect("reason lock");
            if r.is_some() {
                return;
            }
            *r = Some(ConnectionError::LocallyClosed);
        }
        if let Some(meta) = self.meta.lock().expect("meta lock").as_mut() {
            let _ = meta.send_data(close_message(code, reason), true);
        }
        // The driver keeps the connection up until the peer has read the close message
        // and hung up (or `CLOSE_LINGER` passes).
        self.closing.cancel();
        self.done.cancel();
    }
}

impl TlsTcpConnection {
    /// Pings the peer no more often than every `interval` (never more often than the
    /// configured keep-alive either): for a peer that keeps the connection alive at its
    /// own, slower cadence (an agent on a metered link), so that both sides' pings do not
    /// add up.
    pub fn slow_keep_alive(&self, interval: Duration) {
        let ms = interval.as_millis().min(u128::from(u64::MAX)) as u64;
        self.shared()
            .slower_keep_alive_ms
            .fetch_max(ms, Ordering::Relaxed);
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    pub(crate) async fn open_bi(&self) -> Result<Pair, ConnectionError> {
        if let Some(r) = self.shared().ended() {
            return Err(r);
        }
        match &self.shared().opener {
            Opener::Gateway(sr) => {
                let sr = sr.lock().expect("send_request lock").clone();
                let mut sr = tokio::select! {
                    // A stream slot frees up (the agent's SETTINGS limit the gateway).
                    r = sr.ready() => r.map_err(|e| self.conn_error(&e))?,
                    _ = self.shared().done.cancelled() => return Err(self.shared().reason()),
                };
                let (resp, send) = sr
                    .send_request(request(PATH_STREAM), false)
                    .map_err(|e| self.conn_error(&e))?;
                Ok(pair(&self.handle, send, RecvState::Pending(resp), None))
            }
            Opener::Agent(pool) => {
                let mut pool = pool.lock().await;
                let (body, mut respond) = tokio::select! {
                    // The gateway replenishes the pool as reverse streams are taken.
                    r = pool.recv() => r.ok_or_else(|| self.shared().reason())?,
                    _ = self.shared().done.cancelled() => return Err(self.shared().reason()),
                };
                drop(pool);
                let send = respond
                    .send_response(ok_response(), false)
                    .map_err(|e| self.conn_error(&e))?;
                Ok(pair(&self.handle, send, RecvState::Open(body), None))
            }
        }
    }

    pub(crate) async fn accept_bi(&self) -> Result<Pair, ConnectionError> {
        let mut incoming = self.shared().incoming.lock().await;
        tokio::select! {
            // Streams already delivered win over the connection's end, as on QUIC.
            biased;
            p = incoming.recv() => p.ok_or_else(|| self.shared().reason()),
            _ = self.shared().done.cancelled() => Err(self.shared().reason()),
        }
    }

    pub(crate) fn close(&self, code: u64, reason: &[u8]) {
        self.handle.shared.close(code, reason);
    }

    pub(crate) fn close_reason(&self) -> Option<ConnectionError> {
        self.shared().ended()
    }

    pub(crate) async fn closed(&self) -> ConnectionError {
        self.shared().done.cancelled().await;
        self.shared().reason()
    }

    pub(crate) fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.shared().peer_certs.clone()
    }

    pub(crate) fn alpn(&self) -> Option<Vec<u8>> {
        self.shared().alpn.clone()
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.shared().remote
    }

    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_micros(self.shared().rtt_micros.load(Ordering::Relaxed))
    }

    pub(super) fn conn_error(&self, e: &h2::Error) -> ConnectionError {
        if let Some(r) = self.shared().ended() {
            return r;
        }
        connection_error(e)
    }
}

pub(super) fn request(path: &'static str) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::POST;
    *req.uri_mut() = http::Uri::from_static(match path {
        PATH_META => "https://tunnel/m",
        PATH_STREAM => "https://tunnel/s",
        _ => "https://tunnel/r",
    });
    req
}

pub(super) fn ok_response() -> Response<()> {
    Response::new(())
}

pub(super) fn close_message(code: u64, reason: &[u8]) -> Bytes {
    let reason = &reason[..reason.len().min(MAX_REASON)];
    let mut b = BytesMut::with_capacity(11 + reason.len());
    b.put_u8(1);
    b.put_u64(code);
    b.put_u16(reason.len() as u16);
    b.put_slice(reason);
    b.freeze()
}

/// Parses one close message from the front of `buf`; `None` while incomplete.
pub(super) fn parse_close(buf: &mut BytesMut) -> Option<Result<(u64, Bytes), ()>> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] != 1 {
        return Some(Err(()));
    }
    if buf.len() < 11 {
        return None;
    }
    let len = u16::from_be_bytes([buf[9], buf[10]]) as usize;
    if len > MAX_REASON {
        return Some(Err(()));
    }
    if buf.len() < 11 + len {
        return None;
    }
    buf.advance(1);
    let code = buf.get_u64();
    buf.advance(2);
    Some(Ok((code, buf.split_to(len).freeze())))
}

/// Reads the peer's meta stream; a close message ends the connection with its code.
pub(super) async fn read_meta(shared: Arc<Shared>, mut body: h2::RecvStream) {
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::select! {
            c = body.data() => c,
            _ = shared.done.cancelled() => return,
        };
        match chunk {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
                buf.extend_from_slice(&data);
                match parse_close(&mut buf) {
                    Some(Ok((code, reason))) => {
                        shared.end(ConnectionError::ApplicationClosed { code, reason });
                        return;
                    }
                    Some(Err(())) => {
                        shared.end(ConnectionError::Transport(
                            "malformed message on the meta stream".into(),
                        ));
                        return;
                    }
                    None => {}
                }
            }
            // The connection's end is reported by the driver.
            Some(Err(_)) | None => return,
        }
    }
}

/// Maps a connection-level h2 error.
pub(super) fn connection_error(e: &h2::Error) -> ConnectionError {
    if e.is_io() {
        ConnectionError::Reset
    } else if e.is_go_away() {
        ConnectionError::Transport(format!("peer went away: {e}"))
    } else {
        ConnectionError::Transport(e.to_string())
    }
}

/// Maps an application code to the HTTP/2 error code that carries it.
pub(super) fn to_reason(code: u32) -> Reason {
    Reason::from(APP_CODE_BASE.saturating_add(code))
}

/// Maps an HTTP/2 error code back: ours as sent, HTTP/2's own "the peer let go of the
/// stream" codes as `NoError` (quinn reports a dropped peer stream as code 0 too), the
/// rest as a protocol error.
pub(super) fn from_reason(r: Reason) -> u64 {
    let v = u32::from(r);
    if v >= APP_CODE_BASE {
        return u64::from(v - APP_CODE_BASE);
    }
    if r == Reason::NO_ERROR || r == Reason::CANCEL || r == Reason::STREAM_CLOSED {
        u64::from(protocol::AppErrorCode::NoError.as_u32())
    } else if r == Reason::REFUSED_STREAM {
        u64::from(protocol::AppErrorCode::UnsupportedStream.as_u32())
    } else {
        u64::from(protocol::AppErrorCode::ProtocolError.as_u32())
    }
}
