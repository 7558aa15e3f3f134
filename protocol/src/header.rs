//! The typed header that opens every QUIC stream.
//!
//! ```text
//! +--------+--------+-----------------+----------------------+
//! | 0xE7   | kind   | length (u16 BE) | payload (JSON)       |
//! +--------+--------+-----------------+----------------------+
//! ```
//!
//! The payload is a JSON object whose shape depends on `kind`; an empty payload (length 0)
//! means "all defaults". Unknown JSON fields are ignored so that newer senders can add
//! optional fields.

use bytes::{Buf, BufMut};
use serde::{Deserialize, Serialize};

use crate::codec::{peek, DecodeError, EncodeError};

/// First byte of every stream. Lets a receiver reject garbage immediately.
pub const HEADER_MAGIC: u8 = 0xE7;

/// Hard limit on a stream header's payload. Headers are small; anything bigger is hostile.
pub const MAX_HEADER_PAYLOAD: usize = 16 * 1024;

const PREFIX_LEN: usize = 4;

/// What a stream carries, as the byte after the magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamKind {
    /// The control stream: the first stream the agent opens, carrying [`crate::ControlMessage`] frames.
    Control = 0,
    /// One proxied HTTP/1.1 connection from the gateway to the device's target port.
    Http = 1,
    /// A terminal session (opened by the gateway).
    Terminal = 2,
    /// A log channel (opened by the agent).
    Logs = 3,
}

impl StreamKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Control,
            1 => Self::Http,
            2 => Self::Terminal,
            3 => Self::Logs,
            _ => return None,
        })
    }
}

/// Parameters of an `Http` stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    /// Optional target port on the device, overriding the agent's configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The decoded header of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamHeader {
    /// See [`StreamKind::Control`].
    Control,
    /// See [`StreamKind::Http`].
    Http(HttpHeader),
    /// See [`StreamKind::Terminal`]; the payload is defined by the terminal feature.
    Terminal(serde_json::Map<String, serde_json::Value>),
    /// See [`StreamKind::Logs`]; the payload is defined by the logs feature.
    Logs(serde_json::Map<String, serde_json::Value>),
}

impl StreamHeader {
    /// The kind byte of this header.
    pub fn kind(&self) -> StreamKind {
        match self {
            Self::Control => StreamKind::Control,
            Self::Http(_) => StreamKind::Http,
            Self::Terminal(_) => StreamKind::Terminal,
            Self::Logs(_) => StreamKind::Logs,
        }
    }

    /// Appends the encoded header to `buf`.
    ///
    /// Fails, writing nothing, when the payload exceeds [`MAX_HEADER_PAYLOAD`]. `Control`
    /// and `Http` headers always fit.
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), EncodeError> {
        let payload = match self {
            Self::Control => Vec::new(),
            Self::Http(h) if *h == HttpHeader::default() => Vec::new(),
            Self::Http(h) => serde_json::to_vec(h).expect("header serializes"),
            Self::Terminal(m) | Self::Logs(m) if m.is_empty() => Vec::new(),
            Self::Terminal(m) | Self::Logs(m) => serde_json::to_vec(m).expect("map serializes"),
        };
        if payload.len() > MAX_HEADER_PAYLOAD {
            return Err(EncodeError::TooLarge {
                len: payload.len(),
                limit: MAX_HEADER_PAYLOAD,
            });
        }
        buf.put_u8(HEADER_MAGIC);
        buf.put_u8(self.kind() as u8);
        buf.put_u16(payload.len() as u16);
        buf.put_slice(&payload);
        Ok(())
    }

    /// Encodes into a fresh vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = Vec::with_capacity(16);
        self.encode(&mut v)?;
        Ok(v)
    }

    /// Decodes a header from the front of `buf`.
    ///
    /// On [`DecodeError::Incomplete`] nothing is consumed. On any other error the stream
    /// is unusable and must be reset with [`crate::AppErrorCode::ProtocolError`].
    pub fn decode(buf: &mut impl Buf) -> Result<Self, DecodeError> {
        let mut prefix = [0u8; PREFIX_LEN];
        // Check the magic as soon as one byte is there so garbage fails fast.
        if buf.remaining() >= 1 && buf.chunk()[0] != HEADER_MAGIC {
            return Err(DecodeError::BadMagic(buf.chunk()[0]));
        }
        if !peek(buf, &mut prefix) {
            return Err(DecodeError::Incomplete);
        }
        let kind =
            StreamKind::from_u8(prefix[1]).ok_or(DecodeError::UnknownStreamKind(prefix[1]))?;
        let len = u16::from_be_bytes([prefix[2], prefix[3]]) as usize;
        if len > MAX_HEADER_PAYLOAD {
            return Err(DecodeError::TooLarge {
                len,
                limit: MAX_HEADER_PAYLOAD,
            });
        }
        if buf.remaining() < PREFIX_LEN + len {
            return Err(DecodeError::Incomplete);
        }
        buf.advance(PREFIX_LEN);
        let payload = buf.copy_to_bytes(len);
        let header = match kind {
            StreamKind::Control => {
                if !payload.is_empty() {
                    return Err(DecodeError::InvalidPayload(
                        "control header carries no payload".into(),
                    ));
                }
                Self::Control
            }
            StreamKind::Http => Self::Http(parse_json_or_default(&payload)?),
            StreamKind::Terminal => Self::Terminal(parse_json_or_default(&payload)?),
            StreamKind::Logs => Self::Logs(parse_json_or_default(&payload)?),
        };
        Ok(header)
    }
}

fn parse_json_or_default<T: Default + serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<T, DecodeError> {
    if payload.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(payload).map_err(|e| DecodeError::InvalidPayload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = StreamHeader> {
        let map = proptest::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..4).prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, serde_json::Value::from(v)))
                .collect::<serde_json::Map<_, _>>()
        });
        prop_oneof![
            Just(StreamHeader::Control),
            any::<Option<u16>>().prop_map(|port| StreamHeader::Http(HttpHeader { port })),
            map.clone().prop_map(StreamHeader::Terminal),
            map.prop_map(StreamHeader::Logs),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(h in arb_header()) {
            let bytes = h.to_vec().unwrap();
            let mut buf = &bytes[..];
            prop_assert_eq!(StreamHeader::decode(&mut buf).unwrap(), h);
            prop_assert_eq!(buf.len(), 0);
        }

        #[test]
        fn every_prefix_is_incomplete(h in arb_header()) {
            let bytes = h.to_vec().unwrap();
            for cut in 1..bytes.len() {
                let mut buf = &bytes[..cut];
                prop_assert_eq!(StreamHeader::decode(&mut buf), Err(DecodeError::Incomplete));
                prop_assert_eq!(buf.len(), cut, "incomplete must not consume");
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = &bytes[..];
            let _ = StreamHeader::decode(&mut buf);
        }
    }

    #[test]
    fn rejects_garbage_fast() {
        let mut buf = &b"GET / HTTP/1.1\r\n"[..];
        assert_eq!(
            StreamHeader::decode(&mut buf),
            Err(DecodeError::BadMagic(b'G'))
        );
    }

    #[test]
    fn rejects_oversized_and_unknown() {
        let mut buf = &[HEADER_MAGIC, 1, 0xff, 0xff][..];
        assert!(matches!(
            StreamHeader::decode(&mut buf),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut buf = &[HEADER_MAGIC, 99, 0, 0][..];
        assert_eq!(
            StreamHeader::decode(&mut buf),
            Err(DecodeError::UnknownStreamKind(99))
        );
        let mut buf = &[HEADER_MAGIC, 1, 0, 2, b'{', b'x'][..];
        assert!(matches!(
            StreamHeader::decode(&mut buf),
            Err(DecodeError::InvalidPayload(_))
        ));
    }

    #[test]
    fn oversized_payload_is_an_encode_error() {
        let mut m = serde_json::Map::new();
        m.insert(
            "a".into(),
            serde_json::Value::from("x".repeat(MAX_HEADER_PAYLOAD)),
        );
        let mut v = Vec::new();
        assert!(matches!(
            StreamHeader::Terminal(m).encode(&mut v),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(v.is_empty());
    }

    #[test]
    fn non_contiguous_buffer() {
        let bytes = StreamHeader::Http(HttpHeader { port: Some(8080) })
            .to_vec()
            .unwrap();
        let (a, b) = bytes.split_at(2);
        let mut chain = Buf::chain(a, b);
        assert_eq!(
            StreamHeader::decode(&mut chain).unwrap(),
            StreamHeader::Http(HttpHeader { port: Some(8080) })
        );
    }
}
