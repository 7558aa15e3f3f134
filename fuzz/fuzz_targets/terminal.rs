//! `TerminalMessage::from_json` (what browsers send over the gateway's WebSocket, and what
//! `Message` frames on a `Terminal` stream carry) and `TerminalHeader::from_map` on
//! arbitrary bytes.
//!
//! Properties: never panics; an accepted resize is within `TERMINAL_SIZE_RANGE`; an
//! accepted message survives `to_json` → `from_json` and `to_frame` → `from_frame`
//! unchanged; an accepted header validates, survives `to_map` → `from_map` unchanged, and
//! its target's text parses back to the same target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{TerminalHeader, TerminalMessage, TerminalTarget, TERMINAL_SIZE_RANGE};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = TerminalMessage::from_json(data) {
        if let TerminalMessage::Resize { cols, rows } = msg {
            assert!(TERMINAL_SIZE_RANGE.contains(&cols) && TERMINAL_SIZE_RANGE.contains(&rows));
        }
        let json = msg.to_json();
        assert_eq!(TerminalMessage::from_json(json.as_bytes()), Ok(msg.clone()), "{json}");
        assert_eq!(TerminalMessage::from_frame(&msg.to_frame()), Ok(msg));
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(data) {
        if let Ok(h) = TerminalHeader::from_map(&map) {
            assert_eq!(h.validate(), Ok(()));
            assert_eq!(TerminalHeader::from_map(&h.to_map()), Ok(h.clone()));
            assert_eq!(TerminalTarget::parse(h.target.as_str()), Ok(h.target));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = TerminalTarget::parse(text) {
            assert_eq!(t.as_str(), text);
        }
    }
});
