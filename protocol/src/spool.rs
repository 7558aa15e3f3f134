//! The agent's log spool on disk: the format of its segment files and its state file.
//!
//! This is not part of the wire protocol; it lives here because it is pure decoding of
//! files that can be torn by a power cut or damaged by a failing SD card, and this crate is
//! what the fuzz build can use without the agent. The agent's `logs::spool` owns the
//! directory, the files and their IO, and calls into this module for every byte it reads
//! back.
//!
//! ```text
//! state.json                        {"epoch":"…","acked":N,"cursors":{…}}
//! seg-00000000000000000001.ndjson   lines 1..      one SpoolLine JSON per line
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::logs::LogLine;

/// A line as kept in a segment: what is shipped, plus where it was read from (so a
/// restarted agent resumes reading a container's output after it, and never reads it
/// twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolLine {
    /// The line as shipped.
    #[serde(flatten)]
    pub line: LogLine,
    /// Container id and the line's engine timestamp (ns since the epoch), for container
    /// output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<(String, i64)>,
}

/// The spool's `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolState {
    /// Identifies one life of the spool; empty means "none yet" (a new epoch is made).
    pub epoch: String,
    /// Highest sequence number the gateway acknowledged.
    pub acked: u64,
    /// Per container id: engine timestamp (ns) of the last line taken from it.
    #[serde(default)]
    pub cursors: BTreeMap<String, i64>,
}

/// A spool file that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum SpoolFormatError {
    /// A segment line is not a [`SpoolLine`] (torn by a crash, or damaged).
    #[error("log spool line: {0}")]
    Line(#[source] serde_json::Error),
    /// `state.json` is not a [`SpoolState`].
    #[error("log spool state: {0}")]
    State(#[source] serde_json::Error),
}

/// What [`scan_segment`] found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// Sequence number of the last whole line, if any.
    pub last: Option<u64>,
    /// Length of the leading run of whole, decodable lines: the segment is cut to this
    /// length when the spool is opened.
    pub good_len: u64,
}

impl SpoolLine {
    /// Decodes one segment line (a trailing newline is allowed).
    pub fn decode(line: &[u8]) -> Result<Self, SpoolFormatError> {
        serde_json::from_slice(line).map_err(SpoolFormatError::Line)
    }

    /// The segment line, with its trailing newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = serde_json::to_vec(self).expect("log line serializes");
        buf.push(b'\n');
        buf
    }
}

impl SpoolState {
    /// Decodes `state.json`.
    pub fn decode(bytes: &[u8]) -> Result<Self, SpoolFormatError> {
        serde_json::from_slice(bytes).map_err(SpoolFormatError::State)
    }

    /// The contents of `state.json`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("spool state serializes")
    }
}

/// Reads a whole segment: the leading lines that end in a newline and decode. Scanning
/// stops at the first line that does not (a torn tail after a crash, or damage). The
/// container cursors found are merged into `cursors` (the newest wins).
pub fn scan_segment(data: &[u8], cursors: &mut BTreeMap<String, i64>) -> SegmentScan {
    let mut good = 0usize;
    let mut last = None;
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.last() != Some(&b'\n') {
            break;
        }
        let Ok(s) = SpoolLine::decode(line) else {
            break;
        };
        if let Some((c, t)) = s.src {
            let cur = cursors.entry(c).or_insert(i64::MIN);
            *cur = (*cur).max(t);
        }
        last = Some(s.line.seq);
        good += line.len();
    }
    SegmentScan {
        last,
        good_len: good as u64,
    }
}

/// The file name of the segment whose first line is `first`.
pub fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.ndjson")
}

/// The first sequence number of a segment, from its file name; `None` for other files.
pub fn segment_first(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".ndjson")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, src: Option<(&str, i64)>) -> SpoolLine {
        SpoolLine {
            line: LogLine {
                seq,
                timestamp: 1,
                message: format!("l{seq}"),
                is_std_err: false,
                is_system: false,
                service_name: Some("svc".into()),
                service_id: None,
            },
            src: src.map(|(c, t)| (c.to_string(), t)),
        }
    }

    #[test]
    fn a_segment_scans_up_to_its_torn_tail() {
        let mut data = Vec::new();
        data.extend(line(1, Some(("abc", 5))).encode());
        data.extend(line(2, Some(("abc", 3))).encode());
        let whole = data.len() as u64;
        data.extend_from_slice(b"{\"seq\":3,\"timest");
        let mut cursors = BTreeMap::new();
        let scan = scan_segment(&data, &mut cursors);
        assert_eq!(
            scan,
            SegmentScan {
                last: Some(2),
                good_len: whole
            }
        );
        assert_eq!(cursors.get("abc"), Some(&5));
        // Damage in the middle ends the scan there too, and invalid UTF-8 is damage,
        // not an IO error.
        let mut bad = line(1, None).encode();
        bad.extend_from_slice(b"{\"seq\":2,\"timestamp\":1,\"message\":\"\xff\"}\n");
        bad.extend(line(3, None).encode());
        let scan = scan_segment(&bad, &mut BTreeMap::new());
        assert_eq!(scan.last, Some(1));
    }

    #[test]
    fn lines_and_state_round_trip() {
        let l = line(7, Some(("c", -1)));
        assert_eq!(SpoolLine::decode(&l.encode()).unwrap(), l);
        let s = SpoolState {
            epoch: "e".into(),
            acked: 3,
            cursors: [("c".to_string(), 9)].into(),
        };
        assert_eq!(SpoolState::decode(&s.encode()).unwrap(), s);
        assert!(matches!(
            SpoolState::decode(b"{"),
            Err(SpoolFormatError::State(_))
        ));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(4711), "seg-00000000000000004711.ndjson");
        assert_eq!(segment_first(&segment_name(4711)), Some(4711));
        for bad in [
            "seg-.ndjson",
            "seg-+5.ndjson",
            "seg-1.json",
            "state.json",
            ".lock",
        ] {
            assert_eq!(segment_first(bad), None, "{bad}");
        }
    }
}
