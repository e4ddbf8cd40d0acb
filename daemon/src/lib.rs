//! The daemon's pure parts, also built as a library so that the fuzz targets (`fuzz/`) can
//! drive them directly, and so that `sticlerctl validate` works without a daemon: the on-disk formats (`project`, `phase`, with the inotify-kept `listing`
//! of a phase's stories, and the agent presets and output they name) and the `scheduler`.
//! Everything else lives in the `sticlerd` binary.

pub mod agent;
pub mod agent_output;
pub mod listing;
pub mod lock;
pub mod phase;
pub mod project;
pub mod scheduler;
