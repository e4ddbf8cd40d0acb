//! The daemon's pure parts, also built as a library so that the fuzz targets (`fuzz/`) can
//! drive them directly: the on-disk formats (`project`, `phase`) and the `scheduler`.
//! Everything else lives in the `sticlerd` binary.

pub mod phase;
pub mod project;
pub mod scheduler;
