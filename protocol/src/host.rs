//! Public device addresses: which device a visitor's `Host` (or request-target authority)
//! names.
//!
//! A device is reachable at `<uuid>.<domain>`, where `<domain>` is the gateway's public
//! domain. The match is case-insensitive, ignores a `:port` and one trailing dot (the
//! absolute form of a DNS name), and accepts exactly one label in front of the domain.
//! This is pure string work; the gateway's router calls it for every visitor request.

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
}
