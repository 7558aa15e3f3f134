//! The peer link between gateway nodes: how one node asks another for a stream to a
//! device whose tunnel the other holds.
//!
//! The asking node opens a bidirectional stream on the peer link and writes a
//! [`PeerOpen`] ([`PEER_OPEN_LEN`] bytes: magic, version, the device uuid in hex), then
//! the very [`crate::StreamHeader`] it would have written to the device. The holding
//! node answers one [`PeerAnswer`] byte. After [`PeerAnswer::Ready`] the stream is
//! spliced, byte for byte and in both directions, to a new stream on the device's
//! tunnel: from then on the asking node talks to the device as if it held the tunnel
//! itself. Any other answer ends the stream. At most one hop: the holding node serves
//! only its own tunnels and never forwards again.

use crate::DeviceUuid;

/// First two bytes of a [`PeerOpen`].
pub const PEER_MAGIC: [u8; 2] = [0xE7, b'P'];
/// The peer-open version this build speaks.
pub const PEER_VERSION: u8 = 1;
/// Length of an encoded [`PeerOpen`].
pub const PEER_OPEN_LEN: usize = 3 + 32;

/// The first bytes of a peer stream: which device the stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerOpen {
    /// The device.
    pub device: DeviceUuid,
}

/// A malformed [`PeerOpen`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPeerOpen {
    /// Not the peer magic.
    #[error("not a peer stream (bad magic)")]
    Magic,
    /// Another version.
    #[error("peer stream version {0}, this node speaks {PEER_VERSION}")]
    Version(u8),
    /// The uuid is not 32 hex characters.
    #[error("bad device uuid in peer stream")]
    Uuid,
}

impl PeerOpen {
    /// The encoded form.
    pub fn encode(&self) -> [u8; PEER_OPEN_LEN] {
        let mut out = [0u8; PEER_OPEN_LEN];
        out[..2].copy_from_slice(&PEER_MAGIC);
        out[2] = PEER_VERSION;
        out[3..].copy_from_slice(self.device.as_str().as_bytes());
        out
    }

    /// Decodes the first [`PEER_OPEN_LEN`] bytes of a peer stream.
    pub fn decode(b: &[u8; PEER_OPEN_LEN]) -> Result<Self, InvalidPeerOpen> {
        if b[..2] != PEER_MAGIC {
            return Err(InvalidPeerOpen::Magic);
        }
        if b[2] != PEER_VERSION {
            return Err(InvalidPeerOpen::Version(b[2]));
        }
        let device = std::str::from_utf8(&b[3..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(InvalidPeerOpen::Uuid)?;
        Ok(Self { device })
    }
}

/// The holding node's one-byte answer to a [`PeerOpen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PeerAnswer {
    /// The device stream is open; the rest of the stream is the device's.
    Ready = 0,
    /// This node holds no tunnel of that device (it moved, or went offline): read the
    /// route again.
    NotHere = 1,
    /// The device has its limit of public-URL streams open.
    Busy = 2,
    /// The device's public URL is switched off.
    PublicUrlOff = 3,
    /// The stream header is not one a gateway may open to a device.
    Refused = 4,
    /// The device's tunnel broke while the stream was being opened.
    TunnelLost = 5,
}

impl PeerAnswer {
    /// The answer for a byte; unknown bytes read as [`PeerAnswer::Refused`].
    pub fn from_u8(b: u8) -> Self {
        match b {
            0 => Self::Ready,
            1 => Self::NotHere,
            2 => Self::Busy,
            3 => Self::PublicUrlOff,
            5 => Self::TunnelLost,
            _ => Self::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_open_round_trips_and_rejects_garbage() {
        let device: DeviceUuid = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let enc = PeerOpen { device }.encode();
        assert_eq!(PeerOpen::decode(&enc).unwrap().device, device);
        let mut bad = enc;
        bad[0] = 0;
        assert_eq!(PeerOpen::decode(&bad), Err(InvalidPeerOpen::Magic));
        let mut bad = enc;
        bad[2] = 9;
        assert_eq!(PeerOpen::decode(&bad), Err(InvalidPeerOpen::Version(9)));
        let mut bad = enc;
        bad[10] = b'z';
        assert_eq!(PeerOpen::decode(&bad), Err(InvalidPeerOpen::Uuid));
        for b in 0..=255u8 {
            let a = PeerAnswer::from_u8(b);
            if b <= 5 {
                assert_eq!(a as u8, b);
            }
        }
    }
}
