//! The request head a device sees: hop-by-hop headers removed, `Host` the routed
//! authority, and the forwarding headers the gateway's own (`X-Real-IP` replaced,
//! `X-Forwarded-For` and `Forwarded` with the gateway's element last, the scheme the
//! visitor used in `X-Forwarded-Proto` and `proto=`).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;

/// The scheme a visitor reached the gateway with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP, the public listener.
    Http,
    /// HTTPS, the `--https-listen` listener.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
pub(super) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub(super) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those the `Connection` header names. For an
/// upgrade, `Connection: upgrade` and `Upgrade` are kept so the device sees the handshake.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present (usually none of these is): a lookup per
    // hop-by-hop name hashed nine names per request (bench/callgrind.sh).
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n) || (*n == header::UPGRADE && !keep_upgrade))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        doomed.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(keep_upgrade && n == header::UPGRADE)),
        );
    }
    for name in &doomed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Turns the visitor's request head into the one the device sees: hop-by-hop headers
/// go, `Host` is the routed authority, and the forwarding headers are the gateway's.
pub(super) fn prepare_request<B>(
    req: &mut Request<B>,
    host: &str,
    peer: SocketAddr,
    upgrade: bool,
    scheme: Scheme,
) {
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    // The routed authority, also when it came from the URI rather than Host (a proxy
    // MUST send a Host made from an absolute-form target, RFC 9112 §3.2.2).
    match HeaderValue::from_str(host) {
        Ok(v) => {
            headers.insert(header::HOST, v.clone());
            headers.insert("x-forwarded-host", v);
        }
        Err(_) => {
            headers.remove(header::HOST);
        }
    }
    let ip = peer.ip().to_canonical();
    // Formatted once, by hand: `Ipv4Addr`'s `Display` (padding support and three calls)
    // was 6 % of the gateway's instructions per request (bench/callgrind.sh).
    let ip_text = ip_text(ip);
    // X-Forwarded-For and Forwarded are lists each proxy appends to; the gateway's entry
    // is last, and it is the only one a device should trust.
    let xff = append_list(headers, &X_FORWARDED_FOR, &ip_text);
    set(headers, X_FORWARDED_FOR, &xff);
    let mut ours = String::with_capacity(host.len() + ip_text.len() + 32);
    ours.push_str("for=");
    match ip {
        std::net::IpAddr::V4(_) => ours.push_str(&ip_text),
        std::net::IpAddr::V6(_) => {
            ours.push_str("\"[");
            ours.push_str(&ip_text);
            ours.push_str("]\"");
        }
    }
    ours.push_str(";host=");
    push_quoted(&mut ours, host);
    ours.push_str(";proto=");
    ours.push_str(scheme.as_str());
    let forwarded = append_list(headers, &header::FORWARDED, &ours);
    set(headers, header::FORWARDED, &forwarded);
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(scheme.as_str()),
    );
    // X-Real-IP is one address, the visitor's as the gateway saw it: never the
    // visitor's own claim.
    set(headers, X_REAL_IP, &ip_text);
}

/// `ip` as text (dotted quad, or RFC 5952 for IPv6).
pub(super) fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Every value of list header `name`, joined, with `ours` appended.
pub(super) fn append_list(headers: &HeaderMap, name: &HeaderName, ours: &str) -> String {
    let mut out = String::new();
    for v in headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        out.push_str(v);
        out.push_str(", ");
    }
    out.push_str(ours);
    out
}

/// Replaces every value of `name` with `value` (or removes it if `value` is not a valid
/// header value, so a visitor's value never survives).
pub(super) fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Appends `s` as an RFC 7230 quoted-string.
pub(super) fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarding_headers_are_the_gateways() {
        let mut req = Request::builder()
            .uri("/")
            .header(header::HOST, "forged.example")
            .header("x-real-ip", "6.6.6.6")
            .header("forwarded", "for=1.2.3.4")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8")
            .body(())
            .unwrap();
        let peer = "[::1]:5000".parse().unwrap();
        prepare_request(
            &mut req,
            "a.devices.localhost:8080",
            peer,
            false,
            Scheme::Http,
        );
        let h = req.headers();
        assert_eq!(h[header::HOST], "a.devices.localhost:8080");
        assert_eq!(h["x-forwarded-host"], "a.devices.localhost:8080");
        assert_eq!(h["x-real-ip"], "::1");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, ::1");
        assert_eq!(
            h["forwarded"],
            "for=1.2.3.4, for=\"[::1]\";host=\"a.devices.localhost:8080\";proto=http"
        );
        assert_eq!(h.get_all("x-real-ip").iter().count(), 1);
        // A v4-mapped peer (dual-stack listener) is reported as the v4 address.
        let mut req = Request::builder().uri("/").body(()).unwrap();
        let peer = "[::ffff:192.0.2.7]:1".parse().unwrap();
        prepare_request(&mut req, "a.devices.localhost", peer, false, Scheme::Https);
        assert_eq!(req.headers()["x-real-ip"], "192.0.2.7");
        assert_eq!(
            req.headers()["forwarded"],
            "for=192.0.2.7;host=\"a.devices.localhost\";proto=https"
        );
        // The scheme the visitor used (the HTTPS listener here).
        assert_eq!(req.headers()["x-forwarded-proto"], "https");
        let mut q = String::new();
        push_quoted(&mut q, "a\"b\\c");
        assert_eq!(q, "\"a\\\"b\\\\c\"");
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
        ] {
            assert_eq!(ip_text(ip.parse().unwrap()), ip);
        }
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }
}
