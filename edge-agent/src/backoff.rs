//! Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS
//! Architecture Blog): the n-th delay is uniform in `[0, min(cap, base * 2^n)]`.
//! Full jitter spreads a fleet's reconnects after a gateway restart instead of having
//! thousands of devices retry in lockstep.

use std::time::Duration;

/// Backoff state for one reconnecting client.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// `base` is the ceiling of the first delay, `cap` the largest ceiling ever used.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling for the current attempt: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (random in `[0, ceiling]`), advancing the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_within(Duration::MAX)
    }

    /// The next delay with this draw's ceiling lowered to `cap`: random in
    /// `[0, min(ceiling, cap)]`, still jittered, still advancing the attempt counter (so a
    /// failure of another kind next backs off as far as it would have).
    pub fn next_delay_within(&mut self, cap: Duration) -> Duration {
        let ceiling = self.ceiling().min(cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Starts over, after a connection stayed up long enough to count as stable.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c);
            ceilings.push(c.as_millis());
        }
        assert_eq!(&ceilings[..4], &[500, 1000, 2000, 4000]);
        assert_eq!(*ceilings.last().unwrap(), 30_000);
        // Jitter: 200 draws at the cap are not all equal.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 100);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn a_capped_draw_stays_under_its_cap_jittered_and_still_counts() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..12 {
            b.next_delay();
        }
        let draws: Vec<_> = (0..200)
            .map(|_| b.next_delay_within(Duration::from_secs(1)))
            .collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(1)));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "still jittered");
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        // A fresh backoff: the cap above the ceiling changes nothing, and counts.
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        assert!(b.next_delay_within(Duration::from_secs(1)) <= Duration::from_millis(500));
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }
}
