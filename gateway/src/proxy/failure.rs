//! What a visitor is told when a request could not be forwarded: the device's refusal,
//! an offline or busy device, a stalled request body, a lost tunnel.

use std::error::Error as StdError;
use std::time::Duration;

use http::StatusCode;
use protocol::TargetStatus;

use super::connector::UpstreamError;

/// `Retry-After` (seconds) sent with the 503 for a device at its stream limit.
pub(super) const BUSY_RETRY_AFTER: &str = "5";

/// Why a visitor's request body stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// The visitor's connection failed or closed mid-body.
    #[error("visitor body: {0}")]
    Visitor(hyper::Error),
    /// Nothing arrived for this long while the proxy was waiting for it.
    #[error("visitor sent no body bytes for {0:?}")]
    IdleTimeout(Duration),
}

/// What a visitor is told when the request could not be forwarded.
pub(super) struct Failure {
    pub(super) status: StatusCode,
    pub(super) detail: String,
    /// `Retry-After` seconds, for a busy device.
    pub(super) retry_after: Option<&'static str>,
}

/// What a visitor is told when the device could not connect to its web server.
pub(super) fn target_failure(status: TargetStatus) -> Failure {
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
pub(super) fn classify(err: &(dyn StdError + 'static)) -> Failure {
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
