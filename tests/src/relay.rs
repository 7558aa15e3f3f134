//! A relay between an agent and a gateway that plays a bad link without touching the
//! machine's network: it can cut the path (drop every datagram, and every byte on TCP),
//! drop a share of the datagrams at random, and delay each one by a delay with jitter
//! (a userspace delay queue: this kernel has no `tc netem`). It relays UDP (QUIC) and, on
//! the same port number, TCP (the TLS fallback), so an outage hits an agent on either
//! transport.
//!
//! On TCP, where the kernel retransmits and a byte stream cannot lose or reorder bytes,
//! the delay applies to each chunk read (in order), and loss is played as what TCP makes
//! of it: a lost chunk holds the stream back for one retransmission timeout.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One direction of the relayed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Agent to gateway.
    Up,
    /// Gateway to agent.
    Down,
}

/// What one direction does to the traffic it carries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Share of datagrams dropped at random, in percent (0..=100).
    pub loss_pct: f64,
    /// Added to every datagram (every TCP chunk).
    pub delay: Duration,
    /// Each datagram's delay is uniform in `delay ± jitter` (never below zero). On UDP
    /// this reorders datagrams, as a real jittery path does.
    pub jitter: Duration,
}

/// How long TCP's recovery holds a stream back after a loss: Linux's minimum
/// retransmission timeout; the path's own delay comes on top.
const TCP_RTO: Duration = Duration::from_millis(200);

/// The impairment of one direction, readable without a lock from the relaying tasks.
#[derive(Default)]
struct Shaping {
    /// Parts per million.
    loss_ppm: AtomicU32,
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    /// UDP datagrams (TCP chunks) dropped (held back) by the loss so far.
    lost: AtomicU64,
}

impl Shaping {
    fn set(&self, imp: Impairment) {
        let ppm = (imp.loss_pct.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        self.loss_ppm.store(ppm, Ordering::Relaxed);
        self.delay_us
            .store(imp.delay.as_micros() as u64, Ordering::Relaxed);
        self.jitter_us
            .store(imp.jitter.as_micros() as u64, Ordering::Relaxed);
    }

    fn get(&self) -> Impairment {
        Impairment {
            loss_pct: f64::from(self.loss_ppm.load(Ordering::Relaxed)) / 10_000.0,
            delay: Duration::from_micros(self.delay_us.load(Ordering::Relaxed)),
            jitter: Duration::from_micros(self.jitter_us.load(Ordering::Relaxed)),
        }
    }

    /// Whether this datagram is lost (counted).
    fn lose(&self, rng: &mut Rng) -> bool {
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        let lost = ppm > 0 && rng.below(1_000_000) < u64::from(ppm);
        if lost {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }

    /// This datagram's delay: `delay ± jitter`, at least zero.
    fn delay(&self, rng: &mut Rng) -> Duration {
        let d = self.delay_us.load(Ordering::Relaxed) as i64;
        let j = self.jitter_us.load(Ordering::Relaxed) as i64;
        let off = if j > 0 {
            rng.below(2 * j as u64 + 1) as i64 - j
        } else {
            0
        };
        Duration::from_micros((d + off).max(0) as u64)
    }

    fn delays(&self) -> bool {
        self.delay_us.load(Ordering::Relaxed) > 0 || self.jitter_us.load(Ordering::Relaxed) > 0
    }
}

/// A small xorshift64* generator: the relay needs cheap, seedable randomness, not
/// cryptography (and the test crate no `rand`).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Never zero: xorshift would stay there.
        Self((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0), near enough for tests.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The relay's random seed: `RELAY_SEED` when set (to replay a run), else the clock.
fn seed() -> u64 {
    std::env::var("RELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// A datagram waiting in the delay queue.
struct Delayed {
    due: Instant,
    /// Arrival order, so equal due times leave in order.
    n: u64,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.n) == (other.due, other.n)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest due must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.n).cmp(&(self.due, self.n))
    }
}

/// Sends each queued datagram from `socket` when it is due; drops it if the path is cut
/// by then (what was in flight when a link goes down is lost).
async fn delay_queue(
    socket: Arc<UdpSocket>,
    mut rx: mpsc::UnboundedReceiver<Delayed>,
    cut: Arc<AtomicBool>,
) {
    let mut heap = BinaryHeap::new();
    loop {
        let next_due = heap.peek().map(|d: &Delayed| d.due);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(d) => heap.push(d),
                None => return,
            },
            // Only armed while something waits.
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let d = heap.pop().expect("peeked");
                if !cut.load(Ordering::Relaxed) {
                    let _ = socket.send_to(&d.data, d.to).await;
                }
            }
        }
    }
}

/// Forwards datagrams between one client (the agent) and `upstream` (the gateway's
/// tunnel address).
pub struct UdpRelay {
    /// Where the agent should dial.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// TCP: while set, nothing is read from the gateway's side, as from an agent that
    /// stopped reading its socket.
    stall: Arc<AtomicBool>,
    /// Loss and delay, agent to gateway ([`Dir::Up`]) and gateway to agent.
    shaping: Arc<[Shaping; 2]>,
    /// UDP: datagrams and bytes relayed so far, agent to gateway and gateway to agent.
    counts: Arc<[AtomicU64; 4]>,
    /// TCP: bytes relayed so far, agent to gateway and gateway to agent.
    tcp_bytes: Arc<[AtomicU64; 2]>,
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
        let shaping: Arc<[Shaping; 2]> = Arc::new(Default::default());
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let tcp_bytes: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
        let upstream = Arc::new(Mutex::new(upstream));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let seed = seed();
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let t_up_queue = tokio::spawn(delay_queue(back.clone(), up_rx, cut.clone()));
        let t_down_queue = tokio::spawn(delay_queue(front.clone(), down_rx, cut.clone()));
        let t1 = {
            let (front, back, cut, upstream, client, counts, shaping) = (
                front.clone(),
                back.clone(),
                cut.clone(),
                upstream.clone(),
                client.clone(),
                counts.clone(),
                shaping.clone(),
            );
            tokio::spawn(async move {
                let mut rng = Rng::new(seed);
                let mut n = 0u64;
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((len, from)) = front.recv_from(&mut buf).await else {
                        return;
                    };
                    *client.lock().unwrap() = Some(from);
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let s = &shaping[0];
                    if s.lose(&mut rng) {
                        continue;
                    }
                    let to = *upstream.lock().unwrap();
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    counts[1].fetch_add(len as u64, Ordering::Relaxed);
                    if s.delays() {
                        n += 1;
                        let due = Instant::now() + s.delay(&mut rng);
                        let data = buf[..len].to_vec();
                        let _ = up_tx.send(Delayed { due, n, to, data });
                    } else {
                        let _ = back.send_to(&buf[..len], to).await;
                    }
                }
            })
        };
        let t2 = {
            let (cut, counts, shaping) = (cut.clone(), counts.clone(), shaping.clone());
            let front = front.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(seed.rotate_left(17));
                let mut n = 0u64;
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((len, _)) = back.recv_from(&mut buf).await else {
                        return;
                    };
                    if cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    let s = &shaping[1];
                    if s.lose(&mut rng) {
                        continue;
                    }
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        counts[2].fetch_add(1, Ordering::Relaxed);
                        counts[3].fetch_add(len as u64, Ordering::Relaxed);
                        if s.delays() {
                            n += 1;
                            let due = Instant::now() + s.delay(&mut rng);
                            let data = buf[..len].to_vec();
                            let _ = down_tx.send(Delayed { due, n, to, data });
                        } else {
                            let _ = front.send_to(&buf[..len], to).await;
                        }
                    }
                }
            })
        };
        let t3 = {
            let (cut, stall, upstream, tcp_bytes, shaping) = (
                cut.clone(),
                stall.clone(),
                upstream.clone(),
                tcp_bytes.clone(),
                shaping.clone(),
            );
            tokio::spawn(async move {
                let mut conn = 0u64;
                while let Ok((visitor, _)) = front_tcp.accept().await {
                    conn += 1;
                    let to = *upstream.lock().unwrap();
                    let (cut, stall, bytes, shaping) = (
                        cut.clone(),
                        stall.clone(),
                        tcp_bytes.clone(),
                        shaping.clone(),
                    );
                    let seed = seed.wrapping_add(conn.wrapping_mul(0x1000_0000_01b3));
                    tokio::spawn(async move {
                        let Ok(gateway) = tokio::net::TcpStream::connect(to).await else {
                            return;
                        };
                        let (a_read, a_write) = visitor.into_split();
                        let (b_read, b_write) = gateway.into_split();
                        let never = Arc::new(AtomicBool::new(false));
                        let up = Pipe {
                            cut: cut.clone(),
                            stall: never,
                            bytes: bytes.clone(),
                            shaping: shaping.clone(),
                            direction: 0,
                            seed,
                        };
                        let down = Pipe {
                            cut,
                            stall,
                            bytes,
                            shaping,
                            direction: 1,
                            seed: seed.rotate_left(29),
                        };
                        tokio::join!(up.run(a_read, b_write), down.run(b_read, a_write));
                    });
                }
            })
        };
        Self {
            addr,
            cut,
            stall,
            shaping,
            counts,
            tcp_bytes,
            upstream,
            tasks: vec![t1, t2, t3, t_up_queue, t_down_queue],
        }
    }

    /// Drops every datagram and every TCP byte in both directions (`true`), or forwards
    /// them again.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Whether the path is cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// TCP: stops reading what the gateway sends (`true`) so that the gateway's socket
    /// fills up, or reads again. The agent's bytes still go through.
    pub fn set_stall(&self, stall: bool) {
        self.stall.store(stall, Ordering::Relaxed);
    }

    /// Sets what `dir` does to its traffic from now on (datagrams already queued keep
    /// their due time).
    pub fn set_impairment(&self, dir: Dir, imp: Impairment) {
        self.shaping[dir as usize].set(imp);
    }

    /// What `dir` does to its traffic.
    pub fn impairment(&self, dir: Dir) -> Impairment {
        self.shaping[dir as usize].get()
    }

    /// Drops `pct` percent of the datagrams at random in both directions (0 stops it).
    pub fn set_loss(&self, pct: f64) {
        for dir in [Dir::Up, Dir::Down] {
            let imp = self.impairment(dir);
            self.set_impairment(
                dir,
                Impairment {
                    loss_pct: pct,
                    ..imp
                },
            );
        }
    }

    /// Delays every datagram by `delay ± jitter` in both directions (zero stops it).
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        for dir in [Dir::Up, Dir::Down] {
            let imp = self.impairment(dir);
            self.set_impairment(
                dir,
                Impairment {
                    delay,
                    jitter,
                    ..imp
                },
            );
        }
    }

    /// Datagrams (on TCP: chunks held back) lost so far: agent to gateway, gateway to
    /// agent.
    pub fn lost(&self) -> (u64, u64) {
        (
            self.shaping[0].lost.load(Ordering::Relaxed),
            self.shaping[1].lost.load(Ordering::Relaxed),
        )
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

/// One direction of a relayed TCP connection.
struct Pipe {
    cut: Arc<AtomicBool>,
    stall: Arc<AtomicBool>,
    bytes: Arc<[AtomicU64; 2]>,
    shaping: Arc<[Shaping; 2]>,
    direction: usize,
    seed: u64,
}

impl Pipe {
    /// Copies `from` to `to`, discarding what arrives while cut, reading nothing while
    /// stalled, and holding each chunk until its (in-order) due time.
    async fn run(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        use tokio::io::AsyncReadExt;
        // Chunks leave from a writer of their own, so a delay holds them back without
        // slowing the reading (the delay adds latency, not a throughput cap). The small
        // bound keeps back-pressure: a reader that stops stalls this side soon.
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>(16);
        let writer = tokio::spawn(write_due(to, rx, self.cut.clone()));
        let mut rng = Rng::new(self.seed);
        let shaping = &self.shaping[self.direction];
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while self.stall.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let read = tokio::select! {
                r = from.read(&mut buf) => r,
                // The other side is gone: stop reading too.
                _ = tx.closed() => break,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if self.cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    self.bytes[self.direction].fetch_add(n as u64, Ordering::Relaxed);
                    let mut due = Instant::now() + shaping.delay(&mut rng);
                    if shaping.lose(&mut rng) {
                        due += TCP_RTO + shaping.get().delay;
                    }
                    // A byte stream keeps its order whatever each chunk's jitter says.
                    due = due.max(last_due);
                    last_due = due;
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // The writer sends what is queued, then shuts its side down.
        drop(tx);
        let _ = writer.await;
    }
}

/// Writes each chunk when due; drops those that come due while the path is cut.
async fn write_due(
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::AsyncWriteExt;
    while let Some((due, data)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if cut.load(Ordering::Relaxed) {
            continue;
        }
        if to.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_jitter_are_about_what_was_asked() {
        let s = Shaping::default();
        s.set(Impairment {
            loss_pct: 30.0,
            delay: Duration::from_millis(300),
            jitter: Duration::from_millis(100),
        });
        let mut rng = Rng::new(42);
        let lost = (0..100_000).filter(|_| s.lose(&mut rng)).count();
        assert!((28_000..32_000).contains(&lost), "{lost}");
        let delays: Vec<Duration> = (0..10_000).map(|_| s.delay(&mut rng)).collect();
        assert!(delays.iter().all(|d| (200..=400).contains(&d.as_millis())));
        let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
        assert!((290..310).contains(&mean.as_millis()), "{mean:?}");
        assert!(delays.iter().any(|d| d.as_millis() < 220));
        assert!(delays.iter().any(|d| d.as_millis() > 380));
    }

    #[test]
    fn the_delay_queue_releases_the_earliest_first() {
        let mut heap = BinaryHeap::new();
        let t0 = Instant::now();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for (n, ms) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            heap.push(Delayed {
                due: t0 + Duration::from_millis(ms),
                n,
                to,
                data: vec![],
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|d| d.n)).collect();
        assert_eq!(order, [2, 4, 3, 1]);
    }
}
