//! The holding node's splice: a peer stream joined to a device stream, chunk by chunk
//! in both directions. A finish is passed on as a finish and a reset as a reset (with its
//! code), so each end sees what the other did.

use protocol::AppErrorCode;
use transport::{RecvStream, SendStream};

use crate::sessions::{HttpStreamGuard, StreamHold};

/// Most bytes moved per read.
const CHUNK: usize = 64 * 1024;

/// Keeps the spliced stream counted on the device's session while it runs.
pub(super) enum Hold {
    /// A public-URL stream (counts against the per-device limit).
    Http(#[allow(dead_code)] HttpStreamGuard),
    /// A terminal (lets a moved-away session drain it).
    Other(#[allow(dead_code)] StreamHold),
}

/// Runs until both directions have ended.
pub(super) async fn run(
    peer_send: SendStream,
    peer_recv: RecvStream,
    dev_send: SendStream,
    dev_recv: RecvStream,
    hold: Hold,
) {
    tokio::join!(pump(peer_recv, dev_send), pump(dev_recv, peer_send));
    drop(hold);
}

/// Moves `from` into `to` until `from` ends, passing its end on.
async fn pump(mut from: RecvStream, mut to: SendStream) {
    loop {
        match from.read_chunk(CHUNK).await {
            Ok(Some(chunk)) => {
                if to.write_chunk(chunk).await.is_err() {
                    // The far side stopped reading (or its connection is gone).
                    from.stop(AppErrorCode::NoError);
                    return;
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return;
            }
            Err(e) => {
                to.reset(e.reset_code().unwrap_or(AppErrorCode::NoError));
                return;
            }
        }
    }
}
