//! Workers a daemon left running when it ended (a crash, `shutdown --keep-workers`, an upgrade
//! in place), taken over by this one instead of being killed and started again: an agent's
//! iteration may have run for half an hour and cost dollars.
//!
//! A process is adopted only when it provably is sticler's own worker: the recorded pid with
//! the recorded start time (the record is flushed right after the spawn), carrying a worker
//! token, which says its story and iteration. A worker whose record was lost (the daemon died
//! within milliseconds of the spawn) is not guessed at from its token: a stray descendant
//! carries the same one. Its end is watched without being its parent, through a pidfd (a
//! recycled pid can never be mistaken for it: the pidfd holds the process itself), and its exit
//! code is then unknown. After an upgrade in place the worker still is this process's child:
//! the reaper hands over its exit, code included.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sticler_proto::ExitReason;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::daemon::{run_key, Daemon};
use crate::store::RunRecord;
use crate::worker::{self, Group};

/// How often a process whose pidfd cannot be watched is looked at in /proc instead.
const PROC_POLL: Duration = Duration::from_millis(200);

/// A worker of a dead daemon's run, proven to be the one that was started, now this daemon's.
#[derive(Debug)]
pub struct Adoptee {
    pub story: String,
    pub iteration: u32,
    /// Its process group, under its original token.
    pub group: Group,
    pub start_time: u64,
    /// The folder it works in (`STICLER_PROJECT_DIR`): its worktree in worktree mode.
    pub root: PathBuf,
    /// How long it has been running.
    pub age: Duration,
    /// Completes when it exits.
    pub exit: oneshot::Receiver<ExitReason>,
}

/// The workers of `record`'s run that the store recorded (pid and start time) and that are
/// still alive and provably its own.
pub fn find(daemon: &Daemon, record: &RunRecord) -> Vec<Adoptee> {
    let key = run_key(Path::new(&record.project), record.phase);
    let stories = daemon.bus.store().stories(&key).unwrap_or_default();
    stories
        .into_iter()
        .filter_map(|(story, recorded)| prove(daemon, recorded.pid?, recorded.start_time?, &story))
        .collect()
}

/// An `Adoptee` when `pid` still is the worker of `story` that started at `start_time`, with a
/// watch on its end.
fn prove(daemon: &Daemon, pid: i32, start_time: u64, story: &str) -> Option<Adoptee> {
    if pid <= 1 || worker::start_time(pid) != Some(start_time) {
        return None;
    }
    let token = worker::environ_var(pid, worker::TOKEN_VAR)?;
    // `<nonce>/<story>/<iteration>/`; a verify command's (`<iteration>-verify/`) is not
    // adopted but killed as a leftover, as before adoption existed.
    let mut parts = token.strip_suffix('/')?.rsplitn(3, '/');
    let iteration: u32 = parts.next()?.parse().ok()?;
    let token_story = parts.next()?.to_string();
    if token_story != story {
        return None;
    }
    let root = PathBuf::from(worker::environ_var(pid, "STICLER_PROJECT_DIR")?);
    let child = worker::parent(pid) == Some(std::process::id() as i32);
    let exit = if child { daemon.spawner.reaper().claim(pid) } else { watch_foreign(pid, start_time)? };
    let age = worker::age(start_time).unwrap_or_default();
    let group = Group { pid, token, foreign: !child };
    Some(Adoptee { story: token_story, iteration, group, start_time, root, age, exit })
}

/// Completes with `ExitReason::Unknown` when process `pid` (not a child) exits: a pidfd polled
/// by the runtime, or /proc looked at every `PROC_POLL` where pidfds are not available.
fn watch_foreign(pid: i32, start_time: u64) -> Option<oneshot::Receiver<ExitReason>> {
    let (tx, rx) = oneshot::channel();
    match pidfd(pid) {
        Ok(fd) => {
            // The pidfd is bound to the process found at that pid: it must still be ours.
            if worker::start_time(pid) != Some(start_time) {
                return None;
            }
            // SAFETY: the AsyncFd owns the pidfd, which stays open as long as it is registered.
            let watched = unsafe { AsyncFd::register(fd) };
            tokio::spawn(async move {
                match watched {
                    Ok(fd) => {
                        let _ = fd.readable().await;
                    }
                    Err(e) => {
                        tracing::debug!(pid, "cannot poll the pidfd ({}); watching /proc", e.into_parts().1);
                        poll_proc(pid, start_time).await;
                    }
                }
                let _ = tx.send(ExitReason::Unknown);
            });
        }
        Err(e) => {
            tracing::debug!(pid, "no pidfd ({e}); watching /proc");
            tokio::spawn(async move {
                poll_proc(pid, start_time).await;
                let _ = tx.send(ExitReason::Unknown);
            });
        }
    }
    Some(rx)
}

/// Returns once process `pid` started at `start_time` is gone (or a zombie).
async fn poll_proc(pid: i32, start_time: u64) {
    while crate::paths::alive(pid) && worker::start_time(pid) == Some(start_time) {
        tokio::time::sleep(PROC_POLL).await;
    }
}

fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just made for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A process that is not our child is watched to its end; its exit code is unknown.
    #[tokio::test]
    async fn the_end_of_a_process_that_is_not_a_child_is_seen() {
        // `sh` forks the sleep and exits: the sleep is a grandchild, reparented away from us.
        let out = Command::new("sh").args(["-c", "sleep 1 & echo $!"]).output().expect("sh");
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a pid");
        let started = worker::start_time(pid).expect("the sleep runs");
        assert!(watch_foreign(pid, started + 1).is_none(), "another start time is another process");
        let exit = watch_foreign(pid, started).expect("watched");
        let reason = tokio::time::timeout(Duration::from_secs(20), exit).await.expect("seen within 20 s");
        assert_eq!(reason.expect("sent"), ExitReason::Unknown);
        assert!(!crate::paths::alive(pid));
    }
}
