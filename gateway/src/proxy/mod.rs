//! The public HTTP side: `http://<uuid>.<domain>/` routed through the device's tunnel.
//!
//! [`router`] terminates visitors' HTTP/1.1 and HTTP/2, picks the device by `Host`, and
//! forwards each request as HTTP/1.1 through a pooled client whose "connections" are QUIC
//! streams opened by [`connector`]. [`pages`] renders the small error pages visitors see.
//! [`access`] decides who may visit a device's URL (allow-list, Basic, share links).

pub(crate) mod access;
pub(crate) mod acme;
pub(crate) mod connector;
mod failure;
mod forwarding;
pub(crate) mod https;
pub(crate) mod pages;
pub(crate) mod router;
