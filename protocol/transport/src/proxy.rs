//! HTTP CONNECT proxies for the TCP fallback: many networks that block UDP also force
//! outbound traffic through such a proxy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ConnectError;

/// Largest proxy response head read.
const MAX_HEAD: usize = 8 * 1024;

/// An HTTP proxy: `http://[user:password@]host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `host:port` of the proxy.
    pub addr: String,
    /// `user:password`, sent as `Proxy-Authorization: Basic`.
    pub credentials: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("credentials", &self.credentials.as_ref().map(|_| "…"))
            .finish()
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.addr)
    }
}

/// A proxy setting that is not `http://[user:password@]host[:port]`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadProxy(String);

impl std::str::FromStr for Proxy {
    type Err = BadProxy;

    /// Parses `http://[user:password@]host[:port]` (port 80 when absent) or a bare
    /// `host:port`.
    fn from_str(s: &str) -> Result<Self, BadProxy> {
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(BadProxy(format!(
                    "proxy {s:?}: only http:// proxies are supported (got {scheme}://)"
                )))
            }
            None => s,
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c.to_string()), h),
            None => (None, rest),
        };
        if hostport.is_empty()
            || hostport.contains('/')
            || hostport.chars().any(char::is_whitespace)
        {
            return Err(BadProxy(format!(
                "proxy {s:?} is not http://[user:password@]host:port"
            )));
        }
        let has_port = hostport.rsplit_once(':').is_some_and(|(h, p)| {
            !h.ends_with('[') && !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())
        }) && !hostport.ends_with(']');
        let addr = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        Ok(Self { addr, credentials })
    }
}

/// Opens a TCP connection to `target` (`host:port`) through `proxy` with HTTP CONNECT.
pub async fn connect(
    proxy: &Proxy,
    target: &str,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let work = async {
        let mut tcp = TcpStream::connect(&proxy.addr).await?;
        let _ = tcp.set_nodelay(true);
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(c) = &proxy.credentials {
            req.push_str(&format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64(c.as_bytes())
            ));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await?;
        // Read the head byte by byte: nothing after it may be consumed (the TLS
        // handshake follows on the same socket).
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(ConnectError::Proxy("response head too large".into()));
            }
            let b = tcp.read_u8().await.map_err(|e| {
                ConnectError::Proxy(format!("connection closed before the CONNECT answer: {e}"))
            })?;
            head.push(b);
        }
        let text = String::from_utf8_lossy(&head);
        let status = text.lines().next().unwrap_or_default().to_string();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code != "200" {
            return Err(ConnectError::Proxy(format!(
                "{} refused CONNECT {target}: {status}",
                proxy.addr
            )));
        }
        Ok(tcp)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let p: Proxy = "http://user:pw@proxy.lan:3128".parse().unwrap();
        assert_eq!(p.addr, "proxy.lan:3128");
        assert_eq!(p.credentials.as_deref(), Some("user:pw"));
        assert!(!format!("{p:?}").contains("pw"));
        assert_eq!("proxy.lan".parse::<Proxy>().unwrap().addr, "proxy.lan:80");
        assert_eq!(
            "10.0.0.1:8080".parse::<Proxy>().unwrap().addr,
            "10.0.0.1:8080"
        );
        assert!("https://proxy:443".parse::<Proxy>().is_err());
        assert!("socks5://proxy:1080".parse::<Proxy>().is_err());
        assert!("http://".parse::<Proxy>().is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
