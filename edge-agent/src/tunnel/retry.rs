//! When the agent dials again: the backoff after a failure, capped short after silence,
//! the wait after a refusal as a duplicate identity, and the address it tries next.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::dial::Rotation;

/// The longest wait before redialling after silence: a dial in which nothing answered
/// before its timeout, or a session lost to its idle or heartbeat timeout (a link that
/// went down, a blackhole). The silence itself already kept attempts a dial timeout
/// (10 s) or an idle timeout apart; a backoff grown to its cap (30 s) on top of it only
/// kept the device dark for up to that long after its link came back. Refusals and
/// errors, where the gateway did answer, keep the full backoff. Still jittered: the wait
/// is uniform in `[0, this]`.
const SILENCE_RETRY_CAP: Duration = Duration::from_secs(1);

/// The wait before the next attempt: the backoff's, capped at [`SILENCE_RETRY_CAP`]
/// when the last attempt or session ended in silence.
pub(super) fn retry_delay(backoff: &mut Backoff, silence: bool) -> Duration {
    if silence {
        backoff.next_delay_within(SILENCE_RETRY_CAP)
    } else {
        backoff.next_delay()
    }
}

/// The candidate the next attempt goes to, for a log line (at the end of the list it is
/// resolved again first, so the candidate is not known yet).
pub(super) fn rotation_next(r: &Rotation) -> String {
    if r.needs_round() {
        "the first address, resolved again".into()
    } else {
        r.current().to_string()
    }
}

/// How long an agent the gateway refused as a duplicate identity waits at least before
/// it tries again: until the gateway would have given up on the incumbent if that were
/// a dead process (its liveness window: three of this agent's keep-alives and a second,
/// plus half a second), with up to a second of jitter, and at most `cap`. An agent
/// restarted after a crash, a `kill -9` or a quick reboot is refused while the gateway
/// still counts its predecessor's session as live (three restarts within a minute look
/// like two agents taking turns); it gets in at its next try instead of 30 s later. A
/// real copy is refused again at every try, and its backoff grows as usual.
pub(super) fn duplicate_wait(keep_alive: Duration, cap: Duration) -> Duration {
    let window = keep_alive * 3 + Duration::from_millis(1500);
    (window + Duration::from_secs(1).mul_f64(rand::random::<f64>())).min(cap)
}

#[cfg(test)]
mod tests {
    use protocol::AppErrorCode;
    use transport::wire::WireError;
    use transport::ConnectionError;

    use super::super::{DialError, SessionError, HANDSHAKE_TIMEOUT};
    use super::*;
    use transport::ConnectError;

    /// A backoff after a long outage: grown to its cap.
    fn grown() -> Backoff {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..12 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b
    }

    #[test]
    fn after_silence_the_agent_redials_within_a_second_however_long_the_outage() {
        let timeout = || ConnectError::Timeout(HANDSHAKE_TIMEOUT);
        let silent = [
            SessionError::Connect(DialError::Both {
                quic: timeout(),
                tcp: timeout(),
            }),
            SessionError::Connect(DialError::Quic(timeout())),
            SessionError::Connect(DialError::Tcp(timeout())),
            SessionError::Connection(ConnectionError::TimedOut),
            SessionError::HeartbeatTimeout,
            SessionError::Silent(Duration::from_secs(4)),
            // The gateway stopped hearing this agent and closed the session.
            SessionError::Connection(ConnectionError::ApplicationClosed {
                code: AppErrorCode::HeartbeatTimeout as u64,
                reason: Default::default(),
            }),
            SessionError::Wire(WireError::Read(transport::ReadError::ConnectionLost(
                ConnectionError::TimedOut,
            ))),
        ];
        for e in &silent {
            assert!(e.is_silence(), "{e}");
            let mut b = grown();
            for _ in 0..100 {
                let d = retry_delay(&mut b, e.is_silence());
                assert!(d <= SILENCE_RETRY_CAP, "{e}: {d:?}");
            }
        }
    }

    #[test]
    fn a_refused_duplicate_comes_back_after_the_gateways_liveness_window() {
        for _ in 0..100 {
            let d = duplicate_wait(Duration::from_secs(1), Duration::from_secs(30));
            assert!(
                d > Duration::from_secs(4) && d <= Duration::from_millis(5500),
                "{d:?}"
            );
        }
        // A metered link's window (3 minutes) is longer than the cap.
        assert_eq!(
            duplicate_wait(Duration::from_secs(60), Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn answers_keep_the_full_backoff() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let answered = [
            SessionError::Refused("unknown device".into()),
            SessionError::HandshakeTimeout(HANDSHAKE_TIMEOUT),
            SessionError::Connect(DialError::Tcp(ConnectError::Io(refused))),
            SessionError::Connection(ConnectionError::ApplicationClosed {
                code: AppErrorCode::DuplicateIdentity as u64,
                reason: Default::default(),
            }),
        ];
        for e in &answered {
            assert!(!e.is_silence(), "{e}");
            let mut b = grown();
            let longest = (0..200)
                .map(|_| retry_delay(&mut b, e.is_silence()))
                .max()
                .unwrap();
            assert!(longest > Duration::from_secs(5), "{e}: {longest:?}");
        }
    }
}
