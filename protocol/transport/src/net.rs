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

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs the outcome once at info.
///
/// Every visitor connection, proxied stream target and engine call costs a file
/// descriptor; the usual soft limit (1,024) is exhausted long before memory or CPU are.
/// Call it once at start, before binding anything. Returns the soft limit in force
/// afterwards (`None` when unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft NOFILE limit (the kernel caps it at
    // fs.nr_open), so aim for that cap instead.
    let target = before.maximum.or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    match (before.current, target) {
        (Some(soft), Some(hard)) if soft < hard => {
            let new = Rlimit {
                current: Some(hard),
                maximum: before.maximum,
            };
            match setrlimit(Resource::Nofile, new) {
                Ok(()) => {
                    tracing::info!(
                        from = soft,
                        to = hard,
                        "raised the file descriptor limit (RLIMIT_NOFILE) to the hard limit"
                    );
                    Some(hard)
                }
                Err(e) => {
                    tracing::warn!(
                        soft,
                        hard,
                        error = %e,
                        "cannot raise the file descriptor limit (RLIMIT_NOFILE)"
                    );
                    Some(soft)
                }
            }
        }
        (soft, _) => {
            tracing::info!(
                limit = soft.map_or_else(|| "unlimited".to_string(), |s| s.to_string()),
                "file descriptor limit (RLIMIT_NOFILE) is already the hard limit"
            );
            soft
        }
    }
}
