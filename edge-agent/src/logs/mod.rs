//! Device logs: every line the agent collects (its own events, its warnings, the managed
//! containers' stdout and stderr) gets a per-device sequence number, goes to an on-disk
//! spool and is shipped to the gateway on a `Logs` stream.
//!
//! Producers only see [`LogSink`]: a cheap, cloneable handle whose methods never block and
//! never fail (a line that cannot be queued is counted and reported later as suppressed).

use tokio::sync::mpsc;

pub mod engine;
mod ship;
pub mod spool;

pub use ship::{LogPipeline, ShipError};

/// One collected line, before it gets its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch, when the line was produced.
    pub timestamp_ms: i64,
    /// Service name for container output; `None` for the agent's own messages.
    pub service: Option<String>,
    /// Numeric service id (balena's `serviceId`), when known.
    pub service_id: Option<u32>,
    /// Whether the line came from stderr.
    pub is_stderr: bool,
    /// Whether the line is a system message (the agent's own events and warnings).
    pub is_system: bool,
    /// The text, without the trailing newline.
    pub message: String,
    /// For container output: the container id and the line's engine timestamp (ns since
    /// the epoch), so reading resumes after it when the agent restarts.
    pub source: Option<(String, i64)>,
}

/// Where producers hand lines to. Cloning is cheap; all clones feed one spool.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: Option<mpsc::UnboundedSender<LogRecord>>,
}

impl LogSink {
    /// A sink that drops everything (tests and tools that run without a spool).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// A sink feeding `tx`.
    pub fn new(tx: mpsc::UnboundedSender<LogRecord>) -> Self {
        Self { tx: Some(tx) }
    }

    /// Queues one record. Never blocks.
    pub fn push(&self, record: LogRecord) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(record);
        }
    }

    /// An agent event ("Connected to the gateway", "Downloading image web:v2", ...).
    pub fn system(&self, message: impl Into<String>) {
        self.push(LogRecord {
            timestamp_ms: now_ms(),
            service: None,
            service_id: None,
            is_stderr: false,
            is_system: true,
            message: message.into(),
            source: None,
        });
    }

    /// An agent event about one service ("Service started", "Service exited with code 3").
    pub fn service_event(&self, service: &str, message: impl Into<String>) {
        self.push(LogRecord {
            timestamp_ms: now_ms(),
            service: Some(service.to_string()),
            service_id: None,
            is_stderr: false,
            is_system: true,
            message: message.into(),
            source: None,
        });
    }

    /// An agent warning, shipped as a system line on stderr.
    pub fn warning(&self, message: impl Into<String>) {
        self.push(LogRecord {
            timestamp_ms: now_ms(),
            service: None,
            service_id: None,
            is_stderr: true,
            is_system: true,
            message: message.into(),
            source: None,
        });
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A `tracing` layer that copies the agent's own warnings and errors into the device's
/// logs (as system lines on stderr), once a sink is attached with [`WarnLayer::attach`].
#[derive(Debug, Clone, Default)]
pub struct WarnLayer {
    sink: std::sync::Arc<std::sync::OnceLock<LogSink>>,
}

impl WarnLayer {
    /// Starts forwarding to `sink` (only the first call takes effect).
    pub fn attach(&self, sink: LogSink) {
        let _ = self.sink.set(sink);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        let Some(sink) = self.sink.get() else { return };
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                if field.name() == "message" {
                    let _ = write!(self.0, "{value:?}");
                } else {
                    let _ = write!(self.0, " {}={value:?}", field.name());
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0.push_str(value);
                } else {
                    self.0.push_str(&format!(" {}={value}", field.name()));
                }
            }
        }
        let mut f = Fields(String::new());
        event.record(&mut f);
        sink.warning(f.0);
    }
}
