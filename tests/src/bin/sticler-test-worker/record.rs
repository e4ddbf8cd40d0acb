//! The concurrency record shared by all workers of a test: how many run now, the most that ever
//! ran at once, and a start/end event log. The flock makes read-modify-write of the counters
//! safe across processes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::failure::{Failure, Result};
use crate::files::{append, lock_exclusive};

pub struct Recorder {
    pub dir: PathBuf,
    pub story_id: String,
}

impl Recorder {
    /// Records `event` at time `at`, or now (after the counters are updated: as late as can be).
    pub fn record(&self, delta: i64, event: &str, at: Option<u128>) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Failure::io(&self.dir, "create directory", e))?;
        let _lock = lock_exclusive(&self.dir.join("lock"))?;

        let running = read_counter(&self.dir.join("running"))? + delta;
        replace(&self.dir.join("running"), running)?;
        let max_path = self.dir.join("max");
        if running > read_counter(&max_path)? {
            replace(&max_path, running)?;
        }
        let nanos = at.unwrap_or_else(crate::unix_nanos);
        let pid = std::process::id();
        append(&self.dir.join("events.log"), &format!("{event} {} {nanos} {pid}\n", self.story_id))
    }
}

fn read_counter(path: &Path) -> Result<i64> {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(0),
        Ok(text) => {
            text.trim().parse().map_err(|e| Failure::at(path, format!("not an integer ({:?}): {e}", text.trim())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Failure::io(path, "read counter", e)),
    }
}

/// Replaces a counter file by rename, so lock-free readers never see it empty.
fn replace(path: &Path, value: i64) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    fs::write(&tmp, format!("{value}\n"))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Failure::io(path, "write counter", e))
}
