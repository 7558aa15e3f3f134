//! A lock-free latency histogram that `prometheus-client` encodes: one relaxed add for the
//! bucket hit, one for the sum (whole microseconds). A scrape that races an observation
//! may see the bucket and the sum of slightly different moments, which Prometheus
//! tolerates (the count is derived from the buckets, so those two always agree). Clones
//! share the counts (the registry holds one). The crate's own histogram takes a lock per
//! observation; this one is on the hot paths (every proxied request, every store query).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Durations in buckets with upper bounds `bounds` (seconds, ascending), plus `+Inf`.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram(Arc<HistogramState>);

#[derive(Debug)]
struct HistogramState {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; the last is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram with these bucket bounds.
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramState {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }))
    }

    /// Counts one observation.
    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bounds = self.0.bounds;
        let i = bounds
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(bounds.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let bounds = self.0.bounds;
        let mut count = 0;
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.load(Ordering::Relaxed);
                count += n;
                (bounds.get(i).copied().unwrap_or(f64::INFINITY), n)
            })
            .collect();
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
