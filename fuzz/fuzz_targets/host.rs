//! `DeviceDomain::device` (which device a visitor's `Host` names) and `strip_port` on
//! arbitrary text and an arbitrary domain.
//!
//! Input: one byte `n`, then the domain (the next `n % 64` bytes), then the `Host` value.
//! Properties: never panics; the result equals a plain reference implementation
//! (lowercase, strip, compare; the real one avoids allocating); `strip_port` only removes
//! `:` and digits; a device found is found again from its canonical host, with a port
//! appended, and with the host upper-cased.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::host::{strip_port, DeviceDomain};
use protocol::DeviceUuid;

fn reference(domain: &DeviceDomain, host: &str) -> Option<DeviceUuid> {
    if domain.as_str().is_empty() {
        return None;
    }
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label = host.strip_suffix(&format!(".{}", domain.as_str()))?;
    if label.contains('.') {
        return None;
    }
    label.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (domain, host) = rest.split_at((n as usize % 64).min(rest.len()));
    let (Ok(domain), Ok(host)) = (std::str::from_utf8(domain), std::str::from_utf8(host)) else {
        return;
    };
    let stripped = strip_port(host);
    assert!(host.starts_with(stripped));
    if let Some(port) = host[stripped.len()..].strip_prefix(':') {
        assert!(port.bytes().all(|b| b.is_ascii_digit()), "{host:?}");
    } else {
        assert_eq!(stripped, host);
    }

    let d = DeviceDomain::new(domain);
    let found = d.device(host);
    assert_eq!(found, reference(&d, host), "{host:?} under {domain:?}");
    if let Some(uuid) = found {
        let canonical = d.host_of(uuid);
        assert_eq!(d.device(&canonical), Some(uuid), "{canonical:?}");
        assert_eq!(d.device(&format!("{canonical}:8443")), Some(uuid));
        assert_eq!(d.device(&host.to_ascii_uppercase()), Some(uuid));
    }
});
