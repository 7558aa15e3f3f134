//! Inputs the fuzzers (or their authors) found once, replayed on every test run.

use protocol::{ControlMessage, Frame, StreamHeader, MAX_CONTROL_FRAME};

#[test]
fn floats_survive_a_round_trip() {
    let bytes = include_bytes!("../../fuzz/regressions/stream_header-float-roundtrip");
    let h = StreamHeader::decode(&mut &bytes[..]).unwrap();
    let again = StreamHeader::decode(&mut &h.to_vec().unwrap()[..]).unwrap();
    assert_eq!(again, h);

    let bytes = include_bytes!("../../fuzz/regressions/control_message-float-roundtrip");
    let f = Frame::decode(&mut &bytes[..], MAX_CONTROL_FRAME).unwrap();
    let m = ControlMessage::from_frame(&f).unwrap();
    assert_eq!(ControlMessage::from_frame(&m.to_frame()).unwrap(), m);
}

#[test]
fn re_encoding_a_grown_header_is_an_error_not_a_panic() {
    let bytes = include_bytes!("../../fuzz/regressions/stream_header-reencode-too-large");
    let h = StreamHeader::decode(&mut &bytes[..]).unwrap();
    assert!(h.to_vec().is_err());
}
