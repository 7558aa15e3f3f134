//! Offline bundles: one file that carries a target state and its images, for devices
//! that never see the network.
//!
//! The file is a plain ustar archive with two members, in this order:
//!
//! * `target.json`: the [`TargetState`] as JSON;
//! * `images.tar`: the images, exactly as the engine's `docker save` writes them.
//!
//! It is written to a temp file next to the destination, synced and renamed, so a crash
//! leaves the old bundle or the new one, never a torn file.
//!
//! Both sides use this crate: the gateway's `gateway bundle create` writes bundles, the
//! agent's `edge-agent preload` loads them; [`engine`] is the small engine client both
//! need (the agent's reconciler builds on it).
//!
//! The file format is sans-IO in [`format`], which needs no engine and no runtime. The
//! default feature `engine` adds the engine client and the file IO ([`create_bundle`],
//! [`preload`]); the fuzz build turns it off.
#![warn(missing_docs)]

#[cfg(feature = "engine")]
pub mod engine;
pub mod format;

#[cfg(feature = "engine")]
pub use files::{create_bundle, preload, BundleError, BundleSummary};

#[cfg(feature = "engine")]
mod files;
