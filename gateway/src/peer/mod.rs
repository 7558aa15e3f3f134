//! The peer link between gateway nodes on one database (`docs/cluster.md`): any node
//! serves any device, by asking the node that holds the device's tunnel for a stream.
//!
//! * [`Peers::open`] (the asking side) reads the device's route (cached; re-read when
//!   the holder answers "not here"), opens a stream on the peer link to the holding
//!   node, and returns it once the holder has opened the device stream behind it. The
//!   caller then uses it exactly like a stream on the device's own tunnel.
//! * [`serve`] (the holding side) accepts peer links from other nodes (mutual TLS with
//!   node certificates of the fleet CA; a device certificate or another CA is refused),
//!   and splices each stream to a new stream on a local tunnel. It never forwards again:
//!   a device it does not hold gets "not here".
//!
//! The wire format is [`protocol::peer`].

mod splice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use protocol::peer::{PeerAnswer, PeerOpen, PEER_OPEN_LEN};
use protocol::{AppErrorCode, DeviceUuid, StreamHeader, StreamKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use transport::{Connection, RecvStream, SendStream};

use crate::sessions::Sessions;
use crate::store::Store;

/// How long the holding node has to answer a peer open.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer link's handshake may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed dial, or a link that went silent under a request, how long a node
/// counts as unreachable: requests for its devices fail at once instead of each waiting
/// out a dial (a killed node's lease, and so its routes, lasts up to `LEASE_TTL` longer
/// than the node; a node cut off from this one keeps its lease).
const DOWN_FOR: Duration = Duration::from_secs(5);
/// A peer link with no packet from the other node for this long is dead. Nodes of one
/// cluster sit on one network, and the link sends a keep-alive every
/// [`LINK_KEEP_ALIVE`]: five missed in a row is a cut, not a slow node. (It was 10 s:
/// a visitor of a device behind a cut link waited 10 s for its 503.)
const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive interval of an idle peer link.
const LINK_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Why a stream to a device on another node could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// No live node holds the device's tunnel.
    #[error("device is offline")]
    Offline,
    /// The holder says the device has its limit of public-URL streams open.
    #[error("too many concurrent requests to this device")]
    Busy,
    /// The holder says the device's public URL is off.
    #[error("the device's public URL is disabled")]
    PublicUrlOff,
    /// The holder refused the stream.
    #[error("the gateway node holding the device refused the stream")]
    Refused,
    /// The peer link could not be reached or broke.
    #[error("peer link to gateway node {node}: {detail}")]
    Link {
        /// The node.
        node: String,
        /// What happened.
        detail: String,
    },
}

/// Where a device's tunnel is, as last read.
#[derive(Debug, Clone)]
struct Holder {
    node: String,
    addr: String,
}

/// This node's side of the peer links: the connections to other nodes, and the route
/// cache.
pub(crate) struct Peers {
    node_id: String,
    store: Store,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    links: DashMap<String, Connection>,
    dialing: tokio::sync::Mutex<()>,
    routes: DashMap<DeviceUuid, Holder>,
    /// Nodes whose last dial failed or whose link timed out, until when they count as
    /// unreachable. Shared with each link's watcher task.
    down: Arc<DashMap<String, std::time::Instant>>,
}

/// Forgets a device's cached route unless disarmed: an open that fails, or whose visitor
/// gives up while it waits (the future is dropped mid-dial), leaves no stale route behind
/// for the next request to wait on again.
struct ForgetUnlessOk<'a> {
    peers: &'a Peers,
    uuid: DeviceUuid,
    armed: bool,
}

impl Drop for ForgetUnlessOk<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.peers.forget(self.uuid);
        }
    }
}

impl Peers {
    /// The asking side, dialling from a fresh client endpoint with `tls` (the node's
    /// peer client configuration).
    pub(crate) fn new(
        node_id: &str,
        store: Store,
        tls: rustls::ClientConfig,
    ) -> std::io::Result<Self> {
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(Arc::new(transport_config()));
        let socket = transport::net::udp_socket("0.0.0.0:0".parse().expect("addr"))?;
        let endpoint = transport::quic::endpoint(socket, None, None)?;
        Ok(Self {
            node_id: node_id.to_string(),
            store,
            endpoint,
            client,
            links: DashMap::new(),
            dialing: tokio::sync::Mutex::new(()),
            routes: DashMap::new(),
            down: Arc::new(DashMap::new()),
        })
    }

    /// Whether another live node holds `uuid`'s tunnel, by the cached route or, on a
    /// miss, the store's. Always false where there is no peer link (SQLite).
    pub(crate) async fn held_elsewhere(peers: Option<&Self>, uuid: DeviceUuid) -> bool {
        match peers {
            // Asked once per proxied request: a cached route answers without cloning it.
            Some(p) => p.routes.contains_key(&uuid) || p.holder(uuid, false).await.is_some(),
            None => false,
        }
    }

    async fn holder(&self, uuid: DeviceUuid, fresh: bool) -> Option<Holder> {
        if !fresh {
            if let Some(h) = self.routes.get(&uuid) {
                return Some(h.clone());
            }
        }
        self.routes.remove(&uuid);
        let route = match self.store.route(uuid).await {
            Ok(r) => r?,
            Err(e) => {
                warn!(device = %uuid, error = %e, "cannot read the device's route");
                return None;
            }
        };
        let node = route
            .node
            .filter(|n| route.node_alive && *n != self.node_id)?;
        let Some(addr) = route.peer_addr else {
            debug!(device = %uuid, %node, "the node holding the device has no peer address");
            return None;
        };
        let h = Holder { node, addr };
        self.routes.insert(uuid, h.clone());
        Some(h)
    }

    /// Forgets the cached route of `uuid` (its device left this node, or the holder
    /// said it is not there).
    pub(crate) fn forget(&self, uuid: DeviceUuid) {
        self.routes.remove(&uuid);
    }

    /// Opens a stream to `uuid` through the node that holds its tunnel, sending
    /// `header` to the device. Reads the route again and retries once when the holder
    /// answers "not here" or its link is gone.
    pub(crate) async fn open(
        &self,
        uuid: DeviceUuid,
        header: &StreamHeader,
    ) -> Result<(SendStream, RecvStream), PeerError> {
        let header = header.to_vec().map_err(|_| PeerError::Refused)?;
        let mut last = PeerError::Offline;
        for attempt in 0..2 {
            let Some(holder) = self.holder(uuid, attempt > 0).await else {
                return Err(PeerError::Offline);
            };
            let mut forget = ForgetUnlessOk {
                peers: self,
                uuid,
                armed: true,
            };
            match self.open_on(&holder, uuid, &header).await {
                Ok(s) => {
                    forget.armed = false;
                    return Ok(s);
                }
                Err(PeerError::Offline) => {
                    self.forget(uuid);
                    last = PeerError::Offline;
                }
                Err(e @ PeerError::Link { .. }) => {
                    debug!(device = %uuid, error = %e, "peer link failed; reading the route again");
                    self.forget(uuid);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn open_on(
        &self,
        holder: &Holder,
        uuid: DeviceUuid,
        header: &[u8],
    ) -> Result<(SendStream, RecvStream), PeerError> {
        let link_err = |detail: String| PeerError::Link {
            node: holder.node.clone(),
            detail,
        };
        let conn = self.link(holder).await?;
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.links.remove(&holder.node);
                return Err(link_err(e.to_string()));
            }
        };
        let mut first = Vec::with_capacity(PEER_OPEN_LEN + header.len());
        first.extend_from_slice(&PeerOpen { device: uuid }.encode());
        first.extend_from_slice(header);
        send.write_all(&first)
            .await
            .map_err(|e| link_err(e.to_string()))?;
        let mut answer = [0u8; 1];
        match tokio::time::timeout(ANSWER_TIMEOUT, recv.read_exact(&mut answer)).await {
            // The link is alive (it would have timed out first) but the holder is slow:
            // the link stays, for the other streams on it.
            Err(_) => return Err(link_err(format!("no answer in {ANSWER_TIMEOUT:?}"))),
            Ok(Err(e)) => {
                if matches!(
                    conn.close_reason(),
                    Some(transport::ConnectionError::TimedOut)
                ) {
                    self.silent(holder);
                }
                return Err(link_err(e.to_string()));
            }
            Ok(Ok(())) => {}
        }
        match PeerAnswer::from_u8(answer[0]) {
            PeerAnswer::Ready => Ok((send, recv)),
            PeerAnswer::NotHere | PeerAnswer::TunnelLost => Err(PeerError::Offline),
            PeerAnswer::Busy => Err(PeerError::Busy),
            PeerAnswer::PublicUrlOff => Err(PeerError::PublicUrlOff),
            PeerAnswer::Refused => Err(PeerError::Refused),
        }
    }

    /// The link to `holder`'s node, dialled on first use (one at a time, so that a burst
    /// of requests makes one link).
    async fn link(&self, holder: &Holder) -> Result<Connection, PeerError> {
        if let Some(c) = self.live_link(&holder.node) {
            return Ok(c);
        }
        let err = |detail: String| PeerError::Link {
            node: holder.node.clone(),
            detail,
        };
        if self.is_down(&holder.node) {
            return Err(err("unreachable at its last dial".into()));
        }
        let _one = self.dialing.lock().await;
        if let Some(c) = self.live_link(&holder.node) {
            return Ok(c);
        }
        // Requests that queued behind a dial that failed fail with it.
        if self.is_down(&holder.node) {
            return Err(err("unreachable at its last dial".into()));
        }
        let dialled = self.dial(holder).await;
        if dialled.is_err() {
            self.down
                .insert(holder.node.clone(), std::time::Instant::now() + DOWN_FOR);
        }
        dialled
    }

    /// The link to `holder`'s node timed out under a request (no packet from the node
    /// for [`LINK_IDLE_TIMEOUT`]): the node is unreachable from here for [`DOWN_FOR`], so
    /// that the retry in [`Peers::open`] (and the requests after it) fail at once
    /// instead of each spending [`DIAL_TIMEOUT`] on a dial into the same silence. A
    /// device that moved meanwhile is still found: the retry reads the route again
    /// first. (The link's watcher in [`Peers::dial`] marks the same, but may run only
    /// after the retry; the dead link itself is dropped by [`Peers::live_link`].)
    fn silent(&self, holder: &Holder) {
        self.down
            .insert(holder.node.clone(), std::time::Instant::now() + DOWN_FOR);
    }

    /// Whether `node`'s last dial failed (or its link went silent) less than
    /// [`DOWN_FOR`] ago.
    fn is_down(&self, node: &str) -> bool {
        match self.down.get(node).map(|t| *t) {
            Some(until) if std::time::Instant::now() < until => true,
            Some(_) => {
                self.down.remove(node);
                false
            }
            None => false,
        }
    }

    async fn dial(&self, holder: &Holder) -> Result<Connection, PeerError> {
        let err = |detail: String| PeerError::Link {
            node: holder.node.clone(),
            detail,
        };
        let addr: SocketAddr = tokio::net::lookup_host(&holder.addr)
            .await
            .map_err(|e| err(format!("cannot resolve {}: {e}", holder.addr)))?
            .next()
            .ok_or_else(|| err(format!("{} resolves to no address", holder.addr)))?;
        let conn = tokio::time::timeout(
            DIAL_TIMEOUT,
            transport::quic::connect(
                &self.endpoint,
                self.client.clone(),
                addr,
                certs::PEER_SERVER_NAME,
            ),
        )
        .await
        .map_err(|_| err(format!("no handshake with {addr} in {DIAL_TIMEOUT:?}")))?
        .map_err(|e| err(format!("{addr}: {e}")))?;
        info!(node = %holder.node, %addr, "peer link up");
        self.down.remove(&holder.node);
        self.links.insert(holder.node.clone(), conn.clone());
        // A link that times out (a cut between the nodes) marks its node unreachable the
        // moment it does, also when no request was waiting on it: the next request then
        // fails at once instead of spending DIAL_TIMEOUT on a dial into the silence.
        // Ends with the link.
        let (down, node, watched) = (Arc::clone(&self.down), holder.node.clone(), conn.clone());
        tokio::spawn(async move {
            if matches!(watched.closed().await, transport::ConnectionError::TimedOut) {
                warn!(%node, "peer link timed out; the node counts as unreachable for a while");
                down.insert(node, std::time::Instant::now() + DOWN_FOR);
            }
        });
        Ok(conn)
    }

    fn live_link(&self, node: &str) -> Option<Connection> {
        let c = self.links.get(node)?.clone();
        if c.close_reason().is_none() {
            return Some(c);
        }
        self.links.remove(node);
        None
    }
}

/// QUIC settings of the peer link: many concurrent streams (every proxied visitor
/// connection is one), keep-alive so an idle link stays up.
fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(65_536u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(LINK_KEEP_ALIVE));
    t.max_idle_timeout(Some(
        LINK_IDLE_TIMEOUT
            .try_into()
            .expect("5 s is a valid idle timeout"),
    ));
    t
}

/// The peer endpoint's QUIC server configuration from the node's TLS one.
pub(crate) fn server_config(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, String> {
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// The holding side: accepts peer links on `endpoint` until `shutdown`, and serves each
/// of their streams from the local tunnels in `sessions`.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    sessions: Arc<Sessions>,
    max_streams_per_device: usize,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.cancelled() => break,
        };
        let sessions = Arc::clone(&sessions);
        let shutdown = shutdown.clone();
        let inner = tasks.clone();
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            let conn = match tokio::time::timeout(DIAL_TIMEOUT, transport::quic::accept(incoming))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    warn!(%remote, error = %e, "peer link refused at the handshake");
                    return;
                }
                Err(_) => return,
            };
            let node = match conn
                .peer_certificates()
                .and_then(|c| c.into_iter().next())
                .ok_or_else(|| "no certificate".to_string())
                .and_then(|c| certs::node_id_from_cert(&c).map_err(|e| e.to_string()))
            {
                Ok(n) => n,
                Err(e) => {
                    warn!(%remote, error = %e, "peer link refused: not a gateway node of this fleet");
                    conn.close(AppErrorCode::UnknownDevice, b"not a gateway node certificate");
                    return;
                }
            };
            info!(%node, %remote, "peer link accepted");
            loop {
                let (send, recv) = tokio::select! {
                    s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => break },
                    _ = shutdown.cancelled() => {
                        conn.close(AppErrorCode::Shutdown, b"gateway node shutting down");
                        break;
                    }
                };
                let sessions = Arc::clone(&sessions);
                // A task per stream. (One task splicing all streams of a link cut node
                // a's instructions per hop by 10 % and its sendmsg calls by 65 %, but
                // req/s through the hop did not rise: BENCHMARKS.md, "The peer hop".)
                inner.spawn(serve_stream(send, recv, sessions, max_streams_per_device));
            }
        });
    }
}

/// One peer stream: which device, which header; then the splice.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    sessions: Arc<Sessions>,
    max_streams: usize,
) {
    let mut open = [0u8; PEER_OPEN_LEN];
    if tokio::time::timeout(ANSWER_TIMEOUT, recv.read_exact(&mut open))
        .await
        .map_or(true, |r| r.is_err())
    {
        send.reset(AppErrorCode::ProtocolError);
        return;
    }
    let Ok(PeerOpen { device }) = PeerOpen::decode(&open) else {
        send.reset(AppErrorCode::ProtocolError);
        return;
    };
    let header =
        match tokio::time::timeout(ANSWER_TIMEOUT, transport::wire::read_header(&mut recv)).await {
            Ok(Ok(h)) => h,
            _ => {
                answer(send, PeerAnswer::Refused).await;
                return;
            }
        };
    let Some(session) = sessions.get(&device) else {
        answer(send, PeerAnswer::NotHere).await;
        return;
    };
    // Counted like a local stream of the same kind, for as long as the splice runs.
    let hold = match header.kind() {
        StreamKind::Http => {
            if !session
                .public_url
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                answer(send, PeerAnswer::PublicUrlOff).await;
                return;
            }
            match session.try_open_http_stream(max_streams) {
                Some(g) => splice::Hold::Http(g),
                None => {
                    answer(send, PeerAnswer::Busy).await;
                    return;
                }
            }
        }
        StreamKind::Terminal => splice::Hold::Other(session.hold_stream()),
        StreamKind::Control | StreamKind::Logs => {
            answer(send, PeerAnswer::Refused).await;
            return;
        }
    };
    let (mut dsend, drecv) = match session.conn.open_bi().await {
        Ok(s) => s,
        Err(_) => {
            answer(send, PeerAnswer::TunnelLost).await;
            return;
        }
    };
    let bytes = header.to_vec().expect("a header that was read fits");
    if dsend.write_all(&bytes).await.is_err() {
        answer(send, PeerAnswer::TunnelLost).await;
        return;
    }
    if send.write_all(&[PeerAnswer::Ready as u8]).await.is_err() {
        dsend.reset(AppErrorCode::NoError);
        return;
    }
    splice::run(send, recv, dsend, drecv, hold).await;
}

/// Answers a peer open with anything but `Ready`, ending the stream.
async fn answer(mut send: SendStream, a: PeerAnswer) {
    let _ = send.write_all(&[a as u8]).await;
    let _ = send.finish();
}

#[cfg(test)]
mod tests;
