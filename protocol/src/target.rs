//! The status byte an agent writes first on an `Http` stream.
//!
//! After reading the `Http` header the agent connects to its local target and writes one
//! byte: [`TargetStatus::Connected`] followed by the target's bytes, or an error status
//! after which it finishes the stream. The gateway turns error statuses into 502/504 pages.

/// Outcome of the agent's connection to its local target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TargetStatus {
    /// Connected; the target's bytes follow.
    Connected = 0,
    /// Nothing is listening on the target port (connection refused).
    Refused = 1,
    /// The target did not accept the connection in time.
    Timeout = 2,
    /// Any other connect failure (unreachable, bad address).
    Unreachable = 3,
}

impl TargetStatus {
    /// Maps the wire byte back; unknown bytes are treated as [`TargetStatus::Unreachable`].
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connected,
            1 => Self::Refused,
            2 => Self::Timeout,
            _ => Self::Unreachable,
        }
    }

    /// Human explanation for error pages and logs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Refused => "nothing is listening on the device's web port",
            Self::Timeout => "the device's web server did not accept the connection in time",
            Self::Unreachable => "the device could not reach its web server",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in [
            TargetStatus::Connected,
            TargetStatus::Refused,
            TargetStatus::Timeout,
            TargetStatus::Unreachable,
        ] {
            assert_eq!(TargetStatus::from_u8(s as u8), s);
        }
        assert_eq!(TargetStatus::from_u8(200), TargetStatus::Unreachable);
    }
}
