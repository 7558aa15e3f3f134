//! Text output helpers shared by the commands.

/// A duration for people: `45s`, `12m`, `2h`, `1h30m` (rounded to the minute, so a TTL
/// of 2h read a second later still says 2h).
pub(super) fn human_secs(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = (s + 30) / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
}

pub(super) fn ago(unix: i64) -> String {
    let secs = (crate::store::now_unix() - unix).max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn durations_round_to_the_minute() {
        assert_eq!(human_secs(7199), "2h");
        assert_eq!(human_secs(7200), "2h");
        assert_eq!(human_secs(5400), "1h30m");
        assert_eq!(human_secs(86_399), "24h");
        assert_eq!(human_secs(600), "10m");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(-5), "0s");
    }
}
