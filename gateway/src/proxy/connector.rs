//! A hyper client connector whose connections are `Http` streams on a device's tunnel.
//!
//! The pool key is `<uuid>-<session id>` ([`crate::sessions::Session::pool_authority`]), so pooled streams of a replaced session are never
//! handed out for the new one. Each stream starts with the `Http` stream header; the first
//! byte the agent sends back is a [`TargetStatus`]. Reading it is folded into the first
//! read, so a request costs no extra round trip; an error status surfaces as an
//! [`UpstreamError`] inside the client's error, and is kept in the stream's [`Refusal`]
//! as well: the device answers as soon as it has the stream header, and a refusal that
//! arrives before hyper queued the request on the new connection ends that connection
//! with the request only "canceled".
//!
//! Each stream counts against its session's per-device limit for as long as it lives
//! (in flight or idle in the pool), so one device's visitors can never take all the
//! streams the agent accepts: the rest stays free for other work on that tunnel
//! (terminals). A stream dropped before it was shut down cleanly (the request was
//! aborted: visitor gone, body stalled) is reset, so the device drops its side at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use protocol::{DeviceUuid, HttpHeader, StreamHeader, TargetStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use transport::BiStream;

use crate::metrics::Metrics;
use crate::peer::{PeerError, Peers};
use crate::sessions::{HttpStreamGuard, Sessions};

/// The session part of the pool key of streams through the peer link to the node
/// holding the device (`<uuid>-p`): one pool per device whichever node holds it, since
/// a pooled stream that outlives its device's move is closed by the holder.
pub(crate) const REMOTE_KEY: &str = "p";

/// Why a request could not reach the device's web server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The device has no live tunnel (or its session was replaced).
    #[error("device is offline")]
    Offline,
    /// The device already has its limit of public-URL streams open.
    #[error("too many concurrent requests to this device (limit {0})")]
    TooManyStreams(usize),
    /// The agent could not connect to its local target.
    #[error("{}", .0.describe())]
    Target(TargetStatus),
    /// The tunnel broke while opening the stream.
    #[error("tunnel: {0}")]
    Tunnel(#[from] transport::ConnectionError),
    /// The holding node says the device's public URL is off.
    #[error("the device's public URL is disabled")]
    PublicUrlOff,
    /// The node holding the device's tunnel cannot be reached.
    #[error("{0}")]
    Peer(String),
    /// The pool key did not name a device (a bug).
    #[error("bad pool key {0}")]
    BadKey(String),
}

/// The status a device refused a stream with, once it did: readable from the client
/// error's connect info ([`Refusal::of`]) whatever hyper made of the error itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct Refusal(Arc<std::sync::OnceLock<TargetStatus>>);

impl Refusal {
    /// The refusal recorded on the connection a client error came from, if any.
    pub(crate) fn of(err: &hyper_util::client::legacy::Error) -> Option<TargetStatus> {
        let mut extensions = http::Extensions::new();
        err.connect_info()?.get_extras(&mut extensions);
        extensions.get::<Refusal>()?.0.get().copied()
    }
}

/// Opens `Http` streams on device sessions.
#[derive(Clone)]
pub(crate) struct TunnelConnector {
    pub(crate) sessions: Arc<Sessions>,
    /// The peer link, on a node of a cluster.
    pub(crate) peers: Option<Arc<Peers>>,
    /// Most `Http` streams open at once per device session.
    pub(crate) max_streams: usize,
    /// Bytes each way are counted here.
    pub(crate) metrics: Arc<Metrics>,
}

impl tower_service::Service<Uri> for TunnelConnector {
    type Response = TokioIo<TunnelStream>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let sessions = Arc::clone(&self.sessions);
        let peers = self.peers.clone();
        let limit = self.max_streams;
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let (uuid, id) = host
                .split_once('-')
                .and_then(|(u, id)| Some((u.parse::<DeviceUuid>().ok()?, id)))
                .ok_or_else(|| UpstreamError::BadKey(host.to_string()))?;
            if id == REMOTE_KEY {
                let peers = peers.ok_or_else(|| UpstreamError::BadKey(host.to_string()))?;
                let header = StreamHeader::Http(HttpHeader::default());
                let (send, recv) = peers.open(uuid, &header).await.map_err(|e| match e {
                    PeerError::Offline => UpstreamError::Offline,
                    PeerError::Busy => UpstreamError::TooManyStreams(limit),
                    PeerError::PublicUrlOff => UpstreamError::PublicUrlOff,
                    e @ (PeerError::Refused | PeerError::Link { .. }) => {
                        UpstreamError::Peer(e.to_string())
                    }
                })?;
                return Ok(TokioIo::new(TunnelStream {
                    inner: BiStream { send, recv },
                    status_seen: false,
                    refusal: Refusal::default(),
                    shut_down: false,
                    _counted: None,
                    metrics,
                }));
            }
            let id: u64 = id
                .parse()
                .map_err(|_| UpstreamError::BadKey(host.to_string()))?;
            let session = sessions
                .get(&uuid)
                .filter(|s| s.id == id)
                .ok_or(UpstreamError::Offline)?;
            // Counted before opening: over the limit the visitor gets a 503 at once
            // instead of queueing behind the device's stream cap.
            let guard = session
                .try_open_http_stream(limit)
                .ok_or(UpstreamError::TooManyStreams(limit))?;
            let (mut send, recv) = session.conn.open_bi().await?;
            // Written without waiting: the header and the request leave in one flight.
            let header = StreamHeader::Http(HttpHeader::default())
                .to_vec()
                .expect("a default Http header fits");
            send.write_all(&header).await.map_err(|e| match e {
                transport::WriteError::ConnectionLost(c) => UpstreamError::Tunnel(c),
                _ => UpstreamError::Offline,
            })?;
            Ok(TokioIo::new(TunnelStream {
                inner: BiStream { send, recv },
                status_seen: false,
                refusal: Refusal::default(),
                shut_down: false,
                _counted: Some(guard),
                metrics,
            }))
        })
    }
}

/// One `Http` stream, as seen by the hyper client.
pub(crate) struct TunnelStream {
    inner: BiStream,
    status_seen: bool,
    /// Set when the device refuses the stream (see [`Refusal`]).
    refusal: Refusal,
    /// Whether the client shut the stream down (finished our side) itself.
    shut_down: bool,
    /// Keeps the stream counted against the device's limit while it lives (on the
    /// holding node, for a stream through the peer link).
    _counted: Option<HttpStreamGuard>,
    /// Bytes read and written are added here (one relaxed add per poll that moved some).
    metrics: Arc<Metrics>,
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        // Dropped without a clean shutdown: the request was aborted (visitor gone, body
        // idle timeout) or an idle pooled stream expired. The transport would otherwise *finish*
        // the stream, which the device reads as a complete request body; a reset makes
        // it drop the target connection at once instead.
        if !self.shut_down {
            self.inner.send.reset(protocol::AppErrorCode::NoError);
        }
    }
}

impl Connection for TunnelStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.refusal.clone())
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.status_seen {
            let mut status = [0u8; 1];
            let mut sb = ReadBuf::new(&mut status);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut sb))?;
            if sb.filled().is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "device closed the stream before answering",
                )));
            }
            match TargetStatus::from_u8(status[0]) {
                TargetStatus::Connected => self.status_seen = true,
                other => {
                    let _ = self.refusal.0.set(other);
                    return Poll::Ready(Err(io::Error::other(UpstreamError::Target(other))));
                }
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            self.metrics.bytes_from_device(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl TunnelStream {
    /// After a failed write: a device that refuses a stream also stops our side of it,
    /// so a write can fail before the refusal was read. The status it sent says why,
    /// and is what the visitor is told; it is read here (waiting for it, if the stop
    /// came first). Any other failure is `err` as it was.
    fn poll_refusal(&mut self, cx: &mut Context<'_>, err: io::Error) -> Poll<io::Error> {
        if self.status_seen {
            return Poll::Ready(err);
        }
        let mut status = [0u8; 1];
        let mut sb = ReadBuf::new(&mut status);
        match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut sb)) {
            Ok(()) if !sb.filled().is_empty() => match TargetStatus::from_u8(status[0]) {
                TargetStatus::Connected => {
                    self.status_seen = true;
                    Poll::Ready(err)
                }
                other => {
                    let _ = self.refusal.0.set(other);
                    Poll::Ready(io::Error::other(UpstreamError::Target(other)))
                }
            },
            _ => Poll::Ready(err),
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match ready!(Pin::new(&mut self.inner).poll_write(cx, buf)) {
            Ok(n) => {
                self.metrics.bytes_to_device(n);
                Poll::Ready(Ok(n))
            }
            Err(e) => self.poll_refusal(cx, e).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.inner).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => self.poll_refusal(cx, e).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut_down = true;
        match ready!(Pin::new(&mut self.inner).poll_shutdown(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => self.poll_refusal(cx, e).map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Empty;

    use super::*;

    /// A gateway-side and a device-side connection over QUIC on loopback (the transport
    /// with a stop of its own; on TLS/TCP a stop before the end is a reset).
    async fn tunnel() -> (transport::Connection, transport::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::Ca::load_or_create(dir.path()).unwrap();
        let server = ca.issue_server(&[]).unwrap();
        let device = ca.issue_device(certs::random_uuid()).unwrap();
        let server_tls = certs::server_config(ca.cert_pem(), &server).unwrap();
        let client_tls = certs::client_config(ca.cert_pem(), &device).unwrap();
        transport::quic::loopback_pair(
            server_tls,
            client_tls,
            certs::TUNNEL_SERVER_NAME,
            quinn::TransportConfig::default(),
        )
        .await
        .unwrap()
    }

    /// Whether `err`'s chain holds the device's refusal with `want`.
    fn says_refused(err: &(dyn std::error::Error + 'static), want: TargetStatus) -> bool {
        let mut cur = Some(err);
        while let Some(e) = cur {
            let upstream = e.downcast_ref::<UpstreamError>().or_else(|| {
                e.downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<UpstreamError>())
            });
            if let Some(UpstreamError::Target(s)) = upstream {
                return *s == want;
            }
            cur = e.source();
        }
        false
    }

    /// The device stops the stream before its refusal arrives (two packets, stop first):
    /// the request's write fails, and the visitor must still hear "refused", not "the
    /// web server closed the connection".
    #[tokio::test]
    async fn a_refusal_that_comes_after_the_stop_is_what_the_request_fails_with() {
        let (gateway, device) = tunnel().await;
        let (mut send, recv) = gateway.open_bi().await.unwrap();
        // The stream exists on the device's side once something was sent on it.
        tokio::io::AsyncWriteExt::write_all(&mut send, b"x")
            .await
            .unwrap();
        let (mut ds, mut dr) = device.accept_bi().await.unwrap();
        dr.stop(protocol::AppErrorCode::NoError);
        // The stop has reached the gateway before hyper writes the request.
        let stopped = tokio::time::timeout(Duration::from_secs(10), send.stopped())
            .await
            .expect("the stop never arrived");
        assert!(matches!(stopped, Ok(Some(_))), "{stopped:?}");
        let stream = TunnelStream {
            inner: BiStream { send, recv },
            status_seen: false,
            refusal: Refusal::default(),
            shut_down: false,
            _counted: None,
            metrics: Arc::new(Metrics::new()),
        };
        let refusal = stream.refusal.clone();
        let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let answer = tokio::spawn(async move {
            let req = http::Request::get("/")
                .header("host", "device")
                .body(Empty::<Bytes>::new())
                .unwrap();
            client.ready().await?;
            client.send_request(req).await
        });
        // The refusal comes after the stop, as a second packet would bring it.
        tokio::io::AsyncWriteExt::write_all(&mut ds, &[TargetStatus::Refused as u8])
            .await
            .unwrap();
        let _ = ds.finish();
        let err = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("the request never ended")
            .unwrap()
            .expect_err("a refused stream cannot answer");
        assert!(
            says_refused(&err, TargetStatus::Refused),
            "the request failed without the device's refusal: {err:?}"
        );
        assert_eq!(refusal.0.get(), Some(&TargetStatus::Refused));
        drop(conn);
        drop(gateway);
    }
}
