//! The daemon's shared state and the handling of every request that answers with one reply.
//! Streaming requests (watch, logs, wait) live in `stream`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use sticler_proto::{
    ErrorKind, ErrorReply, EventKind, PhaseRef, PhaseView, Problem, Request, Response, StatusReport, StoryCounts,
    StoryState, StoryView, ValidationReport, PROTOCOL_VERSION, VERSION,
};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::events::EventBus;
use crate::listing::Listings;
use crate::phase::{PhaseFiles, StoryFiles};
use crate::project::{DiskStatus, JsonDoc, OrchestratorConfig, Project, StatusFields};
use crate::run::{LiveRun, PhaseRun, RunHandle, RunMsg, RunStart};
use crate::store::RunRecord;

pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Makes every run's token prefix unique, even for runs started in the same millisecond.
static RUN_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The daemon-wide cap on running workers (`--max-workers`), shared by all runs.
pub struct Slots {
    semaphore: Arc<Semaphore>,
    /// Bumped whenever a slot is freed, so runs waiting for one look again.
    freed: watch::Sender<u64>,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots { semaphore: Arc::new(Semaphore::new(max.max(1))), freed: watch::channel(0).0 }
    }
    pub fn free(&self) -> usize {
        self.semaphore.available_permits()
    }
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.semaphore).try_acquire_owned().ok()
    }
    /// Call after dropping a permit.
    pub fn freed(&self) {
        self.freed.send_modify(|n| *n = n.wrapping_add(1));
    }
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }
}

type RunKey = (PathBuf, u32);

pub struct Daemon {
    pub bus: EventBus,
    pub spawner: crate::spawn::Spawner,
    pub logs: crate::logs::LogFiles,
    pub slots: Slots,
    pub state_dir: PathBuf,
    runs: Mutex<HashMap<RunKey, RunHandle>>,
    /// Phases whose start is under way (validation, git, the sweep for leftover workers, the
    /// store): a second start of one is refused without `runs` being held through that work.
    starting: Mutex<std::collections::HashSet<RunKey>>,
    /// The last run of each phase that ended, for `status` and `wait`.
    finished: Mutex<HashMap<RunKey, Arc<Mutex<LiveRun>>>>,
    pub shutdown: watch::Sender<bool>,
    /// Parsed status.json files, reused while unchanged.
    pub listings: Listings,
    /// All git work of one project is serialised: its workers share one working tree.
    git_locks: Mutex<HashMap<PathBuf, Arc<Mutex<crate::git::ProjectGit>>>>,
    /// Each project's usage-limit wait (kept in the store).
    pub pauses: crate::pause::Pauses,
    /// Each story's agent cost and tokens (kept in the store).
    pub ledger: crate::ledger::Ledger,
}

/// A start under way (see `Daemon::reserve`).
struct Starting<'a> {
    daemon: &'a Daemon,
    key: RunKey,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        lock(&self.daemon.starting).remove(&self.key);
    }
}

pub fn error(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply { kind, message: message.into() }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            runs: Mutex::new(HashMap::new()),
            starting: Mutex::new(Default::default()),
            finished: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            listings: Listings::default(),
            git_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Per-project log folder: `<state>/logs/<name>-<hash of the path>`.
    pub fn logs_root(&self, project: &Path) -> PathBuf {
        let name = project.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        // FNV-1a: stable across versions and platforms, unlike std's hasher.
        let hash = project
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        self.state_dir.join("logs").join(format!("{name}-{hash:016x}"))
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

    pub fn last_run(&self, project: &Path, phase: u32) -> Option<Arc<Mutex<LiveRun>>> {
        let key = (project.to_path_buf(), phase);
        if let Some(run) = lock(&self.runs).get(&key) {
            return Some(Arc::clone(&run.live));
        }
        lock(&self.finished).get(&key).cloned()
    }

    /// Called by a run's task when it has ended. An interrupted run keeps its record, so the
    /// next daemon resumes it.
    pub fn run_finished(&self, project: &Path, phase: u32, interrupted: bool) {
        let key = (project.to_path_buf(), phase);
        if let Some(run) = lock(&self.runs).remove(&key) {
            lock(&self.finished).insert(key, run.live);
        }
        if interrupted {
            return;
        }
        if let Err(e) = self.bus.store().remove_run(&run_key(project, phase)) {
            tracing::error!("cannot record the end of the run in the store: {e}");
        }
    }

    /// Resumes every run that was active when the last daemon ended (crash or shutdown): its
    /// leftover processes are killed first (found by their token, so a recycled pid is never
    /// touched), then the run starts again from the files on disk.
    pub fn recover(self: &Arc<Self>) {
        let records = match self.bus.store().runs() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!("cannot read the runs to resume: {e}");
                return;
            }
        };
        tracing::info!("{} run(s) to resume", records.len());
        for record in records {
            let key = run_key(Path::new(&record.project), record.phase);
            // The last workers by their recorded pid, when it still is them.
            for (story, worker) in self.bus.store().stories(&key).unwrap_or_default() {
                if let (Some(pid), Some(start_time)) = (worker.pid, worker.start_time) {
                    if !crate::worker::kill_recorded(pid, start_time) {
                        tracing::info!(story_id = %story, pid, "recorded worker is gone (or its pid was reused); not touched");
                    }
                }
            }
            let prefix = format!("{}/", record.nonce);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while crate::worker::signal_everywhere(std::slice::from_ref(&prefix), nix::sys::signal::Signal::SIGKILL) > 0
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let phase = PhaseRef { project: record.project.clone(), phase: record.phase };
            // The daemon may have died after the run ended on disk but before the record went.
            let config = Project::open(Path::new(&record.project))
                .and_then(|p| JsonDoc::read(&p.phase_dir(record.phase).join(crate::phase::PHASE_CONFIG)));
            if config.as_ref().map_or(true, |doc| doc.str_field("status") != "in_progress") {
                tracing::info!(project = %record.project, phase = record.phase, "the run had ended; not resuming it");
                let _ = self.bus.store().remove_run(&run_key(Path::new(&record.project), record.phase));
                continue;
            }
            match self.launch(&phase, Some(record.started_unix)) {
                Ok(_) => tracing::info!(project = %record.project, phase = record.phase, "resumed the run"),
                Err(e) => {
                    tracing::error!(project = %record.project, phase = record.phase, "cannot resume the run: {}", e.message);
                    let _ = self.bus.store().remove_run(&run_key(Path::new(&record.project), record.phase));
                }
            }
        }
    }

    pub async fn handle(self: &Arc<Self>, request: Request) -> Result<Response, ErrorReply> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::Version => Ok(Response::Version {
                daemon_version: VERSION.into(),
                protocol_version: PROTOCOL_VERSION,
                pid: std::process::id(),
            }),
            Request::Status { project, phase, story } => self.status(&project, phase, story.as_deref()),
            Request::Validate(phase) => self.validate(&phase),
            // Validation, git and the sweep for leftover workers may take a while: the runtime
            // moves its other tasks off this thread meanwhile.
            Request::Start { phase, force } => tokio::task::block_in_place(|| self.start(&phase, force)),
            Request::Stop { phase, grace_secs } => {
                let grace = grace_secs.map_or(DEFAULT_GRACE, Duration::from_secs);
                self.stop(&phase, grace, false)
            }
            Request::Kill(phase) => self.stop(&phase, Duration::ZERO, true),
            Request::Retry { phase, stories, all_failed } => self.retry(&phase, stories, all_failed).await,
            Request::Shutdown => {
                self.shutdown.send_replace(true);
                Ok(Response::ShuttingDown)
            }
            Request::Resume(phase) => self.resume(&phase),
            Request::Logs { .. } | Request::Watch { .. } | Request::Wait(_) => {
                Err(error(ErrorKind::BadRequest, "streaming request reached the single-reply handler"))
            }
        }
    }

    fn status(&self, project: &str, phase: Option<u32>, story: Option<&str>) -> Result<Response, ErrorReply> {
        if project.is_empty() {
            return Ok(Response::StatusAll(self.status_all()));
        }
        let project = Project::open(Path::new(project))?;
        let numbers = match phase {
            Some(n) => vec![n],
            None => project.phases()?,
        };
        let mut phases = Vec::with_capacity(numbers.len());
        for n in numbers {
            let files = PhaseFiles::load(&project, n, &self.listings)?;
            let mut view = self.phase_view(&project, &files);
            if let Some(story) = story {
                view.stories.retain(|s| s.id == story);
                if view.stories.is_empty() {
                    return Err(error(
                        ErrorKind::NotFound,
                        format!("no story {story} in phase {n} of {}", project.root.display()),
                    ));
                }
            }
            phases.push(view);
        }
        Ok(Response::Status(StatusReport { project: project.root.display().to_string(), phases }))
    }

    /// Every phase of every project this daemon runs or has run, by project path and phase.
    /// A project or phase that is gone from disk since is left out.
    fn status_all(&self) -> Vec<StatusReport> {
        let mut known: std::collections::BTreeMap<PathBuf, std::collections::BTreeSet<u32>> = Default::default();
        for (root, phase) in lock(&self.runs).keys().chain(lock(&self.finished).keys()) {
            known.entry(root.clone()).or_default().insert(*phase);
        }
        known
            .into_iter()
            .filter_map(|(root, numbers)| {
                let project = Project::open(&root).ok()?;
                let phases = numbers
                    .into_iter()
                    .filter_map(|n| {
                        Some(self.phase_view(&project, &PhaseFiles::load(&project, n, &self.listings).ok()?))
                    })
                    .collect();
                Some(StatusReport { project: project.root.display().to_string(), phases })
            })
            .collect()
    }

    pub fn phase_view(&self, project: &Project, files: &PhaseFiles) -> PhaseView {
        let live = self.last_run(&project.root, files.number);
        let live = live.as_ref().map(|l| lock(l).clone());
        let running = self.run(&project.root, files.number).is_some();
        let mut problems = files.problems.clone();
        let (title, status) = match &files.config {
            Ok(doc) => (doc.str_field("title").to_string(), doc.str_field("status").to_string()),
            Err(e) => {
                problems.push(Problem {
                    path: files.dir.join(crate::phase::PHASE_CONFIG).display().to_string(),
                    message: e.detail(),
                });
                (String::new(), String::new())
            }
        };
        let project_name = project.root.display().to_string();
        let mut stories: Vec<StoryView> = files
            .stories
            .iter()
            .map(|story| {
                let live_story = live.as_ref().and_then(|l| l.stories.get(story.id.as_str()));
                let mut view = story_view(story, live_story, running, &mut problems);
                if let Some(ledger) = self.ledger.story(&project_name, story.id.as_str()) {
                    view.cost_usd = ledger.cost_usd();
                    view.tokens = ledger.tokens();
                }
                view
            })
            .collect();
        if running {
            mark_ready(&mut stories);
        }
        let mut counts = StoryCounts { total: stories.len() as u32, ..Default::default() };
        for s in &stories {
            match s.state {
                StoryState::Pending | StoryState::Ready => counts.pending += 1,
                StoryState::Running | StoryState::Verifying => counts.running += 1,
                StoryState::Completed => counts.completed += 1,
                StoryState::Failed => counts.failed += 1,
                StoryState::Blocked => counts.blocked += 1,
                StoryState::Invalid => counts.invalid += 1,
            }
        }
        let live_budget = live.as_ref().and_then(|l| l.budget_usd);
        let (cost_usd, tokens) = self.ledger.total(&project_name, files.stories.iter().map(|s| s.id.as_str()));
        // The wait is the project's; a phase shows it while a run of it is there to wait.
        let paused = running.then(|| self.pauses.until(&project_name, crate::run::now_unix())).flatten();
        let waiting = match &paused {
            Some((until, _)) => Some(format!("waiting for usage limit until {}", crate::run::clock(*until))),
            None => live.as_ref().filter(|_| running).and_then(|l| l.waiting.clone()),
        };
        PhaseView {
            project: project_name,
            phase: files.number,
            title,
            status,
            running,
            counts,
            stories,
            summary: live.and_then(|l| l.summary),
            problems,
            cost_usd,
            tokens,
            budget_usd: live_budget,
            paused_until: paused.map(|(until, _)| until),
            waiting,
        }
    }

    fn validate(&self, phase: &PhaseRef) -> Result<Response, ErrorReply> {
        let project = Project::open(Path::new(&phase.project))?;
        let files = PhaseFiles::load(&project, phase.phase, &self.listings)?;
        let mut problems = files.validate(&project);
        if let Err(e) = OrchestratorConfig::load(&project.root) {
            problems.push(Problem {
                path: project.root.join(crate::project::CONFIG_FILE).display().to_string(),
                message: e.detail(),
            });
        }
        Ok(Response::Validated(ValidationReport {
            project: project.root.display().to_string(),
            phase: phase.phase,
            stories: files.stories.len() as u32,
            problems,
        }))
    }

    fn start(self: &Arc<Self>, phase: &PhaseRef, force: bool) -> Result<Response, ErrorReply> {
        if *self.shutdown.borrow() {
            return Err(error(ErrorKind::Refused, "sticlerd is shutting down"));
        }
        let project = Project::open(Path::new(&phase.project))?;
        let files = PhaseFiles::load(&project, phase.phase, &self.listings)?;
        // A malformed phase_config.json is reported by the validation in `launch`.
        if let Ok(doc) = &files.config {
            let current = doc.str_field("status");
            let resumable = ["decomposed", "in_progress", "failed", "stopped"];
            if !force && !resumable.contains(&current) {
                return Err(error(
                    ErrorKind::Refused,
                    format!(
                        "phase {} is {current:?}; only a decomposed phase or one that is in_progress, failed or stopped can start (use --force to run it anyway)",
                        phase.phase
                    ),
                ));
            }
        }
        self.launch(phase, None)
    }

    /// Starts a validated phase: git prepared, phase_config `in_progress`, run recorded and
    /// launched. `resume_since` is set when a restarted daemon recovers a run.
    fn launch(self: &Arc<Self>, phase: &PhaseRef, resume_since: Option<i64>) -> Result<Response, ErrorReply> {
        let project = Project::open(Path::new(&phase.project))?;
        let key = (project.root.clone(), phase.phase);
        let _starting = self.reserve(&key)?;
        let files = PhaseFiles::load(&project, phase.phase, &self.listings)?;
        let problems = files.validate(&project);
        if !problems.is_empty() {
            let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            return Err(error(
                ErrorKind::Invalid,
                format!("phase {} is not valid; nothing was started:\n{}", phase.phase, lines.join("\n")),
            ));
        }
        let config = OrchestratorConfig::load(&project.root)?;
        let mut doc = files.config.as_ref().map_err(|e| error(ErrorKind::Invalid, e.to_string()))?.clone();
        // Before the first story: a repository with at least one commit.
        {
            let git = self.git_lock(&project.root);
            let _git = lock(&git);
            if resume_since.is_some() {
                crate::git::clear_stale_locks(&project.root);
            }
            crate::git::ensure_repo(&project.root).map_err(|e| {
                error(
                    ErrorKind::Internal,
                    format!("{}: cannot prepare the git repository: {e}", project.root.display()),
                )
            })?;
        }
        if resume_since.is_none() {
            // Workers of this phase while this daemon runs none: left by a daemon whose store
            // was lost (moved aside, or another state dir). They would race the new run.
            let killed = crate::worker::kill_phase_workers(&project.root, phase.phase);
            if killed > 0 {
                tracing::warn!(project = %project.root.display(), phase = phase.phase, "killed {killed} leftover worker process(es) of an earlier daemon");
                let git = self.git_lock(&project.root);
                let _git = lock(&git);
                crate::git::clear_stale_locks(&project.root);
            }
        }
        doc.map.insert("status".into(), Value::String("in_progress".into()));
        if resume_since.is_none() {
            doc.map.insert("started_at".into(), Value::String(sticler_proto::time::now_rfc3339()));
        }
        doc.write()?;
        let files = PhaseFiles::load(&project, phase.phase, &self.listings)?;
        let now_ms = crate::events::now_ms();
        let start = RunStart {
            nonce: format!(
                "{}.{now_ms}.{}",
                std::process::id(),
                RUN_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            started_unix: resume_since.unwrap_or((now_ms / 1000) as i64),
            // A recovered run's HEAD at its start is not kept: its time bound alone applies.
            head: if resume_since.is_none() { crate::git::head(&project.root) } else { None },
            recovered: resume_since.is_some(),
        };
        let record = RunRecord {
            project: project.root.display().to_string(),
            phase: phase.phase,
            started_unix: start.started_unix,
            nonce: start.nonce.clone(),
        };
        // Recorded (and flushed) before any worker exists, so a crash never loses track of one.
        self.bus
            .store()
            .put_run(&run_key(&project.root, phase.phase), &record)
            .map_err(|e| error(ErrorKind::Internal, e.to_string()))?;
        let handle = PhaseRun::launch(Arc::clone(self), project.clone(), &files, config, start);
        lock(&self.runs).insert(key, handle);
        Ok(Response::Started(Box::new(self.phase_view(&project, &files))))
    }

    /// Claims `key` for a start; refused while the phase runs or another start of it is under
    /// way. The claim ends when the returned guard is dropped, after the run is in `runs`.
    fn reserve(&self, key: &RunKey) -> Result<Starting<'_>, ErrorReply> {
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

    fn stop(&self, phase: &PhaseRef, grace: Duration, kill: bool) -> Result<Response, ErrorReply> {
        let project = Project::open(Path::new(&phase.project))?;
        let run = self.run(&project.root, phase.phase).ok_or_else(|| {
            error(ErrorKind::NotFound, format!("phase {} of {} is not running", phase.phase, project.root.display()))
        })?;
        run.stop(RunMsg::Stop { grace, kill });
        let what = if kill { "killing" } else { "stopping" };
        Ok(Response::Done { message: format!("{what} phase {} of {}", phase.phase, project.root.display()) })
    }

    /// Ends the project's usage-limit wait now; its runs start iterations again at once.
    fn resume(&self, phase: &PhaseRef) -> Result<Response, ErrorReply> {
        let project = Project::open(Path::new(&phase.project))?;
        let name = project.root.display().to_string();
        if !self.pauses.resume(self.bus.store(), &name, crate::run::now_unix()) {
            return Err(error(ErrorKind::Refused, format!("{name} is not waiting for a usage limit")));
        }
        self.bus.emit(&name, phase.phase, EventKind::UsageLimitResumed { early: true });
        Ok(Response::Done { message: format!("{name} resumes: the usage-limit wait is over") })
    }

    async fn retry(&self, phase: &PhaseRef, stories: Vec<String>, all_failed: bool) -> Result<Response, ErrorReply> {
        let project = Project::open(Path::new(&phase.project))?;
        let files = PhaseFiles::load(&project, phase.phase, &self.listings)?;
        let live = self.last_run(&project.root, phase.phase).map(|l| lock(&l).clone());
        let retryable = |story: &StoryFiles| {
            let disk_failed = story.status.as_ref().is_ok_and(|d| d.disk_status() == DiskStatus::Failed);
            let live_state = live.as_ref().and_then(|l| l.stories.get(story.id.as_str())).map(|s| s.state);
            // A worker still running owns its status.json, even if it just wrote `failed`.
            let busy = matches!(live_state, Some(StoryState::Running | StoryState::Verifying));
            !busy && (disk_failed || matches!(live_state, Some(StoryState::Failed | StoryState::Blocked)))
        };
        let targets: Vec<&StoryFiles> = if all_failed {
            files.stories.iter().filter(|s| retryable(s)).collect()
        } else {
            let mut targets = Vec::new();
            for name in &stories {
                let story =
                    files.stories.iter().find(|s| s.id.as_str() == name).ok_or_else(|| {
                        error(ErrorKind::NotFound, format!("no story {name} in phase {}", phase.phase))
                    })?;
                if !retryable(story) {
                    return Err(error(ErrorKind::Refused, format!("{name} is neither failed nor blocked")));
                }
                targets.push(story);
            }
            targets
        };
        if targets.is_empty() {
            return Ok(Response::Done { message: "no failed or blocked story to retry".into() });
        }
        for story in &targets {
            let mut doc = JsonDoc::read(&story.status_path())?;
            if doc.disk_status() == DiskStatus::Failed {
                // failed_reasons stay as history; only the status goes back.
                doc.set_status(DiskStatus::Pending);
                doc.write()?;
            }
        }
        let names: Vec<String> = targets.iter().map(|s| s.id.to_string()).collect();
        let project_name = project.root.display().to_string();
        for name in &names {
            self.ledger.retried(self.bus.store(), &project_name, name);
        }
        for name in &names {
            self.bus.emit(&project_name, phase.phase, EventKind::StoryRetried { story: name.clone() });
        }
        if let Some(run) = self.run(&project.root, phase.phase) {
            let (reply, answer) = oneshot::channel();
            let _ = run.tx.send(RunMsg::Retry { stories: names.clone(), reply });
            let _ = answer.await;
            return Ok(Response::Done { message: format!("retrying {} in the running phase", names.join(", ")) });
        }
        Ok(Response::Done {
            message: format!(
                "{} set back to pending; they run at the next `sticlerctl start {}`",
                names.join(", "),
                phase.phase
            ),
        })
    }
}

pub fn run_key(project: &Path, phase: u32) -> String {
    format!("{}\0{phase}", project.display())
}

/// A pending story of a running phase whose dependencies in the phase are all completed is
/// `ready`: it starts as soon as a slot frees. (One whose dependencies in earlier phases are not
/// completed is `blocked`, never pending.)
fn mark_ready(stories: &mut [StoryView]) {
    let states: HashMap<String, StoryState> = stories.iter().map(|s| (s.id.clone(), s.state)).collect();
    for story in stories.iter_mut().filter(|s| s.state == StoryState::Pending) {
        let done = |dep: &String| states.get(dep).is_none_or(|state| *state == StoryState::Completed);
        if story.dependencies.iter().all(done) {
            story.state = StoryState::Ready;
        }
    }
}

fn story_view(
    story: &StoryFiles,
    live: Option<&crate::run::LiveStory>,
    run_active: bool,
    problems: &mut Vec<Problem>,
) -> StoryView {
    let (doc, disk_state) = match &story.status {
        Ok(doc) => {
            let state = match doc.disk_status() {
                DiskStatus::Completed => StoryState::Completed,
                DiskStatus::Failed => StoryState::Failed,
                _ => StoryState::Pending,
            };
            (Some(doc), state)
        }
        Err(e) => {
            problems.push(Problem { path: story.status_path().display().to_string(), message: e.detail() });
            (None, StoryState::Invalid)
        }
    };
    let state = match live {
        Some(l) if run_active || l.state == StoryState::Blocked => l.state,
        _ => disk_state,
    };
    let (criteria_done, criteria_total) = doc.map_or((0, 0), |d| d.criteria());
    let mut failed_reasons = doc.map_or_else(Vec::new, |d| d.failed_reasons().to_vec());
    if let Some(reason) = live.and_then(|l| l.reason.clone()) {
        failed_reasons.push(reason);
    }
    StoryView {
        id: story.id.to_string(),
        title: doc.map_or_else(String::new, |d| d.title().to_string()),
        state,
        disk_status: doc.map_or_else(String::new, |d| d.status().to_string()),
        iteration: doc.map_or(0, |d| d.iteration()),
        runs: live.map_or(0, |l| l.runs),
        criteria_done,
        criteria_total,
        dependencies: doc.map_or_else(Vec::new, |d| d.dependencies().to_vec()),
        focus: doc.map_or_else(String::new, |d| d.focus().to_string()),
        failed_reasons,
        blocked_by: live.map_or_else(Vec::new, |l| l.blocked_by.clone()),
        running_secs: live.and_then(|l| l.iteration_started).map(|t| t.elapsed().as_secs()),
        commit_hash: doc.map_or_else(String::new, |d| d.commit_hash().to_string()),
        cost_usd: None,
        tokens: None,
    }
}
