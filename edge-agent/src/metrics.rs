//! The agent's own Prometheus metrics, served at `GET /metrics` on the local supervisor
//! API when the agent runs with `--metrics` (with the API key, like every other endpoint
//! but `/ping`): sessions established and the transport in use, the log spool, and the
//! reconciler's passes. One device, so no labels but the transport (docs/metrics.md).
//!
//! Counts are kept as plain atomics and read into a fresh registry at each scrape, so
//! the hot path (a reconnect) costs one atomic add; the text is the `prometheus-client`
//! crate's, the same as the gateway's.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use transport::TransportKind;

use crate::logs::spool::SpoolStats;

/// What the tunnel loop counts.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    connects: AtomicU64,
    /// 0 not connected, 1 QUIC, 2 TLS over TCP.
    transport: AtomicU8,
}

/// What the reconciler has done, read from its status at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReconcilerCounts {
    /// Passes completed.
    pub passes: u64,
    /// Passes that ended in an error.
    pub failed: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

impl AgentMetrics {
    /// A session with the gateway was established over `kind`.
    pub fn connected(&self, kind: TransportKind) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        let v = match kind {
            TransportKind::Quic => 1,
            TransportKind::Tcp => 2,
        };
        self.transport.store(v, Ordering::Relaxed);
    }

    /// The session ended (the agent backs off and dials again).
    pub fn disconnected(&self) {
        self.transport.store(0, Ordering::Relaxed);
    }

    /// The scrape: Prometheus text format (version 0.0.4). `spool` and `reconciler` are
    /// left out when the agent has none.
    pub fn render(
        &self,
        spool: Option<SpoolStats>,
        reconciler: Option<ReconcilerCounts>,
    ) -> String {
        let mut r = Registry::default();
        r.register(
            "edge_agent_connects",
            "Sessions established with the gateway since the agent started (reconnects are this minus one)",
            counter(self.connects.load(Ordering::Relaxed)),
        );
        let connected = Family::<TransportLabel, Gauge>::default();
        let now = self.transport.load(Ordering::Relaxed);
        for (v, name) in [(1, "quic"), (2, "tcp")] {
            connected
                .get_or_create(&TransportLabel { transport: name })
                .set(i64::from(now == v));
        }
        r.register(
            "edge_agent_connected",
            "1 for the transport of the current session with the gateway, 0 otherwise",
            connected,
        );
        if let Some(s) = spool {
            r.register(
                "edge_agent_log_spool_bytes",
                "Bytes of log lines on disk in the spool",
                gauge(s.bytes),
            );
            r.register(
                "edge_agent_log_spool_unacked_lines",
                "Log lines in the spool the gateway has not acknowledged yet",
                gauge(s.last_seq.saturating_sub(s.acked)),
            );
            r.register(
                "edge_agent_log_lines",
                "Log lines spooled since the spool was created",
                counter(s.last_seq),
            );
            r.register(
                "edge_agent_log_lines_dropped",
                "Log lines evicted unshipped from a full spool since the agent started",
                counter(s.suppressed_total),
            );
        }
        if let Some(rc) = reconciler {
            r.register(
                "edge_agent_reconciler_passes",
                "Reconciler passes completed",
                counter(rc.passes),
            );
            r.register(
                "edge_agent_reconciler_failed_passes",
                "Reconciler passes that ended in an error",
                counter(rc.failed),
            );
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r)
            .expect("writing to a String does not fail");
        out
    }
}

/// A counter holding `v`, for a scrape.
fn counter(v: u64) -> Counter<u64> {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// A gauge holding `v` (saturated at `i64::MAX`), for a scrape.
fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_names_the_transport_in_use() {
        let m = AgentMetrics::default();
        let text = m.render(None, None);
        assert!(text.contains("edge_agent_connects_total 0"), "{text}");
        assert!(
            text.contains("edge_agent_connected{transport=\"quic\"} 0"),
            "{text}"
        );
        m.connected(TransportKind::Tcp);
        let text = m.render(
            Some(SpoolStats {
                last_seq: 10,
                acked: 7,
                bytes: 500,
                suppressed_total: 0,
            }),
            None,
        );
        assert!(
            text.contains("edge_agent_connected{transport=\"tcp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edge_agent_log_spool_unacked_lines 3"),
            "{text}"
        );
        assert!(!text.contains("reconciler"), "{text}");
        m.disconnected();
        assert!(m
            .render(None, None)
            .contains("edge_agent_connected{transport=\"tcp\"} 0"));
    }
}
