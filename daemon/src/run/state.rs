//! What a run shows while it is active and after it ended: its scheduler (the one owner of the
//! stories' daemon-side states) with the little the run adds around it. The run's task is the
//! only writer; status views, `wait` and the systemd status line read it through a
//! `tokio::sync::watch` channel, which keeps the last value after the run is gone.

use std::collections::HashMap;
use std::time::Instant;

use sticler_proto::{ExitReason, RunOutcome};
use tokio::sync::watch;

use crate::scheduler::Scheduler;

#[derive(Debug, Clone)]
pub struct RunState {
    pub sched: Scheduler,
    /// The iteration each running story runs now.
    pub current: HashMap<String, Current>,
    /// How each story's last iteration ended.
    pub last_exit: HashMap<String, ExitReason>,
    /// Set once the run's end is done (phase commit and push included), just before the
    /// `run_ended` event: a `wait` that sees it may act at once.
    pub outcome: Option<RunOutcome>,
    pub summary: Option<String>,
    /// Why no new iteration starts although stories are ready (the phase budget is spent).
    pub waiting: Option<String>,
    /// `max_cost_usd_per_phase` of the run's config.
    pub budget_usd: Option<f64>,
    /// The worktree of each story that has one.
    pub worktrees: HashMap<String, String>,
    /// The Slurm job of each story's running iteration, as last seen in the queue.
    pub jobs: HashMap<String, sticler_proto::JobView>,
}

impl RunState {
    pub fn new(sched: Scheduler, budget_usd: Option<f64>) -> RunState {
        RunState {
            sched,
            current: HashMap::new(),
            last_exit: HashMap::new(),
            outcome: None,
            summary: None,
            waiting: None,
            budget_usd,
            worktrees: HashMap::new(),
            jobs: HashMap::new(),
        }
    }
}

/// The iteration a story runs now (its worker, or the verify command of its claim).
#[derive(Debug, Clone, Copy)]
pub struct Current {
    /// Its number, as in the log's name and `STICLER_ITERATION`.
    pub iteration: u32,
    pub since: Instant,
}

/// The run's side of the channel: reads borrow the state for one expression (never hold a
/// borrow across `update`: the channel's lock is not reentrant).
pub struct SharedState(watch::Sender<RunState>);

impl SharedState {
    pub fn new(state: RunState) -> (SharedState, watch::Receiver<RunState>) {
        let (tx, rx) = watch::channel(state);
        (SharedState(tx), rx)
    }

    pub fn read(&self) -> watch::Ref<'_, RunState> {
        self.0.borrow()
    }

    /// Changes the state and tells the readers.
    pub fn update<R>(&self, change: impl FnOnce(&mut RunState) -> R) -> R {
        let mut change = Some(change);
        let mut result = None;
        self.0.send_modify(|state| result = change.take().map(|change| change(state)));
        result.expect("send_modify calls its closure exactly once")
    }
}
