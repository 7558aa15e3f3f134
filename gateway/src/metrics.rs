//! Prometheus metrics: `GET /metrics` in the Prometheus text format (version 0.0.4) on
//! the management listener (any valid token) and, with `--metrics-listen`, on a listener
//! of its own (no token). docs/metrics.md lists every series.
//!
//! One [`Metrics`] is made per [`crate::Gateway::run`] and handed to the parts that count
//! (`Arc<Metrics>` in the router, the tunnel context and the API state), not kept in a
//! `static`: a process that runs two gateways (the tests, `gateway demo`) keeps their
//! numbers apart. No series has a per-device label: at 10,000 devices that would be
//! 10,000 series per name.
//!
//! The hot paths (every public request, every read and write of a proxied stream) cost
//! one relaxed atomic add per counter: the labelled children are made once here and kept,
//! so no map is looked up, nothing is allocated and no lock is taken per request. The
//! upstream latency and store query histograms are the gateway's own `LatencyHistogram`
//! (`histogram.rs`) of atomic buckets for the same reason (the crate's `Histogram` takes a mutex per observation).
//! Sessions and actions are counted when scraped: from the session registry and with one
//! `GROUP BY` on the store.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use crate::histogram::LatencyHistogram;
use crate::sessions::Sessions;
use crate::store::{Store, StoreError};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A one-label label set (`{transport="quic"}`).
type Label = [(&'static str, &'static str); 1];

/// Why a device's tunnel handshake failed (`reason` of
/// `gateway_tunnel_handshake_failures_total`). A small fixed set: each is a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The TLS (or QUIC, or multiplexer) handshake failed, or no usable client
    /// certificate was presented.
    Tls,
    /// The certificate names a device this gateway does not know.
    UnknownDevice,
    /// The device was deleted.
    Revoked,
    /// No protocol version in common.
    Version,
    /// The handshake or the hello did not arrive in time.
    Timeout,
    /// Refused at the TCP listener: too many handshakes in progress.
    Limit,
    /// Another agent with the same identity holds the device (a copied certificate).
    Duplicate,
    /// This node lost its database lease.
    Fenced,
    /// Anything else: a malformed hello, a store failure, the connection lost.
    Other,
}

impl HandshakeFailure {
    const ALL: [Self; 9] = [
        Self::Tls,
        Self::UnknownDevice,
        Self::Revoked,
        Self::Version,
        Self::Timeout,
        Self::Limit,
        Self::Duplicate,
        Self::Fenced,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::UnknownDevice => "unknown_device",
            Self::Revoked => "revoked",
            Self::Version => "version",
            Self::Timeout => "timeout",
            Self::Limit => "limit",
            Self::Duplicate => "duplicate",
            Self::Fenced => "fenced",
            Self::Other => "other",
        }
    }
}

/// The outcomes of provisioning requests (`outcome` of `gateway_provisioning_total`):
/// `ok` and the protocol's refusal codes.
const PROVISION_OUTCOMES: [&str; 8] = [
    "ok",
    "invalid_key",
    "key_revoked",
    "key_expired",
    "key_used_up",
    "uuid_unavailable",
    "bad_request",
    "internal",
];

/// Status classes of public requests; a status of 600 and above is `other`.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Action statuses, as stored (`status` of `gateway_actions`).
const ACTION_STATUSES: [&str; 5] = ["pending", "delivered", "succeeded", "failed", "expired"];

/// Upper bounds (seconds) of the upstream latency buckets: 1 ms to 60 s (the default
/// upstream timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Every metric the gateway exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    handshakes: [Counter; 2],
    handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    provisioning: [Counter; PROVISION_OUTCOMES.len()],
    requests: [Counter; STATUS_CLASSES.len()],
    upstream_latency: LatencyHistogram,
    bytes_to_device: Counter,
    bytes_from_device: Counter,
    public_websockets: Counter,
    terminals: Counter,
    terminals_open: Gauge,
    log_lines_received: Counter,
    log_lines_stored: Counter,
    log_lines_pruned: Counter,
    sessions: [Gauge; 2],
    actions: [Gauge; ACTION_STATUSES.len()],
    action_queue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series, each labelled child made up front (so all show, at 0,
    /// from the first scrape).
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("gateway");
        /// A family with one label whose children are made now and kept.
        fn family<M, const N: usize>(
            r: &mut Registry,
            name: &str,
            help: &str,
            label: &'static str,
            values: [&'static str; N],
        ) -> [M; N]
        where
            M: Default
                + Clone
                + EncodeMetric
                + TypedMetric
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
        {
            let f = Family::<Label, M>::default();
            r.register(name, help, f.clone());
            values.map(|v| f.get_or_create(&[(label, v)]).clone())
        }
        let sessions = family(
            &mut r,
            "tunnel_sessions",
            "Devices connected to this node, by transport",
            "transport",
            ["quic", "tcp"],
        );
        let handshakes = family(
            &mut r,
            "tunnel_handshakes",
            "Device sessions admitted (handshake, hello and welcome done), by transport",
            "transport",
            ["quic", "tcp"],
        );
        let handshake_failures = family(
            &mut r,
            "tunnel_handshake_failures",
            "Device connections refused or lost before their session started, by reason",
            "reason",
            HandshakeFailure::ALL.map(HandshakeFailure::as_str),
        );
        let provisioning = family(
            &mut r,
            "provisioning",
            "Provisioning requests answered, by outcome",
            "outcome",
            PROVISION_OUTCOMES,
        );
        let requests = family(
            &mut r,
            "public_requests",
            "Public-URL requests answered, by status class (error pages included)",
            "class",
            STATUS_CLASSES,
        );
        let upstream_latency = LatencyHistogram::new(LATENCY_BUCKETS);
        r.register(
            "public_upstream_duration_seconds",
            "Time from forwarding a public request to the device's response head",
            upstream_latency.clone(),
        );
        let [bytes_to_device, bytes_from_device] = family(
            &mut r,
            "public_bytes",
            "Bytes of public-URL streams (HTTP/1.1 heads and bodies, WebSocket traffic), by direction",
            "direction",
            ["to_device", "from_device"],
        );
        let public_websockets = Counter::default();
        r.register(
            "public_websocket_upgrades",
            "Public-URL connections upgraded (WebSocket) and spliced to the device",
            public_websockets.clone(),
        );
        let terminals = Counter::default();
        r.register(
            "terminal_sessions",
            "Terminal WebSockets opened",
            terminals.clone(),
        );
        let terminals_open = Gauge::default();
        r.register(
            "terminal_sessions_open",
            "Terminal WebSockets open now",
            terminals_open.clone(),
        );
        let [log_lines_received, log_lines_stored, log_lines_pruned] = [
            (
                "log_lines_received",
                "Log lines received from agents (resent ones included)",
            ),
            (
                "log_lines_stored",
                "Log lines stored (new lines; resent ones are skipped)",
            ),
            ("log_lines_pruned", "Log lines deleted by retention"),
        ]
        .map(|(name, help)| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        });
        let actions = family(
            &mut r,
            "actions",
            "Actions in the store, by status (the whole database: every node of a cluster reports the same)",
            "status",
            ACTION_STATUSES,
        );
        let action_queue = Gauge::default();
        r.register(
            "action_queue_depth",
            "Actions waiting to be delivered (status pending)",
            action_queue.clone(),
        );
        Self {
            registry: r,
            handshakes,
            handshake_failures,
            provisioning,
            requests,
            upstream_latency,
            bytes_to_device,
            bytes_from_device,
            public_websockets,
            terminals,
            terminals_open,
            log_lines_received,
            log_lines_stored,
            log_lines_pruned,
            sessions,
            actions,
            action_queue,
        }
    }

    /// The metrics of a gateway on `store`: also its query times
    /// (`gateway_store_query_duration_seconds`).
    pub(crate) fn with_store(store: &Store) -> Self {
        let mut m = Self::new();
        m.registry.register(
            "store_query_duration_seconds",
            "Time of each single store statement, and the wait for a write transaction to begin (both backends)",
            store.query_times().clone(),
        );
        m
    }

    /// A device session was admitted over `kind`.
    pub(crate) fn handshake(&self, kind: transport::TransportKind) {
        self.handshakes[transport_index(kind)].inc();
    }

    /// A device connection failed before its session started.
    pub(crate) fn handshake_failed(&self, why: HandshakeFailure) {
        let i = HandshakeFailure::ALL
            .iter()
            .position(|w| *w == why)
            .expect("every reason is listed");
        self.handshake_failures[i].inc();
    }

    /// A provisioning request was answered with `response`.
    pub(crate) fn provisioned(&self, response: &protocol::ProvisionResponse) {
        use protocol::ProvisionErrorCode as C;
        let i = match response {
            protocol::ProvisionResponse::Ok { .. } => 0,
            protocol::ProvisionResponse::Error { code, .. } => match code {
                C::InvalidKey => 1,
                C::KeyRevoked => 2,
                C::KeyExpired => 3,
                C::KeyUsedUp => 4,
                C::UuidUnavailable => 5,
                C::BadRequest => 6,
                C::Internal => 7,
            },
        };
        self.provisioning[i].inc();
    }

    /// A public request was answered with `status`.
    pub(crate) fn public_response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 6) as usize - 1;
        self.requests[class].inc();
    }

    /// A device sent its response head `took` after the request was forwarded.
    pub(crate) fn upstream_latency(&self, took: Duration) {
        self.upstream_latency.observe(took);
    }

    /// `n` bytes went to the device over a public-URL stream.
    pub(crate) fn bytes_to_device(&self, n: usize) {
        self.bytes_to_device.inc_by(n as u64);
    }

    /// `n` bytes came from the device over a public-URL stream.
    pub(crate) fn bytes_from_device(&self, n: usize) {
        self.bytes_from_device.inc_by(n as u64);
    }

    /// A public-URL connection was upgraded and spliced to the device.
    pub(crate) fn public_websocket(&self) {
        self.public_websockets.inc();
    }

    /// A terminal WebSocket opened; it counts as open until the guard drops.
    pub(crate) fn terminal_opened(self: &Arc<Self>) -> TerminalOpen {
        self.terminals.inc();
        self.terminals_open.inc();
        TerminalOpen(Arc::clone(self))
    }

    /// One batch of log lines: `received` arrived, `stored` of them were new.
    pub(crate) fn log_lines(&self, received: usize, stored: usize) {
        self.log_lines_received.inc_by(received as u64);
        self.log_lines_stored.inc_by(stored as u64);
    }

    /// Retention deleted `n` lines.
    pub(crate) fn log_lines_pruned(&self, n: u64) {
        self.log_lines_pruned.inc_by(n);
    }

    /// The scrape: the series counted when scraped (sessions, actions) are read now,
    /// then everything is encoded. Fails only if the store does.
    pub async fn render(&self, store: &Store, sessions: &Sessions) -> Result<String, StoreError> {
        let by_status = store.action_counts().await?;
        let (quic, tcp) = sessions.count_by_transport();
        self.sessions[0].set(quic as i64);
        self.sessions[1].set(tcp as i64);
        for (gauge, status) in self.actions.iter().zip(ACTION_STATUSES) {
            let n = by_status
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            gauge.set(n);
            if status == "pending" {
                self.action_queue.set(n);
            }
        }
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        Ok(out)
    }
}

/// What a scrape reads: the counters, and the store and session registry for the series
/// counted when scraped.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: Store,
    pub(crate) sessions: Arc<Sessions>,
}

impl Source {
    /// The scrape, or why it failed.
    pub(crate) async fn render(&self) -> Result<String, StoreError> {
        self.metrics.render(&self.store, &self.sessions).await
    }
}

/// Most connections the metrics listener keeps open (a scraper or two, and a person with
/// curl).
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` (`--metrics-listen`), without a token, until
/// `shutdown`: the operator chose where it is reachable. Anything else is a 404 (another
/// path) or 405 (another method), in plain text.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    limits: crate::listener::ListenerConfig,
    source: Source,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let make_service = move |_peer: std::net::SocketAddr| {
        let source = source.clone();
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let source = source.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&source, &req).await) }
        })
    };
    crate::listener::serve(listener, limits, make_service, shutdown).await;
}

async fn answer<B>(
    source: &Source,
    req: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        resp
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
            PLAIN,
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /metrics\n".into(),
            PLAIN,
        );
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return resp;
    }
    match source.render().await {
        Ok(body) => text(StatusCode::OK, body, CONTENT_TYPE),
        Err(e) => {
            // The store's error stays in the log, as on the API (it may name the database).
            tracing::error!(error = %e, "metrics scrape: store failure");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the gateway log\n".into(),
                PLAIN,
            )
        }
    }
}

fn transport_index(kind: transport::TransportKind) -> usize {
    match kind {
        transport::TransportKind::Quic => 0,
        transport::TransportKind::Tcp => 1,
    }
}

/// One open terminal session in `gateway_terminal_sessions_open`; uncounts it when dropped.
#[derive(Debug)]
pub(crate) struct TerminalOpen(Arc<Metrics>);

impl Drop for TerminalOpen {
    fn drop(&mut self) {
        self.0.terminals_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_and_histogram_encode() {
        let m = Metrics::new();
        m.public_response(StatusCode::OK);
        m.public_response(StatusCode::NOT_FOUND);
        m.public_response(StatusCode::from_u16(999).unwrap());
        m.upstream_latency(Duration::from_millis(3));
        m.upstream_latency(Duration::from_secs(100));
        m.handshake_failed(HandshakeFailure::Version);
        m.provisioned(&protocol::ProvisionResponse::Error {
            code: protocol::ProvisionErrorCode::KeyUsedUp,
            message: String::new(),
        });
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry).unwrap();
        for line in [
            "gateway_public_requests_total{class=\"2xx\"} 1",
            "gateway_public_requests_total{class=\"4xx\"} 1",
            "gateway_public_requests_total{class=\"other\"} 1",
            "gateway_public_requests_total{class=\"5xx\"} 0",
            "gateway_public_upstream_duration_seconds_bucket{le=\"0.0025\"} 0",
            "gateway_public_upstream_duration_seconds_bucket{le=\"0.005\"} 1",
            "gateway_public_upstream_duration_seconds_bucket{le=\"60\"} 1",
            "gateway_public_upstream_duration_seconds_bucket{le=\"+Inf\"} 2",
            "gateway_public_upstream_duration_seconds_count 2",
            "gateway_public_upstream_duration_seconds_sum 100.003",
            "gateway_tunnel_handshake_failures_total{reason=\"version\"} 1",
            "gateway_provisioning_total{outcome=\"key_used_up\"} 1",
            "gateway_provisioning_total{outcome=\"ok\"} 0",
            "gateway_tunnel_sessions{transport=\"quic\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
    }
}
