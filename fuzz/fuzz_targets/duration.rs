//! `protocol::duration` (every duration the gateway, its CLI and the agent take) on
//! arbitrary text and arbitrary bounds.
//!
//! Input: 16 bytes of bounds (min and max in milliseconds, big-endian u64 each), then the
//! text. Properties: never panics; a parsed value lies within the bounds it was parsed
//! with (and within `duration::MAX` for the unbounded `parse`); what `display` writes
//! parses back to the same value; error messages stay short (they quote at most
//! `MAX_INPUT_LEN` characters of the input).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use protocol::duration::{self, Bounds};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let ms = |b: &[u8]| Duration::from_millis(u64::from_be_bytes(b.try_into().unwrap()));
    let (a, b) = (ms(&data[..8]), ms(&data[8..16]));
    let bounds = Bounds::new(a.min(b), a.max(b));
    let Ok(text) = std::str::from_utf8(&data[16..]) else {
        return;
    };
    match bounds.parse(text) {
        Ok(d) => {
            assert!(d >= bounds.min && d <= bounds.max, "{d:?} outside {bounds}");
            let shown = duration::display(d);
            assert_eq!(bounds.parse(&shown), Ok(d), "display {shown:?} reads back differently");
        }
        Err(e) => {
            // Messages quote a cut of the input, so they stay short whatever comes in.
            let msg = e.to_string();
            assert!(msg.len() < 4096, "{} byte message: {msg}", msg.len());
        }
    }
    if let Ok(d) = duration::parse(text) {
        assert!(d <= duration::MAX, "{d:?} beyond duration::MAX");
    }
});
