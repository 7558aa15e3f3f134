//! Stream IO shared by the agent and the gateway: reading stream headers and frames from
//! QUIC streams with hard limits and timeouts. All decoding is done by [`protocol`]; this
//! module only owns buffers and sockets.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use protocol::{AppErrorCode, DecodeError, Frame, StreamHeader, MAX_HEADER_PAYLOAD};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Errors reading or writing protocol units on a stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer sent bytes that do not decode.
    #[error("malformed data from peer: {0}")]
    Decode(#[from] DecodeError),
    /// The stream ended before a complete header or frame arrived.
    #[error("stream ended in the middle of a header or frame")]
    UnexpectedEof,
    /// The stream ended cleanly between frames.
    #[error("stream closed")]
    Closed,
    /// Reading from the stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Reading exactly failed.
    #[error("read: {0}")]
    ReadExact(#[from] quinn::ReadExactError),
    /// Writing to the stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer did not send a complete header or frame in time.
    #[error("timed out waiting for the peer")]
    Timeout,
}

impl WireError {
    /// The application error code to reset the stream (or close the connection) with.
    pub fn code(&self) -> AppErrorCode {
        match self {
            Self::Decode(DecodeError::TooLarge { .. }) => AppErrorCode::FrameTooLarge,
            Self::Decode(_) | Self::UnexpectedEof => AppErrorCode::ProtocolError,
            Self::Timeout => AppErrorCode::HandshakeTimeout,
            _ => AppErrorCode::Internal,
        }
    }
}

/// Converts an [`AppErrorCode`] to a QUIC varint.
pub fn varint(code: AppErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.as_u32())
}

/// Reads exactly one stream header, consuming no byte after it.
///
/// Reads the 4-byte prefix first so a bad magic or oversized length is refused before the
/// payload is read; the payload is then read exactly.
pub async fn read_header(recv: &mut quinn::RecvStream) -> Result<StreamHeader, WireError> {
    let mut buf = vec![0u8; 4];
    recv.read_exact(&mut buf).await.map_err(eof_as_unexpected)?;
    let len = match StreamHeader::decode(&mut &buf[..]) {
        Ok(h) => return Ok(h),
        Err(DecodeError::Incomplete) => u16::from_be_bytes([buf[2], buf[3]]) as usize,
        Err(e) => return Err(e.into()),
    };
    debug_assert!(len <= MAX_HEADER_PAYLOAD);
    buf.resize(4 + len, 0);
    recv.read_exact(&mut buf[4..])
        .await
        .map_err(eof_as_unexpected)?;
    Ok(StreamHeader::decode(&mut &buf[..])?)
}

fn eof_as_unexpected(e: quinn::ReadExactError) -> WireError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => WireError::UnexpectedEof,
        other => WireError::ReadExact(other),
    }
}

/// Reads frames from one stream, owning its buffer.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    limit: usize,
}

impl FrameReader {
    /// Wraps `recv`; frames longer than `limit` are refused.
    pub fn new(recv: quinn::RecvStream, limit: usize) -> Self {
        Self {
            recv,
            buf: BytesMut::with_capacity(4096),
            limit,
        }
    }

    /// Reads the next frame. Returns [`WireError::Closed`] on a clean end between frames.
    ///
    /// Cancel-safe: bytes already read stay in the buffer.
    pub async fn next(&mut self) -> Result<Frame, WireError> {
        loop {
            match Frame::decode(&mut self.buf, self.limit) {
                Ok(f) => return Ok(f),
                Err(DecodeError::Incomplete) => {}
                Err(e) => return Err(e.into()),
            }
            // The limit check in `Frame::decode` runs as soon as a length prefix is
            // visible, so the buffer never grows past one maximal frame plus one chunk.
            let chunk = self.recv.read_chunk(64 * 1024, true).await?;
            if let Some(chunk) = &chunk {
                self.buf.extend_from_slice(&chunk.bytes);
            }
            if chunk.is_none() {
                return Err(if self.buf.is_empty() {
                    WireError::Closed
                } else {
                    WireError::UnexpectedEof
                });
            }
        }
    }

    /// Gives the stream back (e.g. to stop it with an error code).
    pub fn into_inner(self) -> quinn::RecvStream {
        self.recv
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }
}

/// Writes one frame.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    send.write_all(&buf).await?;
    Ok(())
}

/// A QUIC bidirectional stream as one `AsyncRead + AsyncWrite` value.
pub struct BiStream {
    /// Sending half.
    pub send: quinn::SendStream,
    /// Receiving half.
    pub recv: quinn::RecvStream,
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
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// Resets both halves of a stream with `code` (used on malformed or refused streams).
pub fn reject(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: AppErrorCode) {
    let _ = send.reset(varint(code));
    let _ = recv.stop(varint(code));
}

/// Describes why a connection closed, decoding our application error codes.
pub fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = u32::try_from(close.error_code.into_inner())
                .ok()
                .and_then(AppErrorCode::from_u32);
            let reason = String::from_utf8_lossy(&close.reason);
            match code {
                Some(c) if reason.is_empty() => c.to_string(),
                Some(c) => format!("{c}: {reason}"),
                None => format!("closed by peer with code {}: {reason}", close.error_code),
            }
        }
        other => other.to_string(),
    }
}
