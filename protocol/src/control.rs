//! Messages on the control stream and protocol version negotiation.
//!
//! The agent opens the control stream right after the QUIC handshake, writes the
//! [`StreamHeader::Control`](crate::StreamHeader::Control) header and a
//! [`ControlMessage::Hello`]. The gateway answers [`ControlMessage::Welcome`] with the
//! version it picked, or [`ControlMessage::Error`] with [`ErrorCode::VersionMismatch`]
//! and closes the connection.

use serde::{Deserialize, Serialize};

use crate::{DecodeError, Frame, FrameType};

/// The protocol version this build prefers.
pub const PROTOCOL_VERSION: u16 = 1;

/// Every protocol version this build can speak, newest first.
pub const SUPPORTED_VERSIONS: &[u16] = &[1];

/// Capabilities this build announces in hello/welcome.
pub const CAPABILITIES: &[&str] = &["http", "terminal", "logs", "actions", "target"];

/// A message on the control stream, encoded as JSON in a [`FrameType::Message`] frame.
///
/// Internally tagged by `"type"`. A receiver ignores messages whose type it does not know
/// (they decode to [`ControlMessage::Unknown`]), so new message types can be added without
/// a version bump; fields it does not know are ignored too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Agent → gateway, first message on the control stream.
    Hello {
        /// Protocol versions the agent speaks.
        versions: Vec<u16>,
        /// Optional features the agent supports (`"http"`, later `"terminal"`, `"logs"`, ...).
        #[serde(default)]
        capabilities: Vec<String>,
        /// The agent's software version, for display.
        #[serde(default)]
        agent_version: String,
        /// Random id of this agent process, the same on every session it opens. A new
        /// session with the instance of the device's live session is a planned move (a
        /// reconnect, a change of transport), never a second agent sharing the identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
        /// How often the agent's transport sends keep-alives, in milliseconds: the gateway
        /// declares the device dead after a few of them go missing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_alive_ms: Option<u64>,
    },
    /// Gateway → agent, answer to `Hello`.
    Welcome {
        /// The version both sides will speak.
        version: u16,
        /// Features the gateway supports.
        #[serde(default)]
        capabilities: Vec<String>,
        /// The device uuid the gateway read from the agent's certificate.
        device: String,
        /// How often the agent should send heartbeats, in milliseconds.
        heartbeat_interval_ms: u64,
    },
    /// Either side: liveness probe; the receiver answers with `HeartbeatAck` and the same `seq`.
    Heartbeat {
        /// Sequence number chosen by the sender.
        seq: u64,
    },
    /// Answer to `Heartbeat`.
    HeartbeatAck {
        /// The `seq` of the heartbeat being answered.
        seq: u64,
    },
    /// Agent → gateway: the device's current state (defined by the control-plane feature).
    StateReport {
        /// Free-form state object.
        state: serde_json::Value,
    },
    /// Gateway → agent: a device action to run (defined by the control-plane feature).
    Action {
        /// Unique action id; the agent never runs the same id twice.
        id: String,
        /// Action name (`reboot`, `blink`, ...).
        name: String,
        /// Action parameters.
        #[serde(default)]
        params: serde_json::Value,
    },
    /// Agent → gateway: outcome of an `Action`.
    ActionResult {
        /// The action's id.
        id: String,
        /// Whether it succeeded.
        ok: bool,
        /// Failure reason or output.
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// Gateway → agent: the device's target state changed (defined by the reconciler feature).
    TargetState {
        /// The target state document.
        target: serde_json::Value,
    },
    /// Either side: a fatal problem; the sender closes the connection after it.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// A message type this build does not know. Never sent.
    #[serde(other)]
    Unknown,
}

/// Codes carried in [`ControlMessage::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No protocol version in common.
    VersionMismatch,
    /// The first control message was not `Hello`, or a message was malformed.
    ProtocolError,
    /// The device is unknown or revoked.
    UnknownDevice,
    /// Any other error.
    #[serde(other)]
    Other,
}

impl ControlMessage {
    /// The `Hello` this build sends.
    pub fn hello(agent_version: impl Into<String>) -> Self {
        Self::Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            agent_version: agent_version.into(),
            instance: None,
            keep_alive_ms: None,
        }
    }

    /// Encodes this message as a [`FrameType::Message`] frame.
    pub fn to_frame(&self) -> Frame {
        Frame::new(
            FrameType::Message,
            serde_json::to_vec(self).expect("control message serializes"),
        )
    }

    /// Decodes a message from a frame.
    pub fn from_frame(frame: &Frame) -> Result<Self, DecodeError> {
        if frame.ty != FrameType::Message {
            return Err(DecodeError::InvalidPayload(format!(
                "expected a message frame on the control stream, got {:?}",
                frame.ty
            )));
        }
        serde_json::from_slice(&frame.payload)
            .map_err(|e| DecodeError::InvalidPayload(e.to_string()))
    }
}

/// No protocol version is spoken by both sides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no common protocol version: we speak {ours:?}, the peer offered {theirs:?}")]
pub struct VersionMismatch {
    /// Versions this side speaks.
    pub ours: Vec<u16>,
    /// Versions the peer offered.
    pub theirs: Vec<u16>,
}

/// Picks the highest version in both `ours` and `theirs`.
pub fn negotiate(ours: &[u16], theirs: &[u16]) -> Result<u16, VersionMismatch> {
    ours.iter()
        .copied()
        .filter(|v| theirs.contains(v))
        .max()
        .ok_or_else(|| VersionMismatch {
            ours: ours.to_vec(),
            theirs: theirs.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(serde_json::Value::from),
            "[a-z ]{0,12}".prop_map(serde_json::Value::from),
        ]
    }

    fn arb_msg() -> impl Strategy<Value = ControlMessage> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u16>(), 0..4),
                proptest::collection::vec("[a-z]{1,6}", 0..3),
                "[0-9.]{0,8}"
            )
                .prop_map(|(versions, capabilities, agent_version)| {
                    ControlMessage::Hello {
                        versions,
                        capabilities,
                        agent_version,
                        instance: None,
                        keep_alive_ms: None,
                    }
                }),
            (any::<u16>(), "[0-9a-f]{32}", any::<u64>()).prop_map(|(version, device, hb)| {
                ControlMessage::Welcome {
                    version,
                    capabilities: vec!["http".into()],
                    device,
                    heartbeat_interval_ms: hb,
                }
            }),
            any::<u64>().prop_map(|seq| ControlMessage::Heartbeat { seq }),
            any::<u64>().prop_map(|seq| ControlMessage::HeartbeatAck { seq }),
            arb_json().prop_map(|state| ControlMessage::StateReport { state }),
            ("[a-z0-9]{1,10}", "[a-z]{1,10}", arb_json())
                .prop_map(|(id, name, params)| ControlMessage::Action { id, name, params }),
            ("[a-z0-9]{1,10}", any::<bool>(), arb_json())
                .prop_map(|(id, ok, detail)| ControlMessage::ActionResult { id, ok, detail }),
            arb_json().prop_map(|target| ControlMessage::TargetState { target }),
            (
                prop_oneof![
                    Just(ErrorCode::VersionMismatch),
                    Just(ErrorCode::ProtocolError),
                    Just(ErrorCode::UnknownDevice),
                    Just(ErrorCode::Other)
                ],
                "[ -~]{0,20}"
            )
                .prop_map(|(code, message)| ControlMessage::Error { code, message }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_msg()) {
            let frame = m.to_frame();
            let mut bytes = Vec::new();
            frame.encode(&mut bytes);
            let mut buf = &bytes[..];
            let decoded = Frame::decode(&mut buf, crate::MAX_CONTROL_FRAME).unwrap();
            prop_assert_eq!(ControlMessage::from_frame(&decoded).unwrap(), m);
        }

        #[test]
        fn negotiation_picks_highest_common(ours in proptest::collection::vec(1u16..8, 1..4),
                                            theirs in proptest::collection::vec(1u16..8, 0..4)) {
            match negotiate(&ours, &theirs) {
                Ok(v) => {
                    prop_assert!(ours.contains(&v) && theirs.contains(&v));
                    prop_assert!(ours.iter().filter(|x| theirs.contains(x)).all(|x| *x <= v));
                }
                Err(e) => prop_assert!(ours.iter().all(|x| !theirs.contains(x)), "{e}"),
            }
        }
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let f = Frame::new(
            FrameType::Message,
            &br#"{"type":"from_the_future","x":1}"#[..],
        );
        assert_eq!(
            ControlMessage::from_frame(&f).unwrap(),
            ControlMessage::Unknown
        );
        let f = Frame::new(
            FrameType::Message,
            &br#"{"type":"heartbeat","seq":3,"extra":true}"#[..],
        );
        assert_eq!(
            ControlMessage::from_frame(&f).unwrap(),
            ControlMessage::Heartbeat { seq: 3 }
        );
    }

    #[test]
    fn malformed_json_is_an_error() {
        let f = Frame::new(FrameType::Message, &b"{not json"[..]);
        assert!(matches!(
            ControlMessage::from_frame(&f),
            Err(DecodeError::InvalidPayload(_))
        ));
        let f = Frame::new(FrameType::Data, &b"{}"[..]);
        assert!(ControlMessage::from_frame(&f).is_err());
    }

    #[test]
    fn mismatch_message_is_clear() {
        let e = negotiate(&[1], &[2, 3]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no common protocol version: we speak [1], the peer offered [2, 3]"
        );
    }
}
