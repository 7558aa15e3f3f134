//! One tunnel stream over one HTTP/2 stream: its send and receive halves.

use super::*;

/// What both halves of one stream share: the h2 send handle (a receiver's `stop` may
/// have to reset the stream through it) and the live-stream guard.
pub(super) struct StreamCtl {
    pub(super) send: Mutex<h2::SendStream<Bytes>>,
    pub(super) finished: AtomicBool,
    pub(super) _live: Option<LiveGuard>,
}

pub(super) fn pair(
    handle: &Arc<Handle>,
    send: h2::SendStream<Bytes>,
    recv: RecvState,
    live: Option<LiveGuard>,
) -> Pair {
    let ctl = Arc::new(StreamCtl {
        send: Mutex::new(send),
        finished: AtomicBool::new(false),
        _live: live,
    });
    (
        SendStream::TlsTcp(TcpSendStream {
            ctl: Arc::clone(&ctl),
            handle: Arc::clone(handle),
            done: false,
        }),
        RecvStream::TlsTcp(TcpRecvStream {
            state: recv,
            ctl,
            handle: Arc::clone(handle),
            leftover: Bytes::new(),
        }),
    )
}

/// The sending half of a TLS/TCP stream.
pub struct TcpSendStream {
    pub(super) ctl: Arc<StreamCtl>,
    pub(super) handle: Arc<Handle>,
    /// Finished or reset by this side.
    pub(super) done: bool,
}

impl std::fmt::Debug for TcpSendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSendStream").finish_non_exhaustive()
    }
}

impl TcpSendStream {
    pub(super) fn lost(&self) -> WriteError {
        WriteError::ConnectionLost(self.handle.shared.reason())
    }

    /// Waits for send credit and hands up to `max` bytes' worth of it back.
    pub(super) fn poll_credit(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<usize, WriteError>> {
        if self.done {
            return Poll::Ready(Err(WriteError::ClosedStream));
        }
        if self.handle.shared.done.is_cancelled() {
            return Poll::Ready(Err(self.lost()));
        }
        let mut s = self.ctl.send.lock().expect("stream lock");
        if let Poll::Ready(r) = s.poll_reset(cx) {
            return Poll::Ready(Err(match r {
                Ok(reason) => WriteError::Stopped(from_reason(reason)),
                Err(_) => self.lost(),
            }));
        }
        loop {
            s.reserve_capacity(max);
            let cap = s.capacity();
            if cap > 0 {
                return Poll::Ready(Ok(cap.min(max)));
            }
            match ready!(s.poll_capacity(cx)) {
                // Credit was assigned; look at how much is usable now.
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Poll::Ready(Err(self.stream_error_now(&mut s))),
            }
        }
    }

    pub(super) fn stream_error_now(&self, s: &mut h2::SendStream<Bytes>) -> WriteError {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match s.poll_reset(&mut cx) {
            Poll::Ready(Ok(reason)) => WriteError::Stopped(from_reason(reason)),
            _ => self.lost(),
        }
    }

    pub(super) fn send(&mut self, data: Bytes) -> Result<(), WriteError> {
        let mut s = self.ctl.send.lock().expect("stream lock");
        s.send_data(data, false)
            .map_err(|_| self.stream_error_now(&mut s))
    }

    pub(crate) async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_credit(cx, buf.len())).await?;
            self.send(Bytes::copy_from_slice(&buf[..n]))?;
            buf = &buf[n..];
        }
        Ok(())
    }

    pub(crate) async fn write_chunk(&mut self, mut buf: Bytes) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_credit(cx, buf.len())).await?;
            self.send(buf.split_to(n))?;
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> Result<(), WriteError> {
        if self.done {
            return Err(WriteError::ClosedStream);
        }
        self.done = true;
        self.ctl.finished.store(true, Ordering::Relaxed);
        let mut s = self.ctl.send.lock().expect("stream lock");
        s.send_data(Bytes::new(), true)
            .map_err(|_| self.stream_error_now(&mut s))
    }

    pub(crate) fn reset(&mut self, code: u32) {
        self.done = true;
        self.ctl.finished.store(true, Ordering::Relaxed);
        self.ctl
            .send
            .lock()
            .expect("stream lock")
            .send_reset(to_reason(code));
    }

    pub(crate) async fn stopped(&mut self) -> Result<Option<u64>, ConnectionError> {
        // TCP delivers what was written unless the connection dies; so this resolves when
        // the peer resets the stream or the connection ends.
        let shared = Arc::clone(&self.handle.shared);
        let ctl = Arc::clone(&self.ctl);
        tokio::select! {
            r = std::future::poll_fn(|cx| ctl.send.lock().expect("stream lock").poll_reset(cx)) => match r {
                Ok(reason) => Ok(Some(from_reason(reason))),
                Err(_) => Err(shared.reason()),
            },
            _ = shared.done.cancelled() => Err(shared.reason()),
        }
    }
}

impl AsyncWrite for TcpSendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let n = ready!(this.poll_credit(cx, buf.len()))?;
        this.send(Bytes::copy_from_slice(&buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // h2 writes queued data out as fast as the socket takes it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(this.finish().map_err(Into::into))
    }
}

impl Drop for TcpSendStream {
    fn drop(&mut self) {
        // As quinn does: a stream dropped without finish or reset is finished.
        if !self.done {
            self.ctl.finished.store(true, Ordering::Relaxed);
            if let Ok(mut s) = self.ctl.send.lock() {
                let _ = s.send_data(Bytes::new(), true);
            }
        }
    }
}

pub(super) enum RecvState {
    /// The gateway's half of a stream it opened: the agent's answer has not arrived yet.
    Pending(h2::client::ResponseFuture),
    Open(h2::RecvStream),
    /// Ended, or stopped by this side.
    Closed {
        stopped: bool,
    },
}

/// The receiving half of a TLS/TCP stream.
pub struct TcpRecvStream {
    pub(super) state: RecvState,
    pub(super) ctl: Arc<StreamCtl>,
    pub(super) handle: Arc<Handle>,
    /// The unread part of the last chunk (reads into small buffers).
    pub(super) leftover: Bytes,
}

impl std::fmt::Debug for TcpRecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRecvStream").finish_non_exhaustive()
    }
}

impl TcpRecvStream {
    pub(super) fn error(&self, e: &h2::Error) -> ReadError {
        if let Some(r) = self.handle.shared.ended() {
            return ReadError::ConnectionLost(r);
        }
        match e.reason() {
            Some(reason) if e.is_reset() && e.is_remote() => ReadError::Reset(from_reason(reason)),
            _ if e.is_io() || e.is_go_away() => {
                ReadError::ConnectionLost(self.handle.shared.reason())
            }
            Some(reason) if e.is_reset() => ReadError::Reset(from_reason(reason)),
            _ => ReadError::ConnectionLost(connection_error(e)),
        }
    }

    /// The next chunk: `Some(bytes)`, `None` at the end.
    pub(super) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        if !self.leftover.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.leftover))));
        }
        loop {
            match &mut self.state {
                RecvState::Pending(fut) => match ready!(Pin::new(fut).poll(cx)) {
                    Ok(resp) => {
                        if resp.status() != StatusCode::OK {
                            return Poll::Ready(Err(ReadError::Reset(from_reason(
                                Reason::REFUSED_STREAM,
                            ))));
                        }
                        self.state = RecvState::Open(resp.into_body());
                    }
                    Err(e) => {
                        let err = self.error(&e);
                        self.state = RecvState::Closed { stopped: false };
                        return Poll::Ready(Err(err));
                    }
                },
                RecvState::Open(body) => {
                    if let Some(r) = self.handle.shared.ended() {
                        return Poll::Ready(Err(ReadError::ConnectionLost(r)));
                    }
                    return match ready!(body.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // Credit goes back as soon as the bytes are ours: the caller
                            // holds at most one chunk.
                            let _ = body.flow_control().release_capacity(data.len());
                            if data.is_empty() {
                                continue;
                            }
                            Poll::Ready(Ok(Some(data)))
                        }
                        Some(Err(e)) => {
                            let err = self.error(&e);
                            self.state = RecvState::Closed { stopped: false };
                            Poll::Ready(Err(err))
                        }
                        None => {
                            self.state = RecvState::Closed { stopped: false };
                            Poll::Ready(Ok(None))
                        }
                    };
                }
                RecvState::Closed { stopped: true } => {
                    return Poll::Ready(Err(ReadError::ClosedStream))
                }
                RecvState::Closed { stopped: false } => return Poll::Ready(Ok(None)),
            }
        }
    }

    pub(crate) async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        let mut chunk = match std::future::poll_fn(|cx| self.poll_chunk(cx)).await? {
            Some(c) => c,
            None => return Ok(None),
        };
        if chunk.len() > max {
            self.leftover = chunk.split_off(max);
        }
        Ok(Some(chunk))
    }

    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        match self.read_chunk(buf.len()).await? {
            Some(c) => {
                buf[..c.len()].copy_from_slice(&c);
                Ok(Some(c.len()))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn stop(&mut self, code: u32) {
        self.leftover = Bytes::new();
        self.state = RecvState::Closed { stopped: true };
        // HTTP/2 has no STOP_SENDING. Once this side finished sending, dropping the body
        // is enough (h2 discards and credits what still arrives; the stream is released
        // when the send half goes). Before that, a reset is the only way to say it.
        if !self.ctl.finished.load(Ordering::Relaxed) {
            self.ctl
                .send
                .lock()
                .expect("stream lock")
                .send_reset(to_reason(code));
        }
    }
}

impl AsyncRead for TcpRecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(this.poll_chunk(cx)) {
            Ok(Some(mut c)) => {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    this.leftover = c.split_off(n);
                }
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}
