//! Length-prefixed frames carried after the stream header on message-oriented streams.
//!
//! ```text
//! +-------------------+--------+------------------------------+
//! | length (u32 BE)   | type   | payload (length - 1 bytes)   |
//! +-------------------+--------+------------------------------+
//! ```
//!
//! `length` counts the type byte and the payload. Every stream kind has a hard limit;
//! a frame above it is refused before any of it is buffered.

use bytes::{Buf, BufMut, Bytes};

use crate::codec::{peek, DecodeError};

/// Limit for frames on the control stream (JSON control messages).
pub const MAX_CONTROL_FRAME: usize = 1024 * 1024;

/// Limit for data frames (terminal output, log batches).
pub const MAX_DATA_FRAME: usize = 1024 * 1024;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// A JSON-encoded [`crate::ControlMessage`] (or a stream-specific JSON message).
    Message = 1,
    /// Opaque bytes (terminal input/output).
    Data = 2,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Message,
            2 => Self::Data,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame type.
    pub ty: FrameType,
    /// The payload, without the type byte.
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame.
    pub fn new(ty: FrameType, payload: impl Into<Bytes>) -> Self {
        Self {
            ty,
            payload: payload.into(),
        }
    }

    /// Number of bytes [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        4 + 1 + self.payload.len()
    }

    /// Appends the encoded frame to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u32((self.payload.len() + 1) as u32);
        buf.put_u8(self.ty as u8);
        buf.put_slice(&self.payload);
    }

    /// Decodes one frame from the front of `buf`, refusing frames longer than `limit`.
    ///
    /// On [`DecodeError::Incomplete`] nothing is consumed. A frame over `limit` is refused
    /// as soon as its length prefix is visible, before its body arrives.
    pub fn decode(buf: &mut impl Buf, limit: usize) -> Result<Self, DecodeError> {
        let mut prefix = [0u8; 5];
        if !peek(buf, &mut prefix[..4]) {
            return Err(DecodeError::Incomplete);
        }
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len == 0 {
            return Err(DecodeError::TooShort(0));
        }
        if len - 1 > limit {
            return Err(DecodeError::TooLarge {
                len: len - 1,
                limit,
            });
        }
        if !peek(buf, &mut prefix) {
            return Err(DecodeError::Incomplete);
        }
        let ty = FrameType::from_u8(prefix[4]).ok_or(DecodeError::UnknownFrameType(prefix[4]))?;
        if buf.remaining() < 4 + len {
            return Err(DecodeError::Incomplete);
        }
        buf.advance(5);
        let payload = buf.copy_to_bytes(len - 1);
        Ok(Self { ty, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(ty in prop_oneof![Just(FrameType::Message), Just(FrameType::Data)],
                      payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let f = Frame::new(ty, payload);
            let mut v = Vec::new();
            f.encode(&mut v);
            prop_assert_eq!(v.len(), f.encoded_len());
            let mut buf = &v[..];
            prop_assert_eq!(Frame::decode(&mut buf, MAX_DATA_FRAME).unwrap(), f);
            prop_assert!(buf.is_empty());
            // Every strict prefix is incomplete and consumes nothing.
            for cut in 0..v.len() {
                let mut buf = &v[..cut];
                prop_assert_eq!(Frame::decode(&mut buf, MAX_DATA_FRAME), Err(DecodeError::Incomplete));
                prop_assert_eq!(buf.len(), cut);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = &bytes[..];
            let _ = Frame::decode(&mut buf, 32);
        }
    }

    #[test]
    fn oversized_is_refused_from_the_prefix_alone() {
        let mut buf = &[0xff, 0xff, 0xff, 0xff][..];
        assert_eq!(
            Frame::decode(&mut buf, MAX_CONTROL_FRAME),
            Err(DecodeError::TooLarge {
                len: 0xffff_fffe,
                limit: MAX_CONTROL_FRAME
            })
        );
    }

    #[test]
    fn zero_length_and_unknown_type() {
        let mut buf = &[0, 0, 0, 0][..];
        assert_eq!(Frame::decode(&mut buf, 10), Err(DecodeError::TooShort(0)));
        let mut buf = &[0, 0, 0, 1, 9][..];
        assert_eq!(
            Frame::decode(&mut buf, 10),
            Err(DecodeError::UnknownFrameType(9))
        );
    }
}
