//! The daemon's shared state: the runs (active and ended), the phases whose start is under
//! way, and the services every run uses (event bus, spawner, log files, slots, git locks,
//! usage-limit waits, the cost ledger). Requests are answered in `handler`, status views built
//! in `views`, runs of a dead daemon resumed in `recover`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sticler_proto::{ErrorKind, ErrorReply};
use tokio::sync::watch;

use crate::events::EventBus;
use crate::listing::Listings;
use crate::lock::lock;
use crate::run::{RunHandle, RunState};
use crate::slots::Slots;

pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// What the daemon does with its workers when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ending {
    /// Stops them (SIGTERM, grace, SIGKILL); the runs resume at the next start.
    #[default]
    StopWorkers,
    /// Leaves them running for the next daemon to adopt (`shutdown --keep-workers`).
    KeepWorkers,
    /// Leaves them running and re-executes its binary in place (`upgrade`).
    Upgrade,
}

pub type RunKey = (PathBuf, u32);

pub struct Daemon {
    pub bus: EventBus,
    pub spawner: crate::spawn::Spawner,
    pub logs: crate::logs::LogFiles,
    pub slots: Slots,
    pub state_dir: PathBuf,
    /// The user's umask (the daemon keeps 077 for itself): files sticler brings into the
    /// project folder get the modes the user's own tools would give them.
    pub user_umask: u32,
    runs: Mutex<HashMap<RunKey, RunHandle>>,
    /// How many runs are active, for whoever waits for them to end (the shutdown).
    active: watch::Sender<usize>,
    /// Phases whose start is under way (validation, git, the sweep for leftover workers, the
    /// store): a second start of one is refused without `runs` being held through that work.
    starting: Mutex<HashSet<RunKey>>,
    /// The last run of each phase that ended, for `status` and `wait`.
    finished: Mutex<HashMap<RunKey, watch::Receiver<RunState>>>,
    /// Stories retried after their phase's last run ended (that run's states are final): what
    /// that run blocked on them is no longer shown blocked. Cleared when the phase starts again.
    retried_after_end: Mutex<HashMap<RunKey, HashSet<String>>>,
    pub shutdown: watch::Sender<bool>,
    /// How the shutdown ends the workers (see `end`).
    ending: Mutex<Ending>,
    /// When this daemon image started (Unix ms), for `version`.
    pub started_ms: u64,
    /// Parsed status.json files, reused while unchanged.
    pub listings: Listings,
    /// All git work of one project is serialised: its workers share one working tree.
    git_locks: Mutex<HashMap<PathBuf, Arc<Mutex<crate::git::ProjectGit>>>>,
    /// Each project's usage-limit wait (kept in the store).
    pub pauses: crate::pause::Pauses,
    /// Each story's agent cost and tokens (kept in the store).
    pub ledger: crate::ledger::Ledger,
    /// The Slurm jobs followed for `status`, all asked about in one `squeue`.
    pub slurm_queue: Arc<crate::slurm_queue::QueueWatch>,
}

pub fn error(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply { kind, message: message.into() }
}

/// The store's key of a phase's run.
pub fn run_key(project: &Path, phase: u32) -> String {
    format!("{}\0{phase}", project.display())
}

impl Daemon {
    pub fn new(
        bus: EventBus,
        spawner: crate::spawn::Spawner,
        logs: crate::logs::LogFiles,
        max_workers: usize,
        state_dir: PathBuf,
    ) -> Daemon {
        let pauses = crate::pause::Pauses::load(bus.store());
        let ledger = crate::ledger::Ledger::load(bus.store());
        Daemon {
            pauses,
            ledger,
            bus,
            spawner,
            logs,
            slots: Slots::new(max_workers),
            state_dir,
            user_umask: 0o022,
            runs: Mutex::new(HashMap::new()),
            active: watch::channel(0).0,
            starting: Mutex::new(HashSet::new()),
            finished: Mutex::new(HashMap::new()),
            retried_after_end: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            ending: Mutex::new(Ending::default()),
            started_ms: crate::events::now_ms(),
            listings: Listings::default(),
            git_locks: Mutex::new(HashMap::new()),
            slurm_queue: Arc::default(),
        }
    }

    /// Shuts the daemon down, ending its workers as `how` says.
    pub fn end(&self, how: Ending) {
        *lock(&self.ending) = how;
        self.shutdown.send_replace(true);
    }

    /// How the shutdown ends the workers.
    pub fn ending(&self) -> Ending {
        *lock(&self.ending)
    }

    /// The project's log folder under the state dir.
    pub fn logs_root(&self, project: &Path) -> PathBuf {
        crate::logs::project_logs(&self.state_dir, project)
    }

    /// The lock that serialises the project's git work; it guards what is known of the
    /// project's story commits.
    pub fn git_lock(&self, project: &Path) -> Arc<Mutex<crate::git::ProjectGit>> {
        Arc::clone(lock(&self.git_locks).entry(project.to_path_buf()).or_default())
    }

    pub fn run(&self, project: &Path, phase: u32) -> Option<RunHandle> {
        lock(&self.runs).get(&(project.to_path_buf(), phase)).cloned()
    }

    pub fn active_runs(&self) -> Vec<RunHandle> {
        lock(&self.runs).values().cloned().collect()
    }

    /// Follows how many runs are active.
    pub fn active_count(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    /// The active run's state, else the last ended run's.
    pub fn last_run(&self, project: &Path, phase: u32) -> Option<watch::Receiver<RunState>> {
        let key = (project.to_path_buf(), phase);
        if let Some(run) = lock(&self.runs).get(&key) {
            return Some(run.state.clone());
        }
        lock(&self.finished).get(&key).cloned()
    }

    /// Every phase this daemon runs or has run, and those earlier daemons on the same state
    /// dir ran (from the store: a restart must not make `status --all` forget them).
    pub fn known_runs(&self) -> Vec<RunKey> {
        let mut keys: Vec<RunKey> = lock(&self.runs).keys().cloned().collect();
        keys.extend(lock(&self.finished).keys().cloned());
        match self.bus.store().known_phases() {
            Ok(known) => keys.extend(known),
            Err(e) => tracing::warn!("cannot read the phases run before: {e}"),
        }
        keys
    }

    /// `stories` of a phase with no active run were retried (see `handler::retry`).
    pub fn retried_after_end(&self, project: &Path, phase: u32, stories: &[String]) {
        let key = (project.to_path_buf(), phase);
        lock(&self.retried_after_end).entry(key).or_default().extend(stories.iter().cloned());
    }

    /// The stories of the phase retried since its last run ended.
    pub fn retried_since_end(&self, project: &Path, phase: u32) -> HashSet<String> {
        lock(&self.retried_after_end).get(&(project.to_path_buf(), phase)).cloned().unwrap_or_default()
    }

    /// A run was launched (see `handler::start`).
    pub fn run_started(&self, key: RunKey, handle: RunHandle) {
        lock(&self.retried_after_end).remove(&key);
        let mut runs = lock(&self.runs);
        runs.insert(key, handle);
        self.active.send_replace(runs.len());
    }

    /// Called by a run's task when it has ended. An interrupted run keeps its record, so the
    /// next daemon resumes it.
    pub fn run_finished(&self, project: &Path, phase: u32, interrupted: bool) {
        let key = (project.to_path_buf(), phase);
        {
            let mut runs = lock(&self.runs);
            if let Some(run) = runs.remove(&key) {
                lock(&self.finished).insert(key, run.state);
            }
            self.active.send_replace(runs.len());
        }
        if interrupted {
            return;
        }
        if let Err(e) = self.bus.store().remove_run(&run_key(project, phase)) {
            tracing::error!("cannot record the end of the run in the store: {e}");
        }
    }

    /// Claims `key` for a start; refused while the phase runs or another start of it is under
    /// way. The claim ends when the returned guard is dropped, after the run is in `runs`.
    pub fn reserve(&self, key: &RunKey) -> Result<Starting<'_>, ErrorReply> {
        let (root, phase) = key;
        let runs = lock(&self.runs);
        let mut starting = lock(&self.starting);
        if runs.contains_key(key) {
            return Err(error(ErrorKind::Refused, format!("phase {phase} of {} is already running", root.display())));
        }
        if !starting.insert(key.clone()) {
            return Err(error(
                ErrorKind::Refused,
                format!("phase {phase} of {} is already running (its start is under way)", root.display()),
            ));
        }
        Ok(Starting { daemon: self, key: key.clone() })
    }
}

/// A start under way (see `Daemon::reserve`).
pub struct Starting<'a> {
    daemon: &'a Daemon,
    key: RunKey,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        lock(&self.daemon.starting).remove(&self.key);
    }
}
