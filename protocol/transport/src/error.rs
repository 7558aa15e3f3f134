//! Errors of connections and streams, the same on both transports.
//!
//! Callers never see `quinn` or `h2` errors: each implementation maps its own into these,
//! so a handler that matches on "the peer reset this stream with code X" or "the
//! connection was closed with `Replaced`" is written once.

use bytes::Bytes;
use protocol::AppErrorCode;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The peer closed the connection with an application error code and a reason.
    #[error("{}", describe_app_close(*.code, .reason))]
    ApplicationClosed {
        /// The code (an [`AppErrorCode`] when the peer is ours).
        code: u64,
        /// Human-readable reason, possibly empty.
        reason: Bytes,
    },
    /// This side closed the connection.
    #[error("closed")]
    LocallyClosed,
    /// The peer showed no sign of life within the idle timeout.
    #[error("timed out")]
    TimedOut,
    /// The peer reset the connection: a QUIC stateless reset (the peer restarted), a TCP
    /// reset, or a TCP connection that ended without a close message.
    #[error("reset by peer")]
    Reset,
    /// The transport itself failed: a protocol violation, a TLS alert, a version mismatch.
    #[error("transport error: {0}")]
    Transport(String),
}

impl ConnectionError {
    /// The application error code the peer closed with, when it is one of ours.
    pub fn app_code(&self) -> Option<AppErrorCode> {
        match self {
            Self::ApplicationClosed { code, .. } => {
                u32::try_from(*code).ok().and_then(AppErrorCode::from_u32)
            }
            _ => None,
        }
    }

    /// The reason text the peer closed with (empty when none).
    pub fn reason(&self) -> String {
        match self {
            Self::ApplicationClosed { reason, .. } => String::from_utf8_lossy(reason).into_owned(),
            _ => String::new(),
        }
    }
}

fn describe_app_close(code: u64, reason: &Bytes) -> String {
    let known = u32::try_from(code).ok().and_then(AppErrorCode::from_u32);
    let reason = String::from_utf8_lossy(reason);
    match known {
        Some(c) if reason.is_empty() => c.to_string(),
        Some(c) => format!("{c}: {reason}"),
        None => format!("closed by peer with code {code}: {reason}"),
    }
}

impl From<quinn::ConnectionError> for ConnectionError {
    fn from(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => Self::ApplicationClosed {
                code: c.error_code.into_inner(),
                reason: c.reason,
            },
            quinn::ConnectionError::LocallyClosed => Self::LocallyClosed,
            quinn::ConnectionError::TimedOut => Self::TimedOut,
            quinn::ConnectionError::Reset => Self::Reset,
            other => Self::Transport(other.to_string()),
        }
    }
}

/// Why reading from a stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The peer reset its sending half with this code.
    #[error("stream reset by peer with code {0}")]
    Reset(u64),
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(#[source] ConnectionError),
    /// This side already stopped or finished reading the stream.
    #[error("stream already closed")]
    ClosedStream,
    /// The stream ended before the requested number of bytes arrived (`read_exact`).
    #[error("stream finished early after {0} bytes")]
    FinishedEarly(usize),
}

impl ReadError {
    /// The application code of a stream reset, when it is one of ours.
    pub fn reset_code(&self) -> Option<AppErrorCode> {
        match self {
            Self::Reset(c) => u32::try_from(*c).ok().and_then(AppErrorCode::from_u32),
            _ => None,
        }
    }
}

impl From<quinn::ReadError> for ReadError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => Self::Reset(code.into_inner()),
            quinn::ReadError::ConnectionLost(c) => Self::ConnectionLost(c.into()),
            quinn::ReadError::ClosedStream => Self::ClosedStream,
            // Only 0-RTT streams (never used here) and unordered reads produce the rest.
            other => Self::ConnectionLost(ConnectionError::Transport(other.to_string())),
        }
    }
}

impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            ReadError::Reset(_) => ErrorKind::ConnectionReset,
            ReadError::ConnectionLost(_) => ErrorKind::ConnectionAborted,
            ReadError::ClosedStream => ErrorKind::NotConnected,
            ReadError::FinishedEarly(_) => ErrorKind::UnexpectedEof,
        };
        Self::new(kind, e)
    }
}

/// Why writing to a stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The peer asked this side to stop sending (or reset the stream) with this code.
    #[error("stream stopped by peer with code {0}")]
    Stopped(u64),
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(#[source] ConnectionError),
    /// This side already finished or reset the stream.
    #[error("stream already closed")]
    ClosedStream,
}

impl From<quinn::WriteError> for WriteError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => Self::Stopped(code.into_inner()),
            quinn::WriteError::ConnectionLost(c) => Self::ConnectionLost(c.into()),
            quinn::WriteError::ClosedStream => Self::ClosedStream,
            other => Self::ConnectionLost(ConnectionError::Transport(other.to_string())),
        }
    }
}

impl From<WriteError> for std::io::Error {
    fn from(e: WriteError) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            WriteError::Stopped(_) => ErrorKind::ConnectionReset,
            WriteError::ConnectionLost(_) => ErrorKind::ConnectionAborted,
            WriteError::ClosedStream => ErrorKind::NotConnected,
        };
        Self::new(kind, e)
    }
}

/// Why dialling or accepting a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect, socket set-up or the proxy failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (wrong CA, no client certificate, ...).
    #[error("TLS handshake: {0}")]
    Tls(String),
    /// The HTTP CONNECT proxy refused or failed.
    #[error("proxy: {0}")]
    Proxy(String),
    /// The stream multiplexer's handshake failed.
    #[error("multiplexer handshake: {0}")]
    Mux(String),
    /// The peer does not speak the expected protocol (ALPN).
    #[error("peer offered no supported protocol (ALPN)")]
    NoAlpn,
    /// The QUIC handshake could not start (bad address, endpoint stopping).
    #[error("QUIC connect: {0}")]
    QuicConnect(#[from] quinn::ConnectError),
    /// The QUIC handshake failed.
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl From<quinn::ConnectionError> for ConnectError {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Connection(e.into())
    }
}
