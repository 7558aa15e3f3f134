//! The `Logs` stream: how the agent ships its spooled log lines.
//!
//! The agent opens a bidirectional stream with a [`LogsHeader`] (its spool's epoch). Both
//! directions then carry JSON [`LogsMessage`]s in message frames:
//!
//! ```text
//! gateway → agent   {"type":"resume","acked":41}            once, first: what is stored already
//! agent → gateway   {"type":"batch","lines":[{"seq":42,..},..]}
//! gateway → agent   {"type":"ack","upto":57}                after the batch is durably stored
//! ```
//!
//! Sequence numbers are per device and per spool epoch and strictly increasing. The gateway
//! stores a line only when its `seq` is above the highest it has stored for that epoch, so
//! a batch sent twice (ack lost in a disconnect, agent restarted before it recorded the ack)
//! is stored once. A new epoch (the spool was wiped, the device re-provisioned) starts
//! counting again.

use serde::{Deserialize, Serialize};

use crate::codec::DecodeError;
use crate::frame::{Frame, FrameType};

/// Largest batch the agent sends, in lines. Keeps one frame well under the frame limit.
pub const MAX_BATCH_LINES: usize = 2_000;

/// Longest single log message, in bytes; longer lines are cut (and say so) by the agent.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Frame size limit on a `Logs` stream.
pub const MAX_LOGS_FRAME: usize = 1024 * 1024;

/// Payload of the `Logs` stream header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsHeader {
    /// Identifies one life of the agent's spool; sequence numbers restart with a new epoch.
    pub epoch: String,
}

impl LogsHeader {
    /// As the map carried by [`crate::StreamHeader::Logs`].
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self).expect("header serializes") {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("a struct serializes to an object"),
        }
    }

    /// From the map carried by [`crate::StreamHeader::Logs`].
    pub fn from_map(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, DecodeError> {
        let header: Self = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| DecodeError::InvalidPayload(format!("logs header: {e}")))?;
        if header.epoch.is_empty() || header.epoch.len() > 64 {
            return Err(DecodeError::InvalidPayload(
                "logs header: epoch must be 1 to 64 characters".into(),
            ));
        }
        Ok(header)
    }
}

/// One log line as shipped and stored. Field names follow balena's log messages
/// (`message`, `timestamp`, `isStdErr`, `isSystem`, `serviceId`) plus our own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Per-device sequence number (within the spool epoch).
    pub seq: u64,
    /// Milliseconds since the Unix epoch, when the line was produced on the device.
    pub timestamp: i64,
    /// The text, without the trailing newline.
    pub message: String,
    /// Whether it came from stderr (or is an agent warning).
    #[serde(default)]
    pub is_std_err: bool,
    /// Whether the agent itself wrote it (events, warnings).
    #[serde(default)]
    pub is_system: bool,
    /// The service that printed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// balena's numeric service id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<u32>,
}

/// A message on a `Logs` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogsMessage {
    /// Gateway → agent, first: the highest sequence number already stored for this epoch
    /// (0 when none). The agent may drop everything up to it from its spool.
    Resume {
        /// Highest stored sequence number.
        acked: u64,
    },
    /// Agent → gateway: consecutive lines in increasing `seq` order.
    Batch {
        /// The lines.
        lines: Vec<LogLine>,
    },
    /// Gateway → agent: every line up to and including `upto` is durably stored.
    Ack {
        /// Highest stored sequence number.
        upto: u64,
    },
    /// A type this build does not know; ignored.
    #[serde(other)]
    Unknown,
}

impl LogsMessage {
    /// Encodes as a message frame.
    pub fn to_frame(&self) -> Frame {
        Frame::new(
            FrameType::Message,
            serde_json::to_vec(self).expect("logs message serializes"),
        )
    }

    /// Decodes a message frame, checking a batch's shape: at most [`MAX_BATCH_LINES`]
    /// lines, strictly increasing sequence numbers, no zero sequence number.
    pub fn from_frame(frame: &Frame) -> Result<Self, DecodeError> {
        if frame.ty != FrameType::Message {
            return Err(DecodeError::InvalidPayload(format!(
                "expected a message frame on a logs stream, got {:?}",
                frame.ty
            )));
        }
        let msg: Self = serde_json::from_slice(&frame.payload)
            .map_err(|e| DecodeError::InvalidPayload(format!("logs message: {e}")))?;
        if let Self::Batch { lines } = &msg {
            if lines.len() > MAX_BATCH_LINES {
                return Err(DecodeError::InvalidPayload(format!(
                    "logs batch of {} lines exceeds {MAX_BATCH_LINES}",
                    lines.len()
                )));
            }
            let mut prev = 0;
            for l in lines {
                if l.seq <= prev {
                    return Err(DecodeError::InvalidPayload(format!(
                        "logs batch: sequence {} after {prev} is not increasing",
                        l.seq
                    )));
                }
                prev = l.seq;
            }
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> LogLine {
        LogLine {
            seq,
            timestamp: 1_700_000_000_000,
            message: format!("line {seq}"),
            is_std_err: false,
            is_system: false,
            service_name: Some("web".into()),
            service_id: Some(1),
        }
    }

    #[test]
    fn batch_round_trips_with_balena_field_names() {
        let msg = LogsMessage::Batch {
            lines: vec![line(1), line(2)],
        };
        let frame = msg.to_frame();
        let text = std::str::from_utf8(&frame.payload).unwrap();
        assert!(text.contains("\"isStdErr\":false"), "{text}");
        assert!(text.contains("\"serviceName\":\"web\""), "{text}");
        assert_eq!(LogsMessage::from_frame(&frame).unwrap(), msg);
    }

    #[test]
    fn non_increasing_batch_is_refused() {
        let msg = LogsMessage::Batch {
            lines: vec![line(3), line(3)],
        };
        let err = LogsMessage::from_frame(&msg.to_frame()).unwrap_err();
        assert!(err.to_string().contains("not increasing"), "{err}");
        let zero = LogsMessage::Batch {
            lines: vec![line(0)],
        };
        assert!(LogsMessage::from_frame(&zero.to_frame()).is_err());
    }

    #[test]
    fn unknown_message_type_is_ignored_not_fatal() {
        let f = Frame::new(FrameType::Message, &b"{\"type\":\"later\",\"x\":1}"[..]);
        assert_eq!(LogsMessage::from_frame(&f).unwrap(), LogsMessage::Unknown);
    }

    #[test]
    fn header_needs_an_epoch() {
        let h = LogsHeader {
            epoch: "abc".into(),
        };
        assert_eq!(LogsHeader::from_map(h.to_map()).unwrap(), h);
        assert!(LogsHeader::from_map(serde_json::Map::new()).is_err());
    }
}
