//! Messages and framing shared by `sticlerd` and `sticlerctl`.
//!
//! The protocol has two encodings of the same types: binary frames (4-byte big-endian length +
//! bincode payload) for our own client, and newline-delimited JSON for scripts. This crate holds
//! the types and the pure encode/decode functions; it does no networking of its own.

pub mod codec;
pub mod event;
pub mod message;
pub mod preset;
pub mod story;
pub mod time;
pub mod view;

pub use codec::{CodecError, MAX_FRAME_LEN};
pub use event::{Event, EventKind};
pub use message::*;
pub use story::{StoryId, StoryIdError};
pub use view::*;

/// Bumped whenever a message type changes shape. Client and daemon must agree exactly.
pub const PROTOCOL_VERSION: u32 = 4;

/// The version of this build, shown by `sticlerctl version` and sent in `Welcome`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
