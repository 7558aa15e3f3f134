//! Device logs: every line the agent collects (its own events, its warnings, the managed
//! containers' stdout and stderr) gets a per-device sequence number, goes to an on-disk
//! spool and is shipped to the gateway on a `Logs` stream.
//!
//! Producers only see [`LogSink`]: a cheap, cloneable handle whose methods never block and
//! never fail (a line that cannot be queued is counted and reported later as suppressed).

use tokio::sync::mpsc;

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
