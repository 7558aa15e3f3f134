//! `Gateway::run`: the serving half of a bound gateway. Every listener and loop is started
//! here (tunnels over QUIC and TCP, the public router on HTTP and HTTPS, the management
//! API, metrics, a cluster node's lease, peer link and wake-ups), and stopped in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::AppErrorCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::{api, dashboard, listener, logs, metrics, node, peer, proxy, tunnel, wake};
use crate::{Gateway, GatewayError};

impl Gateway {
    /// Serves until `shutdown` is cancelled, then closes tunnels and drains visitors.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let tasks = TaskTracker::new();
        let https_port = self.https_addr().map(|a| a.port());
        let tunnel_addr = self.tunnel_addr();
        let tunnel_tcp_addr = self.tunnel_tcp_addr();
        let domain = self.cfg.normalized_domain();
        let advertise = self.advertised_tunnel();
        info!(
            http = %self.http_addr(),
            https = %self.https_addr().map_or("-".into(), |a| a.to_string()),
            tunnel = %self.tunnel_addr(),
            tunnel_tcp = %self.tunnel_tcp_addr(),
            api = %self.api_addr(),
            metrics = %self.metrics_addr().map_or("-".into(), |a| a.to_string()),
            %domain,
            data_dir = %self.cfg.data_dir.display(),
            ca_fingerprint = %self.fingerprint,
            node = %self.node.id(),
            peer = self.node.peer_addr().unwrap_or("-"),
            "gateway serving"
        );
        if let Some(ep) = self.peer_endpoint.clone() {
            tasks.spawn(peer::serve(
                ep,
                Arc::clone(&self.sessions),
                self.cfg.max_streams_per_device,
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        let router_cfg = proxy::router::RouterConfig {
            domain,
            upstream_timeout: self.cfg.upstream_timeout,
            header_read_timeout: self.cfg.header_read_timeout,
            max_header_bytes: self.cfg.max_header_bytes,
            request_body_idle_timeout: self.cfg.request_body_idle_timeout,
            max_streams_per_device: self.cfg.max_streams_per_device,
        };
        // Counted by every part below; one set per gateway (see `metrics`).
        let metrics = Arc::new(metrics::Metrics::with_store(&self.store));
        let router = Arc::new(proxy::router::Router::new(
            &router_cfg,
            Arc::clone(&self.sessions),
            self.peers.clone(),
            self.store.clone(),
            Arc::clone(&metrics),
            tasks.clone(),
            shutdown.clone(),
        ));
        let log_hub = Arc::new(logs::LogHub::new(self.node.id()));
        tasks.spawn(logs::retention_loop(
            self.store.clone(),
            self.cfg.log_retention,
            self.cfg.log_max_lines_per_device,
            self.cfg.log_prune_interval,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        // A lease means something only where other nodes share the database; the single
        // SQLite node renews nothing (it reset the routes at start).
        if self.store.is_postgres() {
            tasks.spawn(Arc::clone(&self.node).run(
                self.store.clone(),
                Arc::clone(&self.sessions),
                node::LEASE_TTL,
                shutdown.clone(),
            ));
            // Changes made through the other nodes, for the tunnels this one holds.
            tasks.spawn(wake::run(
                self.store.clone(),
                Arc::clone(&self.sessions),
                Arc::clone(&log_hub),
                self.node.id().to_string(),
                shutdown.clone(),
            ));
        }
        let ctx = Arc::new(tunnel::TunnelCtx {
            node: Arc::clone(&self.node),
            store: self.store.clone(),
            ca: Arc::clone(&self.ca),
            sessions: Arc::clone(&self.sessions),
            keep_alive: self.cfg.keep_alive,
            idle_timeout: self.cfg.idle_timeout,
            logs: Arc::clone(&log_hub),
            metrics: Arc::clone(&metrics),
            tasks: tasks.clone(),
        });
        let (public_limits, api_limits) = self.listener_configs();
        let metrics_server = self.metrics.map(|listener| {
            let limits = listener::ListenerConfig {
                name: "metrics",
                max_connections: metrics::MAX_CONNECTIONS,
                max_connections_per_ip: metrics::MAX_CONNECTIONS,
                tls: None,
                json_errors: false,
                ..api_limits.clone()
            };
            let source = metrics::Source {
                metrics: Arc::clone(&metrics),
                store: self.store.clone(),
                sessions: Arc::clone(&self.sessions),
            };
            tokio::spawn(metrics::serve(listener, limits, source, shutdown.clone()))
        });
        // One TCP port for the tunnel's fallback and HTTPS visitors when both were given
        // the same address: the ClientHello's ALPN says whose a connection is.
        let (tunnel_tcp, https_socket): (listener::AcceptFrom, _) = match self.https {
            Some((Some(l), files)) => (self.tunnel_tcp.into(), Some((l.into(), files))),
            Some((None, files)) => {
                let split = listener::demux(self.tunnel_tcp, shutdown.clone(), &tasks).map_err(
                    |source| GatewayError::Bind {
                        addr: tunnel_tcp_addr,
                        source,
                    },
                )?;
                (split.tunnel, Some((split.https, files)))
            }
            None => (self.tunnel_tcp.into(), None),
        };
        let https = match https_socket {
            Some((listener, files)) => {
                let tls = certs::https_server_config_with(files.clone())?;
                tasks.spawn(Arc::clone(&files).watch(shutdown.clone()));
                if let (Some(directory), Some(dns_hook)) =
                    (&self.cfg.acme_directory, &self.cfg.acme_dns_hook)
                {
                    let acme = proxy::acme::AcmeConfig {
                        directory: directory.clone(),
                        dns_hook: dns_hook.clone(),
                        email: self.cfg.acme_email.clone(),
                        root: self.cfg.acme_root.clone(),
                        renew_before: self.cfg.acme_renew_before,
                        domain: self.cfg.normalized_domain(),
                        dir: self.cfg.data_dir.join(crate::ACME_DIR),
                    };
                    tasks.spawn(proxy::acme::run(acme, Arc::clone(&files), shutdown.clone()));
                }
                let limits = listener::ListenerConfig {
                    name: "https",
                    tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
                    ..public_limits.clone()
                };
                Some(tokio::spawn(proxy::router::serve(
                    listener,
                    Arc::clone(&router),
                    router_cfg.clone(),
                    limits,
                    proxy::router::Serving {
                        scheme: proxy::router::Scheme::Https,
                        redirect_to_https: None,
                    },
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let http = tokio::spawn(proxy::router::serve(
            self.http,
            router,
            router_cfg,
            public_limits,
            proxy::router::Serving {
                scheme: proxy::router::Scheme::Http,
                redirect_to_https: https_port.filter(|_| self.cfg.https_redirect),
            },
            shutdown.clone(),
        ));
        let api = tokio::spawn(api::serve(
            self.api,
            api_limits,
            api::auth::BackoffConfig {
                failures_before_backoff: self.cfg.auth_failures_before_backoff,
                initial: self.cfg.auth_backoff,
                max: self.cfg.auth_backoff_max,
            },
            api::ApiState {
                store: self.store.clone(),
                sessions: Arc::clone(&self.sessions),
                peers: self.peers.clone(),
                domain: self.cfg.normalized_domain(),
                advertise,
                ca_fingerprint: self.fingerprint.clone(),
                terminal_idle_timeout: self.cfg.terminal_idle_timeout,
                logs: Arc::clone(&log_hub),
                shutdown: shutdown.clone(),
                tasks: tasks.clone(),
                allowed_origins: Arc::new(self.cfg.allowed_origins.clone()),
                metrics: Arc::clone(&metrics),
            },
            // The dashboard's pages share the management listener.
            dashboard::routes(),
            shutdown.clone(),
        ));
        let tcp = tokio::spawn(tunnel::accept_tcp_loop(
            tunnel_tcp,
            Arc::clone(&self.tunnel_tls),
            transport::tls_tcp::MuxConfig {
                keep_alive: self.cfg.keep_alive,
                idle_timeout: self.cfg.idle_timeout,
                max_incoming_streams: tunnel::MAX_AGENT_STREAMS,
                ..Default::default()
            },
            Arc::clone(&ctx),
            shutdown.clone(),
            tasks.clone(),
        ));
        let endpoint = self.endpoint.clone();
        tunnel::accept_loop(endpoint, ctx, shutdown.clone(), tasks.clone()).await;
        let _ = tcp.await;
        // Shutdown: tell devices to come back later, then drain visitors.
        self.sessions
            .close_all(AppErrorCode::Shutdown, b"gateway shutting down");
        let _ = http.await;
        if let Some(h) = https {
            let _ = h.await;
        }
        let _ = api.await;
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            warn!(
                left = tasks.len(),
                "tasks still running 5 s after shutdown; stopping anyway"
            );
        }
        // Nothing may keep a connection (and with it the UDP socket) past the gateway:
        // the registry can outlive it (tests and embedders hold it).
        self.sessions.clear();
        self.endpoint.close(
            transport::quic::varint(AppErrorCode::Shutdown),
            b"gateway shutting down",
        );
        // A good-faith wait for the peers to hear the close. A connection that suffered
        // a stall has a large RTT estimate, and QUIC drains a closed connection for three
        // probe timeouts (seconds, then): past the grace, the remaining ones finish on a
        // throwaway socket, so the tunnel port is free as soon as the gateway returns.
        let drained = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle());
        if drained.await.is_err() {
            let open = self.endpoint.open_connections();
            let any: SocketAddr = match tunnel_addr {
                SocketAddr::V4(_) => (std::net::Ipv4Addr::LOCALHOST, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
            };
            // quinn keeps the socket it rebinds away from until a packet arrives on the
            // new one; a second rebind replaces that one too. The connections switch when
            // their drivers next run: give them a moment.
            let rebind = || std::net::UdpSocket::bind(any).and_then(|s| self.endpoint.rebind(s));
            match rebind().and_then(|()| rebind()) {
                Ok(()) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    debug!(open, "connections still draining; tunnel port released");
                }
                Err(e) => warn!(open, error = %e, "cannot release the tunnel port early"),
            }
        }
        self.store.close().await;
        info!("gateway stopped");
        Ok(())
    }

    /// Caps and timeouts of the public and API listeners.
    fn listener_configs(&self) -> (listener::ListenerConfig, listener::ListenerConfig) {
        let c = &self.cfg;
        let max_connections = c
            .max_connections
            .unwrap_or_else(|| listener::auto_max_connections(c.api_max_connections));
        let fds = listener::fd_limit();
        let wanted = (max_connections as u64).saturating_add(c.api_max_connections as u64);
        if wanted > fds {
            warn!(
                max_connections,
                api_max_connections = c.api_max_connections,
                fd_limit = fds,
                "the connection caps exceed the file descriptor limit; when fds run out, \
                 new connections wait in the backlog"
            );
        }
        let public = listener::ListenerConfig {
            name: "public",
            max_connections,
            max_connections_per_ip: c.max_connections_per_ip,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.connection_idle_timeout,
            max_header_bytes: c.max_header_bytes,
            tls: None,
            json_errors: false,
            grace: Duration::from_secs(5),
        };
        let api = listener::ListenerConfig {
            name: "api",
            max_connections: c.api_max_connections,
            max_connections_per_ip: c.api_max_connections_per_ip,
            tls: self.api_tls.clone().map(tokio_rustls::TlsAcceptor::from),
            json_errors: true,
            ..public.clone()
        };
        (public, api)
    }
}
