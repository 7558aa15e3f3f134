//! A relay between an agent and a gateway, which a test can cut (drop every datagram, and
//! every byte on TCP) and restore, to play a tunnel outage without touching the machine's
//! network. It relays UDP (QUIC) and, on the same port number, TCP (the TLS fallback), so
//! an outage hits an agent on either transport.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Forwards datagrams between one client (the agent) and `upstream` (the gateway's
/// tunnel address).
pub struct UdpRelay {
    /// Where the agent should dial.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// TCP: while set, nothing is read from the gateway's side, as from an agent that
    /// stopped reading its socket.
    stall: Arc<AtomicBool>,
    /// UDP: datagrams and bytes relayed so far, agent to gateway and gateway to agent.
    counts: Arc<[std::sync::atomic::AtomicU64; 4]>,
    /// TCP: bytes relayed so far, agent to gateway and gateway to agent.
    tcp_bytes: Arc<[std::sync::atomic::AtomicU64; 2]>,
    upstream: Arc<Mutex<SocketAddr>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UdpRelay {
    pub async fn start(upstream: SocketAddr) -> Self {
        // UDP and TCP on one port number, as the gateway listens.
        let (front, front_tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
                break (Arc::new(udp), tcp);
            }
        };
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stall = Arc::new(AtomicBool::new(false));
        let counts: Arc<[std::sync::atomic::AtomicU64; 4]> = Arc::new(Default::default());
        let tcp_bytes: Arc<[std::sync::atomic::AtomicU64; 2]> = Arc::new(Default::default());
        let upstream = Arc::new(Mutex::new(upstream));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let t1 = {
            let (front, back, cut, upstream, client, counts) = (
                front.clone(),
                back.clone(),
                cut.clone(),
                upstream.clone(),
                client.clone(),
                counts.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, from)) = front.recv_from(&mut buf).await else {
                        return;
                    };
                    *client.lock().unwrap() = Some(from);
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let to = *upstream.lock().unwrap();
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    counts[1].fetch_add(n as u64, Ordering::Relaxed);
                    let _ = back.send_to(&buf[..n], to).await;
                }
            })
        };
        let t2 = {
            let (cut, counts) = (cut.clone(), counts.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, _)) = back.recv_from(&mut buf).await else {
                        return;
                    };
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        counts[2].fetch_add(1, Ordering::Relaxed);
                        counts[3].fetch_add(n as u64, Ordering::Relaxed);
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        let t3 = {
            let (cut, stall, upstream, tcp_bytes) = (
                cut.clone(),
                stall.clone(),
                upstream.clone(),
                tcp_bytes.clone(),
            );
            tokio::spawn(async move {
                while let Ok((visitor, _)) = front_tcp.accept().await {
                    let to = *upstream.lock().unwrap();
                    let (cut, stall, bytes) = (cut.clone(), stall.clone(), tcp_bytes.clone());
                    tokio::spawn(async move {
                        let Ok(gateway) = tokio::net::TcpStream::connect(to).await else {
                            return;
                        };
                        let (a_read, a_write) = visitor.into_split();
                        let (b_read, b_write) = gateway.into_split();
                        let never = Arc::new(AtomicBool::new(false));
                        tokio::join!(
                            pipe(a_read, b_write, cut.clone(), never, bytes.clone(), 0),
                            pipe(b_read, a_write, cut, stall, bytes, 1)
                        );
                    });
                }
            })
        };
        Self {
            addr,
            cut,
            stall,
            counts,
            tcp_bytes,
            upstream,
            tasks: vec![t1, t2, t3],
        }
    }

    /// Drops every datagram and every TCP byte in both directions (`true`), or forwards
    /// them again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// TCP: stops reading what the gateway sends (`true`) so that the gateway's socket
    /// fills up, or reads again. The agent's bytes still go through.
    pub fn set_stall(&self, stall: bool) {
        self.stall.store(stall, Ordering::Relaxed);
    }

    /// UDP relayed so far: `(datagrams, bytes)` from the agent, and from the gateway.
    pub fn udp_counts(&self) -> ((u64, u64), (u64, u64)) {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        ((c(0), c(1)), (c(2), c(3)))
    }

    /// TCP relayed so far: bytes from the agent, and from the gateway.
    pub fn tcp_bytes(&self) -> (u64, u64) {
        (
            self.tcp_bytes[0].load(Ordering::Relaxed),
            self.tcp_bytes[1].load(Ordering::Relaxed),
        )
    }

    /// Points the relay at a different gateway address (e.g. a restarted gateway).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }
}

/// Copies `from` to `to`, discarding what arrives while `cut`, reading nothing while
/// `stall`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    stall: Arc<AtomicBool>,
    bytes: Arc<[std::sync::atomic::AtomicU64; 2]>,
    direction: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while stall.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if cut.load(Ordering::Relaxed) {
                    continue;
                }
                bytes[direction].fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
