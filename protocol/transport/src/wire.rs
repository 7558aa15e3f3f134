//! Stream IO shared by the agent and the gateway: stream headers and frames read from
//! streams with hard limits. All decoding is done by [`protocol`]; this module only owns
//! buffers and streams.

use bytes::BytesMut;
use protocol::{AppErrorCode, DecodeError, Frame, StreamHeader, MAX_HEADER_PAYLOAD};

use crate::{ConnectionError, ReadError, RecvStream, SendStream, WriteError};

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
    Read(#[from] ReadError),
    /// Writing to the stream failed.
    #[error("write: {0}")]
    Write(#[from] WriteError),
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

    /// The connection's end, when that is what this error is.
    pub fn connection_lost(&self) -> Option<&ConnectionError> {
        match self {
            Self::Read(ReadError::ConnectionLost(c))
            | Self::Write(WriteError::ConnectionLost(c)) => Some(c),
            _ => None,
        }
    }
}

/// Reads exactly one stream header, consuming no byte after it.
///
/// Reads the 4-byte prefix first so a bad magic or oversized length is refused before the
/// payload is read; the payload is then read exactly.
pub async fn read_header(recv: &mut RecvStream) -> Result<StreamHeader, WireError> {
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

fn eof_as_unexpected(e: ReadError) -> WireError {
    match e {
        ReadError::FinishedEarly(_) => WireError::UnexpectedEof,
        other => WireError::Read(other),
    }
}

/// Reads frames from one stream, owning its buffer.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
    limit: usize,
}

impl FrameReader {
    /// Wraps `recv`; frames longer than `limit` are refused.
    pub fn new(recv: RecvStream, limit: usize) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
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
            match self.recv.read_chunk(64 * 1024).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None if self.buf.is_empty() => return Err(WireError::Closed),
                None => return Err(WireError::UnexpectedEof),
            }
        }
    }

    /// Gives the stream back (e.g. to stop it with an error code).
    pub fn into_inner(self) -> RecvStream {
        self.recv
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut RecvStream {
        &mut self.recv
    }
}

/// Writes one frame.
pub async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    send.write_all(&buf).await?;
    Ok(())
}

/// Resets both halves of a stream with `code` (used on malformed or refused streams).
pub fn reject(send: &mut SendStream, recv: &mut RecvStream, code: AppErrorCode) {
    send.reset(code);
    recv.stop(code);
}
