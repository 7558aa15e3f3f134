//! The gateway: the QUIC endpoint devices dial, the public HTTP router that serves
//! `http://<uuid>.<domain>/` through those tunnels, and the operator commands.
//!
//! [`Gateway::bind`] opens the data dir (CA, tunnel certificate, SQLite store) and binds
//! both listeners; [`Gateway::run`] serves until its cancellation token fires. The binary
//! in `main.rs` only parses flags and calls into here.
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
mod dashboard;
pub mod datadir;
#[cfg(feature = "demo")]
pub mod demo;
mod histogram;
mod listener;
pub mod logs;
pub mod metrics;
pub mod node;
mod passwords;
mod peer;
mod proxy;
mod run;
pub mod sessions;
pub mod ssh;
pub mod store;
pub mod support;
pub mod targets;
mod tunnel;
mod users;
pub mod wake;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certs::device_file::AgentConfig;
use protocol::DeviceUuid;
use tokio::net::TcpListener;
use tracing::warn;

pub use config::ServeConfig;
use sessions::Sessions;
use store::{Store, StoreError};
pub use support::SupportGrant;

/// Errors that stop the gateway or an operator command.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data dir is missing, incomplete, mismatched or in use by another `serve`.
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    /// The CA or a certificate could not be loaded or created.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration could not be turned into a QUIC one.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// An offline command named a fleet or device the store does not have.
    #[error("{0}")]
    NotFound(String),
    /// A request refused as given (a support grant for the admin role, or for longer
    /// than 30 days); the message says why.
    #[error("{0}")]
    Refused(String),
}

/// A gateway with its listeners bound, ready to [`run`](Gateway::run).
pub struct Gateway {
    cfg: ServeConfig,
    store: Store,
    node: Arc<node::Node>,
    sessions: Arc<Sessions>,
    endpoint: quinn::Endpoint,
    tunnel_tcp: TcpListener,
    /// The tunnel's TLS configuration, for TCP (QUIC holds its own copy).
    tunnel_tls: Arc<rustls::ServerConfig>,
    http: TcpListener,
    /// `--https-listen`, and the certificate it serves (reloaded as its files change). No
    /// listener of its own when it is the tunnel's TCP address: the port is shared, told
    /// apart by ALPN (`listener::demux`).
    https: Option<(Option<TcpListener>, Arc<proxy::https::CertFiles>)>,
    api: TcpListener,
    api_tls: Option<Arc<rustls::ServerConfig>>,
    /// `--metrics-listen`: `/metrics` without a token.
    metrics: Option<TcpListener>,
    ca: Arc<certs::Ca>,
    fingerprint: String,
    /// The peer link: this node's QUIC endpoint for other nodes (with `--peer-listen`),
    /// and the asking side (on PostgreSQL).
    peer_endpoint: Option<quinn::Endpoint>,
    peers: Option<Arc<peer::Peers>>,
    // Held until the gateway stops: no second `serve` on this data dir meanwhile.
    _serve_lock: datadir::ServeLock,
}

impl Gateway {
    /// Opens the data dir and binds both listeners. A new data dir (with a new CA) is
    /// created only where none of its files exists; a partial one, an empty database, a
    /// CA that does not match the database, or a data dir another `serve` holds, is
    /// refused (see [`datadir`]).
    pub async fn bind(cfg: ServeConfig) -> Result<Self, GatewayError> {
        cfg.validate()?;
        let datadir::Opened {
            ca,
            reset_key,
            server: server_id,
            store,
            lock,
        } = datadir::open_for_serve(&cfg.data_dir, cfg.database.as_deref()).await?;
        let tls = certs::server_config(ca.cert_pem(), &server_id)?;
        let tunnel_tls = Arc::new(tls.clone());
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| GatewayError::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server_config.transport_config(Arc::new(tunnel::transport_config(cfg.idle_timeout)));
        let node = node::Node::new(cfg.node_id.clone());
        // Every node mints its own peer-link certificate from the fleet CA at start: only
        // a holder of the CA key can, and a node of another fleet's CA is refused.
        let (peer_endpoint, peers) = if store.is_postgres() {
            let id = ca.issue_node(node.id())?;
            let peers = peer::Peers::new(
                node.id(),
                store.clone(),
                certs::peer_client_config(ca.cert_pem(), &id)?,
            )
            .map_err(|source| GatewayError::Bind {
                addr: "0.0.0.0:0".parse().expect("addr"),
                source,
            })?;
            let endpoint = match cfg.peer_listen {
                Some(addr) => {
                    let server =
                        peer::server_config(certs::peer_server_config(ca.cert_pem(), &id)?)
                            .map_err(GatewayError::Quic)?;
                    let socket = transport::net::udp_socket(addr)
                        .map_err(|source| GatewayError::Bind { addr, source })?;
                    let ep = transport::quic::endpoint(socket, Some(server), None)
                        .map_err(|source| GatewayError::Bind { addr, source })?;
                    let bound = ep
                        .local_addr()
                        .map_err(|source| GatewayError::Bind { addr, source })?;
                    node.set_peer_addr(
                        cfg.peer_advertise
                            .clone()
                            .unwrap_or_else(|| bound.to_string()),
                    );
                    Some(ep)
                }
                None => None,
            };
            (endpoint, Some(Arc::new(peers)))
        } else {
            (None, None)
        };
        if store.is_postgres() {
            // Other nodes may hold tunnels: take this node's lease, and clear only the
            // routes of nodes that are dead.
            store
                .renew_lease(node.id(), node.peer_addr(), node::LEASE_TTL)
                .await?;
            store
                .sweep_dead_nodes(Duration::from_secs(24 * 3600))
                .await?;
        } else {
            store.reset_single_node().await?;
        }
        let socket =
            transport::net::udp_socket(cfg.tunnel_listen).map_err(|source| GatewayError::Bind {
                addr: cfg.tunnel_listen,
                source,
            })?;
        // The persisted reset key lets devices of the previous run learn at once that
        // their connection is gone (see `datadir::RESET_KEY_FILE`).
        let endpoint = transport::quic::endpoint(socket, Some(server_config), Some(&reset_key))
            .map_err(|source| GatewayError::Bind {
                addr: cfg.tunnel_listen,
                source,
            })?;
        // TCP beside UDP: the same address and port unless told otherwise.
        let tcp_addr = match cfg.tunnel_tcp_listen {
            Some(a) => a,
            None => endpoint.local_addr().map_err(|source| GatewayError::Bind {
                addr: cfg.tunnel_listen,
                source,
            })?,
        };
        let tunnel_tcp = tcp_listener(tcp_addr).map_err(|source| GatewayError::Bind {
            addr: tcp_addr,
            source,
        })?;
        let http = tcp_listener(cfg.http_listen).map_err(|source| GatewayError::Bind {
            addr: cfg.http_listen,
            source,
        })?;
        let https = match (cfg.https_listen, &cfg.https_cert, &cfg.https_key) {
            (Some(addr), cert, key) if cert.is_some() || cfg.acme_directory.is_some() => {
                let files = match (cert, key) {
                    // Read first: a bad certificate stops the start before anything binds.
                    (Some(cert), Some(key)) => proxy::https::CertFiles::load(cert, key)?,
                    // ACME's files, which the first order writes.
                    _ => {
                        let dir = cfg.data_dir.join(ACME_DIR);
                        proxy::https::CertFiles::pending(
                            &proxy::acme::AcmeConfig::cert_path(&dir),
                            &proxy::acme::AcmeConfig::key_path(&dir),
                        )
                    }
                };
                if addr.port() != 0 && addr == tcp_addr {
                    Some((None, files))
                } else {
                    let l =
                        tcp_listener(addr).map_err(|source| GatewayError::Bind { addr, source })?;
                    Some((Some(l), files))
                }
            }
            _ => None,
        };
        let api = tcp_listener(cfg.api_listen).map_err(|source| GatewayError::Bind {
            addr: cfg.api_listen,
            source,
        })?;
        let metrics = match cfg.metrics_listen {
            Some(addr) => {
                Some(tcp_listener(addr).map_err(|source| GatewayError::Bind { addr, source })?)
            }
            None => None,
        };
        let api_tls = match (&cfg.api_tls_cert, &cfg.api_tls_key) {
            (Some(c), Some(k)) => {
                let read = |p: &Path| {
                    std::fs::read_to_string(p).map_err(|source| certs::CertError::Io {
                        path: p.to_path_buf(),
                        source,
                    })
                };
                Some(Arc::new(certs::https_server_config(&read(c)?, &read(k)?)?))
            }
            _ => None,
        };
        Ok(Self {
            fingerprint: ca.fingerprint(),
            peer_endpoint,
            peers,
            api_tls,
            ca: Arc::new(ca),
            _serve_lock: lock,
            cfg,
            store,
            node,
            sessions: Arc::new(Sessions::default()),
            endpoint,
            tunnel_tcp,
            tunnel_tls,
            http,
            https,
            api,
            metrics,
        })
    }

    /// This node's id (`--node-id`, or a fresh one per start).
    pub fn node_id(&self) -> &str {
        self.node.id()
    }

    /// The bound public HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The bound public HTTPS address, if there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(l, _)| match l {
            Some(l) => l.local_addr().expect("bound listener has an address"),
            None => self.tunnel_tcp_addr(),
        })
    }

    /// The bound management API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The bound `--metrics-listen` address, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    /// The bound tunnel (UDP) address.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("bound endpoint has an address")
    }

    /// The bound tunnel (TCP) address.
    pub fn tunnel_tcp_addr(&self) -> SocketAddr {
        self.tunnel_tcp
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The tunnel address devices are told to dial (in provisioning keys).
    pub fn advertised_tunnel(&self) -> String {
        if let Some(a) = &self.cfg.advertise_tunnel {
            return a.clone();
        }
        let addr = self.tunnel_addr();
        if addr.ip().is_unspecified() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{host}:{}", addr.port())
        } else {
            addr.to_string()
        }
    }

    /// SHA-256 fingerprint of the fleet CA.
    pub fn ca_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The live session registry (for tests and status pages).
    pub fn sessions(&self) -> Arc<Sessions> {
        Arc::clone(&self.sessions)
    }
}

/// Pending connections the kernel may queue per TCP listener (capped by
/// `net.core.somaxconn`). tokio's `bind` uses 128, which a burst of visitors, or a moment
/// without free fds, fills at once; beyond it the kernel drops SYNs and clients stall on
/// retransmits.
const LISTEN_BACKLOG: u32 = 1024;

/// The data dir's folder for the ACME account, certificate and key.
const ACME_DIR: &str = "acme";

/// Binds a TCP listener with [`LISTEN_BACKLOG`].
fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's `bind`: a restarted gateway can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Registers a device offline and returns the agent configuration file for it: identity,
/// CA and gateway address (`gateway device add`). A running gateway accepts it at once.
/// The data dir must exist (see [`datadir::open_existing_in`]); `database` is the
/// PostgreSQL URL of a gateway that runs on one (`None`: the data dir's SQLite file).
pub async fn add_device(
    data_dir: &Path,
    database: Option<&str>,
    uuid: Option<DeviceUuid>,
    public_url: bool,
    gateway_addr: &str,
) -> Result<AgentConfig, GatewayError> {
    // Never creates a data dir: a mistyped --data-dir must not mint a CA.
    let (ca, store) = datadir::open_existing_in(data_dir, database).await?;
    let uuid = uuid.unwrap_or_else(certs::random_uuid);
    let identity = ca.issue_device(uuid)?;
    store.add_device(uuid, public_url).await?;
    store.close().await;
    Ok(AgentConfig {
        uuid: uuid.to_string(),
        gateway: gateway_addr.to_string(),
        server_name: certs::TUNNEL_SERVER_NAME.to_string(),
        ca_cert: ca.cert_pem().to_string(),
        cert: identity.cert_pem,
        key: identity.key_pem,
        target: None,
    })
}

/// Creates a support grant offline (`gateway support grant`): a `role` token that reaches
/// only `scope` and expires after `valid_for` (see [`support::grant`]). The fleet or device
/// must exist.
pub async fn create_support_grant(
    data_dir: &Path,
    database: Option<&str>,
    role: api::auth::Role,
    name: &str,
    scope: &store::TokenScope,
    valid_for: Duration,
) -> Result<SupportGrant, GatewayError> {
    let (_, store) = datadir::open_existing_in(data_dir, database).await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let g = support::grant(&store, &format!("cli:{user}"), role, name, scope, valid_for).await;
    store.close().await;
    g
}

/// Creates an API token offline (`gateway token create`), for bootstrapping the first
/// admin. Returns `(id, token)`; the token is shown once and only its hash is stored.
/// The data dir must exist (see [`datadir::open_existing_in`]); `database` as for
/// [`add_device`].
pub async fn create_token(
    data_dir: &Path,
    database: Option<&str>,
    role: api::auth::Role,
    name: &str,
) -> Result<(String, String), GatewayError> {
    let (_, store) = datadir::open_existing_in(data_dir, database).await?;
    let t = api::auth::generate_token();
    store
        .create_token(&t.id, name, role.as_str(), &t.hash)
        .await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    store
        .audit(
            &format!("cli:{user}"),
            "token.create",
            &t.id,
            &format!("{{\"name\":{name:?},\"role\":\"{}\"}}", role.as_str()),
        )
        .await?;
    store.close().await;
    Ok((t.id, t.token))
}
