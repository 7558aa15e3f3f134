//! Durations as people write them (`500ms`, `15s`, `2m`, `1h30m`, `7d`, `2w`), with bounds.
//!
//! One parser for every duration the gateway, its CLI and the agent take: config keys,
//! flags, the logs API's `since`/`until`. Each use states its [`Bounds`], so a value that
//! would overflow (or wipe data, like a retention in the future) is refused with an error
//! that names the bound, instead of wrapping or panicking.
//!
//! The units are [`humantime`]'s (`ns`, `us`, `ms`, `s`, `m`/`min`, `h`, `d`, `w`, `M` for
//! months of 30.44 days, `y` for years of 365.25 days, and their long names), and a bare
//! integer means seconds. Components may be combined, with or without spaces (`1h30m`,
//! `1h 30m`).
//!
//! Sans-IO like the rest of this crate: it only turns text into a `Duration`.

use std::fmt;
use std::time::Duration;

/// Longest text accepted. Nobody writes a duration of more than a few components; a cap
/// keeps error messages (which quote the input) short when the text comes from a visitor.
pub const MAX_INPUT_LEN: usize = 64;

/// One second.
pub const SECOND: Duration = Duration::from_secs(1);
/// One minute.
pub const MINUTE: Duration = Duration::from_secs(60);
/// One hour.
pub const HOUR: Duration = Duration::from_secs(3600);
/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);
/// Ten years of 365 days: the longest retention, TTL or expiry anything takes.
pub const TEN_YEARS: Duration = Duration::from_secs(3650 * 86_400);
/// The longest duration [`parse`] returns without explicit bounds: 100 years. Far beyond
/// every real setting, and small enough that adding it to any clock in milliseconds, as
/// an `i64`, cannot overflow.
pub const MAX: Duration = Duration::from_secs(36_500 * 86_400);

/// Why a text is not an acceptable duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not a duration at all.
    #[error("{input:?} is not a duration (e.g. 500ms, 15s, 2m, 1h30m, 7d): {reason}")]
    Syntax {
        /// The text (cut to [`MAX_INPUT_LEN`] characters).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The duration is longer than allowed.
    #[error("{input} is too long: the maximum is {max}")]
    TooLong {
        /// The text, or the value as [`display`] writes it.
        input: String,
        /// The bound, as [`display`] writes it.
        max: String,
    },
    /// The duration is shorter than allowed.
    #[error("{input} is too short: the minimum is {min}")]
    TooShort {
        /// The text, or the value as [`display`] writes it.
        input: String,
        /// The bound, as [`display`] writes it.
        min: String,
    },
}

/// The range a duration must fall in, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The shortest allowed.
    pub min: Duration,
    /// The longest allowed.
    pub max: Duration,
}

impl Bounds {
    /// `min..=max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// Parses `text` and checks it is within the bounds.
    pub fn parse(&self, text: &str) -> Result<Duration, DurationError> {
        let d = parse_unbounded(text)?;
        self.check_as(d, || format!("{:?}", cut(text.trim())))
    }

    /// Checks an already parsed value (say, integer seconds from a config file).
    pub fn check(&self, d: Duration) -> Result<Duration, DurationError> {
        self.check_as(d, || display(d))
    }

    fn check_as(
        &self,
        d: Duration,
        input: impl FnOnce() -> String,
    ) -> Result<Duration, DurationError> {
        if d > self.max {
            return Err(DurationError::TooLong {
                input: input(),
                max: display(self.max),
            });
        }
        if d < self.min {
            return Err(DurationError::TooShort {
                input: input(),
                min: display(self.min),
            });
        }
        Ok(d)
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", display(self.min), display(self.max))
    }
}

/// Parses a duration between zero and [`MAX`].
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    Bounds::new(Duration::ZERO, MAX).parse(text)
}

/// Writes `d` so that [`parse`] reads it back exactly: its non-zero components, largest
/// first, with no spaces (`1d2h`, `1m30s`, `250ms`, `0s`).
pub fn display(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut out = String::new();
    let mut secs = d.as_secs();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    let mut nanos = d.subsec_nanos();
    for (unit, len) in [("ms", 1_000_000), ("us", 1000), ("ns", 1)] {
        if nanos >= len {
            out.push_str(&format!("{}{unit}", nanos / len));
            nanos %= len;
        }
    }
    out
}

fn cut(text: &str) -> String {
    text.chars().take(MAX_INPUT_LEN).collect()
}

fn syntax(text: &str, reason: impl Into<String>) -> DurationError {
    DurationError::Syntax {
        input: cut(text),
        reason: reason.into(),
    }
}

/// Parses without bounds (up to what a `Duration` holds).
///
/// humantime parses each component, and this sums them with checked arithmetic: its own
/// summing panics when the total reaches `u64::MAX` seconds with a carry
/// (`"18446744073709551615s 1000ms"`), which a fuzz run finds in seconds.
fn parse_unbounded(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(syntax(s, "it is empty"));
    }
    if s.chars().count() > MAX_INPUT_LEN {
        return Err(syntax(s, format!("longer than {MAX_INPUT_LEN} characters")));
    }
    // A bare integer is seconds, as the config file and the flags have always taken it.
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| syntax(s, "the number is too large"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(syntax(s, "expected a number"));
        }
        let after_number = rest[number_len..].trim_start();
        let unit_len = after_number
            .find(|c: char| !(c.is_alphabetic() || c == 'µ'))
            .unwrap_or(after_number.len());
        if unit_len == 0 {
            return Err(syntax(
                s,
                format!("a unit is needed after {:?}", &rest[..number_len]),
            ));
        }
        let unit = &after_number[..unit_len];
        let component = format!("{}{unit}", &rest[..number_len]);
        let d = humantime::parse_duration(&component).map_err(|e| match e {
            humantime::DurationError::UnknownUnit { .. } => syntax(
                s,
                format!("unknown unit {unit:?} (use ms, s, m, h, d or w)"),
            ),
            other => syntax(s, other.to_string()),
        })?;
        total = total
            .checked_add(d)
            .ok_or_else(|| syntax(s, "the number is too large"))?;
        rest = after_number[unit_len..].trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn units() {
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("15s"), Duration::from_secs(15));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), HOUR);
        assert_eq!(ok("7d"), 7 * DAY);
        assert_eq!(ok("2w"), 14 * DAY);
        assert_eq!(ok("3min"), Duration::from_secs(180));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("15"), Duration::from_secs(15));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("  10s "), Duration::from_secs(10));
    }

    #[test]
    fn combined_forms() {
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("1d 2h 3m 4s 5ms"), Duration::new(93_784, 5_000_000));
        assert_eq!(ok("2 h"), 2 * HOUR);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for (s, why) in [
            ("", "empty"),
            ("soon", "expected a number"),
            ("5 parsecs", "unknown unit \"parsecs\""),
            ("7x", "unknown unit \"x\""),
            ("-5s", "expected a number"),
            ("1h30", "a unit is needed after \"30\""),
            ("1..5s", ""),
            ("99999999999999999999", "too large"),
            ("99999999999999999999h", ""),
        ] {
            let e = parse(s).expect_err(s).to_string();
            assert!(e.contains(why), "{s:?}: {e}");
            assert!(e.contains("is not a duration"), "{s:?}: {e}");
        }
        let long = "1s".repeat(40);
        assert!(parse(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than"));
    }

    #[test]
    fn humantime_alone_panics_where_we_do_not() {
        // humantime sums components itself and panics on this carry; we sum checked.
        let s = "18446744073709551615s 1000ms";
        assert!(std::panic::catch_unwind(|| humantime::parse_duration(s)).is_err());
        assert!(parse(s).unwrap_err().to_string().contains("too large"));
        let exact = Bounds::new(Duration::ZERO, Duration::MAX);
        assert!(exact.parse(s).is_err());
        assert_eq!(
            exact.parse("18446744073709551615s 999ms").unwrap(),
            Duration::new(u64::MAX, 999_000_000)
        );
    }

    #[test]
    fn bounds_are_enforced_and_named() {
        let b = Bounds::new(Duration::from_millis(500), DAY);
        assert_eq!(b.parse("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(b.parse("24h").unwrap(), DAY);
        assert_eq!(b.parse("500ms").unwrap(), Duration::from_millis(500));
        let e = b.parse("100000000000000000s").unwrap_err();
        assert!(matches!(e, DurationError::TooLong { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "\"100000000000000000s\" is too long: the maximum is 1d"
        );
        let e = b.parse("100ms").unwrap_err().to_string();
        assert_eq!(e, "\"100ms\" is too short: the minimum is 500ms");
        let e = b
            .check(Duration::from_secs(90_000))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "1d1h is too long: the maximum is 1d");
        assert_eq!(b.to_string(), "500ms..=1d");
        // The default bound: 100 years.
        assert!(parse("36500d").is_ok());
        assert!(parse("36501d").is_err());
    }

    #[test]
    fn display_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(90),
            Duration::new(93_784, 5_006_007),
            TEN_YEARS,
            MAX,
        ] {
            assert_eq!(parse(&display(d)).unwrap(), d, "{}", display(d));
        }
        assert_eq!(display(Duration::from_secs(5400)), "1h30m");
        assert_eq!(display(TEN_YEARS), "3650d");
    }

    proptest::proptest! {
        // The fuzz target's properties (fuzz/fuzz_targets/duration.rs), on inputs shaped
        // like durations so that the overflow corners are reached in a unit-test budget.
        #[test]
        fn parsed_values_stay_within_bounds_and_display_round_trips(
            text in "(([0-9]{1,20}(\\.[0-9]{1,12})?) ?(ns|us|ms|s|m|min|h|d|w|M|y|x)? ?){1,4}",
            a in 0u64..=u64::MAX,
            b in 0u64..=u64::MAX,
        ) {
            let bounds = Bounds::new(
                Duration::from_millis(a.min(b)),
                Duration::from_millis(a.max(b)),
            );
            if let Ok(d) = bounds.parse(&text) {
                proptest::prop_assert!(d >= bounds.min && d <= bounds.max);
                proptest::prop_assert_eq!(bounds.parse(&display(d)), Ok(d));
            }
            if let Ok(d) = parse(&text) {
                proptest::prop_assert!(d <= MAX);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = parse(&text);
        }
    }
}
