//! `Frame::decode` then `ControlMessage::from_frame` on arbitrary bytes.
//!
//! Properties: never panics; a decoded message survives `to_frame` → `from_frame`
//! unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{ControlMessage, Frame, MAX_CONTROL_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    // Decode every complete frame in the input, like a control stream reader would.
    while let Ok(frame) = Frame::decode(&mut buf, MAX_CONTROL_FRAME) {
        let Ok(msg) = ControlMessage::from_frame(&frame) else {
            continue;
        };
        let again = ControlMessage::from_frame(&msg.to_frame())
            .expect("re-encoded control message decodes");
        assert_eq!(again, msg, "control message changed across to_frame/from_frame");
    }
});
