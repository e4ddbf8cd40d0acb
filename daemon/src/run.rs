//! One active run of one phase: an actor task that owns the phase's scheduler, starts each
//! iteration's worker, judges its end from status.json, and writes what sticler decides back
//! to disk.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use sticler_proto::{EventKind, ExitReason, RunOutcome, StoryState};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use crate::daemon::Daemon;
use crate::git;
use crate::phase::PhaseFiles;
use crate::project::{CommandSpec, DiskStatus, JsonDoc, OrchestratorConfig, Project, StatusFields, StdinMode};
use crate::scheduler::{Action, Limits, Scheduler, StoryInit, Verdict};
use crate::worker::{self, SpawnSpec};

mod agent;
mod gate;
pub use agent::{clock, now_unix};
use gate::{commit_step, record_hash};

pub enum RunMsg {
    Exited {
        story: String,
        iteration: u32,
        reason: ExitReason,
    },
    TimedOut {
        story: String,
        iteration: u32,
    },
    Stop {
        grace: Duration,
        kill: bool,
    },
    /// The daemon is shutting down: stop gracefully but stay resumable by the next daemon.
    Interrupt {
        grace: Duration,
    },
    /// The stop grace period is over: SIGKILL what is left.
    ForceKill,
    Retry {
        stories: Vec<String>,
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// What `status` shows of a run while it is active (and after it ended).
#[derive(Debug, Default, Clone)]
pub struct LiveRun {
    pub stories: HashMap<String, LiveStory>,
    pub ended: Option<RunOutcome>,
    pub summary: Option<String>,
    /// Why no new iteration starts although stories are ready (the phase budget is spent).
    pub waiting: Option<String>,
    /// `max_cost_usd_per_phase` of the run's config.
    pub budget_usd: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct LiveStory {
    pub state: StoryState,
    pub runs: u32,
    pub iteration_started: Option<Instant>,
    pub blocked_by: Vec<String>,
    /// Why sticler failed the story, when status.json could not carry it.
    pub reason: Option<String>,
}

#[derive(Clone)]
pub struct RunHandle {
    pub tx: mpsc::UnboundedSender<RunMsg>,
    pub live: Arc<Mutex<LiveRun>>,
    /// Set when the run is told to stop. The run's task sees messages only between steps, and
    /// one step waits on a process (the push at the phase's end, up to 2 minutes): this cuts
    /// that wait short instead.
    stopping: Arc<watch::Sender<bool>>,
}

impl RunHandle {
    /// Tells the run to stop (`Stop`, or `Interrupt` for a daemon shutdown).
    pub fn stop(&self, msg: RunMsg) {
        self.stopping.send_replace(true);
        let _ = self.tx.send(msg);
    }

    /// Stories of this run with a worker or a verify command running now.
    pub fn running_stories(&self) -> usize {
        // A poisoned lock still holds a readable snapshot; a status line must not panic.
        let live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        live.stories.values().filter(|s| matches!(s.state, StoryState::Running | StoryState::Verifying)).count()
    }
}

struct Running {
    pid: i32,
    iteration: u32,
    token: String,
    /// status.json bytes when the iteration started, to see whether it changed.
    before: Vec<u8>,
    timed_out: bool,
    stop_signalled: bool,
    /// This process is the verify command of a story that claimed completion.
    verifying: bool,
}

#[derive(Clone)]
struct StoryPaths {
    dir: PathBuf,
    status: PathBuf,
    spec: PathBuf,
}

pub struct PhaseRun {
    daemon: Arc<Daemon>,
    /// This run's key in the store.
    run_key: String,
    project: Project,
    project_name: String,
    phase: u32,
    config: OrchestratorConfig,
    sched: Scheduler,
    stories: BTreeMap<String, StoryPaths>,
    running: HashMap<String, Running>,
    permits: HashMap<String, OwnedSemaphorePermit>,
    live: Arc<Mutex<LiveRun>>,
    tx: mpsc::UnboundedSender<RunMsg>,
    /// Turns true when the run is told to stop (see `RunHandle::stop`).
    stop_requested: watch::Receiver<bool>,
    /// Prefix of every worker token of this run.
    nonce: String,
    logs_root: PathBuf,
    started: Instant,
    /// Which commits count as the stories' commits: made since the run started.
    since: git::Since,
    /// Stopped by a daemon shutdown: the next daemon resumes the run.
    interrupted: bool,
    /// Work that must not delay a dispatch (an ended iteration's stray sweep, `commit_hash`
    /// writes with their fsyncs): it runs on a blocking thread once the message that brought it
    /// is handled, so after the dependents have started.
    later: Vec<Box<dyn FnOnce() + Send>>,
    /// That work still going; all of it is awaited before the run ends.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The daemon was told this run ended (before the event saying so goes out: whoever waits
    /// for it may start the phase again at once).
    finished: bool,
    /// Usage-limit wait, budgets and the agents' own error signals.
    agent: agent::AgentWatch,
}

/// How a run begins: fresh from `start`, or recovered by a restarted daemon.
pub struct RunStart {
    pub nonce: String,
    pub started_unix: i64,
    /// HEAD when a fresh run started (unknown for a recovered one).
    pub head: Option<git2::Oid>,
    pub recovered: bool,
}

impl PhaseRun {
    /// Builds the run from a validated phase and starts its task.
    pub fn launch(
        daemon: Arc<Daemon>,
        project: Project,
        files: &PhaseFiles,
        config: OrchestratorConfig,
        start: RunStart,
    ) -> RunHandle {
        let mut inits = Vec::new();
        let mut stories = BTreeMap::new();
        let mut live = LiveRun::default();
        for story in &files.stories {
            let Ok(doc) = &story.status else { continue };
            let (deps, unmet_external) = split_dependencies(&project, files.number, doc.dependencies());
            let mut disk = doc.disk_status();
            if disk == DiskStatus::Completed && doc.commit_hash().is_empty() {
                // Completed without a recorded commit: the daemon died (or the run was stopped)
                // between the worker's claim and the commit step, or the story was completed
                // outside sticler. Its commit step happens now. A resumed run counts commits
                // since its first start, so it happens exactly once; a new run accepts any
                // `[story]` commit of the history.
                let paths = StoryPaths { dir: story.dir.clone(), status: story.status_path(), spec: story.spec_path() };
                let since = git::Since { unix: if start.recovered { start.started_unix } else { 0 }, head: None };
                let checked = commit_step(&daemon, &project.root, story.id.as_str(), &paths, config.auto_commit, since)
                    .and_then(|oid| oid.map_or(Ok(()), |oid| record_hash(&paths.status, oid)));
                match checked {
                    Ok(()) => {}
                    // The user says it is done and sticler may not commit: leave it so.
                    Err(why) if !start.recovered && !config.auto_commit => {
                        tracing::warn!(story_id = %story.id, "completed without a commit, left as it is: {why}");
                    }
                    Err(why) => {
                        tracing::warn!(story_id = %story.id, "{why}");
                        let _ = fail_on_disk(story.id.as_str(), &paths, &why);
                        disk = DiskStatus::Failed;
                    }
                }
            }
            inits.push(StoryInit {
                id: story.id.to_string(),
                deps,
                unmet_external,
                completed: disk == DiskStatus::Completed,
                failed: disk == DiskStatus::Failed,
            });
            stories.insert(
                story.id.to_string(),
                StoryPaths { dir: story.dir.clone(), status: story.status_path(), spec: story.spec_path() },
            );
            let state = match disk {
                DiskStatus::Completed => StoryState::Completed,
                DiskStatus::Failed => StoryState::Failed,
                _ => StoryState::Pending,
            };
            live.stories.insert(
                story.id.to_string(),
                LiveStory { state, runs: 0, iteration_started: None, blocked_by: vec![], reason: None },
            );
        }
        live.budget_usd = config.max_cost_usd_per_phase;
        let limits = Limits {
            max_parallel: config.max_parallel_workers.max(1),
            max_iterations: config.max_iterations_per_task.max(1),
            retry_limit: config.retry_limit.max(1),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let live = Arc::new(Mutex::new(live));
        let (stopping, stop_requested) = watch::channel(false);
        let handle = RunHandle { tx: tx.clone(), live: Arc::clone(&live), stopping: Arc::new(stopping) };
        let logs_root = daemon.logs_root(&project.root);
        let run_key = crate::daemon::run_key(&project.root, files.number);
        let mut run = PhaseRun {
            run_key,
            project_name: project.root.display().to_string(),
            logs_root,
            daemon,
            project,
            phase: files.number,
            config,
            sched: Scheduler::new(inits, limits),
            stories,
            running: HashMap::new(),
            permits: HashMap::new(),
            live,
            tx,
            stop_requested,
            nonce: start.nonce,
            started: Instant::now(),
            since: git::Since { unix: start.started_unix, head: start.head },
            interrupted: false,
            later: Vec::new(),
            background: Vec::new(),
            finished: false,
            agent: agent::AgentWatch::default(),
        };
        if start.recovered {
            match run.daemon.bus.store().stories(&run.run_key) {
                Ok(records) => {
                    for (story, record) in records {
                        tracing::info!(story_id = %story, iterations = record.iterations, infra_streak = record.infra_streak, "counts continued from the last daemon");
                        run.sched.restore_counts(&story, record.iterations, record.infra_streak);
                    }
                }
                Err(e) => tracing::warn!("cannot read the story records; counts start over: {e}"),
            }
        }
        let span = tracing::info_span!("run", project = %run.project_name, phase = run.phase);
        tokio::spawn(tracing::Instrument::instrument(run.drive(rx), span));
        handle
    }

    fn emit(&self, kind: EventKind) {
        self.daemon.bus.emit(&self.project_name, self.phase, kind);
    }

    fn live(&self) -> std::sync::MutexGuard<'_, LiveRun> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn drive(mut self, mut rx: mpsc::UnboundedReceiver<RunMsg>) {
        self.emit(EventKind::RunStarted { stories: self.stories.len() as u32 });
        let mut slots = self.daemon.slots.subscribe();
        let mut pauses = self.daemon.pauses.subscribe();
        self.agent_start();
        let actions = self.sched.schedule(self.daemon.slots.free());
        self.apply(actions);
        while self.sched.ended().is_none() {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                changed = slots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let actions = self.sched.schedule(self.daemon.slots.free());
                    self.apply(actions);
                }
                Ok(()) = pauses.changed() => self.pause_changed(),
                () = agent::sleep_until_unix(self.agent.paused_until) => self.pause_changed(),
            }
            self.start_later_work();
        }
        if !self.finished {
            // The task ends without the run's end (the daemon is going away).
            self.daemon.run_finished(&self.project.root, self.phase, self.interrupted);
        }
    }

    fn handle(&mut self, msg: RunMsg) {
        match msg {
            RunMsg::Exited { story, iteration, reason } => self.iteration_exited(story, iteration, reason),
            RunMsg::TimedOut { story, iteration } => {
                if let Some(run) = self.running.get_mut(&story).filter(|r| r.iteration == iteration) {
                    run.timed_out = true;
                    tracing::warn!(story_id = %story, iteration, "iteration timed out; killing it");
                    worker::signal_story(Some(run.pid), std::slice::from_ref(&run.token), Signal::SIGKILL);
                }
            }
            RunMsg::Stop { grace, kill } => self.stop(grace, kill),
            RunMsg::Interrupt { grace } => {
                self.interrupted = true;
                self.stop(grace, false);
            }
            RunMsg::ForceKill => {
                for run in self.running.values() {
                    worker::signal_story(Some(run.pid), std::slice::from_ref(&run.token), Signal::SIGKILL);
                }
            }
            RunMsg::Retry { stories, reply } => {
                let retried: Vec<String> = stories.into_iter().filter(|s| self.sched.retry(s)).collect();
                for story in &retried {
                    if let Some(live) = self.live().stories.get_mut(story) {
                        live.state = StoryState::Pending;
                        live.blocked_by.clear();
                        live.reason = None;
                    }
                }
                let _ = reply.send(retried);
                self.refresh_blocked();
                let actions = self.sched.schedule(self.daemon.slots.free());
                self.apply(actions);
            }
        }
    }

    /// Hands the work kept for later to a blocking thread.
    fn start_later_work(&mut self) {
        if self.later.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.later);
        self.background.retain(|work| !work.is_finished());
        self.background.push(tokio::task::spawn_blocking(move || {
            for job in jobs {
                job();
            }
        }));
    }

    fn stop(&mut self, grace: Duration, kill: bool) {
        let first = !self.sched.is_stopping();
        let actions = self.sched.stop();
        if first || kill {
            self.emit(EventKind::RunStopping { kill });
        }
        let signal = if kill { Signal::SIGKILL } else { Signal::SIGTERM };
        for run in self.running.values_mut() {
            run.stop_signalled = true;
            worker::signal_story(Some(run.pid), std::slice::from_ref(&run.token), signal);
        }
        if !kill && !self.running.is_empty() {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = tx.send(RunMsg::ForceKill);
            });
        }
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Start(story) => {
                    if let Some(more) = self.start_iteration(&story) {
                        queue.extend(more);
                    }
                }
                Action::Completed(story) => {
                    self.release(&story, StoryState::Completed);
                    self.emit(EventKind::StoryCompleted { story });
                }
                Action::Failed { story, reason, record } => {
                    if record {
                        self.record_failure(&story, &reason);
                    }
                    self.release(&story, StoryState::Failed);
                    self.emit(EventKind::StoryFailed { story, reason });
                }
                Action::Blocked { story, by } => {
                    // Only this story: refreshing every story per block was quadratic (minutes
                    // for a failure at the head of a 10,000-long chain).
                    let blocked_by = self.sched.blocked_by(&story).to_vec();
                    if let Some(live) = self.live().stories.get_mut(&story) {
                        live.state = StoryState::Blocked;
                        live.blocked_by = blocked_by;
                    }
                    self.emit(EventKind::StoryBlocked { story, by });
                }
                Action::Ended(outcome) => self.end(outcome),
            }
        }
    }

    /// Gives the story's daemon-wide slot back when it stops running.
    fn release(&mut self, story: &str, state: StoryState) {
        if self.permits.remove(story).is_some() {
            self.daemon.slots.freed();
        }
        if let Some(live) = self.live().stories.get_mut(story) {
            live.state = state;
            live.iteration_started = None;
        }
    }

    fn refresh_blocked(&mut self) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for (id, story) in live.stories.iter_mut() {
            if let Some(state) = self.sched.state(id) {
                story.state = state;
                story.blocked_by = self.sched.blocked_by(id).to_vec();
            }
        }
    }

    /// Starts the next iteration of `story`. On failure to start, returns what the scheduler
    /// decides about that failed iteration.
    fn start_iteration(&mut self, story: &str) -> Option<Vec<Action>> {
        if self.pause_holds(story) {
            return None;
        }
        if !self.permits.contains_key(story) {
            match self.daemon.slots.try_take() {
                Some(permit) => {
                    self.permits.insert(story.to_string(), permit);
                }
                None => {
                    // Another run took the last slot first: wait for the next free one.
                    self.sched.unstart(story);
                    return None;
                }
            }
        }
        let paths = self.stories.get(story)?;
        let iteration = crate::logs::logged_iterations(&self.logs_root, story).last().map_or(1, |n| n + 1);
        let token = format!("{}/{}/{}/", self.nonce, story, iteration);
        let spec = self.spawn_spec(story, paths, iteration, token.clone(), &self.config.worker.command);
        let before = crate::project::read_limited(&paths.status).unwrap_or_default();
        match worker::spawn(&self.daemon.spawner, &self.daemon.logs, &spec) {
            Ok((pid, exit)) => {
                self.watch_exit(story, iteration, exit);
                self.running.insert(
                    story.to_string(),
                    Running {
                        pid,
                        iteration,
                        token,
                        before,
                        timed_out: false,
                        stop_signalled: false,
                        verifying: false,
                    },
                );
                let first_run = self.live().stories.get_mut(story).is_some_and(|live| {
                    live.state = StoryState::Running;
                    live.runs += 1;
                    live.iteration_started = Some(Instant::now());
                    live.runs == 1
                });
                if first_run {
                    // Its dependents may be next: their log folders are made now, off the way
                    // from this story's end to their start.
                    let folders = self.sched.dependents(story).iter().map(|d| self.logs_root.join(d)).collect();
                    self.daemon.logs.prepare_folders(folders);
                }
                self.record_story(story, Some((pid, &spec.log)), None);
                self.emit(EventKind::IterationStarted { story: story.to_string(), iteration, pid: pid as u32 });
                None
            }
            Err(e) => {
                let why = format!("cannot start worker {:?}: {e}", spec.argv.first().map_or("", |s| s.as_str()));
                tracing::warn!(story_id = %story, iteration, "{why}");
                let _ = append_log(&spec.log, &format!("sticler: {why}\n"));
                self.emit(EventKind::IterationEnded {
                    story: story.to_string(),
                    iteration,
                    exit: ExitReason::Exited(127),
                    verdict: Verdict::Infra(why.clone()).label(),
                });
                let mut actions = self.sched.iteration_ended(story, Verdict::Infra(why));
                actions.extend(self.sched.schedule(self.daemon.slots.free()));
                Some(actions)
            }
        }
    }

    /// Reports the end of a process (worker or verify) of `story` to the run, and a timeout
    /// after iteration_timeout_secs.
    fn watch_exit(&self, story: &str, iteration: u32, exit: oneshot::Receiver<ExitReason>) {
        let timeout = Duration::from_secs(self.config.worker.iteration_timeout_secs.max(1));
        let tx = self.tx.clone();
        let story = story.to_string();
        tokio::spawn(async move {
            let mut exit = exit;
            let reason = tokio::select! {
                reason = &mut exit => reason,
                _ = tokio::time::sleep(timeout) => {
                    let _ = tx.send(RunMsg::TimedOut { story: story.clone(), iteration });
                    (&mut exit).await
                }
            };
            // A closed channel means the reaper is gone, which only happens at exit.
            let reason = reason.unwrap_or(ExitReason::Signalled(Signal::SIGKILL as i32));
            let _ = tx.send(RunMsg::Exited { story, iteration, reason });
        });
    }

    /// The command (worker or verify) of one iteration with its placeholders, environment,
    /// stdin and log.
    fn spawn_spec(
        &self,
        story: &str,
        paths: &StoryPaths,
        iteration: u32,
        token: String,
        command: &CommandSpec,
    ) -> SpawnSpec {
        let vars: [(&str, String); 7] = [
            ("story_id", story.to_string()),
            ("story_dir", paths.dir.display().to_string()),
            ("spec", paths.spec.display().to_string()),
            ("status", paths.status.display().to_string()),
            ("phase", self.phase.to_string()),
            ("project_dir", self.project.root.display().to_string()),
            ("iteration", iteration.to_string()),
        ];
        let argv = command
            .argv()
            .iter()
            .map(|arg| vars.iter().fold(arg.clone(), |acc, (k, v)| acc.replace(&format!("{{{k}}}"), v)))
            .collect();
        let mut env: Vec<(String, String)> =
            self.config.worker.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(vars.iter().map(|(k, v)| (format!("STICLER_{}", env_name(k)), v.clone())));
        SpawnSpec {
            argv,
            cwd: self.project.root.clone(),
            env,
            stdin: (self.config.worker.stdin == StdinMode::Spec).then(|| paths.spec.clone()),
            log: crate::logs::log_path(&self.logs_root, story, iteration),
            token,
        }
    }

    fn iteration_exited(&mut self, story: String, iteration: u32, reason: ExitReason) {
        let Some(run) = self.running.remove(&story) else { return };
        if run.iteration != iteration {
            self.running.insert(story, run);
            return;
        }
        // Whatever the worker left behind in its group dies with the iteration.
        worker::signal_story(Some(run.pid), &[], Signal::SIGKILL);
        let exit = if run.timed_out { ExitReason::TimedOut } else { reason };
        // Descendants that escaped into their own session are found by their token; the /proc
        // scan waits until the next dispatch is done.
        let token = run.token.clone();
        self.later.push(Box::new(move || {
            worker::signal_story(None, &[token], Signal::SIGKILL);
        }));
        let verdict = if run.verifying {
            self.verified(&story, &run, exit)
        } else {
            let judged = self.judge(&story, &run, exit);
            match self.agent_verdict(&story, &run, judged) {
                Verdict::Completed if self.config.verify.is_some() => match self.start_verify(&story, &run) {
                    Some(verdict) => verdict,
                    None => return,
                },
                Verdict::Completed => self.commit_step(&story),
                verdict => verdict,
            }
        };
        self.emit(EventKind::IterationEnded { story: story.clone(), iteration, exit, verdict: verdict.label() });
        let actions = self.sched.iteration_ended(&story, verdict);
        self.record_story(&story, None, Some(exit.to_string()));
        if self.sched.state(&story) != Some(StoryState::Running) {
            if let Some(live) = self.live().stories.get_mut(&story) {
                live.state = self.sched.state(&story).unwrap_or(StoryState::Pending);
                live.iteration_started = None;
            }
            if matches!(self.sched.state(&story), Some(StoryState::Pending)) {
                self.release(&story, StoryState::Pending);
            }
        }
        // The story's own actions first: a story that ends gives its slot back, and the next
        // story may need that very slot (with `--max-workers 1`, it always does).
        self.apply(actions);
        let next = self.sched.schedule(self.daemon.slots.free());
        self.apply(next);
    }

    /// Runs a helper process (git push) to its end; its group is killed on timeout or when the
    /// run is told to stop meanwhile (then the exit is `None`).
    fn run_to_end(&self, spec: &SpawnSpec, timeout: Duration) -> Option<ExitReason> {
        let (pid, exit) = match worker::spawn(&self.daemon.spawner, &self.daemon.logs, spec) {
            Ok(started) => started,
            Err(e) => {
                let _ = append_log(&spec.log, &format!("sticler: cannot start {:?}: {e}\n", spec.argv.join(" ")));
                return Some(ExitReason::Exited(127));
            }
        };
        let mut stop_requested = self.stop_requested.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let mut exit = exit;
                let cut_short = tokio::select! {
                    reason = &mut exit => return Some(reason.unwrap_or(ExitReason::Signalled(Signal::SIGKILL as i32))),
                    () = tokio::time::sleep(timeout) => Some(ExitReason::TimedOut),
                    Ok(_) = stop_requested.wait_for(|stop| *stop) => None,
                };
                worker::signal_story(Some(pid), std::slice::from_ref(&spec.token), Signal::SIGKILL);
                let _ = exit.await;
                cut_short
            })
        })
    }

    fn judge(&self, story: &str, run: &Running, exit: ExitReason) -> Verdict {
        if exit == ExitReason::TimedOut {
            let secs = self.config.worker.iteration_timeout_secs;
            return Verdict::Infra(format!("iteration timed out after {secs} s"));
        }
        if run.stop_signalled && exit != ExitReason::Exited(0) {
            return Verdict::Stopped;
        }
        let Some(paths) = self.stories.get(story) else { return Verdict::Stopped };
        let after = match crate::project::read_limited(&paths.status) {
            Ok(bytes) => bytes,
            Err(e) => return Verdict::Infra(format!("cannot read {e}")),
        };
        let doc = match crate::project::parse_object(&paths.status, &after) {
            Ok(map) => JsonDoc::new(paths.status.clone(), after, map),
            Err(e) => return Verdict::Infra(format!("status.json left invalid: {e}")),
        };
        match doc.disk_status() {
            DiskStatus::Completed => Verdict::Completed,
            DiskStatus::Failed => Verdict::SelfFailed,
            _ if doc.raw != run.before => Verdict::Progress,
            _ if exit == ExitReason::Exited(0) => Verdict::NoChange,
            _ => Verdict::Infra(format!("{exit} without any change to status.json")),
        }
    }

    /// Writes sticler's verdict into status.json: `failed` and the reason, other fields kept.
    fn record_failure(&mut self, story: &str, reason: &str) {
        let Some(paths) = self.stories.get(story) else { return };
        if let Err(e) = fail_on_disk(story, paths, reason) {
            // A malformed file is never replaced: the reason stays visible in status instead.
            if let Some(live) = self.live().stories.get_mut(story) {
                live.reason = Some(format!("{reason} (not written to status.json: {e})"));
            }
        }
    }

    fn end(&mut self, outcome: RunOutcome) {
        // Nothing of this run may outlive it.
        worker::signal_story(None, std::slice::from_ref(&format!("{}/", self.nonce)), Signal::SIGKILL);
        for job in std::mem::take(&mut self.later) {
            job();
        }
        let background = std::mem::take(&mut self.background);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for work in background {
                    let _ = work.await;
                }
            })
        });
        if self.interrupted {
            let summary = "interrupted by the sticlerd shutdown; it resumes when sticlerd starts again".to_string();
            {
                let mut live = self.live();
                live.ended = Some(outcome);
                live.summary = Some(summary.clone());
            }
            self.finish();
            self.emit(EventKind::RunEnded { outcome, summary });
            return;
        }
        let summary = self.summary(outcome);
        let phase_config = self.project.phase_dir(self.phase).join(crate::phase::PHASE_CONFIG);
        let result = JsonDoc::read(&phase_config).and_then(|mut doc| {
            doc.map.insert("status".into(), Value::String(outcome.as_str().into()));
            if outcome == RunOutcome::Completed {
                doc.map.insert("completed_at".into(), Value::String(sticler_proto::time::now_rfc3339()));
            }
            doc.write()
        });
        let mut summary = summary;
        if let Err(e) = result {
            // The file is left as it is (never replaced by defaults); the summary says why.
            let warning = format!("the end of the run is not recorded in phase_config.json: {e}");
            tracing::error!("{warning}");
            summary.push_str(&format!("; warning: {warning}"));
        }
        if outcome == RunOutcome::Completed {
            if let Some(warning) = self.close_phase(&summary) {
                tracing::warn!("{warning}");
                summary.push_str(&format!("; warning: {warning}"));
            }
        }
        {
            let mut live = self.live();
            live.ended = Some(outcome);
            live.summary = Some(summary.clone());
        }
        self.refresh_blocked();
        self.finish();
        self.emit(EventKind::RunEnded { outcome, summary });
    }

    /// Stores the story's state and counts, and its worker while one runs.
    fn record_story(&self, story: &str, worker: Option<(i32, &std::path::Path)>, last_exit: Option<String>) {
        let (iterations, infra_streak) = self.sched.counts(story);
        let record = crate::store::StoryRecord {
            state: self.sched.state(story).map(|s| format!("{s:?}").to_lowercase()).unwrap_or_default(),
            iterations,
            infra_streak,
            pid: worker.map(|(pid, _)| pid),
            start_time: worker.and_then(|(pid, _)| worker::start_time(pid)),
            last_exit,
            log: worker.map(|(_, log)| log.display().to_string()),
        };
        // A failure streak is flushed before the next iteration starts, so that a daemon that
        // keeps dying cannot reset it; progress is written lazily (see Store::put_story).
        let flush = worker.is_none() && infra_streak > 0;
        if let Err(e) = self.daemon.bus.store().put_story(&self.run_key, story, &record, flush) {
            tracing::warn!(story_id = %story, "cannot record the story in the store: {e}");
        }
    }

    fn finish(&mut self) {
        self.daemon.run_finished(&self.project.root, self.phase, self.interrupted);
        self.finished = true;
    }

    /// The phase commit, then the push when configured. Returns a warning on failure: neither
    /// fails the phase.
    fn close_phase(&self, summary: &str) -> Option<String> {
        let root = &self.project.root;
        let title = JsonDoc::read(&self.project.phase_dir(self.phase).join(crate::phase::PHASE_CONFIG))
            .map(|d| d.str_field("title").to_string())
            .unwrap_or_default();
        let stories: Vec<(String, String)> = self
            .stories
            .iter()
            .map(|(id, paths)| {
                let title = JsonDoc::read(&paths.status).map(|d| d.title().to_string()).unwrap_or_default();
                (id.clone(), title)
            })
            .collect();
        {
            let lock = self.daemon.git_lock(root);
            let _git = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) =
                tokio::task::block_in_place(|| git::commit_phase(root, self.phase, &title, &stories, summary))
            {
                return Some(format!("phase commit failed: {e}"));
            }
        }
        if !self.config.push {
            return None;
        }
        let branch = match git::push_target(root) {
            Ok(Some(branch)) => branch,
            Ok(None) => return None,
            Err(e) => return Some(format!("push skipped: {e}")),
        };
        let spec = SpawnSpec {
            argv: vec!["git".into(), "push".into(), "origin".into(), branch.clone()],
            cwd: root.clone(),
            env: vec![("GIT_TERMINAL_PROMPT".into(), "0".into())],
            stdin: None,
            log: self.logs_root.join(format!("phase_{}-push.log", self.phase)),
            token: format!("{}/push/", self.nonce),
        };
        match self.run_to_end(&spec, Duration::from_secs(120)) {
            Some(ExitReason::Exited(0)) => None,
            Some(exit) => Some(format!("git push origin {branch} failed ({exit}); see {}", spec.log.display())),
            None => Some(format!("git push origin {branch} was cut short: the run was told to stop")),
        }
    }

    fn summary(&self, outcome: RunOutcome) -> String {
        let total = self.stories.len();
        let completed = self.stories.keys().filter(|s| self.sched.state(s) == Some(StoryState::Completed)).count();
        let failed: Vec<&String> =
            self.stories.keys().filter(|s| self.sched.state(s) == Some(StoryState::Failed)).collect();
        let blocked = self.stories.keys().filter(|s| self.sched.state(s) == Some(StoryState::Blocked)).count();
        let mut text = format!(
            "{completed}/{total} stories completed, {} iterations, wall time {:.1} s",
            self.sched.total_iterations(),
            self.started.elapsed().as_secs_f64()
        );
        if !failed.is_empty() {
            let names: Vec<&str> = failed.iter().map(|s| s.as_str()).collect();
            text.push_str(&format!("; failed: {}", names.join(", ")));
        }
        if blocked > 0 {
            text.push_str(&format!("; {blocked} blocked"));
        }
        if outcome == RunOutcome::Stopped {
            text.push_str("; stopped (start again to resume)");
        }
        text.push_str(&self.agent_summary());
        let commits: Vec<String> = self
            .stories
            .iter()
            .filter(|(id, _)| self.sched.state(id) == Some(StoryState::Completed))
            .filter_map(|(id, paths)| {
                let doc = JsonDoc::read(&paths.status).ok()?;
                let hash = doc.commit_hash();
                (!hash.is_empty()).then(|| format!("{id} {}", hash.chars().take(7).collect::<String>()))
            })
            .collect();
        if !commits.is_empty() {
            text.push_str(&format!("; commits: {}", commits.join(", ")));
        }
        text
    }
}

/// status.json gets `failed` and the reason, other fields kept; never replaces a malformed file.
fn fail_on_disk(story: &str, paths: &StoryPaths, reason: &str) -> Result<(), crate::project::ProjectError> {
    let result = JsonDoc::read(&paths.status).and_then(|mut doc| {
        doc.set_status(DiskStatus::Failed);
        push_reason(&mut doc, reason);
        doc.write()
    });
    if let Err(e) = &result {
        tracing::warn!(story_id = %story, "cannot record the failure in status.json: {e}");
    }
    result
}

/// Appends `sticler: <reason>` to `failed_reasons` (created if missing).
fn push_reason(doc: &mut JsonDoc, reason: &str) {
    let reasons = doc.map.entry("failed_reasons").or_insert_with(|| Value::Array(vec![]));
    if !reasons.is_array() {
        *reasons = Value::Array(vec![]);
    }
    if let Value::Array(list) = reasons {
        list.push(Value::String(format!("sticler: {reason}")));
    }
}

fn env_name(placeholder: &str) -> String {
    match placeholder {
        "spec" => "SPEC_FILE".into(),
        "status" => "STATUS_FILE".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// Splits dependencies into those inside this phase and those in other phases that are not
/// completed on disk (those block the story).
fn split_dependencies(project: &Project, phase: u32, deps: &[String]) -> (Vec<String>, Vec<String>) {
    let mut inside = Vec::new();
    let mut unmet = Vec::new();
    for dep in deps {
        match crate::project::StoryId::parse(dep) {
            Some(id) if id.phase == phase => inside.push(dep.clone()),
            Some(id) => {
                let status = project.story_dir(&id).join(crate::phase::STATUS_FILE);
                let done = JsonDoc::read(&status).is_ok_and(|doc| doc.disk_status() == DiskStatus::Completed);
                if !done {
                    unmet.push(dep.clone());
                }
            }
            None => unmet.push(dep.clone()),
        }
    }
    (inside, unmet)
}

fn append_log(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(text.as_bytes())
}
