//! `gateway serve` configuration: a TOML file (`--config`) with every key also settable as
//! a command-line flag; flags win over the file, the file wins over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
    /// The config file is not valid TOML or has unknown keys.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why (names the key and line).
        source: toml::de::Error,
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

/// Configuration of `gateway serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Where the CA, the tunnel certificate and the database live. Default is `./gateway-data`.
    pub data_dir: PathBuf,
    /// Public URLs are `http://<uuid>.<domain>/`. Default is `devices.localhost`.
    pub domain: String,
    /// Public HTTP listener (TCP). Default is `0.0.0.0:80`.
    pub http_listen: SocketAddr,
    /// Tunnel listener (UDP). Default is `0.0.0.0:443`.
    pub tunnel_listen: SocketAddr,
    /// Management API listener (TCP, JSON, bearer tokens). Default is `127.0.0.1:8081`.
    pub api_listen: SocketAddr,
    /// PEM certificate chain for serving the management API over HTTPS. Default is none
    /// (plain HTTP, fine on the default loopback listener).
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key for `api_tls_cert`.
    pub api_tls_key: Option<PathBuf>,
    /// Tunnel address devices dial, `HOST:PORT`, written into provisioning keys. Default is
    /// the bound tunnel address (with this machine's hostname when bound to all
    /// interfaces).
    pub advertise_tunnel: Option<String>,
    /// A silent tunnel is declared dead after this long. Default is 15 s.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval. Default is 5 s.
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
            domain: "devices.localhost".into(),
            http_listen: "0.0.0.0:80".parse().expect("addr"),
            tunnel_listen: "0.0.0.0:443".parse().expect("addr"),
            api_listen: "127.0.0.1:8081".parse().expect("addr"),
            advertise_tunnel: None,
            api_tls_cert: None,
            api_tls_key: None,
            idle_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            terminal_idle_timeout: Duration::from_secs(15 * 60),
            log_retention: crate::logs::DEFAULT_RETENTION,
            log_max_lines_per_device: crate::logs::DEFAULT_MAX_LINES_PER_DEVICE,
            log_prune_interval: Duration::from_secs(600),
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
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks every key, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = self.domain.trim_matches('.');
        if d.is_empty()
            || !d
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(ConfigError::Invalid {
                key: "domain",
                reason: format!("{:?} is not a DNS name", self.domain),
            });
        }
        if self.keep_alive >= self.idle_timeout {
            return Err(ConfigError::Invalid {
                key: "keep_alive",
                reason: format!(
                    "must be shorter than idle_timeout ({:?} >= {:?})",
                    self.keep_alive, self.idle_timeout
                ),
            });
        }
        if self.idle_timeout < Duration::from_millis(500) {
            return Err(ConfigError::Invalid {
                key: "idle_timeout",
                reason: "must be at least 500ms".into(),
            });
        }
        if self.api_tls_cert.is_some() != self.api_tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "api_tls_cert",
                reason: "api_tls_cert and api_tls_key go together".into(),
            });
        }
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::Invalid {
                key: "max_header_bytes",
                reason: "must be at least 8192".into(),
            });
        }
        for (key, d) in [
            ("upstream_timeout", self.upstream_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("terminal_idle_timeout", self.terminal_idle_timeout),
            ("connection_idle_timeout", self.connection_idle_timeout),
            ("auth_backoff", self.auth_backoff),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be more than zero".into(),
                });
            }
        }
        for (key, n) in [
            ("max_connections", self.max_connections.unwrap_or(1)),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("api_max_connections", self.api_max_connections),
            (
                "api_max_connections_per_ip",
                self.api_max_connections_per_ip,
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.auth_backoff_max < self.auth_backoff {
            return Err(ConfigError::Invalid {
                key: "auth_backoff_max",
                reason: format!(
                    "must not be shorter than auth_backoff ({:?} < {:?})",
                    self.auth_backoff_max, self.auth_backoff
                ),
            });
        }
        Ok(())
    }

    /// The domain, lowercase, without leading/trailing dots.
    pub fn normalized_domain(&self) -> String {
        self.domain.trim_matches('.').to_ascii_lowercase()
    }
}

/// Parses `250ms`, `15s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 15s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn file_keys_and_errors() {
        let cfg: ServeConfig =
            toml::from_str("domain = \"example.com\"\nidle_timeout = \"3s\"\n").unwrap();
        assert_eq!(cfg.domain, "example.com");
        assert_eq!(cfg.idle_timeout, Duration::from_secs(3));
        assert_eq!(cfg.http_listen, "0.0.0.0:80".parse().unwrap());
        let err = toml::from_str::<ServeConfig>("domian = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `domian`"), "{err}");
        let bad = ServeConfig {
            domain: "bad domain".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("`domain`"));
    }

    #[test]
    fn limit_keys() {
        let cfg: ServeConfig = toml::from_str(
            "max_connections = 5000\nmax_connections_per_ip = 32\nconnection_idle_timeout = \"30s\"\nauth_backoff_max = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(cfg.max_connections, Some(5000));
        assert_eq!(cfg.max_connections_per_ip, 32);
        assert_eq!(cfg.connection_idle_timeout, Duration::from_secs(30));
        cfg.validate().unwrap();
        assert_eq!(ServeConfig::default().max_connections, None);
        for (bad, key) in [
            ("max_connections = 0", "`max_connections`"),
            (
                "api_max_connections_per_ip = 0",
                "`api_max_connections_per_ip`",
            ),
            (
                "connection_idle_timeout = \"0s\"",
                "`connection_idle_timeout`",
            ),
            (
                "auth_backoff = \"10s\"\nauth_backoff_max = \"5s\"",
                "`auth_backoff_max`",
            ),
        ] {
            let cfg: ServeConfig = toml::from_str(bad).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
