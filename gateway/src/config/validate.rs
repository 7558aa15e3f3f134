//! [`ServeConfig::validate`]: every key checked, the first bad one named with why.

use super::*;

impl ServeConfig {
    /// Checks every key, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("postgres" | "postgresql")) {
                return Err(ConfigError::Invalid {
                    key: "database",
                    reason: format!(
                        "{:?} is not a PostgreSQL URL (postgres://user:password@host:port/database); \
                         leave it out for the data dir's own SQLite file",
                        crate::datadir::redacted_url(url)
                    ),
                });
            }
        }
        if let Some(addr) = self.peer_listen {
            if self.database.is_none() {
                return Err(ConfigError::Invalid {
                    key: "peer_listen",
                    reason: "a peer link joins nodes sharing one PostgreSQL database: give \
                             `database` too"
                        .into(),
                });
            }
            if addr.ip().is_unspecified() && self.peer_advertise.is_none() {
                return Err(ConfigError::Invalid {
                    key: "peer_advertise",
                    reason: format!(
                        "peer_listen {addr} names no address other nodes can dial: give \
                         peer_advertise HOST:PORT"
                    ),
                });
            }
        }
        if let Some(a) = &self.peer_advertise {
            if self.peer_listen.is_none() || !a.contains(':') {
                return Err(ConfigError::Invalid {
                    key: "peer_advertise",
                    reason: format!("{a:?} must be HOST:PORT, with peer_listen set"),
                });
            }
        }
        if let Some(id) = &self.node_id {
            let ok = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "node_id",
                    reason: format!("{id:?} is not a node id (1 to 64 of a-z, 0-9, '-', '_', '.')"),
                });
            }
        }
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
        for (key, value, b) in [
            ("idle_timeout", self.idle_timeout, bounds::IDLE_TIMEOUT),
            ("keep_alive", self.keep_alive, bounds::KEEP_ALIVE),
            (
                "upstream_timeout",
                self.upstream_timeout,
                bounds::UPSTREAM_TIMEOUT,
            ),
            (
                "header_read_timeout",
                self.header_read_timeout,
                bounds::HEADER_READ_TIMEOUT,
            ),
            (
                "terminal_idle_timeout",
                self.terminal_idle_timeout,
                bounds::TERMINAL_IDLE_TIMEOUT,
            ),
            ("log_retention", self.log_retention, bounds::LOG_RETENTION),
            (
                "acme_renew_before",
                self.acme_renew_before,
                bounds::ACME_RENEW_BEFORE,
            ),
            (
                "log_prune_interval",
                self.log_prune_interval,
                bounds::LOG_PRUNE_INTERVAL,
            ),
            (
                "request_body_idle_timeout",
                self.request_body_idle_timeout,
                bounds::REQUEST_BODY_IDLE_TIMEOUT,
            ),
            (
                "connection_idle_timeout",
                self.connection_idle_timeout,
                bounds::CONNECTION_IDLE_TIMEOUT,
            ),
            ("auth_backoff", self.auth_backoff, bounds::AUTH_BACKOFF),
            (
                "auth_backoff_max",
                self.auth_backoff_max,
                bounds::AUTH_BACKOFF,
            ),
        ] {
            b.check(value).map_err(|e| ConfigError::Invalid {
                key,
                reason: e.to_string(),
            })?;
        }
        if self.keep_alive >= self.idle_timeout {
            return Err(ConfigError::Invalid {
                key: "keep_alive",
                reason: format!(
                    "must be shorter than idle_timeout ({} >= {})",
                    duration::display(self.keep_alive),
                    duration::display(self.idle_timeout)
                ),
            });
        }
        if let Some(dir) = &self.acme_directory {
            let reason = if self.https_listen.is_none() {
                Some("ACME certificates are for https_listen, which is not set".to_string())
            } else if self.https_cert.is_some() || self.https_key.is_some() {
                Some("use either acme_directory or https_cert and https_key, not both".into())
            } else if self.acme_dns_hook.is_none() {
                Some("the wildcard certificate needs DNS-01: set acme_dns_hook".into())
            } else if !(dir.starts_with("https://") || dir.starts_with("http://")) {
                Some(format!("{dir:?} is not an http(s):// URL"))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ConfigError::Invalid {
                    key: "acme_directory",
                    reason,
                });
            }
        } else {
            let https = [
                self.https_listen.is_some(),
                self.https_cert.is_some(),
                self.https_key.is_some(),
            ];
            if https.iter().any(|&b| b) && !https.iter().all(|&b| b) {
                return Err(ConfigError::Invalid {
                    key: "https_listen",
                    reason:
                        "https_listen, https_cert and https_key go together (or set acme_directory)"
                            .into(),
                });
            }
            if self.acme_dns_hook.is_some() {
                return Err(ConfigError::Invalid {
                    key: "acme_dns_hook",
                    reason: "the hook is for ACME: set acme_directory too".into(),
                });
            }
        }
        if self.https_redirect && self.https_listen.is_none() {
            return Err(ConfigError::Invalid {
                key: "https_redirect",
                reason: "redirecting to HTTPS needs https_listen".into(),
            });
        }
        if self.api_tls_cert.is_some() != self.api_tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "api_tls_cert",
                reason: "api_tls_cert and api_tls_key go together".into(),
            });
        }
        if !bounds::MAX_HEADER_BYTES.contains(&self.max_header_bytes) {
            return Err(ConfigError::Invalid {
                key: "max_header_bytes",
                reason: format!(
                    "{} is out of range: it must be between {} and {}",
                    self.max_header_bytes,
                    bounds::MAX_HEADER_BYTES.start(),
                    bounds::MAX_HEADER_BYTES.end()
                ),
            });
        }
        if !bounds::LOG_MAX_LINES_PER_DEVICE.contains(&self.log_max_lines_per_device) {
            return Err(ConfigError::Invalid {
                key: "log_max_lines_per_device",
                reason: format!(
                    "{} is out of range: it must be between {} and {}",
                    self.log_max_lines_per_device,
                    bounds::LOG_MAX_LINES_PER_DEVICE.start(),
                    bounds::LOG_MAX_LINES_PER_DEVICE.end()
                ),
            });
        }
        if let Some(o) = self
            .allowed_origins
            .iter()
            .find(|o| normalize_origin(o).is_none())
        {
            return Err(ConfigError::Invalid {
                key: "allowed_origins",
                reason: format!("{o:?} is not an origin like https://console.example.com"),
            });
        }
        if !(1..=MAX_STREAMS_PER_DEVICE_CAP).contains(&self.max_streams_per_device) {
            return Err(ConfigError::Invalid {
                key: "max_streams_per_device",
                reason: format!(
                    "must be between 1 and {MAX_STREAMS_PER_DEVICE_CAP} (the agent's stream cap \
                     less room for terminals), not {}",
                    self.max_streams_per_device
                ),
            });
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
}
