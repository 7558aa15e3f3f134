//! Decoding helpers shared by headers and frames.

use bytes::Buf;

/// Why a header or frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not enough bytes yet; nothing was consumed. Read more and try again.
    #[error("incomplete: need more bytes")]
    Incomplete,
    /// The stream did not start with the protocol's magic byte.
    #[error("bad magic byte {0:#04x}, expected {expected:#04x}", expected = crate::HEADER_MAGIC)]
    BadMagic(u8),
    /// The stream header names a stream kind this side does not know.
    #[error("unknown stream kind {0}")]
    UnknownStreamKind(u8),
    /// A frame names a frame type this side does not know.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// The declared length is above the hard limit for this kind of header or frame.
    #[error("length {len} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Limit that applies.
        limit: usize,
    },
    /// The declared length is too small to hold the mandatory fields.
    #[error("length {0} is too short")]
    TooShort(usize),
    /// The payload is not valid for its type (bad JSON, missing field, ...).
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded payload would exceed the hard limit the receiver enforces.
    #[error("encoded length {len} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// Limit that applies.
        limit: usize,
    },
}

/// Copies the first `out.len()` bytes of `buf` into `out` without consuming them.
/// Returns `false` when `buf` holds fewer bytes.
pub(crate) fn peek(buf: &impl Buf, out: &mut [u8]) -> bool {
    if buf.remaining() < out.len() {
        return false;
    }
    let chunk = buf.chunk();
    if chunk.len() >= out.len() {
        out.copy_from_slice(&chunk[..out.len()]);
        return true;
    }
    // Non-contiguous buffer: walk the chunks through vectored slices.
    let mut slices = [std::io::IoSlice::new(&[]); 16];
    let n = buf.chunks_vectored(&mut slices);
    let mut filled = 0;
    for s in &slices[..n] {
        let take = (out.len() - filled).min(s.len());
        out[filled..filled + take].copy_from_slice(&s[..take]);
        filled += take;
        if filled == out.len() {
            return true;
        }
    }
    false
}
