//! Heartbeat timing for the control stream, as a state machine that is told the time.
//!
//! QUIC keep-alives already detect a dead path; application heartbeats additionally prove
//! that the peer's control loop is alive (not just its UDP socket) and give both sides a
//! round-trip figure.

use std::time::{Duration, Instant};

/// What the heartbeat state machine wants the IO layer to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// Send `Heartbeat { seq }` now.
    Send(u64),
    /// Nothing was heard from the peer for longer than the timeout: close the connection.
    Dead,
}

/// Tracks when to send heartbeats and when the peer counts as dead.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    next_send: Instant,
    last_heard: Instant,
    seq: u64,
}

impl Heartbeat {
    /// Starts tracking at `now`. The first heartbeat is due one `interval` from now; the
    /// peer is dead when nothing was heard for `timeout`.
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            next_send: now + interval,
            last_heard: now,
            seq: 0,
        }
    }

    /// Records that any message arrived from the peer.
    pub fn on_received(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// The next instant at which [`Heartbeat::poll`] has something to do.
    pub fn deadline(&self) -> Instant {
        self.next_send.min(self.last_heard + self.timeout)
    }

    /// Advances to `now` and says what to do, if anything.
    pub fn poll(&mut self, now: Instant) -> Option<HeartbeatEvent> {
        if now >= self.last_heard + self.timeout {
            return Some(HeartbeatEvent::Dead);
        }
        if now >= self.next_send {
            self.seq += 1;
            self.next_send = now + self.interval;
            return Some(HeartbeatEvent::Send(self.seq));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_on_interval_and_dies_after_silence() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut hb = Heartbeat::new(t0, 5 * s, 15 * s);
        assert_eq!(hb.poll(t0), None);
        assert_eq!(hb.deadline(), t0 + 5 * s);
        assert_eq!(hb.poll(t0 + 5 * s), Some(HeartbeatEvent::Send(1)));
        assert_eq!(hb.poll(t0 + 6 * s), None);
        hb.on_received(t0 + 6 * s);
        assert_eq!(hb.poll(t0 + 10 * s), Some(HeartbeatEvent::Send(2)));
        assert_eq!(hb.poll(t0 + 20 * s), Some(HeartbeatEvent::Send(3)));
        assert_eq!(hb.poll(t0 + 21 * s), Some(HeartbeatEvent::Dead));
    }
}
