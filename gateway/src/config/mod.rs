//! `gateway serve` configuration: a TOML file (`--config`) with every key also settable as
//! a command-line flag; flags win over the file, the file wins over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::duration::{self, Bounds, DurationError, DAY, MINUTE, SECOND, TEN_YEARS};
use serde::{Deserialize, Deserializer};

/// The range each duration setting accepts, shared by the config keys and the flags of
/// `gateway serve` and the operator commands.
pub mod bounds {
    use super::*;

    /// `idle_timeout`: QUIC encodes up to 2^62 ms; beyond a day a dead tunnel would hold
    /// its device "online" for no good reason.
    pub const IDLE_TIMEOUT: Bounds = Bounds::new(Duration::from_millis(500), DAY);
    /// `keep_alive` (also below `idle_timeout`).
    pub const KEEP_ALIVE: Bounds = Bounds::new(Duration::from_millis(10), DAY);
    /// `upstream_timeout`.
    pub const UPSTREAM_TIMEOUT: Bounds = Bounds::new(Duration::from_millis(1), DAY);
    /// `header_read_timeout`.
    pub const HEADER_READ_TIMEOUT: Bounds = Bounds::new(Duration::from_millis(1), DAY);
    /// `request_body_idle_timeout`.
    pub const REQUEST_BODY_IDLE_TIMEOUT: Bounds = Bounds::new(Duration::from_millis(1), DAY);
    /// `connection_idle_timeout`.
    pub const CONNECTION_IDLE_TIMEOUT: Bounds = Bounds::new(Duration::from_millis(1), DAY);
    /// `auth_backoff` and `auth_backoff_max`.
    pub const AUTH_BACKOFF: Bounds = Bounds::new(Duration::from_millis(1), DAY);
    /// `terminal_idle_timeout`.
    pub const TERMINAL_IDLE_TIMEOUT: Bounds = Bounds::new(SECOND, Duration::from_secs(7 * 86_400));
    /// `acme_renew_before`: renew the ACME certificate this long before it expires.
    pub const ACME_RENEW_BEFORE: Bounds = Bounds::new(MINUTE, Duration::from_secs(365 * 86_400));
    /// `log_retention`: at least a minute, so a bare number meant as days (`30`) cannot
    /// delete every line within seconds.
    pub const LOG_RETENTION: Bounds = Bounds::new(MINUTE, TEN_YEARS);
    /// `log_prune_interval`.
    pub const LOG_PRUNE_INTERVAL: Bounds = Bounds::new(Duration::from_millis(100), DAY);
    /// `gateway action --ttl`.
    pub const ACTION_TTL: Bounds = Bounds::new(SECOND, TEN_YEARS);
    /// `gateway key create --expires`.
    pub const KEY_EXPIRY: Bounds = Bounds::new(SECOND, TEN_YEARS);
    /// `gateway support grant --for`: support access is for hours or days, not for good.
    pub const SUPPORT_GRANT: Bounds = Bounds::new(SECOND, Duration::from_secs(30 * 86_400));
    /// A share link's life (`gateway device share --for`, the dashboard's share form): a
    /// second to a year, as the API's `for_secs`.
    pub const SHARE_LINK: Bounds = Bounds::new(SECOND, Duration::from_secs(365 * 86_400));
    /// `since`/`until` of the logs API and `gateway logs --since`: how long ago.
    pub const LOGS_AGO: Bounds = Bounds::new(Duration::ZERO, duration::MAX);
    /// `max_header_bytes`: hyper needs 8 KiB; more than 1 MiB of headers is an attack.
    pub const MAX_HEADER_BYTES: std::ops::RangeInclusive<usize> = 8192..=1024 * 1024;
    /// `log_max_lines_per_device`.
    pub const LOG_MAX_LINES_PER_DEVICE: std::ops::RangeInclusive<i64> = 1..=1_000_000_000;
}

/// Errors in the gateway configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has unknown keys or a value of the wrong kind.
    /// The message never quotes the file's text: a line of it may be a secret.
    #[error("{}{}{message}", file_prefix(path), location(key, *line, *column))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The key involved, when known (`idle_timeout`).
        key: Option<String>,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column of the error, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A key has an invalid value.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Largest allowed `max_streams_per_device`: the agent accepts 4096 gateway-opened
/// streams, and 256 of them stay free for terminal sessions whatever visitors do.
pub const MAX_STREAMS_PER_DEVICE_CAP: usize = 4096 - 256;

/// Configuration of `gateway serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Where the CA, the tunnel certificate and the database live. Default is `./gateway-data`.
    pub data_dir: PathBuf,
    /// A PostgreSQL database (`postgres://user:password@host:port/database`) instead of
    /// the data dir's SQLite file (docs/cluster.md). Default is none (the
    /// embedded SQLite file). Can also be given as `EDGE_GATEWAY_DATABASE`, which keeps the
    /// password out of `ps`.
    pub database: Option<String>,
    /// This node's id among the gateways sharing `database` (it names the node in the
    /// device routes and leases). Default is a fresh `node-<16 hex>` per start.
    pub node_id: Option<String>,
    /// Peer link listener (UDP, QUIC with node certificates of the fleet CA): where the
    /// other nodes sharing `database` reach this one to serve devices whose tunnel this
    /// node holds. Default is none: this node answers only for its own tunnels, and the
    /// others cannot forward to it. Needs `database`.
    pub peer_listen: Option<SocketAddr>,
    /// `HOST:PORT` the other nodes dial for the peer link. Default is `peer_listen`
    /// (which must then name an address, not 0.0.0.0 or ::).
    pub peer_advertise: Option<String>,
    /// Public URLs are `http://<uuid>.<domain>/`. Default is `devices.localhost`.
    pub domain: String,
    /// Public HTTP listener (TCP). Default is `0.0.0.0:80`.
    pub http_listen: SocketAddr,
    /// Public HTTPS listener (TCP; HTTP/1.1 and h2 by ALPN), with the certificate in
    /// `https_cert` and `https_key` (a wildcard for `*.<domain>`). Default is none.
    pub https_listen: Option<SocketAddr>,
    /// PEM certificate chain for `https_listen`; read again when the file changes and on
    /// SIGHUP.
    pub https_cert: Option<PathBuf>,
    /// PEM private key for `https_cert`.
    pub https_key: Option<PathBuf>,
    /// Answer plain HTTP visitors with a permanent redirect (308) to the same URL on
    /// `https_listen`. Default is false.
    pub https_redirect: bool,
    /// ACME directory URL (e.g. `https://acme-v02.api.letsencrypt.org/directory`): the
    /// gateway gets and renews the wildcard certificate for `*.<domain>` itself, by DNS-01
    /// through `acme_dns_hook`, instead of reading `https_cert` and `https_key`. Needs
    /// `https_listen`. Default is none.
    pub acme_directory: Option<String>,
    /// Program run as `HOOK set NAME VALUE` to publish the DNS-01 TXT record (`NAME` is
    /// `_acme-challenge.<domain>.`) and `HOOK clear NAME VALUE` to remove it; exit status 0
    /// means done. Needed with `acme_directory`.
    pub acme_dns_hook: Option<PathBuf>,
    /// Contact address given to the ACME server for the account. Default is none.
    pub acme_email: Option<String>,
    /// PEM root to trust for the ACME server's own HTTPS (a private or test CA). Default
    /// is the system's roots.
    pub acme_root: Option<PathBuf>,
    /// Renew the ACME certificate this long before it expires. Default is 30 days.
    #[serde(deserialize_with = "de_duration")]
    pub acme_renew_before: Duration,
    /// Tunnel listener (UDP). Default is `0.0.0.0:443`.
    pub tunnel_listen: SocketAddr,
    /// Tunnel listener over TLS on TCP, for devices whose network blocks UDP. Default is
    /// none: the same address and port as `tunnel_listen` (TCP 443 by default).
    pub tunnel_tcp_listen: Option<SocketAddr>,
    /// Management API listener (TCP, JSON, bearer tokens). Default is `127.0.0.1:8081`.
    pub api_listen: SocketAddr,
    /// PEM certificate chain for serving the management API over HTTPS. Default is none
    /// (plain HTTP, fine on the default loopback listener).
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key for `api_tls_cert`.
    pub api_tls_key: Option<PathBuf>,
    /// A listener of its own (TCP, plain HTTP) serving only `GET /metrics`, with no
    /// token: for a Prometheus server that scrapes without one (docs/metrics.md). Bind it
    /// where only the scraper reaches. Default is none (`/metrics` is then on the
    /// management API only, for any valid token).
    pub metrics_listen: Option<SocketAddr>,
    /// Tunnel address devices dial, `HOST:PORT`, written into provisioning keys. Default is
    /// the bound tunnel address (with this machine's hostname when bound to all
    /// interfaces).
    pub advertise_tunnel: Option<String>,
    /// A silent tunnel is declared dead after this long: TCP tunnels, and QUIC tunnels
    /// of agents that do not announce their keep-alive. Default is 15 s. QUIC tunnels
    /// accept the agent's own idle timeout up to 240 s (its metered-link setting uses
    /// 200 s); the gateway calls a device dead after three of its keep-alives go missing.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Keep-alive interval of TCP tunnels (HTTP/2 pings) and the heartbeat interval the
    /// gateway asks agents for. Default is 5 s. On QUIC only the agent keeps the
    /// tunnel alive.
    #[serde(deserialize_with = "de_duration")]
    pub keep_alive: Duration,
    /// A device that has not started answering a request within this time gets a 504.
    /// Default is 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub upstream_timeout: Duration,
    /// A visitor or API client must send a complete request head within this time of
    /// connecting (TLS handshake included) and between keep-alive requests. Default is 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) a visitor may send. Default is 64 KiB.
    pub max_header_bytes: usize,
    /// A terminal session with no bytes either way for this long is closed. Default is
    /// 15 min.
    #[serde(deserialize_with = "de_duration")]
    pub terminal_idle_timeout: Duration,
    /// Device log lines older than this are deleted. Default is 7 days.
    #[serde(deserialize_with = "de_duration")]
    pub log_retention: Duration,
    /// At most this many log lines are kept per device (the oldest go). Default 1,000,000.
    pub log_max_lines_per_device: i64,
    /// How often retention runs. Default is 10 min.
    #[serde(deserialize_with = "de_duration")]
    pub log_prune_interval: Duration,
    /// Browser origins (`https://console.example.com`) whose pages may open the terminal
    /// and log WebSockets, besides the API's own (the request's `Host`). Clients that send
    /// no `Origin` (the CLI) are always let in. Default is none.
    pub allowed_origins: Vec<String>,
    /// A visitor's request body that sends nothing for this long, while the gateway waits
    /// for it, is cut off: the visitor gets a 408 and the stream to the device is reset.
    /// Default is 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub request_body_idle_timeout: Duration,
    /// Most public-URL streams open at once to one device (requests in flight,
    /// WebSockets, idle keep-alive streams); visitors over it get a 503 with
    /// `Retry-After` at once. Kept well below the agent's stream cap so terminals always
    /// have room. Default is 1024; at most [`MAX_STREAMS_PER_DEVICE_CAP`].
    pub max_streams_per_device: usize,
    /// Open visitor connections at most (public listener, all clients together). Default
    /// is derived from the file-descriptor limit: what it leaves after
    /// `api_max_connections` and 256 fds for the gateway's own files, within 64..=50,000.
    pub max_connections: Option<usize>,
    /// Open visitor connections at most from one client address (IPv6: one /64). Default
    /// is 256: room for an office behind one NAT address (browsers open up to 6
    /// connections per device URL).
    pub max_connections_per_ip: usize,
    /// Open management API connections at most. Default is 256.
    pub api_max_connections: usize,
    /// Open management API connections at most from one client address. Default is 64.
    pub api_max_connections_per_ip: usize,
    /// A visitor or API connection with no request open for this long is closed (HTTP/1
    /// keep-alive connections also close when `header_read_timeout` passes without a new
    /// request). Default is 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub connection_idle_timeout: Duration,
    /// Failed API token checks from one client address before it is refused with 429 for
    /// a while; 0 turns the back-off off. Default is 10.
    pub auth_failures_before_backoff: u32,
    /// The first refusal window after `auth_failures_before_backoff` failures; each further
    /// failure doubles it. Default is 1 s.
    #[serde(deserialize_with = "de_duration")]
    pub auth_backoff: Duration,
    /// The longest refusal window; an address quiet this long is forgotten. Default is
    /// 5 min.
    #[serde(deserialize_with = "de_duration")]
    pub auth_backoff_max: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./gateway-data"),
            database: None,
            node_id: None,
            peer_listen: None,
            peer_advertise: None,
            domain: "devices.localhost".into(),
            http_listen: "0.0.0.0:80".parse().expect("addr"),
            https_listen: None,
            https_cert: None,
            https_key: None,
            https_redirect: false,
            acme_directory: None,
            acme_dns_hook: None,
            acme_email: None,
            acme_root: None,
            acme_renew_before: Duration::from_secs(30 * 86_400),
            tunnel_listen: "0.0.0.0:443".parse().expect("addr"),
            tunnel_tcp_listen: None,
            api_listen: "127.0.0.1:8081".parse().expect("addr"),
            advertise_tunnel: None,
            api_tls_cert: None,
            api_tls_key: None,
            metrics_listen: None,
            idle_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            terminal_idle_timeout: Duration::from_secs(15 * 60),
            log_retention: crate::logs::DEFAULT_RETENTION,
            log_max_lines_per_device: crate::logs::DEFAULT_MAX_LINES_PER_DEVICE,
            log_prune_interval: Duration::from_secs(600),
            allowed_origins: Vec::new(),
            request_body_idle_timeout: Duration::from_secs(30),
            max_streams_per_device: 1024,
            max_connections: None,
            max_connections_per_ip: 256,
            api_max_connections: 256,
            api_max_connections_per_ip: 64,
            connection_idle_timeout: Duration::from_secs(60),
            auth_failures_before_backoff: 10,
            auth_backoff: Duration::from_secs(1),
            auth_backoff_max: Duration::from_secs(5 * 60),
        }
    }
}

impl ServeConfig {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| e.in_file(path))
    }

    /// Parses TOML text; missing keys take their defaults. Errors carry no file name
    /// (see [`ConfigError::in_file`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        // serde_path_to_error names the key of a bad value (toml only gives a position).
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let path = e.path().to_string();
            let key = (!path.is_empty() && path != ".").then_some(path);
            let e = e.into_inner();
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_column(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError::Parse {
                path: PathBuf::new(),
                key,
                line,
                column,
                message: e.message().trim_end().to_string(),
            }
        })
    }

    /// The domain, lowercase, without leading/trailing dots.
    pub fn normalized_domain(&self) -> String {
        self.domain.trim_matches('.').to_ascii_lowercase()
    }
}

impl ConfigError {
    /// The same error, naming the file it came from.
    pub fn in_file(self, file: &Path) -> Self {
        match self {
            Self::Parse {
                key,
                line,
                column,
                message,
                ..
            } => Self::Parse {
                path: file.to_path_buf(),
                key,
                line,
                column,
                message,
            },
            other => other,
        }
    }
}

fn file_prefix(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

fn location(key: &Option<String>, line: Option<usize>, column: Option<usize>) -> String {
    let mut out = String::new();
    if let Some(l) = line {
        out.push_str(&format!("line {l}"));
        if let Some(c) = column {
            out.push_str(&format!(", column {c}"));
        }
        out.push_str(": ");
    }
    if let Some(k) = key {
        out.push_str(&format!("`{k}`: "));
    }
    out
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses a duration (`250ms`, `15s`, `2m`, `1h30m`, `7d`, or bare seconds) of at most
/// [`duration::MAX`]; each setting's own range is checked by [`ServeConfig::validate`].
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    duration::parse(s)
}

/// A clap value parser for a duration flag within `b`; clap's error names the flag.
pub fn duration_within(
    b: Bounds,
) -> impl Fn(&str) -> Result<Duration, DurationError> + Clone + Send + Sync + 'static {
    move |s| b.parse(s)
}

/// A duration key: a string (`"15s"`) or integer seconds.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"15s\", \"2m\", \"7d\", or integer seconds")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{v} is negative: a duration cannot be")))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            // Anything a Duration holds: validate() then checks the key's own range, so
            // the error names that range rather than a general one.
            Bounds::new(Duration::ZERO, Duration::MAX)
                .parse(v)
                .map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// An origin, `http[s]://host[:port]`, as (scheme, authority): lowercase, without the
/// scheme's default port and a trailing `/`. `None` for anything else: `null`, a path,
/// user info, another scheme.
pub(crate) fn normalize_origin(origin: &str) -> Option<(String, String)> {
    let uri: http::Uri = origin.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some()
    {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(p) if p != default_port => (scheme, format!("{host}:{p}")),
        _ => (scheme, host),
    })
}

mod validate;

#[cfg(test)]
mod tests;
