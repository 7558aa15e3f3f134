//! `Http` streams: pipe bytes between the gateway and the device's local web server.
//!
//! The gateway speaks HTTP/1.1 on the stream (it terminated the visitor's HTTP/1.1 or
//! HTTP/2 and picked this device); the agent does not parse HTTP at all, it connects to
//! its target, writes one [`TargetStatus`] byte and then copies bytes both ways with
//! half-close propagated. The gateway's connection pool reuses streams across requests,
//! so one stream usually maps to one keep-alive TCP connection on the device.

use std::time::Duration;

use protocol::{HttpHeader, TargetStatus};
use tokio::net::TcpStream;
use tracing::debug;

use crate::wire::BiStream;

/// Copy buffer per direction; big enough for bulk transfers, small enough for many streams.
const COPY_BUF: usize = 64 * 1024;

/// Serves one `Http` stream until either side closes it.
pub async fn serve(
    mut stream: BiStream,
    header: HttpHeader,
    default_target: &str,
    connect_timeout: Duration,
) {
    let target = match header.port {
        // The header may pick another port on the same host as the default target.
        Some(port) => match default_target.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{port}"),
            None => format!("127.0.0.1:{port}"),
        },
        None => default_target.to_string(),
    };
    let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(&target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let status = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                TargetStatus::Refused
            } else {
                TargetStatus::Unreachable
            };
            debug!(%target, error = %e, "target connect failed");
            return refuse(stream, status).await;
        }
        Err(_) => {
            debug!(%target, "target connect timed out");
            return refuse(stream, TargetStatus::Timeout).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    if stream
        .send
        .write_all(&[TargetStatus::Connected as u8])
        .await
        .is_err()
    {
        return;
    }
    let mut tcp = tcp;
    match tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut tcp, COPY_BUF, COPY_BUF).await
    {
        Ok((up, down)) => debug!(up, down, "http stream done"),
        Err(e) => {
            // The gateway reset the stream (visitor left) or the target reset the TCP
            // connection; either way tear down both sides now.
            debug!(error = %e, "http stream aborted");
            let _ = stream
                .send
                .reset(crate::wire::varint(protocol::AppErrorCode::NoError));
        }
    }
}

async fn refuse(mut stream: BiStream, status: TargetStatus) {
    let _ = stream.send.write_all(&[status as u8]).await;
    let _ = stream.send.finish();
    // Tell the gateway to stop sending the request body; it will not be read.
    let _ = stream.recv.stop(quinn::VarInt::from_u32(0));
}
