//! The names the API takes: access modes and allow-list entries.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The modes the API knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Anyone (within the allow-list).
    Public,
    /// HTTP Basic with the setting's user and password.
    Basic,
    /// Share links made by `gateway device share`.
    Link,
    /// Signed-in dashboard users who may see the device's fleet.
    Login,
}

impl Mode {
    /// The stored and shown name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Public => "public",
            Mode::Basic => "basic",
            Mode::Link => "link",
            Mode::Login => "login",
        }
    }
}

/// Why a mode name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ModeError {
    /// Not a mode.
    #[error("unknown access mode {0:?}; use public, basic, link or login")]
    Unknown(String),
}

impl FromStr for Mode {
    type Err = ModeError;

    fn from_str(s: &str) -> Result<Self, ModeError> {
        match s {
            "public" => Ok(Mode::Public),
            "basic" => Ok(Mode::Basic),
            "link" => Ok(Mode::Link),
            "login" => Ok(Mode::Login),
            _ => Err(ModeError::Unknown(s.into())),
        }
    }
}

/// One entry of an allow-list: an address with a prefix length (`10.0.0.0/8`,
/// `2001:db8::/32`; a bare address is a /32 or /128). Host bits are cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                masked(ip, self.prefix) == self.net
            }
            _ => false,
        }
    }
}

pub(super) fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR (10.0.0.0/8, ::1)"))?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr {
            net: masked(ip, prefix),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_match_and_refuse_garbage() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.9".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert_eq!(one.to_string(), "::1/128");
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.5".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "banana",
            "10.0.0.0/",
            "1.2.3.4/-1",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_parse_and_refuse_unknown_names() {
        assert_eq!("basic".parse::<Mode>(), Ok(Mode::Basic));
        assert_eq!("login".parse::<Mode>(), Ok(Mode::Login));
        assert_eq!(Mode::Login.as_str(), "login");
        assert!(matches!(
            "Public".parse::<Mode>(),
            Err(ModeError::Unknown(_))
        ));
    }
}
