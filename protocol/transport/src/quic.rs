//! The QUIC implementation: thin helpers around quinn so callers never build quinn types
//! by hand.

use std::net::SocketAddr;
use std::sync::Arc;

use protocol::AppErrorCode;

use crate::{ConnectError, Connection};

/// Converts an [`AppErrorCode`] to a QUIC varint.
pub fn varint(code: AppErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.as_u32())
}

/// A QUIC endpoint on a UDP socket made by [`crate::net::udp_socket`].
///
/// `reset_key`: the secret behind stateless resets. A server that keeps it across restarts
/// lets peers of its previous run learn at their next packet that their connection is gone
/// (instead of waiting out the idle timeout). `None` picks a random one.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    reset_key: Option<&[u8]>,
) -> std::io::Result<quinn::Endpoint> {
    let config = match reset_key {
        Some(key) => {
            let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            // quinn drops packets whose connection id its generator does not recognise
            // before it considers a reset, and the default generator's key is random per
            // process: derive it from the reset key too, so that a restarted endpoint
            // recognises its previous run's ids and answers them with a reset.
            let tag = ring::hmac::sign(&hmac, b"edge-tunnel connection id key");
            let cid_key = u64::from_le_bytes(tag.as_ref()[..8].try_into().expect("8 bytes"));
            let mut config = quinn::EndpointConfig::new(Arc::new(hmac));
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            // quinn sends at most one reset per 20 ms by default, for the whole endpoint:
            // after a restart only ~50 devices a second learned that their connection was
            // gone, the rest waited out their silence window (a 500-agent herd took 6.3 s
            // instead of 1.4 s). A reset is always smaller than the packet that caused
            // it, so a higher rate amplifies nothing; 100 µs still bounds the work.
            config.min_reset_interval(std::time::Duration::from_micros(100));
            config
        }
        None => quinn::EndpointConfig::default(),
    };
    quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// Dials `addr` from `endpoint` and completes the QUIC handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Result<Connection, ConnectError> {
    let conn = endpoint.connect_with(config, addr, server_name)?.await?;
    Ok(Connection::Quic(conn))
}

/// Completes the handshake of an incoming QUIC connection.
pub async fn accept(incoming: quinn::Incoming) -> Result<Connection, ConnectError> {
    Ok(Connection::Quic(incoming.await?))
}

/// A server side and a client side of one QUIC connection on loopback, with these TLS
/// configurations and `transport` on both: for tests and benchmarks of what runs over
/// the abstraction.
pub async fn loopback_pair(
    server_tls: rustls::ServerConfig,
    client_tls: rustls::ClientConfig,
    server_name: &str,
    transport: quinn::TransportConfig,
) -> Result<(Connection, Connection), ConnectError> {
    let tls_error =
        |e: quinn::crypto::rustls::NoInitialCipherSuite| ConnectError::Tls(e.to_string());
    let transport = Arc::new(transport);
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).map_err(tls_error)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(Arc::clone(&transport));
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = endpoint(crate::net::udp_socket(loopback)?, Some(sc), None)?;
    let addr = server.local_addr()?;
    let client = endpoint(crate::net::udp_socket(loopback)?, None, None)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).map_err(tls_error)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(transport);
    let (server_side, client_side) = tokio::join!(
        async {
            let incoming = server.accept().await.ok_or_else(|| {
                ConnectError::Io(std::io::Error::other("the loopback endpoint closed"))
            })?;
            accept(incoming).await
        },
        connect(&client, cc, addr, server_name)
    );
    Ok((server_side?, client_side?))
}

/// The congestion controller of a QUIC connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default: backs off on every loss, as TCP does.
    #[default]
    Cubic,
    /// BBR (quinn's implementation, which quinn calls experimental): paces to the
    /// measured bottleneck rate and does not read random loss as congestion. On a link
    /// losing 30 % of datagrams both ways, BBR on the device's side finished 113 requests
    /// in 60 s where CUBIC finished 12 (docs/reliability.md); for lossy radio links.
    Bbr,
}

impl Congestion {
    /// Sets this controller on `t`.
    pub fn apply(self, t: &mut quinn::TransportConfig) {
        match self {
            Congestion::Cubic => {
                t.congestion_controller_factory(
                    Arc::new(quinn::congestion::CubicConfig::default()),
                );
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
            }
        }
    }
}

/// A controller name other than `cubic` or `bbr`.
#[derive(Debug, thiserror::Error)]
#[error("unknown congestion controller {0:?}: use cubic or bbr")]
pub struct UnknownCongestion(String);

impl std::str::FromStr for Congestion {
    type Err = UnknownCongestion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            other => Err(UnknownCongestion(other.to_string())),
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Congestion;

    #[test]
    fn congestion_names_round_trip_and_others_are_refused() {
        for c in [Congestion::Cubic, Congestion::Bbr] {
            assert_eq!(c.to_string().parse::<Congestion>().unwrap(), c);
        }
        let e = "reno".parse::<Congestion>().unwrap_err().to_string();
        assert!(e.contains("reno") && e.contains("cubic or bbr"), "{e}");
    }
}
