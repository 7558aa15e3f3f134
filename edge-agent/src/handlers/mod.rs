//! Handlers for gateway-opened streams, one module per stream kind.
//!
//! The tunnel reads and validates the stream header, then hands the stream to the handler
//! for its kind. Handlers own their stream until it ends.

pub mod http;
pub mod terminal;
