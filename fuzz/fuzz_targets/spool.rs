//! The agent's log spool files (`protocol::spool`): a segment and a `state.json`, as a
//! power cut or a failing SD card may leave them, on arbitrary bytes.
//!
//! Properties: never panics; a scan's good length ends on a line boundary and every line
//! in it decodes, the last of them carrying the reported sequence number; scanning the
//! segment cut to its good length (what opening the spool does) finds the same; accepted
//! lines and states survive encode → decode unchanged; a segment name parses back to its
//! number.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use protocol::spool::{scan_segment, segment_first, segment_name, SpoolLine, SpoolState};

fuzz_target!(|data: &[u8]| {
    let mut cursors = BTreeMap::new();
    let scan = scan_segment(data, &mut cursors);
    let good = usize::try_from(scan.good_len).expect("fits");
    assert!(good <= data.len());
    assert!(good == 0 || data[good - 1] == b'\n', "good length mid-line");
    let mut last = None;
    let mut expect_cursors = BTreeMap::new();
    for line in data[..good].split_inclusive(|b| *b == b'\n') {
        let l = SpoolLine::decode(line).expect("a line in the good part decodes");
        assert_eq!(SpoolLine::decode(&l.encode()).expect("re-encoded line decodes"), l);
        if let Some((c, t)) = &l.src {
            let cur = expect_cursors.entry(c.clone()).or_insert(i64::MIN);
            *cur = (*cur).max(*t);
        }
        last = Some(l.line.seq);
    }
    assert_eq!(scan.last, last);
    assert_eq!(cursors, expect_cursors);
    let mut again = BTreeMap::new();
    assert_eq!(scan_segment(&data[..good], &mut again), scan, "cut segment scans differently");
    assert_eq!(again, cursors);

    if let Ok(state) = SpoolState::decode(data) {
        assert_eq!(SpoolState::decode(&state.encode()).expect("re-encoded state decodes"), state);
    }
    if let Ok(name) = std::str::from_utf8(data) {
        if let Some(first) = segment_first(name) {
            assert_eq!(segment_first(&segment_name(first)), Some(first));
        }
    }
});
