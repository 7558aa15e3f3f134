//! Dialling the gateway over QUIC, over TLS on TCP, or both at once.
//!
//! In [`TransportMode::Auto`], QUIC goes first and TCP starts [`FALLBACK_DELAY`] later if
//! QUIC has not finished its handshake (Happy Eyeballs, RFC 8305, applied to transports):
//! the first to complete wins and the other attempt is dropped. On a network that drops
//! UDP the device is online over TCP about 300 ms plus one TCP/TLS handshake after it
//! starts, instead of never.
//!
//! The device file may list several gateway addresses (a gateway with several nodes).
//! Every address every listed name resolves to is a [`Candidate`], de-duplicated, in
//! order; each attempt dials one candidate (QUIC and TCP both to that node), and
//! [`Rotation`] moves to the next after a failed dial or a lost session, so a device whose
//! node died reaches a live one at its next attempt. With one address that resolves to
//! one IP there is one candidate and nothing changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use transport::proxy::Proxy;
use transport::tls_tcp::MuxConfig;
use transport::{ConnectError, Connection};

/// How long QUIC has alone before TCP starts too.
pub const FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// Which transport the agent dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// QUIC first, TLS over TCP when QUIC does not complete soon; back to QUIC when it
    /// works again.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

/// A transport name other than `auto`, `quic` or `tcp`.
#[derive(Debug, thiserror::Error)]
#[error("unknown transport {0:?}: expected auto, quic or tcp")]
pub struct UnknownTransport(String);

impl std::str::FromStr for TransportMode {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(UnknownTransport(other.to_string())),
        }
    }
}

impl std::fmt::Display for TransportMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        })
    }
}

/// Which transports to dial, and how TCP gets out.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// Which transports to try.
    pub mode: TransportMode,
    /// The gateway's TCP tunnel address; `None` is the same host and port as the UDP one
    /// (the same resolved address, so both transports reach the same node). With several
    /// gateway addresses: one entry serves them all, or a comma list gives one per
    /// gateway address, paired in order; another count is refused.
    pub gateway_tcp: Option<String>,
    /// HTTP CONNECT proxy for the TCP transport.
    pub proxy: Option<Proxy>,
}

/// Why a [`Route`] cannot make a dialer.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The gateway address list has a bad entry.
    #[error("gateway: {0}")]
    Gateway(protocol::host::BadAddress),
    /// The TCP address list has a bad entry, or does not pair with the gateway list.
    #[error("gateway_tcp: {0}")]
    GatewayTcp(String),
    /// The TLS configuration has no cipher suite QUIC can use.
    #[error("TLS: {0}")]
    Tls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

impl Route {
    /// A dialer for `gateway` (one `HOST:PORT` or a comma list of them) with these
    /// settings.
    pub fn dialer(
        &self,
        gateway: &str,
        server_name: &str,
        tls: rustls::ClientConfig,
        quic_transport: Option<Arc<quinn::TransportConfig>>,
        mux: MuxConfig,
        timeout: Duration,
    ) -> Result<Dialer, RouteError> {
        let gateways: Vec<String> = protocol::host::gateway_addresses(gateway)
            .map_err(RouteError::Gateway)?
            .into_iter()
            .map(String::from)
            .collect();
        let gateway_tcp: Vec<String> = match &self.gateway_tcp {
            None => Vec::new(),
            Some(list) => protocol::host::gateway_addresses(list)
                .map_err(|e| RouteError::GatewayTcp(e.to_string()))?
                .into_iter()
                .map(String::from)
                .collect(),
        };
        if gateway_tcp.len() > 1 && gateway_tcp.len() != gateways.len() {
            return Err(RouteError::GatewayTcp(format!(
                "{} TCP addresses for {} gateway addresses: give one for all, or one per gateway address in the same order",
                gateway_tcp.len(),
                gateways.len()
            )));
        }
        let tcp_tls = Arc::new(tls.clone());
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut quic = quinn::ClientConfig::new(Arc::new(quic));
        if let Some(t) = quic_transport {
            quic.transport_config(t);
        }
        Ok(Dialer {
            gateways,
            gateway_tcp,
            server_name: server_name.to_string(),
            mode: self.mode,
            proxy: self.proxy.clone(),
            quic,
            tls: tcp_tls,
            mux,
            timeout,
        })
    }
}

/// Why dialling failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The gateway's name did not resolve.
    #[error("cannot resolve gateway address {0}: {1}")]
    Resolve(String, String),
    /// The local UDP socket or QUIC endpoint could not be made.
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    /// The QUIC attempt failed.
    #[error("QUIC: {0}")]
    Quic(ConnectError),
    /// The TCP attempt failed.
    #[error("TCP: {0}")]
    Tcp(ConnectError),
    /// Both failed.
    #[error("QUIC: {quic}; TCP: {tcp}")]
    Both {
        /// Why QUIC failed.
        quic: ConnectError,
        /// Why TCP failed.
        tcp: ConnectError,
    },
}

impl DialError {
    /// Whether a transport waited its whole timeout with no connection: nothing answered
    /// in time (a network that is down, a blackhole), and the attempt lasted at least the
    /// dial timeout.
    pub fn timed_out(&self) -> bool {
        let t = |e: &ConnectError| matches!(e, ConnectError::Timeout(_));
        match self {
            Self::Quic(e) | Self::Tcp(e) => t(e),
            Self::Both { quic, tcp } => t(quic) || t(tcp),
            Self::Resolve(..) | Self::Socket(_) => false,
        }
    }

    /// The connection error inside, when the gateway closed the attempt itself.
    pub fn connection_error(&self) -> Option<&transport::ConnectionError> {
        match self {
            Self::Quic(ConnectError::Connection(c)) | Self::Tcp(ConnectError::Connection(c)) => {
                Some(c)
            }
            _ => None,
        }
    }
}

/// One place an attempt can go: one address of one listed gateway name, and where TCP
/// goes for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The list entry it came from, as configured (`host:port`).
    pub entry: String,
    /// The address QUIC dials, or why there is none (the name did not resolve; or, on
    /// TCP alone through a proxy or a `gateway_tcp`, it was not looked up).
    pub addr: Result<SocketAddr, String>,
    /// Where TCP goes: the same address, or a `host:port` (a configured `gateway_tcp`;
    /// the entry's name through a proxy, which resolves it; a name that did not resolve
    /// here).
    pub tcp: String,
}

impl std::fmt::Display for Candidate {
    /// `entry`, with the address it resolved to when that differs, and TCP's target when
    /// it is elsewhere: `a.example:443 (192.0.2.1:443)`,
    /// `a.example:443 (192.0.2.1:443, TCP relay:8443)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.entry)?;
        let mut extra = Vec::new();
        if let Ok(a) = self.addr {
            if a.to_string() != self.entry {
                extra.push(a.to_string());
            }
        }
        let same_tcp =
            self.tcp == self.entry || self.addr.as_ref().is_ok_and(|a| a.to_string() == self.tcp);
        if !same_tcp {
            extra.push(format!("TCP {}", self.tcp));
        }
        if !extra.is_empty() {
            write!(f, " ({})", extra.join(", "))?;
        }
        Ok(())
    }
}

/// Everything needed to reach the gateway: its address list and how to dial one
/// [`Candidate`].
#[derive(Clone)]
pub struct Dialer {
    /// The gateway's tunnel addresses (UDP), `host:port`, in order.
    pub gateways: Vec<String>,
    /// The TCP tunnel addresses: empty (the same as each UDP candidate), one for all, or
    /// one per entry of `gateways`.
    pub gateway_tcp: Vec<String>,
    /// TLS server name to verify.
    pub server_name: String,
    /// Which transports to try.
    pub mode: TransportMode,
    /// HTTP CONNECT proxy for the TCP transport.
    pub proxy: Option<Proxy>,
    /// QUIC client configuration (TLS plus transport settings).
    pub quic: quinn::ClientConfig,
    /// TLS client configuration for TCP.
    pub tls: Arc<rustls::ClientConfig>,
    /// Multiplexer settings for TCP.
    pub mux: MuxConfig,
    /// Per-attempt handshake deadline.
    pub timeout: Duration,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("gateways", &self.gateways)
            .field("gateway_tcp", &self.gateway_tcp)
            .field("mode", &self.mode)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Every candidate, in order: each entry's addresses as the resolver returns them,
    /// each address once (the first entry naming it wins). An entry that does not resolve
    /// is one candidate without a QUIC address: TCP may still reach it by name (through a
    /// proxy), and the dial says why QUIC could not. Never empty.
    ///
    /// On TCP alone through a proxy or to a configured `gateway_tcp`, nothing is looked up
    /// here (the proxy resolves; a device behind one may have no DNS of its own): one
    /// candidate per entry.
    pub async fn candidates(&self) -> Vec<Candidate> {
        let tcp_only_by_name = self.mode == TransportMode::Tcp
            && (self.proxy.is_some() || !self.gateway_tcp.is_empty());
        let mut resolved = Vec::with_capacity(self.gateways.len());
        for entry in &self.gateways {
            resolved.push(if tcp_only_by_name {
                Err("not looked up (TCP only)".to_string())
            } else {
                resolve_all(entry).await.map_err(|e| e.to_string())
            });
        }
        candidates(
            &self.gateways,
            &resolved,
            &self.gateway_tcp,
            self.proxy.is_some(),
        )
    }

    /// Dials `to` per [`Dialer::mode`]. `endpoint` is the QUIC endpoint kept across
    /// attempts (made here on first use, or when the address family changes).
    pub async fn dial(
        &self,
        to: &Candidate,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<Connection, DialError> {
        match self.mode {
            TransportMode::Quic => self.dial_quic(to, endpoint).await,
            TransportMode::Tcp => self.dial_tcp(to).await.map_err(DialError::Tcp),
            TransportMode::Auto => {
                // The endpoint first: the QUIC attempt then needs no `&mut`.
                let ep = match self.quic_endpoint(to, endpoint) {
                    Ok(ep) => ep,
                    // No UDP at all here (no socket, or no address): TCP alone.
                    Err(e) => {
                        tracing::debug!(error = %e, "no QUIC endpoint; dialling TCP only");
                        return self.dial_tcp(to).await.map_err(DialError::Tcp);
                    }
                };
                let (ep, addr) = ep;
                let quic = self.quic_on(&ep, addr);
                let tcp = async {
                    tokio::time::sleep(FALLBACK_DELAY).await;
                    self.dial_tcp(to).await
                };
                tokio::pin!(quic, tcp);
                let mut quic_failed = None;
                let mut tcp_failed = None;
                loop {
                    tokio::select! {
                        r = &mut quic, if quic_failed.is_none() => match r {
                            Ok(c) => return Ok(c),
                            Err(e) => quic_failed = Some(e),
                        },
                        r = &mut tcp, if tcp_failed.is_none() => match r {
                            Ok(c) => return Ok(c),
                            Err(e) => tcp_failed = Some(e),
                        },
                    }
                    if let (Some(_), Some(_)) = (&quic_failed, &tcp_failed) {
                        return Err(DialError::Both {
                            quic: quic_failed.take().expect("checked"),
                            tcp: tcp_failed.take().expect("checked"),
                        });
                    }
                }
            }
        }
    }

    /// One QUIC attempt to `to`.
    pub async fn dial_quic(
        &self,
        to: &Candidate,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<Connection, DialError> {
        let (ep, addr) = self.quic_endpoint(to, endpoint)?;
        self.quic_on(&ep, addr).await.map_err(DialError::Quic)
    }

    async fn quic_on(
        &self,
        ep: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<Connection, ConnectError> {
        tokio::time::timeout(
            self.timeout,
            transport::quic::connect(ep, self.quic.clone(), addr, &self.server_name),
        )
        .await
        .map_err(|_| ConnectError::Timeout(self.timeout))?
    }

    /// `to`'s QUIC address and an endpoint of its family.
    fn quic_endpoint(
        &self,
        to: &Candidate,
        endpoint: &mut Option<quinn::Endpoint>,
    ) -> Result<(quinn::Endpoint, SocketAddr), DialError> {
        let addr = to
            .addr
            .clone()
            .map_err(|reason| DialError::Resolve(to.entry.clone(), reason))?;
        if let Some(ep) = endpoint {
            if ep.local_addr().map(|a| a.is_ipv6()).ok() == Some(addr.is_ipv6()) {
                return Ok((ep.clone(), addr));
            }
        }
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("addr")
        } else {
            "0.0.0.0:0".parse().expect("addr")
        };
        let socket = transport::net::udp_socket(bind).map_err(DialError::Socket)?;
        let ep = transport::quic::endpoint(socket, None, None).map_err(DialError::Socket)?;
        *endpoint = Some(ep.clone());
        Ok((ep, addr))
    }

    /// One TCP attempt to `to`: TCP (through the proxy when one is set), TLS,
    /// multiplexer.
    pub async fn dial_tcp(&self, to: &Candidate) -> Result<Connection, ConnectError> {
        let work = async {
            let tcp = match &self.proxy {
                Some(p) => transport::proxy::connect(p, &to.tcp, self.timeout).await?,
                None => tokio::net::TcpStream::connect(&to.tcp).await?,
            };
            transport::tls_tcp::connect(tcp, Arc::clone(&self.tls), &self.server_name, &self.mux)
                .await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ConnectError::Timeout(self.timeout))?
    }
}

/// Every address `addr` (`host:port`) resolves to, in the resolver's order.
pub async fn resolve_all(addr: &str) -> Result<Vec<SocketAddr>, DialError> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| DialError::Resolve(addr.to_string(), e.to_string()))?
        .collect();
    if all.is_empty() {
        return Err(DialError::Resolve(addr.to_string(), "no address".into()));
    }
    Ok(all)
}

/// The candidates of `entries`, given what each resolved to (`resolved[i]` for
/// `entries[i]`) and the configured TCP addresses (none, one for all, or one per entry):
/// in order, each (QUIC address, TCP target) pair once. Pure, for [`Dialer::candidates`].
fn candidates(
    entries: &[String],
    resolved: &[Result<Vec<SocketAddr>, String>],
    gateway_tcp: &[String],
    proxy: bool,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let mut push = |c: Candidate| {
        if !out.iter().any(|o| o.addr == c.addr && o.tcp == c.tcp) {
            out.push(c);
        }
    };
    for (i, (entry, addrs)) in entries.iter().zip(resolved).enumerate() {
        let configured_tcp = match gateway_tcp.len() {
            0 => None,
            1 => Some(&gateway_tcp[0]),
            _ => gateway_tcp.get(i),
        };
        // TCP to the same node as QUIC: the resolved address itself, unless a proxy
        // resolves (it gets the name, as it always did) or TCP was configured elsewhere.
        let tcp_for = |addr: Option<SocketAddr>| match (configured_tcp, addr) {
            (Some(t), _) => t.clone(),
            (None, Some(a)) if !proxy => a.to_string(),
            (None, _) => entry.clone(),
        };
        match addrs {
            Ok(addrs) => {
                for a in addrs {
                    push(Candidate {
                        entry: entry.clone(),
                        addr: Ok(*a),
                        tcp: tcp_for(Some(*a)),
                    });
                }
            }
            Err(reason) => push(Candidate {
                entry: entry.clone(),
                addr: Err(reason.clone()),
                tcp: tcp_for(None),
            }),
        }
    }
    out
}

/// What the run loop does after a failure: go on to the next candidate at once, or back
/// off first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The next candidate is another one and this round still has untried candidates:
    /// try it promptly (a short jitter only).
    Next,
    /// Every candidate of the round failed in a row (or there is only one): the usual
    /// backoff before the next attempt.
    Backoff,
}

/// Which candidate the next attempt goes to.
///
/// A round is one resolution of the list ([`Dialer::candidates`]). Attempts go through it
/// in order; after a failed dial or a lost session the next attempt goes to the next
/// candidate, promptly while the round has candidates that have not failed since the
/// last success ([`Retry::Next`]), and after the usual backoff once all of them have, in
/// a row ([`Retry::Backoff`]): a fleet whose every node is down backs off as one device
/// with one address always did. At the end of a round the list is resolved again, so
/// DNS changes are picked up, and with a single candidate it is resolved before every
/// attempt, as it always was.
#[derive(Debug, Default)]
pub struct Rotation {
    round: Vec<Candidate>,
    next: usize,
    /// Failures in a row since the last established session (or the last backoff).
    failures: usize,
}

impl Rotation {
    /// A rotation that resolves before its first attempt.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the round is over and [`Rotation::start_round`] must be given a fresh list
    /// before [`Rotation::current`].
    pub fn needs_round(&self) -> bool {
        self.next >= self.round.len()
    }

    /// Starts a round with a freshly resolved list (never empty: see
    /// [`Dialer::candidates`]).
    pub fn start_round(&mut self, candidates: Vec<Candidate>) {
        assert!(!candidates.is_empty(), "a round needs a candidate");
        self.round = candidates;
        self.next = 0;
    }

    /// The candidate the next attempt goes to.
    pub fn current(&self) -> &Candidate {
        &self.round[self.next]
    }

    /// A session was established on the current candidate: it stays current (a session
    /// lost later counts as its failure), and failures count from zero again.
    pub fn connected(&mut self) {
        self.failures = 0;
    }

    /// The attempt on (or the session with) the current candidate failed: move on to the
    /// next, and say whether to try it at once.
    pub fn failed(&mut self) -> Retry {
        self.failures += 1;
        self.next += 1;
        if self.failures >= self.round.len() {
            // A full round of failures in a row: back off, and count the next round
            // from zero so that it too is tried promptly after the wait.
            self.failures = 0;
            Retry::Backoff
        } else {
            Retry::Next
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in ["auto", "quic", "tcp"] {
            assert_eq!(m.parse::<TransportMode>().unwrap().to_string(), m);
        }
        let e = "udp".parse::<TransportMode>().unwrap_err().to_string();
        assert!(e.contains("auto, quic or tcp"), "{e}");
    }

    fn c(entry: &str, addr: &str, tcp: &str) -> Candidate {
        Candidate {
            entry: entry.into(),
            addr: Ok(addr.parse().unwrap()),
            tcp: tcp.into(),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_address_of_every_name_is_a_candidate_once_in_order() {
        let entries = strings(&["a.example:443", "b.example:443", "10.0.0.9:443"]);
        let resolved = vec![
            Ok(vec![sa("10.0.0.1:443"), sa("10.0.0.2:443")]),
            // b.example shares an address with a.example: once, as a.example's.
            Ok(vec![sa("10.0.0.2:443"), sa("10.0.0.3:443")]),
            Ok(vec![sa("10.0.0.9:443")]),
        ];
        assert_eq!(
            candidates(&entries, &resolved, &[], false),
            [
                c("a.example:443", "10.0.0.1:443", "10.0.0.1:443"),
                c("a.example:443", "10.0.0.2:443", "10.0.0.2:443"),
                c("b.example:443", "10.0.0.3:443", "10.0.0.3:443"),
                c("10.0.0.9:443", "10.0.0.9:443", "10.0.0.9:443"),
            ]
        );
        // A name that does not resolve is one candidate TCP may still reach by name.
        let resolved = vec![
            Err("no such host".to_string()),
            Ok(vec![sa("10.0.0.3:443")]),
            Ok(vec![sa("10.0.0.9:443")]),
        ];
        let got = candidates(&entries, &resolved, &[], false);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].addr, Err("no such host".to_string()));
        assert_eq!(got[0].tcp, "a.example:443");
    }

    #[test]
    fn tcp_goes_to_the_same_node_unless_told_otherwise() {
        let entries = strings(&["a.example:443", "b.example:443"]);
        let resolved = vec![
            Ok(vec![sa("10.0.0.1:443"), sa("10.0.0.2:443")]),
            Ok(vec![sa("10.0.0.3:443")]),
        ];
        // Through a proxy, TCP names the entry: the proxy resolves.
        let got = candidates(&entries, &resolved, &[], true);
        let tcp: Vec<_> = got.iter().map(|c| c.tcp.as_str()).collect();
        assert_eq!(tcp, ["a.example:443", "a.example:443", "b.example:443"]);
        // One gateway_tcp serves every candidate.
        let got = candidates(&entries, &resolved, &strings(&["relay:8443"]), false);
        assert!(got.iter().all(|c| c.tcp == "relay:8443"), "{got:?}");
        assert_eq!(got.len(), 3);
        // A list pairs by entry.
        let got = candidates(
            &entries,
            &resolved,
            &strings(&["ta.example:8443", "tb.example:8443"]),
            false,
        );
        let tcp: Vec<_> = got.iter().map(|c| c.tcp.as_str()).collect();
        assert_eq!(
            tcp,
            ["ta.example:8443", "ta.example:8443", "tb.example:8443"]
        );
    }

    #[test]
    fn candidates_print_what_is_dialled() {
        assert_eq!(
            c("10.0.0.1:443", "10.0.0.1:443", "10.0.0.1:443").to_string(),
            "10.0.0.1:443"
        );
        assert_eq!(
            c("a.example:443", "10.0.0.1:443", "10.0.0.1:443").to_string(),
            "a.example:443 (10.0.0.1:443)"
        );
        assert_eq!(
            c("a.example:443", "10.0.0.1:443", "relay:8443").to_string(),
            "a.example:443 (10.0.0.1:443, TCP relay:8443)"
        );
        let unresolved = Candidate {
            entry: "a.example:443".into(),
            addr: Err("no such host".into()),
            tcp: "a.example:443".into(),
        };
        assert_eq!(unresolved.to_string(), "a.example:443");
    }

    #[test]
    fn rotation_moves_on_promptly_within_a_round_and_backs_off_after_it() {
        let (a, b, d) = (
            c("a:1", "10.0.0.1:1", "10.0.0.1:1"),
            c("b:1", "10.0.0.2:1", "10.0.0.2:1"),
            c("d:1", "10.0.0.3:1", "10.0.0.3:1"),
        );
        let mut r = Rotation::new();
        assert!(r.needs_round());
        r.start_round(vec![a.clone(), b.clone(), d.clone()]);
        let mut seen = Vec::new();
        let mut step = |r: &mut Rotation, ok: bool| {
            if r.needs_round() {
                r.start_round(vec![a.clone(), b.clone(), d.clone()]);
            }
            seen.push(r.current().entry.clone());
            if ok {
                r.connected();
                None
            } else {
                Some(r.failed())
            }
        };
        // a fails, b fails: each next one at once; d fails: a full round, back off.
        assert_eq!(step(&mut r, false), Some(Retry::Next));
        assert_eq!(step(&mut r, false), Some(Retry::Next));
        assert_eq!(step(&mut r, false), Some(Retry::Backoff));
        // The next round starts over at a, promptly after the backoff again.
        assert_eq!(step(&mut r, false), Some(Retry::Next));
        // b connects; its session is lost later: d at once, then a at once (the round
        // restarts, but not every candidate has failed since b worked), then b again
        // after a backoff.
        assert_eq!(step(&mut r, true), None);
        assert_eq!(r.current().entry, "b:1", "a session stays on its candidate");
        assert_eq!(r.failed(), Retry::Next);
        assert_eq!(step(&mut r, false), Some(Retry::Next));
        assert_eq!(step(&mut r, false), Some(Retry::Backoff));
        assert_eq!(step(&mut r, true), None);
        assert_eq!(
            seen,
            ["a:1", "b:1", "d:1", "a:1", "b:1", "d:1", "a:1", "b:1"]
        );
    }

    #[test]
    fn one_candidate_backs_off_after_every_failure_and_resolves_each_time() {
        let a = c("a:1", "10.0.0.1:1", "10.0.0.1:1");
        let mut r = Rotation::new();
        for _ in 0..3 {
            assert!(r.needs_round(), "resolved again before every attempt");
            r.start_round(vec![a.clone()]);
            assert_eq!(r.current(), &a);
            assert_eq!(r.failed(), Retry::Backoff);
        }
        // A lost session: the same.
        r.start_round(vec![a.clone()]);
        r.connected();
        assert_eq!(r.failed(), Retry::Backoff);
        assert!(r.needs_round());
    }

    #[test]
    fn gateway_tcp_pairs_one_for_all_or_one_each() {
        let tls = || {
            let dir = tempfile::tempdir().unwrap();
            let ca = certs::Ca::create_new(dir.path()).unwrap();
            let id = ca.issue_device(certs::random_uuid()).unwrap();
            certs::client_config(ca.cert_pem(), &id).unwrap()
        };
        let dialer = |gateway: &str, tcp: Option<&str>| {
            Route {
                gateway_tcp: tcp.map(String::from),
                ..Default::default()
            }
            .dialer(
                gateway,
                "x",
                tls(),
                None,
                MuxConfig::default(),
                Duration::from_secs(1),
            )
        };
        let d = dialer("a:1, b:2", None).unwrap();
        assert_eq!(d.gateways, ["a:1", "b:2"]);
        assert!(d.gateway_tcp.is_empty());
        assert_eq!(dialer("a:1,b:2", Some("t:1")).unwrap().gateway_tcp, ["t:1"]);
        assert_eq!(
            dialer("a:1,b:2", Some("t:1,u:2")).unwrap().gateway_tcp,
            ["t:1", "u:2"]
        );
        let e = dialer("a:1,b:2", Some("t:1,u:2,v:3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 TCP addresses for 2 gateway addresses"), "{e}");
        let e = dialer("a:1,b", None).unwrap_err().to_string();
        assert!(e.contains("\"b\" is not HOST:PORT"), "{e}");
        let e = dialer("a:1", Some("t")).unwrap_err().to_string();
        assert!(e.starts_with("gateway_tcp: "), "{e}");
    }
}
