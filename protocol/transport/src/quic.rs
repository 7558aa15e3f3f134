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
