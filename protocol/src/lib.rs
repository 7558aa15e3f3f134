//! The wire format spoken between `edge-agent` and `gateway` over one QUIC connection.
//!
//! This crate is sans-IO: it contains no networking code, no async runtime and no TLS. It
//! turns bytes into typed values and back, and holds the small state machines (version
//! negotiation, heartbeats) that take the current time as a parameter. The IO layers in
//! `gateway` and `edge-agent` own the sockets and call into it.
//!
//! Layout on the wire (see `docs/protocol.md` for the full description):
//!
//! * every QUIC bidirectional stream starts with a [`StreamHeader`] that says what the
//!   stream carries (`Control`, `Http`, `Terminal`, `Logs`);
//! * the control stream and the message-oriented streams then carry [`Frame`]s: a 4-byte
//!   length, a 1-byte type and a payload, with a hard size limit per stream kind;
//! * control frames carry JSON-encoded [`ControlMessage`]s;
//! * `Http` streams carry plain HTTP/1.1 after the header.
#![warn(missing_docs)]

mod codec;
mod control;
pub mod duration;
mod error;
mod frame;
mod header;
mod heartbeat;
pub mod host;
pub mod journal;
mod logs;
pub mod peer;
mod provision;
pub mod release;
pub mod spool;
mod target;
mod terminal;
mod uuid;

pub use codec::{DecodeError, EncodeError};
pub use control::{
    negotiate, ControlMessage, ErrorCode, VersionMismatch, CAPABILITIES, PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
};
pub use error::AppErrorCode;
pub use frame::{Frame, FrameType, MAX_CONTROL_FRAME, MAX_DATA_FRAME};
pub use header::{HttpHeader, StreamHeader, StreamKind, HEADER_MAGIC, MAX_HEADER_PAYLOAD};
pub use heartbeat::{Heartbeat, HeartbeatEvent};
pub use host::DeviceDomain;
pub use logs::{
    LogLine, LogsHeader, LogsMessage, MAX_BATCH_LINES, MAX_LOGS_FRAME, MAX_MESSAGE_BYTES,
};
pub use provision::{
    InvalidKey, ProvisionErrorCode, ProvisionRequest, ProvisionResponse, ProvisioningKey,
};
pub use release::{EnvVar, ServiceSpec, TargetState};
pub use target::TargetStatus;
pub use terminal::{TerminalHeader, TerminalMessage, TerminalTarget, TERMINAL_SIZE_RANGE};
pub use uuid::{DeviceUuid, InvalidUuid};
