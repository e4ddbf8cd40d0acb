//! One process's supervisor: it waits for the process to end and ends it itself when it must:
//! the agent printed its final result and did not exit (`exit_grace_secs`), the worker shows no
//! sign of life (`idle_timeout_secs`), the iteration timeout, or a stop. Every such end goes
//! through `worker::terminate` (SIGTERM, the grace, SIGKILL to the group and its strays), or
//! `slurm::terminate` for an iteration run as a Slurm job, and the supervisor says which one it
//! was, so that the iteration is judged fairly.

use std::sync::Arc;
use std::time::Duration;

use sticler_proto::ExitReason;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::command::append_log;
use super::liveness::{Liveness, Overdue, POLL};
use super::{PhaseRun, RunMsg};
use crate::daemon::{Daemon, DEFAULT_GRACE};
use crate::worker::{self, Group};

/// Why sticler ended a process that had not exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// The agent printed its final result event and did not exit within the exit grace.
    ResultSeen,
    /// No output and no change to status.json for the idle timeout.
    Stalled,
    /// The iteration timeout.
    TimedOut,
    /// stop, kill or the daemon's shutdown.
    Stopped,
}

/// How a process ended, as its supervisor saw it.
#[derive(Debug, Clone)]
pub struct Ended {
    /// How the process itself exited.
    pub exit: ExitReason,
    /// Why sticler ended it; `None` when it exited on its own.
    pub by: Option<EndedBy>,
    /// Why the cluster ended the iteration's job, when it did (Slurm's state and reason).
    pub failed_by_runner: Option<String>,
}

impl Ended {
    pub fn stopped(&self) -> bool {
        self.by == Some(EndedBy::Stopped)
    }

    /// What status and `watch` say ended the iteration: the exit, or the reason sticler ended
    /// it (a stop shows the exit, as it always did).
    pub fn shown(&self) -> ExitReason {
        match self.by {
            Some(EndedBy::ResultSeen) => ExitReason::AfterResult,
            Some(EndedBy::Stalled) => ExitReason::Stalled,
            Some(EndedBy::TimedOut) => ExitReason::TimedOut,
            Some(EndedBy::Stopped) | None => self.exit,
        }
    }
}

/// What the supervisor of one process watches besides its exit.
struct Watch {
    timeout: Duration,
    /// Only for a worker: the verify command prints no agent events.
    liveness: Option<Liveness>,
    log: std::path::PathBuf,
    /// The Slurm job the process (srun) runs, by name (`"runner": {"kind": "slurm"}`).
    job: Option<Job>,
}

/// An iteration's Slurm job and the daemon that runs its clients.
struct Job {
    name: String,
    daemon: Arc<Daemon>,
}

impl PhaseRun {
    /// Watches a process (worker or verify) of `story` to its end and reports it to the run.
    /// `liveness` (workers only) follows its output for the result event and stalls; `job` is
    /// the Slurm job it runs, followed in the queue for `status`. Stop requests come through
    /// the returned channel: the grace, zero for a kill.
    pub(super) fn supervise(
        &self,
        story: &str,
        iteration: u32,
        process: (Group, oneshot::Receiver<ExitReason>),
        liveness: Option<Liveness>,
        job: Option<String>,
    ) -> watch::Sender<Option<Duration>> {
        self.supervise_since(story, iteration, process, liveness, job, Duration::ZERO)
    }

    /// `supervise` for a process that has been running for `age` already (an adopted worker):
    /// the iteration timeout counts from its start.
    pub(super) fn supervise_since(
        &self,
        story: &str,
        iteration: u32,
        process: (Group, oneshot::Receiver<ExitReason>),
        liveness: Option<Liveness>,
        job: Option<String>,
        age: Duration,
    ) -> watch::Sender<Option<Duration>> {
        let (group, exit) = process;
        let timeout = Duration::from_secs(self.config.worker.iteration_timeout_secs.max(1)).saturating_sub(age);
        let log = crate::logs::log_path(&self.logs_root, story, iteration);
        let job = job.map(|name| Job { name, daemon: Arc::clone(&self.daemon) });
        let following = job.as_ref().map(|job| {
            let (tx, story) = (self.tx.clone(), story.to_string());
            let seen = move |job| {
                let _ = tx.send(RunMsg::Job { story: story.clone(), iteration, job });
            };
            crate::slurm_queue::QueueWatch::follow(&job.daemon, &job.name, seen)
        });
        let watch = Watch { timeout, liveness, log, job };
        let (stop, stop_asked) = watch::channel(None::<Duration>);
        let tx = self.tx.clone();
        let story = story.to_string();
        tokio::spawn(async move {
            let ended = supervise(&story, iteration, &group, exit, watch, stop_asked).await;
            drop(following);
            let _ = tx.send(RunMsg::Exited { story, iteration, ended });
        });
        stop
    }
}

async fn supervise(
    story: &str,
    iteration: u32,
    group: &Group,
    mut exit: oneshot::Receiver<ExitReason>,
    mut watch: Watch,
    mut stop_asked: watch::Receiver<Option<Duration>>,
) -> Ended {
    // A closed channel means the reaper is gone, which only happens at exit.
    let killed = ExitReason::Signalled(nix::sys::signal::Signal::SIGKILL as i32);
    let deadline = Instant::now() + watch.timeout;
    // The first look after one interval: most trivial workers are gone by then.
    let mut looks = tokio::time::interval_at(Instant::now() + POLL, POLL);
    looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let by = loop {
        tokio::select! {
            reason = &mut exit => {
                let exit = reason.unwrap_or(killed);
                let failed_by_runner = runner_failure(&watch, exit).await;
                return Ended { exit, by: None, failed_by_runner };
            }
            () = tokio::time::sleep_until(deadline) => break EndedBy::TimedOut,
            Ok(()) = stop_asked.changed() => {
                let grace = stop_asked.borrow_and_update().unwrap_or_default();
                let exit = terminate(&watch, group, grace, &mut exit, kill_asked(stop_asked)).await;
                return Ended { exit, by: Some(EndedBy::Stopped), failed_by_runner: None };
            }
            now = looks.tick(), if watch.liveness.is_some() => {
                match watch.liveness.as_mut().and_then(|l| l.look(now.into_std())) {
                    Some(Overdue::AfterResult) => break EndedBy::ResultSeen,
                    Some(Overdue::Stalled) => break EndedBy::Stalled,
                    None => {}
                }
            }
        }
    };
    let why = match by {
        EndedBy::ResultSeen => "the agent printed its final result and did not exit within worker.exit_grace_secs",
        EndedBy::Stalled => "no output and no change to status.json for worker.idle_timeout_secs",
        _ => "the iteration timed out (worker.iteration_timeout_secs)",
    };
    tracing::warn!(story_id = %story, iteration, "{why}: ending it");
    // The grace of a stop: an agent may still write what it was doing when SIGTERM came.
    let exit = terminate(&watch, group, DEFAULT_GRACE, &mut exit, kill_asked(stop_asked)).await;
    let grace = DEFAULT_GRACE.as_secs();
    let line = format!("\nsticler: {why}; ended it (SIGTERM, SIGKILL after {grace} s): {exit}\n");
    let _ = append_log(&watch.log, &line);
    Ended { exit, by: Some(by), failed_by_runner: None }
}

/// Ends the process: its Slurm job through Slurm, else the local process group.
async fn terminate(
    watch: &Watch,
    group: &Group,
    grace: Duration,
    exit: &mut oneshot::Receiver<ExitReason>,
    kill_now: impl std::future::Future<Output = ()>,
) -> ExitReason {
    match &watch.job {
        Some(job) => crate::slurm::terminate(&job.daemon, &job.name, group, grace, exit, kill_now).await,
        None => worker::terminate(group, grace, exit, kill_now).await,
    }
}

/// For a Slurm job that failed on its own: whether Slurm ended it (then said in the log too).
async fn runner_failure(watch: &Watch, exit: ExitReason) -> Option<String> {
    let job = watch.job.as_ref().filter(|_| exit != ExitReason::Exited(0))?;
    let why = crate::slurm::failure(&job.daemon, &job.name).await?;
    let _ = append_log(&watch.log, &format!("\nsticler: {why}\n"));
    Some(why)
}

/// Completes when a kill (a stop with no grace) is asked: it cuts a grace that is running short.
async fn kill_asked(mut stop_asked: watch::Receiver<Option<Duration>>) {
    if stop_asked.wait_for(|grace| grace.is_some_and(|g| g.is_zero())).await.is_err() {
        // Nobody can ask any more: the grace runs its course.
        std::future::pending::<()>().await;
    }
}
