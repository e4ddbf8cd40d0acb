//! A worktree's folders as they stood when it was last clean (its files those of its HEAD, and
//! nothing untracked but what is ignored). The look for what its story changed (`git add -A`)
//! then reads only the folders whose stat changed since, and stats the tracked files; a full
//! status reads every folder of the project, which was the largest cost of a story's commit.
//! Anything this look cannot judge alone sends the caller back to the full status.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use git2::{Index, Repository, Tree};

/// What a folder's stat says of its entries: an entry made, removed or renamed moves its mtime
/// and ctime, and a folder made anew has another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp { mtime: (meta.mtime(), meta.mtime_nsec()), ctime: (meta.ctime(), meta.ctime_nsec()), ino: meta.ino() }
    }
}

/// The stamps of a clean worktree's tracked folders, and of its index then.
#[derive(Debug)]
pub struct CleanMark {
    /// Folder (relative, empty for the root) → its stamp. A folder stamped within the same
    /// timestamp tick as the mark is left out: a change in that tick would not move its stamp.
    dirs: HashMap<Vec<u8>, Stamp>,
    index: Option<Stamp>,
}

impl CleanMark {
    /// Marks the worktree at `root` clean as it is now. `None` when a tracked folder cannot be
    /// stated or the time of the mark cannot be taken.
    pub fn take(repo: &Repository, root: &Path) -> Option<CleanMark> {
        let mut index = repo.index().ok()?;
        // As on disk now (the repository's index object is not read again by itself).
        index.read(false).ok()?;
        let mut dirs = HashMap::new();
        for dir in tracked_dirs(&index) {
            let meta = std::fs::symlink_metadata(join(root, &dir)).ok()?;
            if !meta.is_dir() {
                return None;
            }
            dirs.insert(dir, Stamp::of(&meta));
        }
        let now = fs_now(&root.join(".git"))?;
        dirs.retain(|_, stamp| stamp.mtime < now.mtime && stamp.ctime < now.ctime);
        let index = std::fs::metadata(repo.path().join("index")).ok().map(|m| Stamp::of(&m));
        Some(CleanMark { dirs, index })
    }

    /// The mark kept from the last look at the worktree (see `changes`), once sticler moved
    /// the worktree to another commit: its index is the one sticler wrote. Nothing is stated:
    /// a folder the move (or anything else) changed since that look shows a stat other than
    /// the one the look read, and is read at the next look.
    pub fn moved(mut self, repo: &Repository) -> CleanMark {
        self.index_written(repo);
        self
    }

    /// The index file just written by sticler: its stamp now is the mark's.
    pub fn index_written(&mut self, repo: &Repository) {
        self.index = std::fs::metadata(repo.path().join("index")).ok().map(|m| Stamp::of(&m));
    }

    /// The paths that may differ since the mark, relative to `root`: tracked files whose stat
    /// differs from `index` (or whose stat cannot tell, being as new as the index), paths where
    /// the index differs from `head` (when the index was written since), and the untracked, not
    /// ignored files of the folders that changed. With them, the mark of the worktree once
    /// they are staged: each folder's stat as this look found it before reading it. `None`
    /// when only a full status can tell: a folder turned file or the other way round, a
    /// changed `.gitignore`, a nested repository, a submodule or a conflict.
    pub fn changes(
        &self,
        repo: &Repository,
        root: &Path,
        index: &mut Index,
        head: Option<&Tree<'_>>,
    ) -> Option<(Vec<PathBuf>, CleanMark)> {
        let index_meta = std::fs::metadata(repo.path().join("index")).ok()?;
        let index_mtime = (index_meta.mtime(), index_meta.mtime_nsec());
        let mut found: Vec<Vec<u8>> = Vec::new();
        // The index written since the mark (a worker's `git add` or `git commit`): what it
        // holds and HEAD does not counts too. Its tree comes from its tree cache (whole after a
        // `git commit`: nothing to write or read), and only the folders that differ from
        // HEAD's are compared.
        if self.index != Some(Stamp::of(&index_meta)) {
            let staged = repo.find_tree(index.write_tree().ok()?).ok()?;
            if head.map(Tree::id) != Some(staged.id()) {
                for change in crate::tree_diff::changes(repo, head, &staged).ok()? {
                    found.push(change.path.as_os_str().as_bytes().to_vec());
                }
            }
        }
        let mut files = HashSet::new();
        for entry in index.iter() {
            if entry.mode == u32::from(git2::FileMode::Commit) || entry.flags & STAGE_MASK != 0 {
                return None;
            }
            if !same_stat(&entry, root, index_mtime)? {
                found.push(entry.path.clone());
            }
            files.insert(entry.path);
        }
        let dirs = tracked_dirs(index);
        let mut seen = HashMap::with_capacity(dirs.len());
        for dir in &dirs {
            let Ok(meta) = std::fs::symlink_metadata(join(root, dir)) else { continue };
            if !meta.is_dir() {
                return None;
            }
            let stamp = Stamp::of(&meta);
            if self.dirs.get(dir) != Some(&stamp) {
                untracked(repo, root, dir, &|rel| files.contains(rel) || dirs.contains(rel), &mut found)?;
            }
            seen.insert(dir.clone(), stamp);
        }
        if found.iter().any(|path| path.rsplit(|b| *b == b'/').next() == Some(b".gitignore")) {
            return None;
        }
        let now = fs_now(&root.join(".git"))?;
        seen.retain(|_, stamp| stamp.mtime < now.mtime && stamp.ctime < now.ctime);
        found.sort();
        found.dedup();
        let paths = found.into_iter().map(|p| PathBuf::from(OsStr::from_bytes(&p))).collect();
        Some((paths, CleanMark { dirs: seen, index: None }))
    }
}

/// The file system's time now, as it stamps a change: `file`'s times set to "now" by the kernel
/// (its clock and granularity, which a clock read here may not match), after the folders were
/// stated. Every later change of a folder is stamped at this time or later, so a folder stamped
/// before it shows any such change. `file` is the worktree's `.git` file: on the worktree's
/// file system, and its times mean nothing to git.
fn fs_now(file: &Path) -> Option<Stamp> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    utimensat(None, file, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW, UtimensatFlags::NoFollowSymlink).ok()?;
    Some(Stamp::of(&std::fs::symlink_metadata(file).ok()?))
}

/// An index entry's stage bits (non-zero: a conflict).
const STAGE_MASK: u16 = 0x3000;

/// Whether the file of `entry` still has the stat the index holds for it (so its content is
/// the index's). A file as new as the index is never taken as unchanged (git's "racily clean").
/// `None` when the path is a folder now.
fn same_stat(entry: &git2::IndexEntry, root: &Path, index_mtime: (i64, i64)) -> Option<bool> {
    let meta = match std::fs::symlink_metadata(join(root, &entry.path)) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    if meta.is_dir() {
        return None;
    }
    let mode = if meta.file_type().is_symlink() {
        0o120000
    } else if meta.mode() & 0o100 != 0 {
        0o100755
    } else {
        0o100644
    };
    // Without nanoseconds in the index (a libgit2 built without them), seconds are compared.
    let time = |sec: i32, nsec: u32, (s, ns): (i64, i64)| i64::from(sec) == s && (nsec == 0 || i64::from(nsec) == ns);
    let mtime = (meta.mtime(), meta.mtime_nsec());
    let racy =
        (i64::from(entry.mtime.seconds()), i64::from(entry.mtime.nanoseconds())) >= index_mtime || mtime >= index_mtime;
    Some(
        !racy
            && entry.mode == mode
            && time(entry.mtime.seconds(), entry.mtime.nanoseconds(), mtime)
            && time(entry.ctime.seconds(), entry.ctime.nanoseconds(), (meta.ctime(), meta.ctime_nsec()))
            && entry.file_size == meta.size() as u32
            && entry.ino == meta.ino() as u32,
    )
}

/// Adds to `found` the untracked, not ignored files below the folder `dir` (relative), reading
/// only folders that are neither tracked (`tracked` says) nor ignored. `None` for a nested
/// repository: `git add -A` makes it a submodule entry, which the full status handles.
fn untracked(
    repo: &Repository,
    root: &Path,
    dir: &[u8],
    tracked: &dyn Fn(&[u8]) -> bool,
    found: &mut Vec<Vec<u8>>,
) -> Option<()> {
    let entries = std::fs::read_dir(join(root, dir)).ok()?;
    for entry in entries {
        let entry = entry.ok()?;
        let name = entry.file_name();
        if name.as_bytes() == b".git" {
            if dir.is_empty() {
                continue;
            }
            return None;
        }
        let rel = if dir.is_empty() { name.as_bytes().to_vec() } else { [dir, b"/", name.as_bytes()].concat() };
        if tracked(&rel) {
            continue;
        }
        let kind = entry.file_type().ok()?;
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            continue;
        }
        if repo.is_path_ignored(Path::new(OsStr::from_bytes(&rel))).ok()? {
            continue;
        }
        if kind.is_dir() {
            untracked(repo, root, &rel, &|_| false, found)?;
        } else {
            found.push(rel);
        }
    }
    Some(())
}

/// Every folder holding a tracked file, the root (empty) included.
fn tracked_dirs(index: &Index) -> HashSet<Vec<u8>> {
    let mut dirs = HashSet::from([Vec::new()]);
    for entry in index.iter() {
        let path = &entry.path;
        // Longest first: a folder already known has its parents known too.
        for at in path.iter().enumerate().rev().filter(|(_, b)| **b == b'/').map(|(at, _)| at) {
            if !dirs.insert(path[..at].to_vec()) {
                break;
            }
        }
    }
    dirs
}

fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

#[cfg(test)]
#[path = "clean_mark_tests.rs"]
mod tests;
