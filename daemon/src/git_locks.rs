//! Git's lock files: a live git's lock is waited out (bounded) and never deleted; one a killed
//! git left behind goes, so that it cannot fail every later git call of sticler for good. At
//! start (`clear_stale_locks`) that is every lock no process has open; during a run
//! (`retry_locked`) only the lock that blocked the call, once older than the whole wait.

use std::path::Path;
use std::time::Duration;

use git2::ErrorCode;

use crate::git::GitError;

/// How long a lock of a live git (a worker's own `index.lock`, a `git gc`'s `HEAD.lock`) is
/// waited out; it is never deleted.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A file that vanished between git's directory scan and its stat (a worker's temp file of an
/// atomic write, renamed away), or changed while git read it (a log another worker appends to).
/// Running workers share the tree, so scanning again is the answer.
fn transient(e: &git2::Error) -> bool {
    matches!(e.class(), git2::ErrorClass::Os | git2::ErrorClass::Filesystem)
}

/// Retries `op` while git reports a held lock (index, HEAD, a ref) or a transient file race, for
/// a bounded time. A lock that outlived the whole wait, that no process has open, is a killed
/// git's (a worker's `git gc` swept with its iteration's strays): it would fail every next try
/// for good, so it goes and `op` is tried again.
pub fn retry_locked<T>(root: &Path, mut op: impl FnMut() -> Result<T, git2::Error>) -> Result<T, GitError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match op() {
            Err(e) if transient(&e) && std::time::Instant::now() < deadline => {
                // The racing file settles within a write: a short pause, not a spin that keeps
                // the project's git lock (and a core) busy.
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.code() == ErrorCode::Locked && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if e.code() == ErrorCode::Locked => {
                if !remove_abandoned_lock(&e) {
                    return Err(GitError::Locked(root.display().to_string(), LOCK_WAIT));
                }
            }
            other => return other.map_err(GitError::from),
        }
    }
}

/// Removes the lock file libgit2 could not take ("failed to lock file '<path>' for writing")
/// when it is older than the wait for its holder and no process has it open. Returns whether
/// it went. A live git holds its lock open until the moment it renames it into place, and a
/// lock made during the wait is younger than it: neither is ever touched.
fn remove_abandoned_lock(e: &git2::Error) -> bool {
    let message = e.message();
    let Some(path) = message.split_once('\'').and_then(|(_, rest)| rest.split_once("' for writing")) else {
        return false;
    };
    let lock = Path::new(path.0);
    let age = std::fs::metadata(lock).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
    if lock.extension().is_none_or(|ext| ext != "lock") || age.is_none_or(|age| age < LOCK_WAIT) {
        return false;
    }
    let held = std::fs::canonicalize(lock).is_ok_and(|p| crate::worker::open_files().contains(&p));
    if held || std::fs::remove_file(lock).is_err() {
        return false;
    }
    tracing::warn!(path = %lock.display(), "removed a git lock that outlived the wait and that no process holds");
    true
}

/// Removes git lock files (`index.lock`, `HEAD.lock`, `refs/**.lock`, …) that no process has
/// open: a daemon killed in the middle of a commit leaves them behind. A lock that some
/// process holds (a worker's own git at work) is left alone. Returns how many were removed.
pub fn clear_stale_locks(root: &Path) -> usize {
    let git_dir = root.join(".git");
    let mut locks = Vec::new();
    let mut dirs = vec![git_dir.clone(), git_dir.join("refs")];
    // Each story worktree's own git folder (its index and HEAD) lives under .git/worktrees/.
    let worktrees = std::fs::read_dir(git_dir.join("worktrees")).into_iter().flatten().flatten();
    dirs.extend(worktrees.map(|e| e.path()).filter(|p| p.is_dir()));
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && path.starts_with(git_dir.join("refs")) {
                dirs.push(path);
            } else if !is_dir && path.extension().is_some_and(|e| e == "lock") {
                locks.push(path);
            }
        }
    }
    if locks.is_empty() {
        return 0;
    }
    let open = crate::worker::open_files();
    let mut removed = 0;
    for lock in locks {
        let held = std::fs::canonicalize(&lock).is_ok_and(|p| open.contains(&p));
        if !held && std::fs::remove_file(&lock).is_ok() {
            tracing::warn!(path = %lock.display(), "removed a stale git lock that no process holds");
            removed += 1;
        }
    }
    removed
}
