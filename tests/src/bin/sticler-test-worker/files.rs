//! Reading and writing files: status.json (through the daemon's own `JsonDoc`, so the worker
//! writes exactly as sticler does: 4-space indent, key order kept, atomic replace), appends,
//! line counts and exclusive locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use sticlerd::project::{self, JsonDoc};

use crate::failure::{Failure, Result};

pub fn read_status(path: &Path) -> Result<Value> {
    let raw = fs::read(path).map_err(|e| Failure::io(path, "read status file", e))?;
    let map = project::parse_object(path, &raw).map_err(|e| Failure::at(path, e.detail()))?;
    Ok(Value::Object(map))
}

/// Writes `status` back atomically; fields it does not know stay where they were.
pub fn write_status(path: &Path, status: &Value) -> Result<()> {
    let map = status.as_object().ok_or_else(|| Failure::at(path, "status is not a JSON object"))?.clone();
    JsonDoc::new(path.to_path_buf(), Vec::new(), map).write().map_err(|e| Failure::at(path, e.detail()))
}

/// Replaces `path` with `bytes` (readers see the old or the new file, never a torn one).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    project::write_atomic(path, bytes)
        .map_err(|e| Failure::at(path, format!("cannot write atomically: {}", e.detail())))
}

pub fn append(path: &Path, text: &str) -> Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| Failure::io(path, "append to file", e))
}

/// Lines in `path`; a missing file has none.
pub fn count_lines(path: &Path) -> Result<u64> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().count() as u64),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Failure::io(path, "read", e)),
    }
}

/// An exclusive flock on `path` (created if missing), held until the guard is dropped.
pub fn lock_exclusive(path: &Path) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Failure::io(path, "open lock file", e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Failure::at(path, format!("cannot lock: {errno}")))
}
