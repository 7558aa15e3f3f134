//! Device identifiers.

use std::fmt;
use std::str::FromStr;

/// A device uuid: 32 lowercase hexadecimal characters, as balena's are.
///
/// Parsing accepts upper case and the dashed 8-4-4-4-12 form and normalises both.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceUuid([u8; 32]);

/// A string that is not a device uuid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device uuid {0:?}: expected 32 hexadecimal characters (dashes allowed)")]
pub struct InvalidUuid(pub String);

impl DeviceUuid {
    /// Builds a uuid from 16 bytes (e.g. from a random source).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in bytes.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        Self(out)
    }

    /// The canonical 32-character form.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ascii hex")
    }
}

impl FromStr for DeviceUuid {
    type Err = InvalidUuid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        let mut n = 0;
        let dashed = s.len() == 36;
        for (i, c) in s.chars().enumerate() {
            if c == '-' && dashed && matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            if !c.is_ascii_hexdigit() || n == 32 {
                return Err(InvalidUuid(s.to_string()));
            }
            out[n] = c.to_ascii_lowercase() as u8;
            n += 1;
        }
        if n != 32 {
            return Err(InvalidUuid(s.to_string()));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for DeviceUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DeviceUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceUuid({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let u: DeviceUuid = "0123456789ABCDEF0123456789abcdef".parse().unwrap();
        assert_eq!(u.as_str(), "0123456789abcdef0123456789abcdef");
        let d: DeviceUuid = "01234567-89ab-cdef-0123-456789ABCDEF".parse().unwrap();
        assert_eq!(d, u);
        assert_eq!(
            DeviceUuid::from_bytes([0xab; 16]).as_str(),
            "abababababababababababababababab"
        );
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "xyz",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdeg",
            "0123-4567-89ab-cdef-0123456789abcdef",
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<DeviceUuid>().is_err(), "{bad}");
        }
    }
}
