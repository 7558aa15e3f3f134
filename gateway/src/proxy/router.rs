//! Routes visitors' requests to devices by `Host` and forwards them through the tunnel.
//!
//! The device is picked from the request-target's authority when there is one (HTTP/2
//! `:authority`, an HTTP/1.1 absolute-form URI: RFC 9112 §3.2.2 says it wins over
//! `Host`), else from the one `Host` header; two `Host` headers are a 400. Forwarding
//! headers are the gateway's own: `X-Real-IP` is replaced, `X-Forwarded-For` and
//! `Forwarded` get the gateway's element appended last. A visitor body that sends
//! nothing for `request_body_idle_timeout` is cut off with a 408.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protocol::host::DeviceDomain;
use protocol::{DeviceUuid, TargetStatus};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::connector::{Refusal, TunnelConnector, UpstreamError, REMOTE_KEY};
use super::pages::error_page;
use super::pages::Body;
use crate::listener::ListenerConfig;
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::sessions::Sessions;
use crate::store::Store;

/// Time given to in-flight visitor connections when the gateway shuts down.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `Retry-After` (seconds) sent with the 503 for a device at its stream limit.
const BUSY_RETRY_AFTER: &str = "5";

/// Settings of the public router.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub(crate) domain: String,
    pub(crate) upstream_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) request_body_idle_timeout: Duration,
    pub(crate) max_streams_per_device: usize,
}

/// Routes requests by `Host` to device sessions.
pub(crate) struct Router {
    domain: DeviceDomain,
    sessions: Arc<Sessions>,
    /// Devices whose tunnel another node holds are served through it.
    peers: Option<Arc<Peers>>,
    store: Store,
    /// Responses by status class, upstream latency, WebSocket upgrades (relaxed atomic
    /// adds).
    metrics: Arc<Metrics>,
    client: Client<TunnelConnector, IdleBody>,
    upstream_timeout: Duration,
    body_idle_timeout: Duration,
    /// WebSocket splices run here, so that the gateway's shutdown waits for them.
    tasks: TaskTracker,
    /// Ends the splices when the gateway stops.
    shutdown: CancellationToken,
}

impl Router {
    pub(crate) fn new(
        cfg: &RouterConfig,
        sessions: Arc<Sessions>,
        peers: Option<Arc<Peers>>,
        store: Store,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            // The visitor's Host header is forwarded as is; the URI authority is only the
            // pool key.
            .set_host(false)
            .build(TunnelConnector {
                sessions: Arc::clone(&sessions),
                peers: peers.clone(),
                max_streams: cfg.max_streams_per_device,
                metrics: Arc::clone(&metrics),
            });
        Self {
            domain: DeviceDomain::new(&cfg.domain),
            sessions,
            peers,
            store,
            metrics,
            client,
            upstream_timeout: cfg.upstream_timeout,
            body_idle_timeout: cfg.request_body_idle_timeout,
            tasks,
            shutdown,
        }
    }

    /// Picks the device named by a `Host` value: `<uuid>.<domain>`, any case, optional
    /// port, optional trailing dot (the parsing is [`DeviceDomain::device`], in the
    /// sans-IO protocol crate so that it is fuzzed).
    pub(crate) fn device_from_host(&self, host: &str) -> Option<DeviceUuid> {
        self.domain.device(host)
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        // RFC 9112 §3.2: a request with more than one Host field is answered 400. A
        // proxy that forwarded it would let the device pick another Host than we did.
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            return error_page(
                StatusCode::BAD_REQUEST,
                "A request carries exactly one Host header.",
                req.headers(),
            );
        }
        // The request-target's authority wins over Host (RFC 9112 §3.2.2 for absolute
        // form; HTTP/2 carries the host in :authority); the device is picked from it and
        // the Host the device sees is rewritten to match.
        let host = match req.uri().authority() {
            Some(a) => a.as_str().to_string(),
            None => req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        };
        let Some(uuid) = self.device_from_host(&host) else {
            return error_page(
                StatusCode::NOT_FOUND,
                "There is no device at this address.",
                req.headers(),
            );
        };
        let local = self.sessions.get(&uuid);
        // Held by another node: through the peer link (which checks the public URL
        // switch on the holder).
        let remote = local.is_none() && Peers::held_elsewhere(self.peers.as_deref(), uuid).await;
        let pool_authority = match local {
            Some(s) if s.public_url.load(std::sync::atomic::Ordering::Relaxed) => {
                s.pool_authority.clone()
            }
            None if remote => remote_authority(uuid),
            Some(_) => {
                return error_page(
                    StatusCode::NOT_FOUND,
                    "The public URL of this device is disabled.",
                    req.headers(),
                )
            }
            None => {
                let (status, detail) = match self.store.device(uuid).await {
                    Ok(Some(d)) if d.public_url && !d.revoked => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The device is offline. It is reachable again as soon as it reconnects.",
                    ),
                    Ok(Some(d)) if !d.revoked => (
                        StatusCode::NOT_FOUND,
                        "The public URL of this device is disabled.",
                    ),
                    Ok(_) => (StatusCode::NOT_FOUND, "There is no device at this address."),
                    Err(e) => {
                        warn!(error = %e, "store lookup failed");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "The gateway cannot look this device up right now.",
                        )
                    }
                };
                return error_page(status, detail, req.headers());
            }
        };

        let mut req = req;
        let upgrade = is_upgrade(req.headers());
        let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // Error pages only need to know whether the visitor accepts HTML.
        let mut accept = HeaderMap::new();
        if let Some(v) = req.headers().get(header::ACCEPT) {
            accept.insert(header::ACCEPT, v.clone());
        }
        let request_headers = accept;
        prepare_request(&mut req, &host, peer, upgrade);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(pool_authority);
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path form a URI");
        let visitor_version = req.version();
        *req.version_mut() = Version::HTTP_11;
        let has_body = !req.body().is_end_stream();
        let req = req.map(|b| IdleBody::new(b, self.body_idle_timeout));

        let forwarded = std::time::Instant::now();
        let mut resp = match tokio::time::timeout(self.upstream_timeout, self.client.request(req))
            .await
        {
            Ok(Ok(resp)) => {
                self.metrics.upstream_latency(forwarded.elapsed());
                resp
            }
            Ok(Err(e)) => {
                let failure = match Refusal::of(&e) {
                    Some(status) => target_failure(status),
                    None => classify(&e),
                };
                debug!(device = %uuid, error = %e, status = %failure.status, "upstream request failed");
                let mut page = error_page(failure.status, &failure.detail, &request_headers);
                if let Some(secs) = failure.retry_after {
                    page.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
                }
                // An HTTP/1 visitor whose body was not read to the end cannot send
                // another request on this connection: say so instead of leaving it
                // to guess (hyper closes it after this answer either way).
                if has_body && visitor_version < Version::HTTP_2 {
                    page.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return page;
            }
            Err(_) => {
                return error_page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The device did not answer in time.",
                    &request_headers,
                )
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(visitor_upgrade) = visitor_upgrade {
                let device_upgrade = hyper::upgrade::on(&mut resp);
                self.metrics.public_websocket();
                let shutdown = self.shutdown.clone();
                self.tasks.spawn(async move {
                    let splice = async {
                        match tokio::try_join!(visitor_upgrade, device_upgrade) {
                            Ok((v, d)) => {
                                let mut v = TokioIo::new(v);
                                let mut d = TokioIo::new(d);
                                let _ = tokio::io::copy_bidirectional(&mut v, &mut d).await;
                            }
                            Err(e) => debug!(error = %e, "upgrade failed"),
                        }
                    };
                    tokio::select! {
                        _ = splice => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        // The visitor's connection keeps its own HTTP version (a device answering
        // HTTP/1.0 must not turn the visitor's keep-alive connection into a one-shot).
        *resp.version_mut() = Version::HTTP_11;
        resp.map(Either::Left)
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those the `Connection` header names. For an
/// upgrade, `Connection: upgrade` and `Upgrade` are kept so the device sees the handshake.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present (usually none of these is): a lookup per
    // hop-by-hop name hashed nine names per request (bench/callgrind.sh).
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n) || (*n == header::UPGRADE && !keep_upgrade))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        doomed.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(keep_upgrade && n == header::UPGRADE)),
        );
    }
    for name in &doomed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Turns the visitor's request head into the one the device sees: hop-by-hop headers
/// go, `Host` is the routed authority, and the forwarding headers are the gateway's.
fn prepare_request<B>(req: &mut Request<B>, host: &str, peer: SocketAddr, upgrade: bool) {
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    // The routed authority, also when it came from the URI rather than Host (a proxy
    // MUST send a Host made from an absolute-form target, RFC 9112 §3.2.2).
    match HeaderValue::from_str(host) {
        Ok(v) => {
            headers.insert(header::HOST, v.clone());
            headers.insert("x-forwarded-host", v);
        }
        Err(_) => {
            headers.remove(header::HOST);
        }
    }
    let ip = peer.ip().to_canonical();
    // Formatted once, by hand: `Ipv4Addr`'s `Display` (padding support and three calls)
    // was 6 % of the gateway's instructions per request (bench/callgrind.sh).
    let ip_text = ip_text(ip);
    // X-Forwarded-For and Forwarded are lists each proxy appends to; the gateway's entry
    // is last, and it is the only one a device should trust.
    let xff = append_list(headers, &X_FORWARDED_FOR, &ip_text);
    set(headers, X_FORWARDED_FOR, &xff);
    let mut ours = String::with_capacity(host.len() + ip_text.len() + 32);
    ours.push_str("for=");
    match ip {
        std::net::IpAddr::V4(_) => ours.push_str(&ip_text),
        std::net::IpAddr::V6(_) => {
            ours.push_str("\"[");
            ours.push_str(&ip_text);
            ours.push_str("]\"");
        }
    }
    ours.push_str(";host=");
    push_quoted(&mut ours, host);
    ours.push_str(";proto=http");
    let forwarded = append_list(headers, &header::FORWARDED, &ours);
    set(headers, header::FORWARDED, &forwarded);
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    // X-Real-IP is one address, the visitor's as the gateway saw it: never the
    // visitor's own claim.
    set(headers, X_REAL_IP, &ip_text);
}

/// `ip` as text (dotted quad, or RFC 5952 for IPv6).
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Every value of list header `name`, joined, with `ours` appended.
fn append_list(headers: &HeaderMap, name: &HeaderName, ours: &str) -> String {
    let mut out = String::new();
    for v in headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        out.push_str(v);
        out.push_str(", ");
    }
    out.push_str(ours);
    out
}

/// Replaces every value of `name` with `value` (or removes it if `value` is not a valid
/// header value, so a visitor's value never survives).
fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Appends `s` as an RFC 7230 quoted-string.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// A visitor's request body that fails once nothing has arrived for `idle` while the
/// proxy is waiting for it. Time the proxy spends not asking (the device is not reading:
/// flow control) does not count.
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    /// Made at the first wait, then reused: a long upload allocates it once.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the timer runs: from a poll that found nothing until the next frame.
    armed: bool,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            armed: false,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // Something arrived: the next wait starts the clock from scratch.
                this.armed = false;
                Poll::Ready(frame.map(|r| r.map_err(BodyError::Visitor)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = tokio::time::Instant::now() + idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    // Waiting on the visitor starts now (a stale deadline from an earlier
                    // wait, or from time the proxy was not asking, must not count).
                    timer.as_mut().reset(deadline);
                    this.armed = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::IdleTimeout(idle)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a visitor's request body stopped.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// The visitor's connection failed or closed mid-body.
    #[error("visitor body: {0}")]
    Visitor(hyper::Error),
    /// Nothing arrived for this long while the proxy was waiting for it.
    #[error("visitor sent no body bytes for {0:?}")]
    IdleTimeout(Duration),
}

/// What a visitor is told when the request could not be forwarded.
struct Failure {
    status: StatusCode,
    detail: String,
    /// `Retry-After` seconds, for a busy device.
    retry_after: Option<&'static str>,
}

/// The pool key of streams through the peer link: `<uuid>-p`.
fn remote_authority(uuid: DeviceUuid) -> http::uri::Authority {
    format!("{uuid}-{REMOTE_KEY}")
        .parse()
        .expect("hex uuid, dash and a letter form a valid authority")
}

/// What a visitor is told when the device could not connect to its web server.
fn target_failure(status: TargetStatus) -> Failure {
    let (status, detail) = match status {
        TargetStatus::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "The device's web server did not accept the connection in time.",
        ),
        TargetStatus::Refused => (
            StatusCode::BAD_GATEWAY,
            "The device is online, but nothing is listening on its web port.",
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            "The device could not reach its web server.",
        ),
    };
    Failure {
        status,
        detail: detail.to_string(),
        retry_after: None,
    }
}

/// Maps a client error to the status and page a visitor sees.
fn classify(err: &(dyn StdError + 'static)) -> Failure {
    let page = |status, detail: &str| Failure {
        status,
        detail: detail.to_string(),
        retry_after: None,
    };
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyError>() {
            return match b {
                BodyError::IdleTimeout(idle) => page(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "The request body stalled: nothing arrived for {} s.",
                        idle.as_secs_f64()
                    ),
                ),
                BodyError::Visitor(_) => page(
                    StatusCode::BAD_REQUEST,
                    "The request body ended before it was complete.",
                ),
            };
        }
        let upstream = e.downcast_ref::<UpstreamError>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<UpstreamError>())
        });
        if let Some(u) = upstream {
            return match u {
                UpstreamError::TooManyStreams(_) => Failure {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    detail: "The device is busy: too many concurrent requests to this device. \
                             Try again in a few seconds."
                        .into(),
                    retry_after: Some(BUSY_RETRY_AFTER),
                },
                UpstreamError::Offline | UpstreamError::Tunnel(_) => page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The device is offline. It is reachable again as soon as it reconnects.",
                ),
                UpstreamError::Target(status) => target_failure(*status),
                UpstreamError::PublicUrlOff => page(
                    StatusCode::NOT_FOUND,
                    "The public URL of this device is disabled.",
                ),
                UpstreamError::Peer(detail) => page(
                    StatusCode::BAD_GATEWAY,
                    &format!("The gateway node holding this device's tunnel cannot be reached: {detail}."),
                ),
                UpstreamError::BadKey(_) => page(
                    StatusCode::BAD_GATEWAY,
                    "The device could not reach its web server.",
                ),
            };
        }
        if e.downcast_ref::<transport::ConnectionError>().is_some() {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The device went offline while answering.",
            );
        }
        cur = e.source();
    }
    page(
        StatusCode::BAD_GATEWAY,
        "The device's web server closed the connection without a valid answer.",
    )
}

/// Serves visitors on `listener` until `shutdown`, then drains for a grace period, through
/// the gateway's one accept loop (caps, first-request and idle deadlines, back-off). The
/// header timeout and size come from `cfg`; the rest of `limits` is used as given.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    cfg: RouterConfig,
    limits: ListenerConfig,
    shutdown: CancellationToken,
) {
    let limits = ListenerConfig {
        header_read_timeout: cfg.header_read_timeout,
        max_header_bytes: cfg.max_header_bytes,
        grace: DRAIN_GRACE,
        ..limits
    };
    let make_service = move |peer: SocketAddr| {
        let router = Arc::clone(&router);
        service_fn(move |req| {
            let router = Arc::clone(&router);
            async move {
                let resp = router.handle(req, peer).await;
                router.metrics.public_response(resp.status());
                Ok::<_, Infallible>(resp)
            }
        })
    };
    crate::listener::serve(listener, limits, make_service, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parsing() {
        // The parsing is tested (and fuzzed) in `protocol::host`; these pin the cases the
        // router relies on.
        assert_eq!(protocol::host::strip_port("a.example:8080"), "a.example");
        assert_eq!(protocol::host::strip_port("[::1]:80"), "[::1]:80");
        let domain = DeviceDomain::new("devices.localhost");
        let uuid: DeviceUuid = "0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(
            domain.device("0123456789ABCDEF0123456789abcdef.devices.localhost:8080"),
            Some(uuid)
        );
        assert_eq!(domain.device("x.devices.localhost"), None);
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarding_headers_are_the_gateways() {
        let mut req = Request::builder()
            .uri("/")
            .header(header::HOST, "forged.example")
            .header("x-real-ip", "6.6.6.6")
            .header("forwarded", "for=1.2.3.4")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8")
            .body(())
            .unwrap();
        let peer = "[::1]:5000".parse().unwrap();
        prepare_request(&mut req, "a.devices.localhost:8080", peer, false);
        let h = req.headers();
        assert_eq!(h[header::HOST], "a.devices.localhost:8080");
        assert_eq!(h["x-forwarded-host"], "a.devices.localhost:8080");
        assert_eq!(h["x-real-ip"], "::1");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, ::1");
        assert_eq!(
            h["forwarded"],
            "for=1.2.3.4, for=\"[::1]\";host=\"a.devices.localhost:8080\";proto=http"
        );
        assert_eq!(h.get_all("x-real-ip").iter().count(), 1);
        // A v4-mapped peer (dual-stack listener) is reported as the v4 address.
        let mut req = Request::builder().uri("/").body(()).unwrap();
        let peer = "[::ffff:192.0.2.7]:1".parse().unwrap();
        prepare_request(&mut req, "a.devices.localhost", peer, false);
        assert_eq!(req.headers()["x-real-ip"], "192.0.2.7");
        assert_eq!(
            req.headers()["forwarded"],
            "for=192.0.2.7;host=\"a.devices.localhost\";proto=http"
        );
        let mut q = String::new();
        push_quoted(&mut q, "a\"b\\c");
        assert_eq!(q, "\"a\\\"b\\\\c\"");
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
        ] {
            assert_eq!(ip_text(ip.parse().unwrap()), ip);
        }
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }
}
