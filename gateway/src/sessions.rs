//! Live device sessions: a sharded map from device uuid to a small handle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use protocol::DeviceUuid;

/// One live tunnel of one device.
#[derive(Debug)]
pub struct Session {
    /// Unique per gateway process; tells an old session of a device from its replacement.
    pub id: u64,
    /// The device.
    pub uuid: DeviceUuid,
    /// The QUIC connection.
    pub conn: transport::Connection,
    /// Whether the device's public URL is served (read from the store at connect time,
    /// switched live by the management API).
    pub public_url: AtomicBool,
    /// `<uuid>-<id>`: the key of this session's streams in the gateway's HTTP client pool,
    /// computed once instead of per request.
    pub pool_authority: http::uri::Authority,
    /// Wakes the session's control loop to deliver newly queued actions.
    pub kick: tokio::sync::Notify,
    /// Wakes the session's control loop to re-send the device's target state.
    pub retarget: tokio::sync::Notify,
    /// Public-URL (`Http`) streams open on this tunnel, in flight or idle in the proxy's
    /// pool (a moved-away session drains until this is zero).
    pub(crate) open_http_streams: AtomicUsize,
    /// Public-URL streams open to this device over all its sessions: shared with the
    /// session this one replaced, so that streams still draining on an old connection
    /// after a move count against the per-device limit (see [`Session::http_streams`]).
    device_http_streams: Arc<AtomicUsize>,
    /// Other gateway-opened streams open on this connection (terminals): a moved-away
    /// session lets them finish too.
    open_other_streams: AtomicUsize,
    /// The agent process's instance id from its hello (`None` from older agents).
    pub instance: Option<String>,
    /// Where the tunnel comes from.
    pub remote: SocketAddr,
    /// When the session started.
    pub started: Instant,
    /// Milliseconds after `started` at which the agent was last heard from (kept by the
    /// session's liveness watch; `u64::MAX` while unknown).
    pub(crate) last_heard_ms: AtomicU64,
    /// Set when the same agent moved to a newer session (a planned move): this one lets
    /// its open streams finish before it closes.
    pub(crate) moved: AtomicBool,
}

impl Session {
    /// Builds a session record for a freshly accepted connection.
    pub fn new(
        id: u64,
        uuid: DeviceUuid,
        conn: transport::Connection,
        public_url: bool,
        instance: Option<String>,
        previous: Option<&Session>,
    ) -> Self {
        let pool_authority = format!("{uuid}-{id}")
            .parse()
            .expect("hex uuid, dash and digits form a valid authority");
        Self {
            id,
            uuid,
            remote: conn.remote_address(),
            conn,
            instance,
            started: Instant::now(),
            last_heard_ms: AtomicU64::new(u64::MAX),
            moved: AtomicBool::new(false),
            public_url: AtomicBool::new(public_url),
            pool_authority,
            kick: tokio::sync::Notify::new(),
            retarget: tokio::sync::Notify::new(),
            open_http_streams: AtomicUsize::new(0),
            open_other_streams: AtomicUsize::new(0),
            device_http_streams: previous
                .map(|p| Arc::clone(&p.device_http_streams))
                .unwrap_or_default(),
        }
    }

    /// Records that the agent was heard from just now.
    pub(crate) fn heard(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the agent was heard from within `window` (unknown counts as no).
    pub(crate) fn heard_within(&self, window: Duration) -> bool {
        let at = self.last_heard_ms.load(Ordering::Relaxed);
        at != u64::MAX
            && self.started.elapsed().as_millis() as u64 <= at + window.as_millis() as u64
    }

    /// Number of public-URL streams open to this session's device right now (requests in
    /// flight, WebSockets, and keep-alive streams idle in the proxy's pool), including
    /// those still finishing on a connection the device moved away from.
    pub fn http_streams(&self) -> usize {
        self.device_http_streams.load(Ordering::Relaxed)
    }

    /// Streams open on this session's own connection that a move lets finish: public-URL
    /// streams and terminals.
    pub(crate) fn streams_to_drain(&self) -> usize {
        self.open_http_streams.load(Ordering::Relaxed)
            + self.open_other_streams.load(Ordering::Relaxed)
    }

    /// Counts a terminal stream on this connection until the guard drops.
    pub(crate) fn hold_stream(self: &Arc<Self>) -> StreamHold {
        self.open_other_streams.fetch_add(1, Ordering::AcqRel);
        StreamHold(Arc::clone(self))
    }

    /// Counts one more `Http` stream unless `limit` are already open to the device. The
    /// stream is counted until the returned guard drops.
    pub(crate) fn try_open_http_stream(self: &Arc<Self>, limit: usize) -> Option<HttpStreamGuard> {
        self.device_http_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.open_http_streams.fetch_add(1, Ordering::AcqRel);
        Some(HttpStreamGuard(Arc::clone(self)))
    }
}

/// One counted `Http` stream of a session; uncounts it when dropped.
#[derive(Debug)]
pub(crate) struct HttpStreamGuard(Arc<Session>);

impl Drop for HttpStreamGuard {
    fn drop(&mut self) {
        self.0.open_http_streams.fetch_sub(1, Ordering::AcqRel);
        self.0.device_http_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One counted terminal stream of a session; uncounts it when dropped.
#[derive(Debug)]
pub(crate) struct StreamHold(Arc<Session>);

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.0.open_other_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All live sessions. Values are `Arc`s so lookups clone a pointer and release the shard
/// lock at once (no map guard is ever held across an `.await`).
#[derive(Debug, Default)]
pub struct Sessions {
    map: DashMap<DeviceUuid, Arc<Session>>,
    next_id: AtomicU64,
    /// Per device: how often sessions of other agent instances replaced a live one lately.
    flaps: DashMap<DeviceUuid, Flaps>,
    /// Who may visit each device's public URL, as this node applies it: cached here
    /// beside the public-URL switch (for devices held by other nodes too, whose visitors
    /// this node admits), dropped by the API and by wake-ups when a setting changes.
    pub(crate) access: crate::proxy::access::AccessCache,
    /// Devices coming online and going offline, for the dashboard's live view.
    presence: PresenceFeed,
}

/// A device came online (its first session) or went offline (its last one ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// The device.
    pub uuid: DeviceUuid,
    /// Whether it is online now.
    pub online: bool,
}

/// How many presence changes a slow subscriber may fall behind before it misses some
/// (and is told so, by `RecvError::Lagged`).
const PRESENCE_BACKLOG: usize = 1024;

/// The sender of presence changes. Sending costs a lock and a clone into a ring buffer,
/// and nothing but a counter check while no one subscribes.
#[derive(Debug)]
struct PresenceFeed(tokio::sync::broadcast::Sender<Presence>);

impl Default for PresenceFeed {
    fn default() -> Self {
        Self(tokio::sync::broadcast::channel(PRESENCE_BACKLOG).0)
    }
}

impl PresenceFeed {
    fn send(&self, uuid: DeviceUuid, online: bool) {
        if self.0.receiver_count() > 0 {
            // Only fails without receivers: then no one is watching.
            let _ = self.0.send(Presence { uuid, online });
        }
    }
}

/// Recent replacements of one device's live session by another agent instance.
#[derive(Debug, Clone)]
struct Flaps {
    count: u32,
    last: Instant,
    /// The instance the device's last replacement pushed out.
    ousted: Option<String>,
}

/// Replacements by another instance counted together when this close to each other.
const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// After this many such replacements in a row, the next newcomer is refused while the
/// incumbent is alive: two agents share one identity.
const FLAPS_BEFORE_REFUSAL: u32 = 3;

/// What [`Sessions::admit`] decided about a new session.
#[derive(Debug)]
pub enum Admission {
    /// The device had no live session.
    First,
    /// The new session replaces `old`: a reconnect or a restart, or (`planned`) the same
    /// agent instance moving to a new connection.
    Replaces {
        /// The session replaced.
        old: Arc<Session>,
        /// Whether the agent announced the move (same instance).
        planned: bool,
    },
    /// Refused: another agent instance holds a live session of this device and the two
    /// keep replacing each other. The incumbent stays.
    Duplicate(Arc<Session>),
}

impl Sessions {
    /// A fresh session id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers `session` unless it is the far side of a duplicate identity.
    ///
    /// A session of the same agent instance (or one replacing a session nothing was heard
    /// from lately) always wins. Two agents holding one certificate take turns: each
    /// comes back after the other pushed it out. So a newcomer from another address that
    /// is the instance the last replacement pushed out, replacing a live session for the
    /// third time within a minute, is refused instead. A newcomer that is a new instance
    /// is the one agent restarted (a crash, `kill -9`) while its predecessor's session
    /// lingers: never a flap, however often it restarts. (Agents that send no instance
    /// id are counted at every replacement.) `alive` is how recently the incumbent must
    /// have been heard from to count as live.
    pub fn admit(&self, session: Arc<Session>, alive: Duration) -> Admission {
        use dashmap::mapref::entry::Entry;
        match self.map.entry(session.uuid) {
            Entry::Vacant(v) => {
                let uuid = session.uuid;
                v.insert(session);
                self.presence.send(uuid, true);
                Admission::First
            }
            Entry::Occupied(mut o) => {
                let old = Arc::clone(o.get());
                let planned = session.instance.is_some() && session.instance == old.instance;
                if !planned && old.remote != session.remote && old.heard_within(alive) {
                    let now = Instant::now();
                    let mut f = self.flaps.entry(session.uuid).or_insert(Flaps {
                        count: 0,
                        last: now,
                        ousted: None,
                    });
                    if now.duration_since(f.last) > FLAP_WINDOW {
                        f.count = 0;
                    }
                    f.last = now;
                    let returning = session.instance.is_none() || session.instance == f.ousted;
                    if returning {
                        f.count += 1;
                    }
                    if f.count >= FLAPS_BEFORE_REFUSAL {
                        return Admission::Duplicate(old);
                    }
                    f.ousted = old.instance.clone();
                }
                o.insert(session);
                Admission::Replaces { old, planned }
            }
        }
    }

    /// The live session of `uuid`.
    pub fn get(&self, uuid: &DeviceUuid) -> Option<Arc<Session>> {
        self.map.get(uuid).map(|r| Arc::clone(r.value()))
    }

    /// Removes the session of `uuid` only if it is still session `id` (a newer one may
    /// have replaced it). Returns whether it was removed.
    pub fn remove_if_current(&self, uuid: &DeviceUuid, id: u64) -> bool {
        let removed = self.map.remove_if(uuid, |_, s| s.id == id).is_some();
        if removed {
            self.presence.send(*uuid, false);
        }
        removed
    }

    /// Devices coming online and going offline on this node, from now on, and on the
    /// other nodes of a cluster (passed on by [`Sessions::relay_presence`]).
    pub fn subscribe_presence(&self) -> tokio::sync::broadcast::Receiver<Presence> {
        self.presence.0.subscribe()
    }

    /// Whether anyone follows presence changes on this node (a dashboard is open).
    pub fn presence_watched(&self) -> bool {
        self.presence.0.receiver_count() > 0
    }

    /// Passes on a presence change another node of the cluster told about (read back
    /// from the database), to this node's subscribers. A device whose tunnel is here is
    /// left to this node's own changes: they are the live truth.
    pub fn relay_presence(&self, uuid: DeviceUuid, online: bool) {
        if self.map.contains_key(&uuid) {
            return;
        }
        self.presence.send(uuid, online);
    }

    /// Switches the live public-URL flag of `uuid`'s session, if it is connected.
    pub fn set_public_url(&self, uuid: &DeviceUuid, on: bool) {
        if let Some(s) = self.get(uuid) {
            s.public_url.store(on, Ordering::Relaxed);
        }
    }

    /// Wakes `uuid`'s control loop to deliver queued actions. Returns whether the device
    /// is online.
    pub fn kick(&self, uuid: &DeviceUuid) -> bool {
        match self.get(uuid) {
            Some(s) => {
                s.kick.notify_one();
                true
            }
            None => false,
        }
    }

    /// The transport and round-trip time of `uuid`'s live session, if it is connected.
    pub fn path(&self, uuid: &DeviceUuid) -> Option<transport::PathStats> {
        self.get(uuid).map(|s| s.conn.stats())
    }

    /// Closes `uuid`'s live session, if any (device deleted).
    pub fn disconnect(&self, uuid: &DeviceUuid, code: protocol::AppErrorCode, reason: &[u8]) {
        if let Some(s) = self.get(uuid) {
            s.conn.close(code, reason);
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Live sessions on each transport, `(quic, tcp)`: one pass over the map, for a
    /// metrics scrape (no per-session bookkeeping on connect and disconnect).
    pub fn count_by_transport(&self) -> (usize, usize) {
        self.map
            .iter()
            .fold((0, 0), |(quic, tcp), s| match s.conn.kind() {
                transport::TransportKind::Quic => (quic + 1, tcp),
                transport::TransportKind::Tcp => (quic, tcp + 1),
            })
    }

    /// Whether no device is connected.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets every session (gateway stopped).
    pub(crate) fn clear(&self) {
        self.map.clear();
        self.flaps.clear();
    }

    /// Closes every session with `code` (gateway shutdown).
    pub fn close_all(&self, code: protocol::AppErrorCode, reason: &[u8]) {
        for s in self.map.iter() {
            s.conn.close(code, reason);
        }
    }
}
