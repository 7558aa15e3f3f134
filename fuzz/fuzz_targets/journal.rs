//! The reconciler's journal file (`protocol::journal`), as a power cut or a failing SD card
//! may leave it, on arbitrary bytes.
//!
//! Properties: never panics; an accepted journal survives encode → decode unchanged; the
//! state it says to run is the target, or (a rollback) the last good release when the
//! target is the release that failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::journal::Journal;

fuzz_target!(|data: &[u8]| {
    let Ok(j) = Journal::from_json(data) else {
        return;
    };
    let bytes = j.to_json().expect("an accepted journal encodes");
    assert_eq!(Journal::from_json(&bytes).expect("re-encoded journal decodes"), j);
    match j.effective() {
        None => assert!(j.target.is_none()),
        Some((state, false)) => assert_eq!(Some(state), j.target.as_ref()),
        Some((state, true)) => {
            assert_eq!(Some(state), j.last_good.as_ref());
            let failed = j.failed.as_ref().expect("a rollback has a failure");
            assert_eq!(Some(&failed.release), j.target.as_ref().map(|t| &t.release));
            assert_ne!(state.release, failed.release, "rolled back to the failed release");
        }
    }
});
