//! The agent's runtime options. The device file it reads (`AgentConfig`) is defined in
//! [`certs::device_file`], shared with the gateway that writes it.

use std::time::Duration;

pub use certs::device_file::{AgentConfig, ConfigError};

/// Runtime knobs of the agent. Every field has a sane default.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Where `Http` streams are piped. Default is `127.0.0.1:80`.
    pub target: String,
    /// First backoff ceiling. Default is 500 ms.
    pub backoff_base: Duration,
    /// Largest backoff ceiling. Default is 30 s.
    pub backoff_cap: Duration,
    /// A connection that lasted this long resets the backoff. Default is 30 s.
    pub stable_after: Duration,
    /// Transport keep-alive interval. Default is 1 s: a restarted gateway answers the next
    /// keep-alive with a stateless reset, so the device is back within about a second,
    /// and the gateway declares a device dead after three missed ones. About 10 MB a day
    /// of idle traffic; raise it on metered links.
    pub keep_alive: Duration,
    /// The connection counts as dead after this much silence. Default is 15 s.
    pub idle_timeout: Duration,
    /// Timeout for connecting to the local target. Default is 5 s.
    pub target_connect_timeout: Duration,
    /// State dir (API key, executed action ids). Default is none: actions are refused.
    pub data_dir: Option<std::path::PathBuf>,
    /// Side effects of actions. Default is [`crate::device::Hooks::defaults`] for the data dir.
    pub hooks: Option<crate::device::Hooks>,
    /// Local supervisor API listener. Default is none here; the binary serves it on
    /// `127.0.0.1:48484` unless told otherwise.
    pub local_api: Option<std::net::SocketAddr>,
    /// Terminal sessions (shell, cap, engine socket). Default is
    /// [`crate::handlers::terminal::TerminalOptions::default`].
    pub terminal: crate::handlers::terminal::TerminalOptions,
    /// The log spool and shipper. Default is none: nothing is collected or shipped.
    pub logs: Option<crate::logs::LogPipeline>,
    /// The container reconciler's settings (engine socket, journal dir, locks). Default
    /// is none: the agent runs no containers. Needs a data dir.
    pub reconciler: Option<crate::reconciler::ReconcilerConfig>,
    /// Which transports to dial, and how TCP gets out. Default: QUIC, falling back to
    /// TLS over TCP on the same `host:port` when UDP is blocked, with no proxy.
    pub route: crate::dial::Route,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            target: "127.0.0.1:80".into(),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(15),
            target_connect_timeout: Duration::from_secs(5),
            data_dir: None,
            hooks: None,
            local_api: None,
            terminal: Default::default(),
            logs: None,
            reconciler: None,
            route: Default::default(),
        }
    }
}
