//! Checking and writing the host config `host-config` patches: hostname and proxy
//! settings in balena's shapes, written keeping each file's mode.

use serde_json::Value;

use crate::local_api::ControlError;

pub(super) fn write_file(path: &std::path::Path, text: &str) -> Result<(), ControlError> {
    crate::provision::write_private(path, text.as_bytes())
        .map_err(|e| ControlError::Internal(e.to_string()))
}

/// Replaces `path` crash-safely (write a temp file beside it, then rename), keeping the
/// file's own mode and owner: the hostname file is world-readable (0644) and other
/// programs read it. A file that does not exist yet gets 0644.
pub(super) fn write_keeping_mode(path: &std::path::Path, text: &str) -> Result<(), ControlError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let old = std::fs::metadata(path).ok();
    let mode = old
        .as_ref()
        .map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        // Set after creating: the mode given to open() is cut by the umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(old) = &old {
            let new = f.metadata()?;
            if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
                std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()))?;
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ControlError::Internal(format!("cannot write {}: {e}", path.display()))
    })
}

/// An RFC 1123 label: 1-63 letters, digits and dashes, not starting or ending with a
/// dash (so `-rf` is no hostname).
pub(super) fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name of RFC 1123 labels (at most 253 characters) or an IP address.
pub(super) fn is_host(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
        || (s.len() <= 253 && s.trim_end_matches('.').split('.').all(is_label))
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
pub(super) fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u8>().is_ok_and(|b| b <= max)
}

/// The proxy types balena's redsocks set-up knows.
const PROXY_TYPES: &[&str] = &["socks4", "socks5", "http-connect", "http-relay"];

/// Checks the `proxy` object of a host-config patch field by field (values end up in the
/// proxy daemon's configuration, so nothing unvalidated may pass): a 400 names the field.
pub(super) fn check_proxy(proxy: &Value) -> Result<(), ControlError> {
    let bad =
        |field: &str, why: String| ControlError::BadRequest(format!("network.proxy.{field} {why}"));
    let Some(fields) = proxy.as_object() else {
        return Err(ControlError::BadRequest(
            "network.proxy must be an object ({} removes the proxy)".into(),
        ));
    };
    for (field, v) in fields {
        match field.as_str() {
            "type" => {
                if !v.as_str().is_some_and(|t| PROXY_TYPES.contains(&t)) {
                    return Err(bad(
                        field,
                        format!("must be one of {}, got {v}", PROXY_TYPES.join(", ")),
                    ));
                }
            }
            "ip" => {
                if !v.as_str().is_some_and(is_host) {
                    return Err(bad(field, format!("must be a hostname or an IP address, got {v}")));
                }
            }
            "port" => {
                let port = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                        s.parse().ok()
                    }
                    _ => None,
                };
                if !port.is_some_and(|p| (1..=65535).contains(&p)) {
                    return Err(bad(field, format!("must be a port number 1-65535, got {v}")));
                }
            }
            "login" | "password" => match v.as_str() {
                Some(s) if s.len() <= 255 && !s.chars().any(char::is_control) => {}
                Some(_) => {
                    return Err(bad(
                        field,
                        "must be at most 255 characters without newlines or control characters"
                            .into(),
                    ))
                }
                None => return Err(bad(field, format!("must be a string, got {v}"))),
            },
            "noProxy" => {
                let ok = v.as_array().is_some_and(|hosts| {
                    hosts
                        .iter()
                        .all(|h| h.as_str().is_some_and(|h| is_host(h) || is_cidr(h)))
                });
                if !ok {
                    return Err(bad(
                        field,
                        format!("must be a list of hostnames, IP addresses or CIDR networks, got {v}"),
                    ));
                }
            }
            other => {
                return Err(ControlError::BadRequest(format!(
                    "network.proxy: unknown field {other:?} (known: type, ip, port, login, password, noProxy)"
                )))
            }
        }
    }
    Ok(())
}
