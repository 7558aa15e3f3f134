//! `LogsMessage::from_frame` and `LogsHeader::from_map` (the `Logs` stream, both
//! directions) on arbitrary message payloads. Frame decoding itself is the `frame`
//! target; this one feeds the payload straight in.
//!
//! Properties: never panics; an accepted batch has at most `MAX_BATCH_LINES` lines with
//! strictly increasing, non-zero sequence numbers; an accepted message survives
//! `to_frame` → `from_frame` unchanged; an accepted header has a 1 to 64 byte epoch and
//! survives `to_map` → `from_map` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Frame, FrameType, LogsHeader, LogsMessage, MAX_BATCH_LINES, MAX_LOGS_FRAME};

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_LOGS_FRAME {
        return;
    }
    let frame = Frame::new(FrameType::Message, data.to_vec());
    if let Ok(msg) = LogsMessage::from_frame(&frame) {
        if let LogsMessage::Batch { lines } = &msg {
            assert!(lines.len() <= MAX_BATCH_LINES, "{} lines", lines.len());
            let mut prev = 0;
            for l in lines {
                assert!(l.seq > prev, "sequence {} after {prev}", l.seq);
                prev = l.seq;
            }
        }
        let again = LogsMessage::from_frame(&msg.to_frame()).expect("re-encoded message decodes");
        assert_eq!(again, msg, "logs message changed across to_frame/from_frame");
    }
    // The same payload as a data frame is never a logs message.
    assert!(LogsMessage::from_frame(&Frame::new(FrameType::Data, data.to_vec())).is_err());

    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(data) {
        if let Ok(h) = LogsHeader::from_map(map) {
            assert!(!h.epoch.is_empty() && h.epoch.len() <= 64, "{h:?}");
            assert_eq!(LogsHeader::from_map(h.to_map()), Ok(h));
        }
    }
});
