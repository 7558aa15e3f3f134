//! UDP socket set-up shared by the agent and the gateway.

use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Requested UDP send/receive buffer size. With the kernel default (~208 KiB) quinn loses
/// packets under bulk load and handshakes stall on retransmit timers.
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Binds a UDP socket with large buffers. Logs a warning when the kernel grants less than
/// asked (raise `net.core.rmem_max` / `net.core.wmem_max`).
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    // Linux reports double the usable size; anything below the request means capped.
    let recv = socket.recv_buffer_size().unwrap_or(0);
    let send = socket.send_buffer_size().unwrap_or(0);
    if recv < UDP_BUFFER || send < UDP_BUFFER {
        tracing::warn!(
            requested = UDP_BUFFER,
            recv,
            send,
            "kernel capped the UDP socket buffers; raise net.core.rmem_max and net.core.wmem_max for full throughput"
        );
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
