//! `Terminal` streams: an interactive shell on the device host or inside a service
//! container, opened by the gateway.
//!
//! The stream starts with [`crate::StreamHeader::Terminal`] whose payload is a
//! [`TerminalHeader`] (see [`TerminalHeader::to_map`] / [`TerminalHeader::from_map`]).
//! After the header both directions carry [`crate::Frame`]s (limit
//! [`crate::MAX_DATA_FRAME`]):
//!
//! * `Data` frames are raw terminal bytes: keystrokes gateway → agent, output agent →
//!   gateway;
//! * `Message` frames are JSON [`TerminalMessage`]s: `resize` (gateway → agent), `exit` and
//!   `error` (agent → gateway). After `exit` or `error` the agent finishes its side of the
//!   stream.
//!
//! The gateway finishing or resetting its side ends the session: the agent kills the
//! process.

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;
use crate::frame::{Frame, FrameType};

/// Smallest and largest terminal dimension accepted, in cells.
pub const TERMINAL_SIZE_RANGE: std::ops::RangeInclusive<u16> = 1..=1000;

/// Longest `term` value accepted.
const MAX_TERM_LEN: usize = 64;

/// Most argv entries in a non-interactive `command`.
const MAX_ARGS: usize = 256;

/// Where a terminal session runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TerminalTarget {
    /// A PTY on the device host running the agent's configured shell.
    Host,
    /// An exec with a TTY inside the running container of this service.
    Service(String),
}

impl TerminalTarget {
    /// Parses `"host"` or a service name (1-64 characters of `A-Z a-z 0-9 - _ .`).
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        if s == "host" {
            return Ok(Self::Host);
        }
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            return Err(DecodeError::InvalidPayload(format!(
                "terminal target {s:?} is neither \"host\" nor a service name"
            )));
        }
        Ok(Self::Service(s.to_string()))
    }

    /// `"host"` or the service name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Host => "host",
            Self::Service(s) => s,
        }
    }
}

impl std::fmt::Display for TerminalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of a `Terminal` stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalHeader {
    /// Host or service.
    pub target: TerminalTarget,
    /// Initial width in cells, in [`TERMINAL_SIZE_RANGE`].
    pub cols: u16,
    /// Initial height in cells, in [`TERMINAL_SIZE_RANGE`].
    pub rows: u16,
    /// `TERM` for the process. Default is `xterm-256color`.
    pub term: String,
    /// Run this argv instead of the interactive shell (still on a PTY). Default is none.
    pub command: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    target: String,
    cols: u16,
    rows: u16,
    #[serde(default = "default_term")]
    term: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
}

fn default_term() -> String {
    "xterm-256color".into()
}

impl TerminalHeader {
    /// An interactive session on `target` of `cols` × `rows` with the default `TERM`.
    pub fn new(target: TerminalTarget, cols: u16, rows: u16) -> Self {
        Self {
            target,
            cols,
            rows,
            term: default_term(),
            command: None,
        }
    }

    /// The JSON object carried in [`crate::StreamHeader::Terminal`].
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        let wire = Wire {
            target: self.target.as_str().to_string(),
            cols: self.cols,
            rows: self.rows,
            term: self.term.clone(),
            command: self.command.clone(),
        };
        match serde_json::to_value(wire).expect("header serializes") {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("a struct serializes to an object"),
        }
    }

    /// Parses and validates the header payload (unknown keys are ignored).
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Result<Self, DecodeError> {
        let wire: Wire = serde_json::from_value(serde_json::Value::Object(map.clone()))
            .map_err(|e| DecodeError::InvalidPayload(format!("terminal header: {e}")))?;
        let h = Self {
            target: TerminalTarget::parse(&wire.target)?,
            cols: wire.cols,
            rows: wire.rows,
            term: wire.term,
            command: wire.command,
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks sizes, `term` and `command`.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_size(self.cols, self.rows)?;
        let term_ok = !self.term.is_empty()
            && self.term.len() <= MAX_TERM_LEN
            && self
                .term
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !term_ok {
            return Err(DecodeError::InvalidPayload(format!(
                "invalid TERM {:?}",
                self.term
            )));
        }
        if let Some(cmd) = &self.command {
            if cmd.is_empty() || cmd.len() > MAX_ARGS || cmd.iter().any(|a| a.contains('\0')) {
                return Err(DecodeError::InvalidPayload(
                    "command must be 1-256 arguments without NUL bytes".into(),
                ));
            }
        }
        Ok(())
    }
}

fn check_size(cols: u16, rows: u16) -> Result<(), DecodeError> {
    if !TERMINAL_SIZE_RANGE.contains(&cols) || !TERMINAL_SIZE_RANGE.contains(&rows) {
        return Err(DecodeError::InvalidPayload(format!(
            "terminal size {cols}x{rows} is outside 1..=1000"
        )));
    }
    Ok(())
}

/// A control message on a `Terminal` stream (a `Message` frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalMessage {
    /// Gateway → agent: the window changed size.
    Resize {
        /// New width in cells.
        cols: u16,
        /// New height in cells.
        rows: u16,
    },
    /// Agent → gateway: the process ended. `code` is its exit status, or 128 + the signal
    /// number when a signal killed it.
    Exit {
        /// Exit status.
        code: i32,
    },
    /// Agent → gateway: the session could not start or failed; the stream ends after it.
    Error {
        /// Why, for the operator.
        message: String,
    },
}

impl TerminalMessage {
    /// Encodes as a `Message` frame.
    pub fn to_frame(&self) -> Frame {
        Frame::new(
            FrameType::Message,
            serde_json::to_vec(self).expect("terminal message serializes"),
        )
    }

    /// Decodes a `Message` frame, validating a resize's bounds.
    pub fn from_frame(frame: &Frame) -> Result<Self, DecodeError> {
        if frame.ty != FrameType::Message {
            return Err(DecodeError::InvalidPayload(format!(
                "expected a message frame, got {:?}",
                frame.ty
            )));
        }
        Self::from_json(&frame.payload)
    }

    /// Decodes the JSON form (also what browsers send over the gateway's WebSocket).
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let msg: Self = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::InvalidPayload(format!("terminal message: {e}")))?;
        if let Self::Resize { cols, rows } = msg {
            check_size(cols, rows)?;
        }
        Ok(msg)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("terminal message serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StreamHeader, MAX_DATA_FRAME};
    use proptest::prelude::*;

    #[test]
    fn header_round_trips_through_the_stream_header() {
        let mut h = TerminalHeader::new(TerminalTarget::Service("web".into()), 120, 40);
        h.command = Some(vec!["sh".into(), "-c".into(), "exit 7".into()]);
        let bytes = StreamHeader::Terminal(h.to_map()).to_vec().unwrap();
        let StreamHeader::Terminal(map) = StreamHeader::decode(&mut &bytes[..]).unwrap() else {
            panic!("not a terminal header");
        };
        assert_eq!(TerminalHeader::from_map(&map).unwrap(), h);
    }

    #[test]
    fn header_defaults_and_host() {
        let map = serde_json::json!({"target": "host", "cols": 80, "rows": 24, "extra": 1});
        let h = TerminalHeader::from_map(map.as_object().unwrap()).unwrap();
        assert_eq!(h.target, TerminalTarget::Host);
        assert_eq!(h.term, "xterm-256color");
        assert_eq!(h.command, None);
    }

    #[test]
    fn header_bounds() {
        for (cols, rows) in [(0, 24), (80, 0), (1001, 24), (80, 1001)] {
            let map = serde_json::json!({"target": "host", "cols": cols, "rows": rows});
            assert!(
                TerminalHeader::from_map(map.as_object().unwrap()).is_err(),
                "{cols}x{rows}"
            );
        }
        for bad in [
            serde_json::json!({"target": "", "cols": 80, "rows": 24}),
            serde_json::json!({"target": "a/b", "cols": 80, "rows": 24}),
            serde_json::json!({"target": "host", "cols": 80, "rows": 24, "term": "x y"}),
            serde_json::json!({"target": "host", "cols": 80, "rows": 24, "command": []}),
            serde_json::json!({"target": "host", "cols": 70000, "rows": 24}),
            serde_json::json!({"cols": 80, "rows": 24}),
        ] {
            assert!(
                TerminalHeader::from_map(bad.as_object().unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn messages_have_the_documented_json() {
        assert_eq!(
            TerminalMessage::Resize {
                cols: 100,
                rows: 30
            }
            .to_json(),
            r#"{"type":"resize","cols":100,"rows":30}"#
        );
        assert_eq!(
            TerminalMessage::Exit { code: 7 }.to_json(),
            r#"{"type":"exit","code":7}"#
        );
        assert_eq!(
            TerminalMessage::Error {
                message: "x".into()
            }
            .to_json(),
            r#"{"type":"error","message":"x"}"#
        );
        assert!(TerminalMessage::from_json(br#"{"type":"resize","cols":0,"rows":3}"#).is_err());
        assert!(TerminalMessage::from_json(br#"{"type":"nope"}"#).is_err());
        assert!(
            TerminalMessage::from_frame(&Frame::new(FrameType::Data, &b"{}"[..])).is_err(),
            "data frames are not messages"
        );
    }

    proptest! {
        #[test]
        fn message_frames_round_trip(cols in 1u16..=1000, rows in 1u16..=1000, code in any::<i32>(), message in ".{0,40}") {
            for m in [
                TerminalMessage::Resize { cols, rows },
                TerminalMessage::Exit { code },
                TerminalMessage::Error { message: message.clone() },
            ] {
                let mut bytes = Vec::new();
                m.to_frame().encode(&mut bytes);
                let frame = Frame::decode(&mut &bytes[..], MAX_DATA_FRAME).unwrap();
                prop_assert_eq!(TerminalMessage::from_frame(&frame).unwrap(), m);
            }
        }

        #[test]
        fn arbitrary_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = TerminalMessage::from_json(&bytes);
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                let _ = TerminalHeader::from_map(&m);
            }
        }
    }
}
