//! A UDP relay between an agent and a gateway, which a test can cut (drop every datagram)
//! and restore, to play a tunnel outage without touching the machine's network.

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
    upstream: Arc<Mutex<SocketAddr>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UdpRelay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(upstream));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let t1 = {
            let (front, back, cut, upstream, client) = (
                front.clone(),
                back.clone(),
                cut.clone(),
                upstream.clone(),
                client.clone(),
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
                    let _ = back.send_to(&buf[..n], to).await;
                }
            })
        };
        let t2 = {
            let cut = cut.clone();
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
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        Self {
            addr,
            cut,
            upstream,
            tasks: vec![t1, t2],
        }
    }

    /// Drops every datagram in both directions (`true`) or forwards them again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Points the relay at a different gateway address (e.g. a restarted gateway).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
