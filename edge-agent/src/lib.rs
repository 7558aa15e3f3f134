//! The device side of the tunnel.
//!
//! `edge-agent` dials the gateway over QUIC with its device certificate, keeps that one
//! connection alive (reconnecting forever with capped, jittered exponential backoff) and
//! serves the streams the gateway opens on it: today `Http` streams, piped to the device's
//! local web port.
//!
//! Modules follow the seams of the agent: [`config`] (what the operator writes),
//! [`tunnel`] (connection lifecycle), [`handlers`] (one module per stream kind), [`wire`]
//! (stream IO shared with the gateway) and [`net`] (socket set-up).
#![warn(missing_docs)]

pub mod backoff;
pub mod cli;
pub mod config;
pub mod device;
pub mod dial;
pub mod handlers;
pub mod provision;
pub mod reconciler;
pub mod tunnel;

pub use config::{AgentConfig, AgentOptions, ConfigError, Link};
pub use tunnel::{Agent, AgentError, ConnState};

/// This agent's version, as announced to the gateway.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod local_api;
pub mod locks;
pub mod logs;
