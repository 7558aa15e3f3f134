//! Dialling the gateway over QUIC, over TLS on TCP, or both at once.
//!
//! In [`TransportMode::Auto`], QUIC goes first and TCP starts [`FALLBACK_DELAY`] later if
//! QUIC has not finished its handshake (Happy Eyeballs, RFC 8305, applied to transports):
//! the first to complete wins and the other attempt is dropped. On a network that drops
//! UDP the device is online over TCP about 300 ms plus one TCP/TLS handshake after it
//! starts, instead of never.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use transport::proxy::Proxy;
use transport::tls_tcp::MuxConfig;
use transport::{ConnectError, Connection};

/// How long QUIC has alone before TCP starts too.
pub const FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// Which transport the agent dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// QUIC first, TLS over TCP when QUIC does not complete soon; back to QUIC when it
    /// works again.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

/// A transport name other than `auto`, `quic` or `tcp`.
#[derive(Debug, thiserror::Error)]
#[error("unknown transport {0:?}: expected auto, quic or tcp")]
pub struct UnknownTransport(String);

impl std::str::FromStr for TransportMode {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(UnknownTransport(other.to_string())),
        }
    }
}

impl std::fmt::Display for TransportMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        })
    }
}

/// Which transports to dial, and how TCP gets out.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// Which transports to try.
    pub mode: TransportMode,
    /// The gateway's TCP tunnel address; `None` is the same `host:port` as the UDP one.
    pub gateway_tcp: Option<String>,
    /// HTTP CONNECT proxy for the TCP transport.
    pub proxy: Option<Proxy>,
}

impl Route {
    /// A dialer for `gateway` with these settings.
    pub fn dialer(
        &self,
        gateway: &str,
        server_name: &str,
        tls: rustls::ClientConfig,
        quic_transport: Option<Arc<quinn::TransportConfig>>,
        mux: MuxConfig,
        timeout: Duration,
    ) -> Result<Dialer, quinn::crypto::rustls::NoInitialCipherSuite> {
        let tcp_tls = Arc::new(tls.clone());
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut quic = quinn::ClientConfig::new(Arc::new(quic));
        if let Some(t) = quic_transport {
            quic.transport_config(t);
        }
        Ok(Dialer {
            gateway: gateway.to_string(),
            gateway_tcp: self
                .gateway_tcp
                .clone()
                .unwrap_or_else(|| gateway.to_string()),
            server_name: server_name.to_string(),
            mode: self.mode,
            proxy: self.proxy.clone(),
            quic,
            tls: tcp_tls,
            mux,
            timeout,
        })
    }
}

/// Why dialling failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The gateway's name did not resolve.
    #[error("cannot resolve gateway address {0}: {1}")]
    Resolve(String, String),
    /// The local UDP socket or QUIC endpoint could not be made.
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    /// The QUIC attempt failed.
    #[error("QUIC: {0}")]
    Quic(ConnectError),
    /// The TCP attempt failed.
    #[error("TCP: {0}")]
    Tcp(ConnectError),
    /// Both failed.
    #[error("QUIC: {quic}; TCP: {tcp}")]
    Both {
        /// Why QUIC failed.
        quic: ConnectError,
        /// Why TCP failed.
        tcp: ConnectError,
    },
}

impl DialError {
    /// Whether a transport waited its whole timeout with no connection: nothing answered
    /// in time (a network that is down, a blackhole), and the attempt lasted at least the
    /// dial timeout.
    pub fn timed_out(&self) -> bool {
        let t = |e: &ConnectError| matches!(e, ConnectError::Timeout(_));
        match self {
            Self::Quic(e) | Self::Tcp(e) => t(e),
            Self::Both { quic, tcp } => t(quic) || t(tcp),
            Self::Resolve(..) | Self::Socket(_) => false,
        }
    }

    /// The connection error inside, when the gateway closed the attempt itself.
    pub fn connection_error(&self) -> Option<&transport::ConnectionError> {
        match self {
            Self::Quic(ConnectError::Connection(c)) | Self::Tcp(ConnectError::Connection(c)) => {
                Some(c)
            }
            _ => None,
        }
    }
}

/// Everything needed to reach one gateway.
#[derive(Clone)]
pub struct Dialer {
    /// `host:port` of the UDP (QUIC) tunnel.
    pub gateway: String,
    /// `host:port` of the TCP tunnel.
    pub gateway_tcp: String,
    /// TLS server name to verify.
    pub server_name: String,
    /// Which transports to try.
    pub mode: TransportMode,
    /// HTTP CONNECT proxy for the TCP transport.
    pub proxy: Option<Proxy>,
    /// QUIC client configuration (TLS plus transport settings).
    pub quic: quinn::ClientConfig,
    /// TLS client configuration for TCP.
    pub tls: Arc<rustls::ClientConfig>,
    /// Multiplexer settings for TCP.
    pub mux: MuxConfig,
    /// Per-attempt handshake deadline.
    pub timeout: Duration,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("gateway", &self.gateway)
            .field("gateway_tcp", &self.gateway_tcp)
            .field("mode", &self.mode)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Dials per [`Dialer::mode`]. `endpoint` is the QUIC endpoint kept across attempts
    /// (made here on first use, or when the address family changes).
    pub async fn dial(
        &self,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<Connection, DialError> {
        match self.mode {
            TransportMode::Quic => self.dial_quic(endpoint).await,
            TransportMode::Tcp => self.dial_tcp().await.map_err(DialError::Tcp),
            TransportMode::Auto => {
                // The endpoint first: the QUIC attempt then needs no `&mut`.
                let ep = match self.quic_endpoint(endpoint).await {
                    Ok(ep) => ep,
                    // No UDP at all here (no socket): TCP alone.
                    Err(e) => {
                        tracing::debug!(error = %e, "no QUIC endpoint; dialling TCP only");
                        return self.dial_tcp().await.map_err(DialError::Tcp);
                    }
                };
                let (ep, addr) = ep;
                let quic = self.quic_on(&ep, addr);
                let tcp = async {
                    tokio::time::sleep(FALLBACK_DELAY).await;
                    self.dial_tcp().await
                };
                tokio::pin!(quic, tcp);
                let mut quic_failed = None;
                let mut tcp_failed = None;
                loop {
                    tokio::select! {
                        r = &mut quic, if quic_failed.is_none() => match r {
                            Ok(c) => return Ok(c),
                            Err(e) => quic_failed = Some(e),
                        },
                        r = &mut tcp, if tcp_failed.is_none() => match r {
                            Ok(c) => return Ok(c),
                            Err(e) => tcp_failed = Some(e),
                        },
                    }
                    if let (Some(_), Some(_)) = (&quic_failed, &tcp_failed) {
                        return Err(DialError::Both {
                            quic: quic_failed.take().expect("checked"),
                            tcp: tcp_failed.take().expect("checked"),
                        });
                    }
                }
            }
        }
    }

    /// One QUIC attempt.
    pub async fn dial_quic(
        &self,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<Connection, DialError> {
        let (ep, addr) = self.quic_endpoint(endpoint).await?;
        self.quic_on(&ep, addr).await.map_err(DialError::Quic)
    }

    async fn quic_on(
        &self,
        ep: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<Connection, ConnectError> {
        tokio::time::timeout(
            self.timeout,
            transport::quic::connect(ep, self.quic.clone(), addr, &self.server_name),
        )
        .await
        .map_err(|_| ConnectError::Timeout(self.timeout))?
    }

    /// Resolves the QUIC address and returns an endpoint of its family.
    async fn quic_endpoint(
        &self,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<(quinn::Endpoint, SocketAddr), DialError> {
        let addr = resolve(&self.gateway).await?;
        if let Some(ep) = endpoint {
            if ep.local_addr().map(|a| a.is_ipv6()).ok() == Some(addr.is_ipv6()) {
                return Ok((ep.clone(), addr));
            }
        }
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("addr")
        } else {
            "0.0.0.0:0".parse().expect("addr")
        };
        let socket = transport::net::udp_socket(bind).map_err(DialError::Socket)?;
        let ep = transport::quic::endpoint(socket, None, None).map_err(DialError::Socket)?;
        *endpoint = Some(ep.clone());
        Ok((ep, addr))
    }

    /// One TCP attempt: TCP (through the proxy when one is set), TLS, multiplexer.
    pub async fn dial_tcp(&self) -> Result<Connection, ConnectError> {
        let work = async {
            let tcp = match &self.proxy {
                Some(p) => transport::proxy::connect(p, &self.gateway_tcp, self.timeout).await?,
                None => tokio::net::TcpStream::connect(&self.gateway_tcp).await?,
            };
            transport::tls_tcp::connect(tcp, Arc::clone(&self.tls), &self.server_name, &self.mux)
                .await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ConnectError::Timeout(self.timeout))?
    }
}

/// The first address `addr` (`host:port`) resolves to.
pub async fn resolve(addr: &str) -> Result<SocketAddr, DialError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| DialError::Resolve(addr.to_string(), e.to_string()))?
        .next()
        .ok_or_else(|| DialError::Resolve(addr.to_string(), "no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in ["auto", "quic", "tcp"] {
            assert_eq!(m.parse::<TransportMode>().unwrap().to_string(), m);
        }
        let e = "udp".parse::<TransportMode>().unwrap_err().to_string();
        assert!(e.contains("auto, quic or tcp"), "{e}");
    }
}
