//! Public device addresses: which device a visitor's `Host` (or request-target authority)
//! names.
//!
//! A device is reachable at `<uuid>.<domain>`, where `<domain>` is the gateway's public
//! domain. The match is case-insensitive, ignores a `:port` and one trailing dot (the
//! absolute form of a DNS name), and accepts exactly one label in front of the domain.
//! This is pure string work; the gateway's router calls it for every visitor request.
//!
//! Also here, as the same kind of pure string work: [`gateway_addresses`], the list of
//! tunnel addresses a device file or a provisioning key names
//! (`HOST:PORT[,HOST:PORT...]`).

use crate::uuid::DeviceUuid;

/// The gateway's public domain, ready to match `Host` values against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDomain {
    /// `.` + the domain, lowercase, without a trailing dot.
    suffix: String,
}

impl DeviceDomain {
    /// The domain under which devices are `<uuid>.<domain>`. Case and one trailing dot
    /// are ignored; an empty domain matches no host.
    pub fn new(domain: &str) -> Self {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        Self {
            suffix: format!(".{}", domain.to_ascii_lowercase()),
        }
    }

    /// The domain, lowercase, without the leading dot.
    pub fn as_str(&self) -> &str {
        &self.suffix[1..]
    }

    /// Picks the device named by a `Host` value: `<uuid>.<domain>`, any case, optional
    /// port, optional trailing dot. `None` for anything else (another domain, a deeper
    /// name, an IP literal, a label that is not a uuid).
    pub fn device(&self, host: &str) -> Option<DeviceUuid> {
        if self.suffix == "." {
            // An empty domain names no device. Without this, `<uuid>..` matched once its
            // trailing dot was stripped (found by the `host` fuzz target:
            // fuzz/regressions/host/empty-domain-double-dot).
            return None;
        }
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        // Compare without allocating. The suffix starts with an ASCII `.`, so a tail that
        // matches it starts on a char boundary; `get` refuses any other split.
        let cut = host.len().checked_sub(self.suffix.len())?;
        let (label, tail) = (host.get(..cut)?, host.get(cut..)?);
        if !tail.eq_ignore_ascii_case(&self.suffix) || label.contains('.') {
            return None;
        }
        label.parse().ok()
    }

    /// The `Host` value (without port) of `uuid`'s public address.
    pub fn host_of(&self, uuid: DeviceUuid) -> String {
        format!("{uuid}{}", self.suffix)
    }
}

/// `host` without a trailing `:port` (digits only). An IPv6 literal (`[::1]:80`) is
/// returned whole: it never names a device.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host)
}

/// An entry of a gateway address list that is not `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{part:?} is not HOST:PORT (a port from 1 to 65535)", if *.of > 1 { format!("address {} of {}, ", .index + 1, .of) } else { String::new() })]
pub struct BadAddress {
    /// The entry as written (trimmed).
    pub part: String,
    /// Its 0-based position in the list.
    pub index: usize,
    /// How many entries the list has.
    pub of: usize,
}

/// The entries of a gateway address list, `HOST:PORT[,HOST:PORT...]`, in order: split on
/// commas, each trimmed of surrounding whitespace. One address (no comma) is a list of
/// one, so a file written before lists existed reads the same.
///
/// Every entry must be a non-empty host (a name, an IPv4 address or a bracketed IPv6
/// address), a colon and a port from 1 to 65535; an empty entry (`a:1,,b:2`, a trailing
/// comma) is refused too. The first bad entry is named in the error. Duplicates are kept:
/// the dialler de-duplicates the addresses they resolve to.
pub fn gateway_addresses(list: &str) -> Result<Vec<&str>, BadAddress> {
    let parts: Vec<&str> = list.split(',').map(str::trim).collect();
    let of = parts.len();
    for (index, part) in parts.iter().enumerate() {
        let ok = part.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && (!host.starts_with('[') || (host.len() > 2 && host.ends_with(']')))
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !ok {
            return Err(BadAddress {
                part: (*part).to_string(),
                index,
                of,
            });
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]:80");
        assert_eq!(strip_port("a.example:http"), "a.example:http");
    }

    #[test]
    fn a_device_is_one_uuid_label_under_the_domain() {
        let d = DeviceDomain::new("Devices.Example.");
        assert_eq!(d.as_str(), "devices.example");
        let uuid: DeviceUuid = U.parse().unwrap();
        for host in [
            format!("{U}.devices.example"),
            format!("{U}.devices.example:8080"),
            format!("{U}.devices.example.:443"),
            format!("{}.DEVICES.example", U.to_uppercase()),
        ] {
            assert_eq!(d.device(&host), Some(uuid), "{host}");
        }
        assert_eq!(d.device(&d.host_of(uuid)), Some(uuid));
        for host in [
            String::new(),
            "devices.example".into(),
            ".devices.example".into(),
            format!("x.{U}.devices.example"),
            format!("{U}.other.example"),
            format!("{U}devices.example"),
            "nothex.devices.example".into(),
            "[::1]:80".into(),
            // Multi-byte characters where the suffix would start: no panic, no match.
            format!("{U}é.devices.exampleé"),
        ] {
            assert_eq!(d.device(&host), None, "{host}");
        }
    }

    #[test]
    fn an_empty_domain_names_no_device() {
        // The input the `host` fuzz target found: domain "", Host `<uuid>..`.
        let input = include_bytes!("../../fuzz/regressions/host/empty-domain-double-dot");
        let (n, rest) = input.split_first().unwrap();
        let (domain, host) = rest.split_at(*n as usize % 64);
        let d = DeviceDomain::new(std::str::from_utf8(domain).unwrap());
        assert_eq!(d.device(std::str::from_utf8(host).unwrap()), None);
        for domain in ["", "."] {
            let d = DeviceDomain::new(domain);
            for host in [format!("{U}.."), format!("{U}."), U.to_string()] {
                assert_eq!(d.device(&host), None, "{host:?} under {domain:?}");
            }
        }
    }

    #[test]
    fn gateway_lists_split_trim_and_name_the_bad_entry() {
        assert_eq!(
            gateway_addresses("gw.example:443").unwrap(),
            ["gw.example:443"]
        );
        assert_eq!(
            gateway_addresses("a.example:443, b.example:8443 ,[::1]:443,10.0.0.1:1").unwrap(),
            ["a.example:443", "b.example:8443", "[::1]:443", "10.0.0.1:1"]
        );
        // Duplicates are the dialler's business.
        assert_eq!(gateway_addresses("a:1,a:1").unwrap().len(), 2);
        for (list, part, index) in [
            ("", "", 0),
            ("gw.example", "gw.example", 0),
            ("a:443,b.example", "b.example", 1),
            ("a:443,", "", 1),
            ("a:443,,b:443", "", 1),
            (":443", ":443", 0),
            ("a:0", "a:0", 0),
            ("a:65536", "a:65536", 0),
            ("a:+1", "a:+1", 0),
            ("a:https", "a:https", 0),
            ("a b:443", "a b:443", 0),
            ("[]:443", "[]:443", 0),
            ("[::1:443", "[::1:443", 0),
        ] {
            let e = gateway_addresses(list).unwrap_err();
            assert_eq!((e.part.as_str(), e.index), (part, index), "{list:?}");
            assert!(e.to_string().contains("is not HOST:PORT"), "{e}");
        }
        let e = gateway_addresses("a:443,b.example")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "address 2 of 2, \"b.example\" is not HOST:PORT (a port from 1 to 65535)"
        );
        let e = gateway_addresses("gw.example").unwrap_err().to_string();
        assert_eq!(
            e,
            "\"gw.example\" is not HOST:PORT (a port from 1 to 65535)"
        );
    }
}
