//! `DocCache`: parsed JSON documents by path, reused while their file is unchanged (its `Stamp`).

use std::fs;
use std::path::Path;

use super::{JsonDoc, ProjectError};

/// What identifies one version of a file without reading it: an atomic rewrite changes the
/// inode, an in-place write the size or the nanosecond mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of_stat(st: &nix::sys::stat::FileStat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            len: st.st_size as u64,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        }
    }
}

/// Parsed JSON documents by path, reused while the file is unchanged. `status` of a phase of
/// 1,000 stories then costs 1,000 `stat` calls instead of 1,000 reads and parses.
#[derive(Default)]
pub struct DocCache {
    entries: std::sync::Mutex<std::collections::HashMap<std::ffi::OsString, (Stamp, std::sync::Arc<JsonDoc>)>>,
}

/// Entries kept at most; beyond it the cache starts over (it is only a cache).
const DOC_CACHE_LIMIT: usize = 200_000;

impl DocCache {
    /// The parsed document at `dir`/`rel` (`path` is the same file, for messages and the cache
    /// key). The `stat` is relative to an open folder: the kernel then walks two path components
    /// instead of the whole absolute path, which was most of a large phase's `status` time. A
    /// symlink is not followed (reading it is refused by `JsonDoc::read`).
    pub fn read_at(&self, dir: &fs::File, rel: &Path, path: &Path) -> Result<std::sync::Arc<JsonDoc>, ProjectError> {
        use std::os::fd::AsRawFd;
        let st = nix::sys::stat::fstatat(Some(dir.as_raw_fd()), rel, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| ProjectError::io(path, std::io::Error::from(e)))?;
        let stamp = Stamp::of_stat(&st);
        let entries = crate::lock::lock(&self.entries);
        // Keyed by the path's bytes: hashing a `Path` walks its components.
        if let Some((cached, doc)) = entries.get(path.as_os_str()) {
            if *cached == stamp {
                return Ok(std::sync::Arc::clone(doc));
            }
        }
        drop(entries);
        let doc = std::sync::Arc::new(JsonDoc::read(path)?);
        // The stamp taken before reading: a write racing the read makes the next call re-read.
        let mut entries = crate::lock::lock(&self.entries);
        if entries.len() >= DOC_CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(path.as_os_str().to_owned(), (stamp, std::sync::Arc::clone(&doc)));
        Ok(doc)
    }
}
