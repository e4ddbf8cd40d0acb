//! `sticlerd --cleanup`, systemd's `ExecStopPost=`: after the daemon's process ended, for any
//! reason, its workers go, unless they are meant to be adopted by the next daemon: it failed
//! (a crash, the watchdog: `SERVICE_RESULT` says so) and `Restart=on-failure` brings it back,
//! or it was shut down with `--keep-workers` (it left a marker in the state dir). After a
//! `systemctl stop` the daemon has stopped its workers itself; this catches what is left when
//! it could not (it was killed at `TimeoutStopSec`, or was not running any more).

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::daemon::run_key;
use crate::paths::{PathError, PidLock};
use crate::store::{Store, StoreError};

/// The `SERVICE_RESULT`s of a daemon that failed: `Restart=on-failure` starts it again.
const FAILED: [&str; 4] = ["exit-code", "signal", "core-dump", "watchdog"];

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Busy(#[from] PathError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The marker of a `shutdown --keep-workers`, removed by the next daemon's start.
pub fn kept_marker(state_dir: &Path) -> PathBuf {
    state_dir.join("workers-kept")
}

/// Kills the workers of every run the store knows, unless they are left for the next daemon.
/// Refused while a daemon uses the state dir. Returns how many processes were killed.
pub fn run(state_dir: &Path, service_result: Option<&str>) -> Result<usize, CleanupError> {
    if let Some(result) = service_result.filter(|r| FAILED.contains(r)) {
        tracing::info!("sticlerd failed ({result}); its workers are left for the restarted daemon to adopt");
        return Ok(0);
    }
    if kept_marker(state_dir).exists() {
        tracing::info!("sticlerd was shut down with --keep-workers; its workers are left for the next one");
        return Ok(0);
    }
    let _lock = PidLock::acquire(&state_dir.join("sticlerd.pid"))?;
    let store = Store::open(state_dir)?;
    let mut killed = 0;
    for record in store.runs()? {
        let key = run_key(Path::new(&record.project), record.phase);
        for (_, story) in store.stories(&key)? {
            if let (Some(pid), Some(start_time)) = (story.pid, story.start_time) {
                killed += usize::from(crate::worker::kill_recorded(pid, start_time));
            }
        }
        killed += crate::worker::signal_everywhere(&[format!("{}/", record.nonce)], &[], Signal::SIGKILL);
    }
    tracing::info!("killed {killed} worker process(es) the last sticlerd left");
    Ok(killed)
}
