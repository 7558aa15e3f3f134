//! `Http` streams: pipe bytes between the gateway and the device's local web server.
//!
//! The gateway speaks HTTP/1.1 on the stream (it terminated the visitor's HTTP/1.1 or
//! HTTP/2 and picked this device); the agent does not parse HTTP at all, it connects to
//! its target, writes one [`TargetStatus`] byte and then copies bytes both ways with
//! half-close propagated. The gateway's connection pool reuses streams across requests,
//! so one stream usually maps to one keep-alive TCP connection on the device.
//!
//! An idle stream holds no copy buffer: bytes from the tunnel are written to the target
//! straight from the transport's own receive buffers ([`transport::RecvStream::read_chunk`]), and the
//! buffer for the other direction is taken only once the target socket is readable and
//! given back as soon as it has nothing more to read. Thousands of idle keep-alive
//! connections or stalled uploads therefore cost the agent a few KiB each, not 128 KiB.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use protocol::{HttpHeader, TargetStatus};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::debug;

use transport::BiStream;

/// Largest piece moved at once in either direction; big enough for bulk transfers. The
/// target→tunnel buffer of this size exists only while the target is sending.
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
            let status = if e.kind() == io::ErrorKind::ConnectionRefused {
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
    let BiStream { send, recv } = &mut stream;
    let (tcp_read, tcp_write) = tcp.into_split();
    let mut sent_all = false;
    // try_join: the first failure in either direction drops the other one, and with it
    // the TCP connection to the target.
    let copied = tokio::try_join!(
        tunnel_to_target(recv, tcp_write),
        target_to_tunnel(tcp_read, send, &mut sent_all)
    );
    match copied {
        Ok((up, down)) => debug!(up, down, "http stream done"),
        Err(e) => {
            // The gateway reset the stream (visitor left, or its body stalled) or the
            // target reset the TCP connection; either way tear down both sides now. A
            // send side already finished keeps its tail: a reset would discard bytes the
            // gateway has not acknowledged yet.
            debug!(error = %e, "http stream aborted");
            if !sent_all {
                send.reset(protocol::AppErrorCode::NoError);
            }
            recv.stop(protocol::AppErrorCode::NoError);
        }
    }
}

/// Gateway → target, straight from the transport's receive buffers; half-closes the target
/// connection when the gateway finishes its side. Returns the bytes moved.
async fn tunnel_to_target(
    recv: &mut transport::RecvStream,
    mut tcp: OwnedWriteHalf,
) -> io::Result<u64> {
    let mut moved = 0u64;
    while let Some(chunk) = recv.read_chunk(COPY_BUF).await? {
        moved += chunk.len() as u64;
        tcp.write_all(&chunk).await?;
    }
    // Ignored: a target that already closed its side makes shutdown fail, and the other
    // direction may still be delivering its last bytes.
    let _ = tcp.shutdown().await;
    Ok(moved)
}

/// Target → gateway. Waits for the target to be readable before taking a buffer and
/// drops it once the socket has nothing more, so an idle connection holds no buffer.
/// Finishes the stream on the target's EOF (`sent_all`). Returns the bytes moved.
async fn target_to_tunnel(
    tcp: OwnedReadHalf,
    send: &mut transport::SendStream,
    sent_all: &mut bool,
) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        tcp.readable().await?;
        let mut buf = BytesMut::with_capacity(COPY_BUF);
        loop {
            match tcp.try_read_buf(&mut buf) {
                Ok(0) => {
                    send.finish().map_err(|_| {
                        io::Error::new(io::ErrorKind::BrokenPipe, "stream closed by the gateway")
                    })?;
                    *sent_all = true;
                    return Ok(moved);
                }
                Ok(n) => {
                    moved += n as u64;
                    send.write_all(&buf).await?;
                    buf.clear();
                }
                // Drained for now: give the buffer back and wait for more.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn refuse(mut stream: BiStream, status: TargetStatus) {
    let _ = stream.send.write_all(&[status as u8]).await;
    let _ = stream.send.finish();
    // Tell the gateway to stop sending the request body; it will not be read.
    stream.recv.stop(protocol::AppErrorCode::NoError);
}
