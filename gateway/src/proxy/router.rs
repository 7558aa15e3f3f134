//! Routes visitors' requests to devices by `Host` and forwards them through the tunnel.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protocol::{DeviceUuid, TargetStatus};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::connector::{TunnelConnector, UpstreamError};
use super::pages::error_page;
use crate::listener::ListenerConfig;
use crate::sessions::Sessions;
use crate::store::Store;

/// Response body: streamed from the device, or a small page made here.
pub(crate) type Body = Either<Incoming, Full<Bytes>>;

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

/// Settings of the public router.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub(crate) domain: String,
    pub(crate) upstream_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
}

/// Routes requests by `Host` to device sessions.
pub(crate) struct Router {
    suffix: String,
    sessions: Arc<Sessions>,
    store: Store,
    client: Client<TunnelConnector, Incoming>,
    upstream_timeout: Duration,
}

impl Router {
    pub(crate) fn new(cfg: &RouterConfig, sessions: Arc<Sessions>, store: Store) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            // The visitor's Host header is forwarded as is; the URI authority is only the
            // pool key.
            .set_host(false)
            .build(TunnelConnector {
                sessions: Arc::clone(&sessions),
            });
        Self {
            suffix: format!(".{}", cfg.domain),
            sessions,
            store,
            client,
            upstream_timeout: cfg.upstream_timeout,
        }
    }

    /// Picks the device named by a `Host` value: `<uuid>.<domain>`, any case, optional
    /// port, optional trailing dot.
    pub(crate) fn device_from_host(&self, host: &str) -> Option<DeviceUuid> {
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        let label = host.strip_suffix(&self.suffix)?;
        if label.contains('.') {
            return None;
        }
        label.parse().ok()
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let Some(uuid) = self.device_from_host(&host) else {
            return error_page(
                StatusCode::NOT_FOUND,
                "There is no device at this address.",
                req.headers(),
            );
        };
        let session = match self.sessions.get(&uuid) {
            Some(s) if s.public_url.load(std::sync::atomic::Ordering::Relaxed) => s,
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
        parts.authority = Some(session.pool_authority.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path form a URI");
        *req.version_mut() = Version::HTTP_11;

        let mut resp =
            match tokio::time::timeout(self.upstream_timeout, self.client.request(req)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    let (status, detail) = classify(&e);
                    debug!(device = %uuid, error = %e, %status, "upstream request failed");
                    return error_page(status, detail, &request_headers);
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
                tokio::spawn(async move {
                    match tokio::try_join!(visitor_upgrade, device_upgrade) {
                        Ok((v, d)) => {
                            let mut v = TokioIo::new(v);
                            let mut d = TokioIo::new(d);
                            let _ = tokio::io::copy_bidirectional(&mut v, &mut d).await;
                        }
                        Err(e) => debug!(error = %e, "upgrade failed"),
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

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // IPv6 literal: never a device name.
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host)
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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn prepare_request(req: &mut Request<Incoming>, host: &str, peer: SocketAddr, upgrade: bool) {
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if !headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, v);
        }
    }
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert("x-forwarded-host", v);
    }
}

/// Maps a client error to the status and page a visitor sees.
fn classify(err: &(dyn StdError + 'static)) -> (StatusCode, &'static str) {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let upstream = e.downcast_ref::<UpstreamError>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<UpstreamError>())
        });
        if let Some(u) = upstream {
            return match u {
                UpstreamError::Offline | UpstreamError::Tunnel(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The device is offline. It is reachable again as soon as it reconnects.",
                ),
                UpstreamError::Target(TargetStatus::Timeout) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "The device's web server did not accept the connection in time.",
                ),
                UpstreamError::Target(TargetStatus::Refused) => (
                    StatusCode::BAD_GATEWAY,
                    "The device is online, but nothing is listening on its web port.",
                ),
                UpstreamError::Target(_) | UpstreamError::BadKey(_) => (
                    StatusCode::BAD_GATEWAY,
                    "The device could not reach its web server.",
                ),
            };
        }
        if e.downcast_ref::<quinn::ConnectionError>().is_some() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "The device went offline while answering.",
            );
        }
        cur = e.source();
    }
    (
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
            async move { Ok::<_, Infallible>(router.handle(req, peer).await) }
        })
    };
    crate::listener::serve(listener, limits, make_service, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parsing() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]:80");
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
