//! `DeviceUuid` parsing on arbitrary strings.
//!
//! Properties: never panics; a parsed uuid displays as 32 lowercase hex characters and
//! that text parses back to the same uuid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::DeviceUuid;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uuid) = s.parse::<DeviceUuid>() else {
        return;
    };
    let text = uuid.to_string();
    assert_eq!(text.len(), 32, "display is not 32 characters: {text:?}");
    assert!(
        text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "display is not lowercase hex: {text:?}"
    );
    assert_eq!(text, uuid.as_str());
    let again: DeviceUuid = text.parse().expect("display output parses");
    assert_eq!(again, uuid, "display output parses to another uuid");
    // Parsing is case-insensitive and normalises: the input, lowercased and without
    // dashes, is the display form.
    assert_eq!(s.to_ascii_lowercase().replace('-', ""), text);
});
