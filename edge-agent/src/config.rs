//! The agent's runtime options. The device file it reads (`AgentConfig`) is defined in
//! [`certs::device_file`], shared with the gateway that writes it.

use std::time::Duration;

pub use certs::device_file::{AgentConfig, ConfigError};

/// How chatty the idle tunnel may be: the keep-alive cadence, which trades idle traffic
/// for how fast a dead peer is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    /// A keep-alive every second: a restarted gateway is noticed within about a second,
    /// a dead device within about 4 s. About 14 MB a day of idle traffic on QUIC
    /// (measured in BENCHMARKS.md).
    #[default]
    Normal,
    /// A keep-alive every 60 s, for links billed by the byte: under 1 MB a day idle on
    /// QUIC, but a restarted gateway is noticed only at the next keep-alive (up to 60 s),
    /// a dead device after about 3 minutes, and a NAT that forgets its mapping sooner
    /// than 60 s leaves the device unreachable until the next one.
    Metered,
}

impl Link {
    /// Keep-alive interval and idle timeout of this profile.
    pub fn timers(self) -> (Duration, Duration) {
        match self {
            Link::Normal => (Duration::from_secs(1), Duration::from_secs(15)),
            Link::Metered => (Duration::from_secs(60), Duration::from_secs(200)),
        }
    }
}

/// A link name other than `normal` or `metered`.
#[derive(Debug, thiserror::Error)]
#[error("unknown link {0:?}: use normal or metered")]
pub struct UnknownLink(String);

impl std::str::FromStr for Link {
    type Err = UnknownLink;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Link::Normal),
            "metered" => Ok(Link::Metered),
            other => Err(UnknownLink(other.to_string())),
        }
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Normal => "normal",
            Link::Metered => "metered",
        })
    }
}

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
    /// and the gateway declares a device dead after three missed ones. See [`Link`] for
    /// the metered-link setting ([`AgentOptions::with_link`]).
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
    /// Serve `GET /metrics` (Prometheus text, with the API key) on the local API.
    /// Default is false.
    pub metrics: bool,
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
    /// The QUIC congestion controller of the agent's side (what the device sends:
    /// responses, logs, terminal output). Default is CUBIC; BBR for lossy radio links.
    pub congestion: transport::quic::Congestion,
}

impl AgentOptions {
    /// These options with the keep-alive and idle timeout of `link`.
    pub fn with_link(mut self, link: Link) -> Self {
        (self.keep_alive, self.idle_timeout) = link.timers();
        self
    }
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            target: "127.0.0.1:80".into(),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            keep_alive: Link::Normal.timers().0,
            idle_timeout: Link::Normal.timers().1,
            target_connect_timeout: Duration::from_secs(5),
            data_dir: None,
            hooks: None,
            local_api: None,
            metrics: false,
            terminal: Default::default(),
            logs: None,
            reconciler: None,
            route: Default::default(),
            congestion: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_profiles_set_the_keep_alive_and_idle_timeout() {
        let normal = AgentOptions::default();
        assert_eq!(
            (normal.keep_alive, normal.idle_timeout),
            (Duration::from_secs(1), Duration::from_secs(15))
        );
        let metered = AgentOptions::default().with_link("metered".parse().unwrap());
        assert_eq!(
            (metered.keep_alive, metered.idle_timeout),
            (Duration::from_secs(60), Duration::from_secs(200))
        );
        assert!("cellular"
            .parse::<Link>()
            .unwrap_err()
            .to_string()
            .contains("normal or metered"));
    }
}
