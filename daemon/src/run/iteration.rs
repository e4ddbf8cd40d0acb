//! One iteration of a story: its process started (then watched by `supervise`), and judged
//! from how it ended and from status.json into a verdict for the scheduler.

use std::time::{Duration, Instant};

use sticler_proto::{EventKind, ExitReason, StoryState};
use tokio::sync::watch;

use super::command::append_log;
use super::liveness::Liveness;
use super::state::Current;
use super::supervise::{Ended, EndedBy};
use super::PhaseRun;
use crate::project::{DiskStatus, JsonDoc, RunnerConfig, StatusFields};
use crate::scheduler::{Action, Verdict};
use crate::worker::{self, Group};

/// The process a story has running.
pub(super) struct Running {
    pub iteration: u32,
    pub group: Group,
    /// status.json bytes when the iteration started, to see whether it changed.
    pub before: Vec<u8>,
    pub process: Process,
    /// Asks the process's supervisor to end it, with this grace (zero: at once).
    pub stop: watch::Sender<Option<Duration>>,
}

/// What the running process is doing for its story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Process {
    /// The worker, working on the story.
    Worker,
    /// The verify command, checking the worker's claim of completion.
    Verify,
}

impl PhaseRun {
    /// Starts the next iteration of `story`. `fresh`: the story was just dispatched and needs a
    /// daemon-wide slot (else it holds one). On failure to start, returns what the scheduler
    /// decides about that failed iteration.
    pub(super) fn start_iteration(&mut self, story: &str, fresh: bool) -> Option<Vec<Action>> {
        if self.pause_holds(story) {
            self.state.update(|s| s.sched.unstart(story));
            if !fresh {
                self.daemon.slots.release();
            }
            return None;
        }
        if fresh && !self.daemon.slots.try_take() {
            // Another run took the last slot first: wait for the next free one.
            self.state.update(|s| s.sched.unstart(story));
            return None;
        }
        if self.ready_in_background(story) {
            return None;
        }
        if let Err(why) = self.enter_workspace(story) {
            return Some(self.not_started(story, why, None));
        }
        let paths = self.work_paths(story)?;
        let iteration = crate::logs::logged_iterations(&self.logs_root, story).last().map_or(1, |n| n + 1);
        let token = format!("{}/{}/{}/", self.nonce, story, iteration);
        let mut spec = self.spawn_spec(story, &paths, iteration, token, &self.config.worker.command);
        let job = self.as_job(story, iteration, &mut spec);
        let before = crate::project::read_limited(&paths.status).unwrap_or_default();
        match worker::spawn(&self.daemon.spawner, &self.daemon.logs, &spec) {
            Ok((group, exit)) => {
                let pid = group.pid;
                let liveness = self.liveness(&spec.log, &paths.status);
                let stop = self.supervise(story, iteration, (group.clone(), exit), Some(liveness), job);
                self.running
                    .insert(story.to_string(), Running { iteration, group, before, process: Process::Worker, stop });
                let first_run = self.state.update(|s| {
                    s.sched.iteration_started(story);
                    s.current.insert(story.to_string(), Current { iteration, since: Instant::now() });
                    s.sched.runs(story) == 1
                });
                if first_run {
                    // Its dependents may be next: their log folders are made now, off the way
                    // from this story's end to their start.
                    let dependents = self.state.read().sched.dependents(story).to_vec();
                    self.daemon.logs.prepare_folders(dependents.iter().map(|d| self.logs_root.join(d)).collect());
                }
                self.record_story(story, Some((pid, &spec.log)), None);
                self.emit(EventKind::IterationStarted { story: story.to_string(), iteration, pid: pid as u32 });
                self.keep_for_adoption(story, iteration);
                None
            }
            Err(e) => {
                let why = format!("cannot start worker {:?}: {e}", spec.argv.first().map_or("", |s| s.as_str()));
                Some(self.not_started(story, why, Some((iteration, &spec.log))))
            }
        }
    }

    /// Off the dispatch path: the worker's record and its start event made durable (a daemon
    /// killed now still finds and adopts the worker, and announced it once), and status.json
    /// as the iteration found it kept, to judge the adopted worker's progress against.
    fn keep_for_adoption(&mut self, story: &str, iteration: u32) {
        let daemon = std::sync::Arc::clone(&self.daemon);
        let before = self.running.get(story).map(|run| run.before.clone()).unwrap_or_default();
        let path = crate::logs::start_status_path(&self.logs_root, story, iteration);
        self.later.push(Box::new(move || {
            if let Err(e) = daemon.bus.store().flush() {
                tracing::warn!("cannot flush the store: {e}");
            }
            if let Err(e) = crate::project::write_replacing(&path, &before) {
                tracing::debug!("cannot keep status.json of the iteration's start: {e}");
            }
        }));
    }

    /// Worktree mode: a story starting without a worktree has a slot readied for it on a thread
    /// of its own (a slot's move, or its first checkout, is git work on files), while the run
    /// goes on with other stories' ends and merges; its start goes on in `readied`. False when
    /// the story has its worktree already (or the run has none).
    fn ready_in_background(&mut self, story: &str) -> bool {
        let Some(workspaces) = self.workspaces.as_mut() else { return false };
        if workspaces.root(story).is_some() {
            return false;
        }
        let readying = workspaces.reserve(story);
        let (tx, story) = (self.tx.clone(), story.to_string());
        // Its logs carry the run's fields (project, phase), as the run's own do.
        let span = tracing::Span::current();
        self.background.push(tokio::task::spawn_blocking(move || {
            let outcome = span.in_scope(|| readying.run());
            let _ = tx.send(super::RunMsg::Readied { story, outcome });
        }));
        true
    }

    /// A story's worktree is ready (or could not be made): its iteration starts, unless the run
    /// was told to stop meanwhile.
    pub(super) fn readied(&mut self, story: &str, outcome: Result<bool, crate::git::GitError>) {
        let readied = match self.workspaces.as_mut() {
            Some(workspaces) => workspaces.readied(story, outcome),
            None => Ok(()),
        };
        if self.state.read().sched.is_stopping() {
            self.state.update(|s| s.sched.unstart(story));
            self.daemon.slots.release();
            self.schedule();
            return;
        }
        let actions = match readied {
            Ok(()) => self.start_iteration(story, false),
            Err(e) => Some(self.not_started(story, format!("cannot prepare the story's worktree: {e}"), None)),
        };
        if let Some(actions) = actions {
            self.apply(actions);
        }
        self.schedule();
    }

    /// With the Slurm runner, makes the iteration's spawn an `srun` of its job and returns the
    /// job's name; with the local runner, leaves it as it is.
    fn as_job(&self, story: &str, iteration: u32, spec: &mut worker::SpawnSpec) -> Option<String> {
        let RunnerConfig::Slurm(slurm) = &self.config.runner else { return None };
        let name = self.job_name(story, iteration)?;
        crate::slurm::wrap(slurm, spec, &name, self.config.worker.iteration_timeout_secs);
        Some(name)
    }

    /// The name of the iteration's Slurm job, with the Slurm runner.
    pub(super) fn job_name(&self, story: &str, iteration: u32) -> Option<String> {
        let RunnerConfig::Slurm(_) = &self.config.runner else { return None };
        Some(crate::slurm::job_name(&crate::logs::project_key(&self.project.root), story, iteration))
    }

    /// Gives the story its worktree (worktree mode), with its files copied in.
    fn enter_workspace(&mut self, story: &str) -> Result<(), String> {
        let Some(dir) = self.stories.get(story).map(|p| p.dir.clone()) else { return Ok(()) };
        let Some(workspaces) = self.workspaces.as_mut() else { return Ok(()) };
        // Without the project's git lock: a merge running meanwhile works in the integration
        // branch, the project folder and its own story's worktree; this touches a free slot's
        // worktree and creates the story's branch, each behind git's own lock files.
        let root = tokio::task::block_in_place(|| workspaces.enter(story, &dir))
            .map_err(|e| format!("cannot prepare the story's worktree: {e}"))?;
        let root = root.display().to_string();
        self.state.update(|s| s.worktrees.insert(story.to_string(), root));
        Ok(())
    }

    /// An iteration that could not start: an infrastructure failure, told like any end.
    fn not_started(&mut self, story: &str, why: String, logged: Option<(u32, &std::path::Path)>) -> Vec<Action> {
        let iteration = logged.map_or(0, |(n, _)| n);
        tracing::warn!(story_id = %story, iteration, "{why}");
        if let Some((_, log)) = logged {
            let _ = append_log(log, &format!("sticler: {why}\n"));
        }
        self.emit(EventKind::IterationEnded {
            story: story.to_string(),
            iteration,
            exit: ExitReason::Exited(127),
            verdict: Verdict::Infra(why.clone()).label(),
        });
        let free = self.daemon.slots.free();
        self.state.update(|s| {
            let mut actions = s.sched.iteration_ended(story, Verdict::Infra(why));
            actions.extend(s.sched.schedule(free));
            actions
        })
    }

    /// A process of `story` ended: judge it and apply what the scheduler decides.
    pub(super) fn iteration_exited(&mut self, story: String, iteration: u32, ended: Ended) {
        let Some(run) = self.running.remove(&story) else { return };
        if run.iteration != iteration {
            self.running.insert(story, run);
            return;
        }
        if self.state.read().jobs.contains_key(&story) {
            self.state.update(|s| s.jobs.remove(&story));
        }
        // Whatever the process left behind in its group dies with it; descendants that escaped
        // into their own session are found by their token once the next dispatch is done, and
        // ended (SIGTERM first). A story about to be merged has them ended by its merge first,
        // before its worktree is looked at: what they write as they end is the story's.
        run.group.kill_group();
        let group = run.group.clone();
        self.later.push(Box::new(move || group.end_strays()));
        let claim = match run.process {
            Process::Verify => self.verified(&story, &run, &ended),
            Process::Worker => {
                let judged = self.judge(&story, &run, &ended);
                match self.agent_verdict(&story, &run, judged) {
                    Verdict::Completed if self.config.verify.is_some() => match self.start_verify(&story, &run) {
                        Some(verdict) => verdict,
                        None => return,
                    },
                    verdict => verdict,
                }
            }
        };
        // An accepted claim: the story's commit (shared mode), or its merge (worktree mode, on a
        // blocking thread: the iteration's end then comes back as `RunMsg::Merged`).
        let verdict = match claim {
            Verdict::Completed if self.workspaces.is_some() => {
                match self.merge_in_background(&story, (iteration, run.group.clone()), ended.clone()) {
                    Some(verdict) => verdict,
                    None => return,
                }
            }
            Verdict::Completed => self.commit_step(&story),
            verdict => verdict,
        };
        self.finish_iteration(story, iteration, ended, verdict);
    }

    /// The end of an iteration, judged: status.json mirrored out of the worktree, the event,
    /// the scheduler's decision carried out. A story that goes on while its project folder
    /// cannot take its status.json (full, read-only) has an infrastructure failure, as its
    /// worker's own write would be in shared mode.
    pub(super) fn finish_iteration(&mut self, story: String, iteration: u32, ended: Ended, verdict: Verdict) {
        let verdict = match (self.mirror_status(&story), verdict) {
            (Err(why), Verdict::Progress | Verdict::NoChange) => Verdict::Infra(why),
            (_, verdict) => verdict,
        };
        self.emit(EventKind::IterationEnded {
            story: story.clone(),
            iteration,
            exit: ended.shown(),
            verdict: verdict.label(),
        });
        let actions = self.state.update(|s| {
            s.last_exit.insert(story.clone(), ended.shown());
            let actions = s.sched.iteration_ended(&story, verdict);
            if s.sched.state(&story) != Some(StoryState::Running) {
                s.current.remove(&story);
            }
            actions
        });
        self.record_story(&story, None, Some(ended.shown().to_string()));
        // The story's own actions first: a story that ends gives its slot back, and the next
        // story may need that very slot (with `--max-workers 1`, it always does).
        self.apply(actions);
        self.schedule();
    }

    /// What a worker's output shows while it runs, for its supervisor.
    pub(super) fn liveness(&self, log: &std::path::Path, status: &std::path::Path) -> Liveness {
        let worker = &self.config.worker;
        Liveness::new(
            log.to_path_buf(),
            status.to_path_buf(),
            worker.output,
            Duration::from_secs(worker.exit_grace_secs),
            worker.idle_timeout_secs.map(Duration::from_secs),
        )
    }

    /// What the worker's iteration meant, from how it ended and status.json. status.json is
    /// read after every end, also one sticler forced: a worker that finished its story and was
    /// then killed (it hung after its result, stalled, or timed out) is judged on its work.
    fn judge(&self, story: &str, run: &Running, ended: &Ended) -> Verdict {
        if ended.stopped() && ended.exit != ExitReason::Exited(0) {
            return Verdict::Stopped;
        }
        let Some(paths) = self.work_paths(story) else { return Verdict::Stopped };
        let after = match crate::project::read_limited(&paths.status) {
            Ok(bytes) => bytes,
            Err(e) => return Verdict::Infra(format!("cannot read {e}")),
        };
        let doc = match crate::project::parse_object(&paths.status, &after) {
            Ok(map) => JsonDoc::new(paths.status.clone(), after, map),
            Err(e) => return Verdict::Infra(format!("status.json left invalid: {e}")),
        };
        // A field of the wrong type (a `status` such as "complete") is as unusable as a syntax
        // error: an infrastructure failure naming it, never an iteration still in progress.
        if let Err(e) = doc.check_status_fields() {
            return Verdict::Infra(format!("status.json left invalid: {e}"));
        }
        let worker = &self.config.worker;
        // Slurm ended the job (cancelled from outside, node failure, out of memory): unless the
        // worker had finished its story, that end was not the worker's own.
        let finished = matches!(doc.disk_status(), DiskStatus::Completed | DiskStatus::Failed);
        if let Some(why) = ended.failed_by_runner.as_ref().filter(|_| !finished) {
            return Verdict::Infra(why.clone());
        }
        match (doc.disk_status(), ended.by) {
            (DiskStatus::Completed, _) => Verdict::Completed,
            (DiskStatus::Failed, _) => Verdict::SelfFailed,
            (_, Some(EndedBy::Stalled)) => {
                Verdict::Infra(format!("no output for {} s", worker.idle_timeout_secs.unwrap_or_default()))
            }
            (_, Some(EndedBy::TimedOut)) => {
                Verdict::Infra(format!("iteration timed out after {} s", worker.iteration_timeout_secs))
            }
            _ if doc.raw != run.before => Verdict::Progress,
            // The agent said it was done: its iteration ended as normally as an exit 0.
            (_, Some(EndedBy::ResultSeen)) => Verdict::NoChange,
            _ if ended.exit == ExitReason::Exited(0) => Verdict::NoChange,
            _ => Verdict::Infra(format!("{} without any change to status.json", ended.exit)),
        }
    }
}
