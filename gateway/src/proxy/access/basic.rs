//! HTTP Basic for public URLs: reading `Authorization`, argon2 hashes, and the back-off
//! of addresses that keep sending wrong passwords (as `api::auth`'s `AuthBackoff`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::HeaderValue;

use super::rules::masked;

/// Wrong Basic passwords an address may send before it is refused for a while.
pub(super) const FAILURES_BEFORE_BACKOFF: u32 = 10;
/// The first refusal window; doubled per further failure up to [`BACKOFF_MAX`].
pub(super) const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// An address with no failure for this long starts from zero again.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses tracked at most (beyond, new ones go untracked until a prune makes room).
const MAX_TRACKED: usize = 65_536;

/// Per client address: failed Basic passwords and the refusal they earned.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    refused_until: Option<Instant>,
    last_failure: Instant,
}

/// Failed Basic passwords per address (IPv6: per /64) and the refusals they earned.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    strikes: DashMap<IpAddr, Strikes>,
}

impl Backoff {
    pub(super) fn refused_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.strikes.get(&ip)?.refused_until?;
        (until > now).then(|| until - now)
    }

    pub(super) fn failed(&self, ip: IpAddr, now: Instant) {
        if !self.strikes.contains_key(&ip) && self.strikes.len() >= MAX_TRACKED {
            self.strikes.retain(|_, s| {
                s.refused_until.is_some_and(|u| u > now)
                    || now.duration_since(s.last_failure) < FORGET_AFTER
            });
            if self.strikes.len() >= MAX_TRACKED {
                return;
            }
        }
        let mut e = self.strikes.entry(ip).or_insert(Strikes {
            failures: 0,
            refused_until: None,
            last_failure: now,
        });
        if now.duration_since(e.last_failure) >= FORGET_AFTER {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        if let Some(over) = e.failures.checked_sub(FAILURES_BEFORE_BACKOFF) {
            let window = BACKOFF_INITIAL
                .checked_mul(1u32 << over.min(31))
                .unwrap_or(BACKOFF_MAX)
                .min(BACKOFF_MAX);
            e.refused_until = Some(now + window);
        }
    }

    /// A correct password: the address starts from zero.
    pub(super) fn succeeded(&self, ip: IpAddr) {
        self.strikes.remove(&ip);
    }

    pub(super) fn len(&self) -> usize {
        self.strikes.len()
    }
}

/// Failures are counted per address, per /64 for IPv6 (one host has a whole /64).
pub(super) fn backoff_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => masked(IpAddr::V6(a), 64),
        v4 => v4,
    }
}

/// `user` and `password` of an `Authorization: Basic` value.
pub(super) fn basic_pair(v: &HeaderValue) -> Option<(String, String)> {
    let s = v.to_str().ok()?;
    let (scheme, b64) = s.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(b64.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Standard base64 (RFC 4648 §4), padding optional.
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

pub(crate) use crate::passwords::{hash_password, verify_password};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_values_decode() {
        let v = HeaderValue::from_static("Basic YWxpY2U6czNjcjN0OndpdGg6Y29sb25z");
        assert_eq!(
            basic_pair(&v),
            Some(("alice".into(), "s3cr3t:with:colons".into()))
        );
        assert_eq!(basic_pair(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(basic_pair(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(base64_decode("aGk"), Some(b"hi".to_vec()));
    }

    #[test]
    fn failures_back_off_per_address() {
        let cache = Backoff::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..FAILURES_BEFORE_BACKOFF - 1 {
            cache.failed(backoff_key(ip), now);
        }
        assert_eq!(cache.refused_for(backoff_key(ip), now), None);
        // Another host of the same /64 counts against the same address.
        cache.failed(backoff_key("2001:db8::2".parse().unwrap()), now);
        assert_eq!(
            cache.refused_for(backoff_key(ip), now),
            Some(BACKOFF_INITIAL)
        );
        assert_eq!(cache.refused_for("192.0.2.1".parse().unwrap(), now), None);
    }
}
