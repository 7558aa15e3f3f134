//! The compose parser (`gateway release create` and the release API take a compose file
//! from an operator) on arbitrary text.
//!
//! Properties: never panics, whatever the YAML (anchors, deep nesting, odd scalars); an
//! accepted file builds a target state, which survives a JSON round trip unchanged (the
//! gateway stores it as JSON and the agent reads it back).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = compose::parse_compose(text) else {
        return;
    };
    let state = compose::target_state(1, "app", "release", &parsed, &[], &[]);
    let json = serde_json::to_string(&state).expect("a target state serializes");
    let back: protocol::TargetState = serde_json::from_str(&json).expect("and reads back");
    assert_eq!(back, state);
});
