//! Application error codes used when closing a QUIC connection or resetting a stream.

/// Error codes carried in QUIC `CONNECTION_CLOSE` (application) frames and stream resets.
///
/// The numeric values are part of the wire format and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum AppErrorCode {
    /// Orderly close, nothing went wrong.
    NoError = 0x0,
    /// The peer sent something that does not decode (bad header, bad frame, bad JSON).
    ProtocolError = 0x1,
    /// Hello/welcome found no protocol version both sides speak.
    VersionMismatch = 0x2,
    /// The device's certificate is valid but the device is not (or no longer) registered.
    UnknownDevice = 0x3,
    /// A newer connection of the same device replaced this one.
    Replaced = 0x4,
    /// The gateway (or agent) is shutting down; reconnect later.
    Shutdown = 0x5,
    /// A header or frame exceeded its size limit.
    FrameTooLarge = 0x6,
    /// The stream kind is known but not accepted in this direction or by this side.
    UnsupportedStream = 0x7,
    /// Something failed inside the sender; not the peer's fault.
    Internal = 0x8,
    /// The control stream did not complete the hello/welcome exchange in time.
    HandshakeTimeout = 0x9,
    /// The peer stopped answering heartbeats.
    HeartbeatTimeout = 0xa,
    /// Another agent with this device's identity keeps replacing this connection (two
    /// devices share one certificate); back off before trying again.
    DuplicateIdentity = 0xb,
}

impl AppErrorCode {
    /// All codes, for iteration in docs and tests.
    pub const ALL: [AppErrorCode; 12] = [
        Self::NoError,
        Self::ProtocolError,
        Self::VersionMismatch,
        Self::UnknownDevice,
        Self::Replaced,
        Self::Shutdown,
        Self::FrameTooLarge,
        Self::UnsupportedStream,
        Self::Internal,
        Self::HandshakeTimeout,
        Self::HeartbeatTimeout,
        Self::DuplicateIdentity,
    ];

    /// The numeric value sent on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// Maps a wire value back to a code; `None` for values this version does not know.
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u32() == v)
    }

    /// A short human explanation, used in logs and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoError => "closed normally",
            Self::ProtocolError => "protocol error",
            Self::VersionMismatch => "no common protocol version",
            Self::UnknownDevice => "device unknown or revoked at this gateway",
            Self::Replaced => "replaced by a newer connection of the same device",
            Self::Shutdown => "peer is shutting down",
            Self::FrameTooLarge => "frame or header too large",
            Self::UnsupportedStream => "unsupported stream kind",
            Self::Internal => "internal error",
            Self::HandshakeTimeout => "control handshake timed out",
            Self::HeartbeatTimeout => "heartbeat timed out",
            Self::DuplicateIdentity => {
                "another agent with this device's identity is connected (a copied certificate?)"
            }
        }
    }
}

impl std::fmt::Display for AppErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#x})", self.describe(), self.as_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for c in AppErrorCode::ALL {
            assert_eq!(AppErrorCode::from_u32(c.as_u32()), Some(c));
        }
        assert_eq!(AppErrorCode::from_u32(0xffff), None);
    }
}
