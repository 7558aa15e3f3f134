//! `gateway serve`: its flags, read over the config file.

use super::*;

#[derive(Args)]
pub(super) struct ServeArgs {
    /// TOML file with any of the keys below (flags win over the file).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data dir: CA, tunnel certificate, database. [default: ./gateway-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep fleets, devices, logs and the audit log in this PostgreSQL database
    /// (postgres://user:password@host:port/database) instead of the data dir's SQLite file;
    /// the data dir then holds only the certificates (docs/cluster.md). [default: the data
    /// dir's gateway.db]
    #[arg(long, env = "EDGE_GATEWAY_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// This node's id among gateways sharing one --database (1 to 64 of a-z, 0-9, '-',
    /// '_', '.'). [default: a fresh node-<16 hex> per start]
    #[arg(long)]
    node_id: Option<String>,
    /// Peer link listener (UDP): where the other nodes sharing --database reach this
    /// one, to serve the devices whose tunnel this node holds (docs/cluster.md).
    /// [default: none, no forwarding to this node]
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// HOST:PORT the other nodes dial for the peer link. [default: --peer-listen, which
    /// must then be a specific address]
    #[arg(long)]
    peer_advertise: Option<String>,
    /// Devices are served at http://<uuid>.<domain>/. [default: devices.localhost]
    #[arg(long)]
    domain: Option<String>,
    /// Public HTTP listener (TCP). [default: 0.0.0.0:80]
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Public HTTPS listener (TCP; HTTP/1.1 and h2 by ALPN), serving
    /// https://<uuid>.<domain>/ with --https-cert and --https-key. The same address as
    /// the tunnel's TCP listener shares that port, told apart by ALPN. [default: none]
    #[arg(long, requires = "https_source")]
    https_listen: Option<SocketAddr>,
    /// PEM certificate chain for --https-listen, a wildcard for *.<domain> (read again
    /// when the file changes, and on SIGHUP).
    #[arg(long, group = "https_source", requires_all = ["https_listen", "https_key"])]
    https_cert: Option<PathBuf>,
    /// PEM private key for --https-cert.
    #[arg(long, requires = "https_listen")]
    https_key: Option<PathBuf>,
    /// Answer plain HTTP visitors with a 308 redirect to the same URL over HTTPS.
    #[arg(long, requires = "https_listen")]
    https_redirect: bool,
    /// Get and renew the --https-listen certificate (a wildcard for *.<domain>) from this
    /// ACME directory, by DNS-01 through --acme-dns-hook, instead of --https-cert; kept in
    /// <data-dir>/acme/ (docs/https.md). Let's Encrypt:
    /// https://acme-v02.api.letsencrypt.org/directory [default: none]
    #[arg(long, value_name = "URL", group = "https_source", requires_all = ["https_listen", "acme_dns_hook"])]
    acme_directory: Option<String>,
    /// Program run as `HOOK set NAME VALUE` to publish the DNS-01 TXT record NAME
    /// (_acme-challenge.<domain>.) and `HOOK clear NAME VALUE` to remove it.
    #[arg(long, requires = "acme_directory")]
    acme_dns_hook: Option<PathBuf>,
    /// Contact e-mail for the ACME account. [default: none]
    #[arg(long, requires = "acme_directory")]
    acme_email: Option<String>,
    /// PEM root to trust for the ACME server's HTTPS (a private or test CA). [default:
    /// the system's roots]
    #[arg(long, requires = "acme_directory")]
    acme_root: Option<PathBuf>,
    /// Renew the ACME certificate this long before it expires (1m..=365d). [default: 30d]
    #[arg(long, requires = "acme_directory", value_parser = duration_within(bounds::ACME_RENEW_BEFORE))]
    acme_renew_before: Option<std::time::Duration>,
    /// Tunnel listener (UDP, QUIC). [default: 0.0.0.0:443]
    #[arg(long)]
    tunnel_listen: Option<SocketAddr>,
    /// Tunnel listener over TLS on TCP, for devices whose network blocks UDP.
    /// [default: the --tunnel-listen address and port, on TCP]
    #[arg(long)]
    tunnel_tcp_listen: Option<SocketAddr>,
    /// Management API listener (TCP). [default: 127.0.0.1:8081]
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve the management API over HTTPS.
    #[arg(long, requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// PEM private key for --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// Listener (TCP) serving only GET /metrics (Prometheus text format), with no token:
    /// bind it where only the scraper reaches (docs/metrics.md). [default: none; the
    /// management API serves /metrics to any valid token]
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Tunnel address devices dial, written into provisioning keys. [default: the bound
    /// tunnel address]
    #[arg(long)]
    advertise_tunnel: Option<String>,
    /// A silent TCP tunnel counts as dead after this long (500ms..=1d); QUIC tunnels
    /// take the agent's own idle timeout, up to 240 s or this if longer, and a device
    /// is offline after three missed keep-alives. [default: 15s]
    #[arg(long, value_parser = duration_within(bounds::IDLE_TIMEOUT))]
    idle_timeout: Option<std::time::Duration>,
    /// Keep-alive (HTTP/2 ping) interval of TCP tunnels and the heartbeat interval asked
    /// of agents, below --idle-timeout (10ms..=1d). [default: 5s]
    #[arg(long, value_parser = duration_within(bounds::KEEP_ALIVE))]
    keep_alive: Option<std::time::Duration>,
    /// Visitors get a 504 when the device has not answered within this time (1ms..=1d).
    /// [default: 60s]
    #[arg(long, value_parser = duration_within(bounds::UPSTREAM_TIMEOUT))]
    upstream_timeout: Option<std::time::Duration>,
    /// Visitors and API clients must send a complete request head within this time of
    /// connecting (TLS handshake included), and between keep-alive requests (1ms..=1d).
    /// [default: 10s]
    #[arg(long, value_parser = duration_within(bounds::HEADER_READ_TIMEOUT))]
    header_read_timeout: Option<std::time::Duration>,
    /// Largest request head a visitor may send, in bytes (8192..=1048576). [default: 65536]
    #[arg(long)]
    max_header_bytes: Option<usize>,
    /// Terminal sessions with no bytes either way for this long are closed (1s..=7d).
    /// [default: 15m]
    #[arg(long, value_parser = duration_within(bounds::TERMINAL_IDLE_TIMEOUT))]
    terminal_idle_timeout: Option<std::time::Duration>,
    /// A browser origin (e.g. https://console.example.com) whose pages may open the
    /// terminal and log WebSockets besides the API's own; repeatable. [default: none]
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// A visitor's request body that sends nothing for this long is cut off (408, and the
    /// stream to the device is reset) (1ms..=1d). [default: 30s]
    #[arg(long, value_parser = duration_within(bounds::REQUEST_BODY_IDLE_TIMEOUT))]
    request_body_idle_timeout: Option<std::time::Duration>,
    /// Most public-URL streams open at once to one device; visitors over it get a 503
    /// with Retry-After. At most 3840 (the agent's cap less room for terminals).
    /// [default: 1024]
    #[arg(long)]
    max_streams_per_device: Option<usize>,
    /// Open visitor connections at most, all clients together. [default: derived from the
    /// file-descriptor limit, minus --api-max-connections and 256; 64 to 50000]
    #[arg(long)]
    max_connections: Option<usize>,
    /// Open visitor connections at most from one client address (IPv6: one /64).
    /// [default: 256]
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Open management API connections at most. [default: 256]
    #[arg(long)]
    api_max_connections: Option<usize>,
    /// Open management API connections at most from one client address. [default: 64]
    #[arg(long)]
    api_max_connections_per_ip: Option<usize>,
    /// Visitor and API connections with no request open for this long are closed
    /// (1ms..=1d). [default: 60s]
    #[arg(long, value_parser = duration_within(bounds::CONNECTION_IDLE_TIMEOUT))]
    connection_idle_timeout: Option<std::time::Duration>,
    /// Failed API token checks (and dashboard sign-ins) from one address before it gets 429
    /// for a while (0: off).
    /// [default: 10]
    #[arg(long)]
    auth_failures_before_backoff: Option<u32>,
    /// First 429 window after too many failed token checks; doubles with each further
    /// failure (1ms..=1d). [default: 1s]
    #[arg(long, value_parser = duration_within(bounds::AUTH_BACKOFF))]
    auth_backoff: Option<std::time::Duration>,
    /// Longest 429 window; an address quiet this long is forgotten (1ms..=1d).
    /// [default: 5m]
    #[arg(long, value_parser = duration_within(bounds::AUTH_BACKOFF))]
    auth_backoff_max: Option<std::time::Duration>,
}

impl ServeArgs {
    pub(super) fn into_config(self) -> anyhow::Result<ServeConfig> {
        let mut cfg = match &self.config {
            Some(path) => ServeConfig::load(path)?,
            None => ServeConfig::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { cfg.$field = v; } )* };
        }
        if self.database.is_some() {
            cfg.database = self.database;
        }
        if self.node_id.is_some() {
            cfg.node_id = self.node_id;
        }
        if self.peer_listen.is_some() {
            cfg.peer_listen = self.peer_listen;
        }
        if self.peer_advertise.is_some() {
            cfg.peer_advertise = self.peer_advertise;
        }
        if self.advertise_tunnel.is_some() {
            cfg.advertise_tunnel = self.advertise_tunnel;
        }
        if self.tunnel_tcp_listen.is_some() {
            cfg.tunnel_tcp_listen = self.tunnel_tcp_listen;
        }
        if self.metrics_listen.is_some() {
            cfg.metrics_listen = self.metrics_listen;
        }
        if self.https_listen.is_some() {
            cfg.https_listen = self.https_listen;
            cfg.https_cert = self.https_cert;
            cfg.https_key = self.https_key;
        }
        if self.https_redirect {
            cfg.https_redirect = true;
        }
        if self.acme_directory.is_some() {
            cfg.acme_directory = self.acme_directory;
            cfg.acme_dns_hook = self.acme_dns_hook;
            cfg.acme_email = self.acme_email;
            cfg.acme_root = self.acme_root;
        }
        if self.api_tls_cert.is_some() {
            cfg.api_tls_cert = self.api_tls_cert;
            cfg.api_tls_key = self.api_tls_key;
        }
        if !self.allowed_origins.is_empty() {
            cfg.allowed_origins = self.allowed_origins;
        }
        apply!(
            data_dir,
            domain,
            http_listen,
            tunnel_listen,
            api_listen,
            idle_timeout,
            keep_alive,
            upstream_timeout,
            header_read_timeout,
            max_header_bytes,
            terminal_idle_timeout,
            acme_renew_before,
            request_body_idle_timeout,
            max_streams_per_device,
            max_connections_per_ip,
            api_max_connections,
            api_max_connections_per_ip,
            connection_idle_timeout,
            auth_failures_before_backoff,
            auth_backoff,
            auth_backoff_max
        );
        if self.max_connections.is_some() {
            cfg.max_connections = self.max_connections;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
