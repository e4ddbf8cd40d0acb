//! One active run of one phase: an actor task that receives what happened (a process ended, a
//! stop, a retry, a slot freed, a usage-limit wait changed), feeds it to the phase's scheduler
//! and carries out the actions it answers. The pieces live in submodules: `launch` (how a run
//! begins), `adopt` (a dead daemon's workers taken over), `iteration` (a process started,
//! supervised and judged), `gate` (verify and commit of a claim of completion), `agent` (usage
//! limits, cost), `close` (the run's end), `command` (a process's command line),
//! `status_edits` (sticler's writes to status.json), `state` (what status reads).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sticler_proto::{EventKind, StoryState};
use tokio::sync::{mpsc, oneshot, watch};

use crate::daemon::Daemon;
use crate::git;
use crate::project::{OrchestratorConfig, Project};
use crate::scheduler::Action;

mod adopt;
mod agent;
mod close;
mod command;
mod external;
mod gate;
mod iteration;
mod launch;
mod liveness;
mod merging;
mod state;
mod status_edits;
mod supervise;

pub use agent::{clock, now_unix};
use command::StoryPaths;
pub use external::waiting_text;
use iteration::Running;
pub use launch::RunStart;
pub use state::RunState;
use state::SharedState;
use supervise::Ended;

pub enum RunMsg {
    /// A process of the story ended (see `supervise`).
    Exited {
        story: String,
        iteration: u32,
        ended: Ended,
    },
    /// A story's merge, run in the background, is done (see `merging::merge_in_background`).
    Merged {
        story: String,
        iteration: u32,
        ended: Ended,
        outcome: merging::MergeOutcome,
    },
    /// A story's worktree was readied for its start (see `iteration::ready_in_background`):
    /// whether its branch was made just now, or why it could not be.
    Readied {
        story: String,
        outcome: Result<bool, crate::git::GitError>,
    },
    Stop {
        grace: Duration,
        kill: bool,
    },
    /// The daemon is shutting down: stop gracefully but stay resumable by the next daemon.
    Interrupt {
        grace: Duration,
    },
    /// The daemon is going away leaving the workers running (`shutdown --keep-workers`,
    /// `upgrade`): the run's task ends at once, its record kept for the next daemon to resume
    /// the run and adopt them.
    Detach,
    Retry {
        stories: Vec<String>,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// The Slurm job of a story's iteration, as the queue shows it now.
    Job {
        story: String,
        iteration: u32,
        job: sticler_proto::JobView,
    },
}

#[derive(Clone)]
pub struct RunHandle {
    pub tx: mpsc::UnboundedSender<RunMsg>,
    /// The run's state as its task last published it (also after the run ended).
    pub state: watch::Receiver<RunState>,
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
        self.state.borrow().sched.running()
    }
}

pub struct PhaseRun {
    daemon: Arc<Daemon>,
    /// This run's key in the store.
    run_key: String,
    project: Project,
    project_name: String,
    phase: u32,
    config: OrchestratorConfig,
    /// The scheduler and what status shows; this task is its only writer.
    state: SharedState,
    stories: BTreeMap<String, StoryPaths>,
    /// The process each running story has (worker or verify command).
    running: HashMap<String, Running>,
    tx: mpsc::UnboundedSender<RunMsg>,
    /// Turns true when the run is told to stop (see `RunHandle::stop`).
    stop_requested: watch::Receiver<bool>,
    /// Prefix of every worker token of this run.
    nonce: String,
    logs_root: PathBuf,
    /// When the run first started (unix ms; kept across restarts in its store record).
    started_ms: u64,
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
    /// The daemon was told this run ended.
    finished: bool,
    /// Usage-limit wait, budgets and the agents' own error signals.
    agent: agent::AgentWatch,
    /// The stories' worktrees (`"workspace": "worktree"`; `None` in shared mode).
    workspaces: Option<crate::workspace::Workspaces>,
    /// The files of each story whose last merge conflicted, until it lands.
    conflicts: HashMap<String, Vec<String>>,
    /// Some story may wait for, or be blocked by, an earlier phase's story: the run follows
    /// the other phases (see `external`).
    follows_others: bool,
    /// Stories of a resumed run that completed while no daemon ran, or whose commit this run's
    /// start made: announced once the run has started (see `missed`).
    completed_unseen: Vec<String>,
}

/// How often a merge that waits for the user is tried again.
const MERGE_RETRY: Duration = Duration::from_secs(1);

impl PhaseRun {
    fn emit(&self, kind: EventKind) {
        self.daemon.bus.emit(&self.project_name, self.phase, kind);
    }

    async fn drive(mut self, mut rx: mpsc::UnboundedReceiver<RunMsg>, adopt: Vec<crate::adopt::Adoptee>) {
        self.emit(EventKind::RunStarted { stories: self.stories.len() as u32 });
        for story in std::mem::take(&mut self.completed_unseen) {
            // Recorded completed too: a second restart does not announce it again.
            self.record_story(&story, None, None);
            self.emit(EventKind::StoryCompleted { story });
        }
        for adoptee in adopt {
            self.adopt(adoptee);
        }
        let mut slots = self.daemon.slots.subscribe();
        let mut pauses = self.daemon.pauses.subscribe();
        let mut events = self.daemon.bus.subscribe();
        let mut recheck = tokio::time::interval(external::RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.agent_start();
        self.schedule();
        self.start_later_work();
        while self.state.read().sched.ended().is_none() {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(RunMsg::Detach) => {
                        self.interrupted = true;
                        break;
                    }
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                changed = slots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.schedule();
                }
                Ok(()) = pauses.changed() => self.pause_changed(),
                () = tokio::time::sleep(MERGE_RETRY), if !self.state.read().sched.merging().is_empty() => {
                    self.retry_waiting_merges();
                }
                () = agent::sleep_until_unix(self.agent.paused_until) => self.pause_changed(),
                event = events.recv(), if self.follows_others => self.other_phase_event(event),
                _ = recheck.tick(), if self.follows_others => self.recheck_external(),
            }
            self.start_later_work();
        }
        // Slots still held when the task ends without the run's end (the daemon is going away).
        for _ in 0..self.state.read().sched.running() {
            self.daemon.slots.release();
        }
        if !self.finished {
            self.daemon.run_finished(&self.project.root, self.phase, self.interrupted);
        }
    }

    fn handle(&mut self, msg: RunMsg) {
        match msg {
            RunMsg::Exited { story, iteration, ended } => self.iteration_exited(story, iteration, ended),
            RunMsg::Merged { story, iteration, ended, outcome } => {
                let verdict = self.merged(&story, outcome);
                self.finish_iteration(story, iteration, ended, verdict);
            }
            RunMsg::Readied { story, outcome } => self.readied(&story, outcome),
            RunMsg::Stop { grace, kill } => self.stop(if kill { Duration::ZERO } else { grace }),
            RunMsg::Interrupt { grace } => {
                self.interrupted = true;
                self.stop(grace);
            }
            // Taken in `drive`, which ends the task.
            RunMsg::Detach => {}
            RunMsg::Retry { stories, reply } => {
                let retried: Vec<String> =
                    self.state.update(|s| stories.into_iter().filter(|story| s.sched.retry(story)).collect());
                let _ = reply.send(retried);
                self.schedule();
            }
            RunMsg::Job { story, iteration, job } => {
                // A sighting that comes after its iteration's end is no longer news.
                if self.running.get(&story).is_some_and(|r| r.iteration == iteration) {
                    self.state.update(|s| s.jobs.insert(story, job));
                }
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

    /// No new iterations; every running process is ended with `grace` (zero: a kill).
    fn stop(&mut self, grace: Duration) {
        let (first, actions) = self.state.update(|s| (!s.sched.is_stopping(), s.sched.stop()));
        let kill = grace.is_zero();
        if first || kill {
            self.emit(EventKind::RunStopping { kill });
        }
        for run in self.running.values() {
            run.stop.send_replace(Some(grace));
        }
        self.apply(actions);
    }

    /// Starts what the scheduler lets start now.
    fn schedule(&mut self) {
        let free = self.daemon.slots.free();
        let actions = self.state.update(|s| s.sched.schedule(free));
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Start(story) => queue.extend(self.start_iteration(&story, true).into_iter().flatten()),
                Action::Next(story) => queue.extend(self.start_iteration(&story, false).into_iter().flatten()),
                Action::Release(story) => {
                    self.state.update(|s| s.current.remove(&story));
                    self.daemon.slots.release();
                    // A failed story keeps its worktree for inspection; a merging one needs it.
                    let state = self.state.read().sched.state(&story);
                    match state {
                        Some(StoryState::Merging) => continue,
                        Some(StoryState::Failed) => self.leave_workspace(&story, true, false),
                        Some(StoryState::Completed) => self.leave_workspace(&story, false, true),
                        _ => self.leave_workspace(&story, false, false),
                    }
                }
                Action::Completed(story) => self.emit(EventKind::StoryCompleted { story }),
                Action::Failed { story, reason, record } => {
                    if record {
                        self.record_failure(&story, &reason);
                    }
                    self.emit(EventKind::StoryFailed { story, reason });
                }
                Action::Blocked { story, by } => self.emit(EventKind::StoryBlocked { story, by }),
                Action::Ended(outcome) => self.end(outcome),
            }
        }
    }

    /// Writes sticler's verdict into status.json: `failed` and the reason, other fields kept.
    fn record_failure(&mut self, story: &str, reason: &str) {
        let Some(paths) = self.stories.get(story) else { return };
        if let Err(e) = status_edits::mark_failed(&paths.status, reason) {
            tracing::warn!(story_id = %story, "cannot record the failure in status.json: {e}");
            // A malformed file is never replaced: the reason stays visible in status instead.
            let note = format!("{reason} (not written to status.json: {e})");
            self.state.update(|s| s.sched.set_note(story, note));
        }
    }

    /// Stores the story's state and counts, and its worker while one runs.
    pub(super) fn record_story(&self, story: &str, worker: Option<(i32, &std::path::Path)>, last_exit: Option<String>) {
        let (state, (iterations, infra_streak)) = {
            let state = self.state.read();
            (state.sched.state(story).unwrap_or(StoryState::Pending), state.sched.counts(story))
        };
        let record = crate::store::StoryRecord {
            state,
            iterations,
            infra_streak,
            pid: worker.map(|(pid, _)| pid),
            start_time: worker.and_then(|(pid, _)| crate::worker::start_time(pid)),
            last_exit,
            log: worker.map(|(_, log)| log.display().to_string()),
        };
        // A failure streak is flushed before the next iteration starts, so that a daemon that
        // keeps dying cannot reset it; progress is written lazily (see Store::put_story).
        // So is a claim under verification and its end (a daemon that dies meanwhile must
        // know the claim was not verified: `launch::settle_completed` turns it back).
        let verified = self.config.verify.is_some()
            && matches!(state, StoryState::Verifying | StoryState::Merging | StoryState::Completed);
        let flush = (worker.is_none() && infra_streak > 0) || verified;
        if let Err(e) = self.daemon.bus.store().put_story(&self.run_key, story, &record, flush) {
            tracing::warn!(story_id = %story, "cannot record the story in the store: {e}");
        }
    }
}
