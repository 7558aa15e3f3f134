//! The device side of the tunnel.
//!
//! `edge-agent` dials the gateway over QUIC, or TLS over TCP where UDP is blocked, with
//! its device certificate, keeps that one connection alive (reconnecting forever with
//! capped, jittered exponential backoff) and serves the streams the gateway opens on it:
//! `Http` streams piped to the device's local web port, and terminals. It ships its logs
//! without loss, runs the gateway's actions once each, serves a balena-compatible local
//! supervisor API, and keeps the device's containers at their target release.
//!
//! Modules follow the seams of the agent: [`cli`] (the commands), [`config`] (what the
//! operator sets), [`dial`] and [`tunnel`] (the connection lifecycle), [`handlers`] (one
//! module per stream kind), [`device`] (what actions do), [`local_api`], [`logs`] and
//! [`reconciler`]. Stream IO shared with the gateway is in the `transport` crate.
//! `docs/architecture.md` walks through each data path.
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
pub mod metrics;
