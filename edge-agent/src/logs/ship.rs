//! The spool's two tasks: the writer (records from every [`LogSink`] into the spool) and
//! the shipper (spooled lines to the gateway on a `Logs` stream, deleted once acknowledged).

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{LogsHeader, LogsMessage, StreamHeader, MAX_LOGS_FRAME};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use super::spool::{Spool, SpoolStats, SYNC_EVERY};
use super::{LogRecord, LogSink};
use transport::wire::{self, FrameReader, WireError};

/// Lines shipped but not yet acknowledged, at most.
const WINDOW_LINES: u64 = 8_000;
/// One batch, at most (lines are also capped by [`protocol::MAX_BATCH_LINES`]).
const BATCH_BYTES: usize = 256 * 1024;
/// Records the writer takes per spool lock.
const WRITE_CHUNK: usize = 1_024;

/// The agent's log pipeline: a spool fed by a writer task and drained by a shipper.
#[derive(Clone)]
pub struct LogPipeline {
    spool: Arc<Mutex<Spool>>,
    new_lines: Arc<Notify>,
    sink: LogSink,
    /// Asks the writer to write out and sync everything queued before the request.
    flush: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for LogPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPipeline").finish_non_exhaustive()
    }
}

impl LogPipeline {
    /// Opens the spool in `dir` (capped at `max_bytes`) and spawns the writer task on the
    /// current runtime.
    pub fn start(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let spool = Arc::new(Mutex::new(Spool::open(dir, max_bytes)?));
        let new_lines = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let (flush, flush_rx) = mpsc::channel(4);
        tokio::spawn(write_loop(
            rx,
            flush_rx,
            Arc::clone(&spool),
            Arc::clone(&new_lines),
        ));
        Ok(Self {
            spool,
            new_lines,
            sink: LogSink::new(tx),
            flush,
        })
    }

    /// Writes every record queued so far to the spool and syncs it (the agent calls this
    /// as it stops, so that the last lines before a shutdown are not lost with the
    /// process). Waits at most `limit`; returns whether it finished.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        let asked = async { self.flush.send(done).await.is_ok() && wait.await.is_ok() };
        tokio::time::timeout(limit, asked).await.unwrap_or(false)
    }

    /// A handle producers write to.
    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Spool counters.
    pub fn stats(&self) -> SpoolStats {
        self.spool.lock().expect("spool lock").stats()
    }

    /// Per-container read cursors kept in the spool (see [`Spool::cursors`]).
    pub fn cursors(&self) -> std::collections::BTreeMap<String, i64> {
        self.spool.lock().expect("spool lock").cursors()
    }

    /// Ships spooled lines over `conn` until the connection or the stream fails.
    pub async fn ship(&self, conn: &transport::Connection) -> Result<(), ShipError> {
        let (mut send, recv) = conn.open_bi().await?;
        let epoch = self.spool.lock().expect("spool lock").epoch().to_string();
        let header = StreamHeader::Logs(LogsHeader { epoch }.to_map())
            .to_vec()
            .expect("the logs header fits");
        send.write_all(&header).await?;
        let mut reader = FrameReader::new(recv, MAX_LOGS_FRAME);
        let mut acked = match LogsMessage::from_frame(&reader.next().await?)? {
            LogsMessage::Resume { acked } => acked,
            other => {
                return Err(protocol::DecodeError::InvalidPayload(format!(
                    "expected resume first on the logs stream, got {other:?}"
                ))
                .into())
            }
        };
        {
            let mut spool = self.spool.lock().expect("spool lock");
            spool.ack(acked).map_err(io_err)?;
            // The gateway may know less than the spool (its store was reset): start from
            // what it has. Lines already deleted here are simply not found.
            acked = acked.min(spool.stats().acked);
        }
        debug!(acked, "log shipping resumed");
        let mut sent = acked;
        loop {
            while sent - acked < WINDOW_LINES {
                let batch = self
                    .spool
                    .lock()
                    .expect("spool lock")
                    .read_after(sent, protocol::MAX_BATCH_LINES, BATCH_BYTES)
                    .map_err(io_err)?;
                let Some(last) = batch.last() else { break };
                sent = last.seq;
                wire::write_frame(&mut send, &LogsMessage::Batch { lines: batch }.to_frame())
                    .await?;
            }
            tokio::select! {
                frame = reader.next() => match LogsMessage::from_frame(&frame?)? {
                    LogsMessage::Ack { upto } => {
                        acked = acked.max(upto.min(sent));
                        self.spool.lock().expect("spool lock").ack(acked).map_err(io_err)?;
                    }
                    other => debug!(?other, "ignoring logs message"),
                },
                _ = self.new_lines.notified(), if sent - acked < WINDOW_LINES => {}
            }
        }
    }
}

fn io_err(e: io::Error) -> ShipError {
    ShipError::Spool(e)
}

/// Why log shipping stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The stream failed or the gateway sent something malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The connection is gone.
    #[error(transparent)]
    Connection(#[from] transport::ConnectionError),
    /// The spool could not be read or updated.
    #[error("log spool: {0}")]
    Spool(io::Error),
}

impl From<transport::WriteError> for ShipError {
    fn from(e: transport::WriteError) -> Self {
        Self::Wire(e.into())
    }
}

impl From<protocol::DecodeError> for ShipError {
    fn from(e: protocol::DecodeError) -> Self {
        Self::Wire(e.into())
    }
}

/// Writes every record already queued, then syncs: what a flush request waits for.
fn flush_now(
    rx: &mut mpsc::UnboundedReceiver<LogRecord>,
    chunk: &mut Vec<LogRecord>,
    spool: &Mutex<Spool>,
    new_lines: &Notify,
) {
    let mut spool = spool.lock().expect("spool lock");
    // What was queued when the flush was asked for; producers that go on are not waited
    // for.
    let mut left = rx.len();
    loop {
        while chunk.len() < WRITE_CHUNK && left > 0 {
            match rx.try_recv() {
                Ok(r) => chunk.push(r),
                Err(_) => break,
            }
            left -= 1;
        }
        if chunk.is_empty() {
            break;
        }
        if let Err(e) = spool.append(chunk.drain(..)) {
            warn!(error = %e, "cannot write to the log spool; lines dropped");
            chunk.clear();
            break;
        }
    }
    if let Err(e) = spool.sync() {
        warn!(error = %e, "cannot sync the log spool");
    }
    new_lines.notify_one();
}

async fn write_loop(
    mut rx: mpsc::UnboundedReceiver<LogRecord>,
    mut flush: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    spool: Arc<Mutex<Spool>>,
    new_lines: Arc<Notify>,
) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    loop {
        let dirty = spool.lock().expect("spool lock").needs_sync();
        let got = tokio::select! {
            Some(done) = flush.recv() => {
                flush_now(&mut rx, &mut chunk, &spool, &new_lines);
                let _ = done.send(());
                continue;
            }
            r = rx.recv_many(&mut chunk, WRITE_CHUNK) => r,
            // Unsynced lines are synced after a quiet moment.
            _ = tokio::time::sleep(SYNC_EVERY), if dirty => {
                if let Err(e) = spool.lock().expect("spool lock").sync() {
                    warn!(error = %e, "cannot sync the log spool");
                }
                continue;
            }
        };
        if got == 0 {
            let _ = spool.lock().expect("spool lock").sync();
            return;
        }
        let result = spool.lock().expect("spool lock").append(chunk.drain(..));
        if let Err(e) = result {
            // Disk full or gone: the lines are dropped, but said so, and the agent goes on.
            warn!(error = %e, "cannot write to the log spool; lines dropped");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        new_lines.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records queued just before the agent stops reach the disk: after `flush` the spool
    /// holds every one of them, synced.
    #[tokio::test(flavor = "current_thread")]
    async fn flush_writes_every_queued_record_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = LogPipeline::start(dir.path(), 64 << 20).unwrap();
        let sink = pipeline.sink();
        // The writer task has not run yet on this single-threaded runtime: all 5,000 are
        // still in the queue when the flush is asked for.
        for i in 0..5_000 {
            sink.system(format!("line {i}"));
        }
        assert_eq!(pipeline.stats().last_seq, 0, "written before the flush");
        assert!(
            pipeline.flush(Duration::from_secs(10)).await,
            "flush timed out"
        );
        let stats = pipeline.stats();
        assert_eq!(stats.last_seq, 5_000);
        assert!(!pipeline.spool.lock().unwrap().needs_sync(), "not synced");
        let lines = pipeline
            .spool
            .lock()
            .unwrap()
            .read_after(0, 10_000, 64 << 20)
            .unwrap();
        assert_eq!(lines.len(), 5_000);
        assert_eq!(lines.last().unwrap().message, "line 4999");
    }
}
