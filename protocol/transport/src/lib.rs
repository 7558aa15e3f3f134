//! The tunnel's transport layer, shared by the gateway and the agent.
//!
//! One [`Connection`] type over two implementations:
//!
//! * [`Connection::Quic`]: a QUIC connection (quinn), the default;
//! * [`Connection::TlsTcp`]: TLS 1.3 over TCP with HTTP/2 (the `h2` crate) as the stream
//!   multiplexer, for networks that block UDP ([`tls_tcp`] explains the mapping).
//!
//! Both offer the same things: open and accept bidirectional streams, close with an
//! [`AppErrorCode`](protocol::AppErrorCode), the close reason, the verified peer
//! certificates, and path stats (RTT, transport kind). Streams are [`SendStream`] and
//! [`RecvStream`], with the same errors on both transports ([`error`]); stream resets
//! carry the application code on both. Handlers (HTTP forwarding, terminal, logs,
//! control, provisioning) are written once against these types and never name quinn or
//! h2.
//!
//! Also here: the framing IO both sides use on streams ([`wire`]: stream headers and
//! frames read with hard limits), UDP socket set-up ([`net`]), and dialling helpers
//! ([`quic`], [`tls_tcp`], [`proxy`] for HTTP CONNECT proxies).
//!
//! This crate does IO; the wire format itself stays in the sans-IO `protocol` crate.
#![warn(missing_docs)]

pub mod error;
pub mod net;
pub mod proxy;
pub mod quic;
pub mod signal;
pub mod tls_tcp;
pub mod wire;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use protocol::AppErrorCode;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use error::{ConnectError, ConnectionError, ReadError, WriteError};

/// Which transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP with an HTTP/2 stream multiplexer.
    Tcp,
}

impl TransportKind {
    /// `quic` or `tcp`, as shown by the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Path statistics of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStats {
    /// The transport.
    pub kind: TransportKind,
    /// Smoothed round-trip time (QUIC), or the last keep-alive ping's round trip (TCP).
    pub rtt: Duration,
}

/// A live tunnel connection, on either transport. Cheap to clone (a handle).
#[derive(Debug, Clone)]
pub enum Connection {
    /// QUIC.
    Quic(quinn::Connection),
    /// TLS 1.3 over TCP, streams multiplexed with HTTP/2.
    TlsTcp(tls_tcp::TlsTcpConnection),
}

impl Connection {
    /// Opens a bidirectional stream. Waits while the peer's stream limit is reached.
    ///
    /// Cancel-safe: a cancelled open leaves no stream behind.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match self {
            Self::Quic(c) => {
                let (s, r) = c.open_bi().await?;
                Ok((SendStream::Quic(s), RecvStream::Quic(r)))
            }
            Self::TlsTcp(c) => c.open_bi().await,
        }
    }

    /// Accepts the next stream the peer opens.
    ///
    /// Cancel-safe: a stream that arrives after the future is dropped is returned by the
    /// next call.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match self {
            Self::Quic(c) => {
                let (s, r) = c.accept_bi().await?;
                Ok((SendStream::Quic(s), RecvStream::Quic(r)))
            }
            Self::TlsTcp(c) => c.accept_bi().await,
        }
    }

    /// Closes the connection with `code` and a short `reason` the peer sees. Every stream
    /// ends at once.
    pub fn close(&self, code: AppErrorCode, reason: &[u8]) {
        match self {
            Self::Quic(c) => c.close(quic::varint(code), reason),
            Self::TlsTcp(c) => c.close(code.as_u32().into(), reason),
        }
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        match self {
            Self::Quic(c) => c.close_reason().map(Into::into),
            Self::TlsTcp(c) => c.close_reason(),
        }
    }

    /// Waits until the connection ends and says why.
    pub async fn closed(&self) -> ConnectionError {
        match self {
            Self::Quic(c) => c.closed().await.into(),
            Self::TlsTcp(c) => c.closed().await,
        }
    }

    /// The certificate chain the peer presented and the TLS layer verified (leaf first),
    /// or `None` when it presented none.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        match self {
            Self::Quic(c) => c
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
                .map(|b| *b),
            Self::TlsTcp(c) => c.peer_certificates(),
        }
    }

    /// The ALPN protocol negotiated in the handshake.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        match self {
            Self::Quic(c) => c
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol),
            Self::TlsTcp(c) => c.alpn(),
        }
    }

    /// The peer's address (for TCP through a proxy: the proxy's).
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Self::Quic(c) => c.remote_address(),
            Self::TlsTcp(c) => c.remote_address(),
        }
    }

    /// The transport this connection runs on.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::Quic(_) => TransportKind::Quic,
            Self::TlsTcp(_) => TransportKind::Tcp,
        }
    }

    /// Tells the connection that the peer keeps it alive every `interval` itself. On
    /// TCP this side's pings slow down to that cadence (they would otherwise add to the
    /// peer's: an agent on a metered link pings every 60 s); on QUIC only the agent
    /// pings anyway, so nothing changes.
    pub fn peer_keep_alive(&self, interval: Duration) {
        if let Self::TlsTcp(c) = self {
            c.slow_keep_alive(interval);
        }
    }

    /// Path statistics (transport, RTT).
    pub fn stats(&self) -> PathStats {
        let rtt = match self {
            Self::Quic(c) => c.rtt(),
            Self::TlsTcp(c) => c.rtt(),
        };
        PathStats {
            kind: self.kind(),
            rtt,
        }
    }

    /// Packets received from the peer so far, where the transport counts them (QUIC);
    /// `None` on TCP, whose multiplexer watches the peer itself. A count that stops
    /// moving while the peer should be sending keep-alives means the peer is gone.
    pub fn packets_received(&self) -> Option<u64> {
        match self {
            Self::Quic(c) => Some(c.stats().udp_rx.datagrams),
            Self::TlsTcp(_) => None,
        }
    }
}

/// The sending half of a stream.
#[derive(Debug)]
pub enum SendStream {
    /// On QUIC.
    Quic(quinn::SendStream),
    /// On TLS over TCP.
    TlsTcp(tls_tcp::TcpSendStream),
}

impl SendStream {
    /// Writes all of `buf`, waiting for flow-control credit.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), WriteError> {
        match self {
            Self::Quic(s) => s.write_all(buf).await.map_err(Into::into),
            Self::TlsTcp(s) => s.write_all(buf).await,
        }
    }

    /// Writes one owned chunk (no copy on either transport).
    pub async fn write_chunk(&mut self, buf: Bytes) -> Result<(), WriteError> {
        match self {
            Self::Quic(s) => s.write_chunk(buf).await.map_err(Into::into),
            Self::TlsTcp(s) => s.write_chunk(buf).await,
        }
    }

    /// Ends the stream cleanly after what was written.
    pub fn finish(&mut self) -> Result<(), WriteError> {
        match self {
            Self::Quic(s) => s.finish().map_err(|_| WriteError::ClosedStream),
            Self::TlsTcp(s) => s.finish(),
        }
    }

    /// Abandons the stream: the peer's reads fail with `code`.
    pub fn reset(&mut self, code: AppErrorCode) {
        match self {
            Self::Quic(s) => {
                let _ = s.reset(quic::varint(code));
            }
            Self::TlsTcp(s) => s.reset(code.as_u32()),
        }
    }

    /// Waits until the peer has received everything (QUIC) or the stream is closed,
    /// or the peer stopped it. Returns the stop code, if the peer stopped it.
    pub async fn stopped(&mut self) -> Result<Option<u64>, ConnectionError> {
        match self {
            Self::Quic(s) => match s.stopped().await {
                Ok(code) => Ok(code.map(|c| c.into_inner())),
                Err(quinn::StoppedError::ConnectionLost(c)) => Err(c.into()),
                Err(_) => Ok(None),
            },
            Self::TlsTcp(s) => s.stopped().await,
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(s) => Pin::new(s)
                .poll_write(cx, buf)
                .map_err(|e| WriteError::from(e).into()),
            Self::TlsTcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            Self::TlsTcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            Self::TlsTcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub enum RecvStream {
    /// On QUIC.
    Quic(quinn::RecvStream),
    /// On TLS over TCP.
    TlsTcp(tls_tcp::TcpRecvStream),
}

impl RecvStream {
    /// Reads the next chunk of at most `max` bytes without copying; `None` at the end.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        match self {
            Self::Quic(r) => Ok(r.read_chunk(max, true).await?.map(|c| c.bytes)),
            Self::TlsTcp(r) => r.read_chunk(max).await,
        }
    }

    /// Reads into `buf`; `None` at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        match self {
            Self::Quic(r) => r.read(buf).await.map_err(Into::into),
            Self::TlsTcp(r) => r.read(buf).await,
        }
    }

    /// Fills `buf` exactly, or fails with [`ReadError::FinishedEarly`].
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await? {
                Some(n) => filled += n,
                None => return Err(ReadError::FinishedEarly(filled)),
            }
        }
        Ok(())
    }

    /// Tells the peer to stop sending: its writes fail with `code`.
    pub fn stop(&mut self, code: AppErrorCode) {
        match self {
            Self::Quic(r) => {
                let _ = r.stop(quic::varint(code));
            }
            Self::TlsTcp(r) => r.stop(code.as_u32()),
        }
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Quic(r) => r
                .poll_read_buf(cx, buf)
                .map_err(|e| ReadError::from(e).into()),
            Self::TlsTcp(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// A stream's two halves as one `AsyncRead + AsyncWrite` value (for byte pipes).
#[derive(Debug)]
pub struct BiStream {
    /// Sending half.
    pub send: SendStream,
    /// Receiving half.
    pub recv: RecvStream,
}

impl AsyncRead for BiStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for BiStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}
