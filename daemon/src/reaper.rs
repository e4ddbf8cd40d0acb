//! The one owner of `waitpid`. The daemon is a child subreaper, so descendants that workers
//! orphan (double forks, daemonised helpers) are re-parented to it; this thread reaps every
//! child, hands the exit of a worker to whoever spawned it, and silently reaps the strays so
//! no zombie is ever left.
//!
//! After an upgrade in place the workers of the old image are this process's children: the
//! reaper starts on hold (it reaps nothing) until recovery has claimed them, so that none of
//! their exits is taken for a stray's.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;
use sticler_proto::ExitReason;
use tokio::sync::oneshot;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitReason>>>,
    /// Nothing is reaped while set (see `release`).
    held: AtomicBool,
}

impl Reaper {
    /// Becomes a subreaper and starts the reaping thread; `held`: it reaps nothing until
    /// `release` (the children of an upgraded image are claimed first).
    pub fn start(held: bool) -> io::Result<Arc<Reaper>> {
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        let reaper = Arc::new(Reaper { waiters: Mutex::default(), held: AtomicBool::new(held) });
        let mut signals = Signals::new([SIGCHLD])?;
        let thread_reaper = Arc::clone(&reaper);
        std::thread::Builder::new().name("reaper".into()).spawn(move || {
            thread_reaper.reap_all();
            for _ in signals.forever() {
                thread_reaper.reap_all();
            }
        })?;
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitReason>>> {
        crate::lock::lock(&self.waiters)
    }

    /// Runs `start`, which starts a child and returns its pid, and returns that pid and a
    /// receiver for its exit. The map is locked across the start, so the reaper cannot reap the
    /// child before it is registered.
    pub fn spawn_with(
        &self,
        start: impl FnOnce() -> io::Result<i32>,
    ) -> io::Result<(i32, oneshot::Receiver<ExitReason>)> {
        let mut waiters = self.lock();
        let pid = start()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// A receiver for the exit of `pid`, a child this process already has (a worker started
    /// before an upgrade in place).
    pub fn claim(&self, pid: i32) -> oneshot::Receiver<ExitReason> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(pid, tx);
        rx
    }

    /// Lifts the hold of `start`: reaps what exited meanwhile, then every child as it exits.
    pub fn release(&self) {
        if self.held.swap(false, Ordering::SeqCst) {
            self.reap_all();
        }
    }

    fn reap_all(&self) {
        if self.held.load(Ordering::SeqCst) {
            return;
        }
        let mut waiters = self.lock();
        loop {
            let reason = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitReason::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitReason::Signalled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(tx) = waiters.remove(&reason.0.as_raw()) {
                let _ = tx.send(reason.1);
            } else {
                tracing::debug!(pid = reason.0.as_raw(), "reaped an orphaned descendant");
            }
        }
    }
}
