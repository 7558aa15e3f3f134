//! Routes visitors' requests to devices by `Host` and forwards them through the tunnel.
//!
//! The device is picked from the request-target's authority when there is one (HTTP/2
//! `:authority`, an HTTP/1.1 absolute-form URI: RFC 9112 §3.2.2 says it wins over
//! `Host`), else from the one `Host` header; two `Host` headers are a 400. Forwarding
//! headers are the gateway's own: `X-Real-IP` is replaced, `X-Forwarded-For` and
//! `Forwarded` get the gateway's element appended last. A visitor body that sends
//! nothing for `request_body_idle_timeout` is cut off with a 408.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protocol::host::DeviceDomain;
use protocol::DeviceUuid;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::connector::{Refusal, TunnelConnector, REMOTE_KEY};
use super::failure::{classify, target_failure, BodyError};
pub(crate) use super::forwarding::Scheme;
use super::forwarding::{is_upgrade, prepare_request, strip_hop_by_hop};
use super::pages::error_page;
use super::pages::Body;
use crate::listener::ListenerConfig;
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::sessions::Sessions;
use crate::store::Store;

/// Time given to in-flight visitor connections when the gateway shuts down.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

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

    /// Whether a `Host` value is the bare `<domain>` (any case, optional port and trailing
    /// dot).
    fn is_bare_domain(&self, host: &str) -> bool {
        let h = protocol::host::strip_port(host);
        let h = h.strip_suffix('.').unwrap_or(h);
        !self.domain.as_str().is_empty() && h.eq_ignore_ascii_case(self.domain.as_str())
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> Response<Body> {
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
            // The bare domain serves login mode's sign-in page (the management listener,
            // where the dashboard is, is loopback-only by default).
            if self.is_bare_domain(&host) {
                return super::access::portal::handle(
                    &self.sessions.access,
                    &self.store,
                    req,
                    peer.ip(),
                    scheme,
                    &host,
                )
                .await;
            }
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
        // Who may visit (allow-list, Basic, share links): from the cache, no database
        // round trip per request. The gateway's own credentials leave the request here.
        if let Some(answer) = self
            .sessions
            .access
            .admit(&self.store, uuid, peer.ip(), scheme, &mut req)
            .await
        {
            return answer;
        }
        let upgrade = is_upgrade(req.headers());
        let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // Error pages only need to know whether the visitor accepts HTML.
        let mut accept = HeaderMap::new();
        if let Some(v) = req.headers().get(header::ACCEPT) {
            accept.insert(header::ACCEPT, v.clone());
        }
        let request_headers = accept;
        prepare_request(&mut req, &host, peer, upgrade, scheme);
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

/// The pool key of streams through the peer link: `<uuid>-p`.
fn remote_authority(uuid: DeviceUuid) -> http::uri::Authority {
    format!("{uuid}-{REMOTE_KEY}")
        .parse()
        .expect("hex uuid, dash and a letter form a valid authority")
}

/// How one public listener serves: the scheme its visitors use, and whether it sends
/// them to HTTPS instead (the HTTPS listener's port).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Serving {
    pub(crate) scheme: Scheme,
    pub(crate) redirect_to_https: Option<u16>,
}

/// Serves visitors on `listener` until `shutdown`, then drains for a grace period, through
/// the gateway's one accept loop (caps, first-request and idle deadlines, back-off). The
/// header timeout and size come from `cfg`; the rest of `limits` is used as given (its
/// `tls` for the HTTPS listener).
pub(crate) async fn serve(
    listener: impl Into<crate::listener::AcceptFrom>,
    router: Arc<Router>,
    cfg: RouterConfig,
    limits: ListenerConfig,
    serving: Serving,
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
                let resp = match serving.redirect_to_https {
                    Some(port) => super::https::redirect(&req, port),
                    None => router.handle(req, peer, serving.scheme).await,
                };
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
}
