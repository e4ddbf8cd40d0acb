//! The pure heart of a run: a state machine over the stories of one phase, and the one owner
//! of every daemon-side story state (pending, ready, running, verifying, completed, failed,
//! blocked), of the holds and of the retry rules. It is fed what happened (an iteration ended,
//! stop, retry) and answers what to do next. No I/O, no clocks, so the same code drives live
//! runs and can be tested exhaustively; status views read it through the run's snapshot.

use std::collections::BTreeMap;

use sticler_proto::{RunOutcome, StoryState};

mod blocks;
mod external;
pub mod rules;
mod verdict;

pub use rules::{NO_PROGRESS_LIMIT, SAME_ERROR_LIMIT};
pub use verdict::{Action, Hold, Limits, StoryInit, Verdict};

#[derive(Debug, Clone)]
struct Node {
    deps: Vec<String>,
    /// Earlier phases' stories it waits for (see `external`).
    unmet_external: Vec<String>,
    /// Other phases' stories that failed: they block it.
    failed_external: Vec<String>,
    state: StoryState,
    /// Iterations judged (continued from the last daemon after a crash).
    iterations: u32,
    /// Iterations started by this run, for status.
    runs: u32,
    infra_streak: u32,
    same_streak: u32,
    /// The agent's last error and how many iterations in a row ended with it.
    same_error: Option<(String, u32)>,
    blocked_by: Vec<String>,
    /// Why sticler failed the story, when status.json could not carry it.
    note: Option<String>,
    /// Merges in a row that conflicted.
    conflicts: u32,
    /// Why the story's merge waits.
    waiting: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    nodes: BTreeMap<String, Node>,
    /// The reverse edges: who depends on each story.
    dependents: BTreeMap<String, Vec<String>>,
    limits: Limits,
    /// Stories running or verifying: each holds one daemon-wide slot. The run's only count.
    running: usize,
    stopping: bool,
    ended: Option<RunOutcome>,
    hold: Option<Hold>,
}

/// Whether `retry` may take a story: failed on disk or in the run, or blocked, and no process of
/// it running (a running worker owns its status.json, even if it just wrote `failed`).
pub fn retryable(live: Option<StoryState>, disk_failed: bool) -> bool {
    let busy = matches!(live, Some(StoryState::Running | StoryState::Verifying));
    !busy && (disk_failed || matches!(live, Some(StoryState::Failed | StoryState::Blocked)))
}

fn holds_slot(state: StoryState) -> bool {
    matches!(state, StoryState::Running | StoryState::Verifying)
}

impl Scheduler {
    pub fn new(stories: Vec<StoryInit>, limits: Limits) -> Scheduler {
        let nodes: BTreeMap<String, Node> = stories
            .into_iter()
            .map(|s| {
                let state = if s.completed {
                    StoryState::Completed
                } else if s.failed {
                    StoryState::Failed
                } else {
                    StoryState::Pending
                };
                let node = Node {
                    deps: s.deps,
                    unmet_external: s.unmet_external,
                    failed_external: s.failed_external,
                    state,
                    iterations: 0,
                    runs: 0,
                    infra_streak: 0,
                    same_streak: 0,
                    same_error: None,
                    blocked_by: Vec::new(),
                    note: None,
                    conflicts: 0,
                    waiting: None,
                };
                (s.id, node)
            })
            .collect();
        let mut dependents: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, node) in &nodes {
            for dep in &node.deps {
                dependents.entry(dep.clone()).or_default().push(id.clone());
            }
        }
        Scheduler { nodes, dependents, limits, running: 0, stopping: false, ended: None, hold: None }
    }

    pub fn state(&self, story: &str) -> Option<StoryState> {
        self.nodes.get(story).map(|n| n.state)
    }

    /// The state status shows: a pending story whose dependencies are all completed is `ready`
    /// (it starts as soon as a slot frees) while the run goes on.
    pub fn shown_state(&self, story: &str) -> Option<StoryState> {
        let node = self.nodes.get(story)?;
        let ready = node.state == StoryState::Pending && self.ended.is_none() && self.deps_done(node);
        Some(if ready { StoryState::Ready } else { node.state })
    }

    pub fn stories(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Stories in `state`.
    pub fn count(&self, state: StoryState) -> usize {
        self.nodes.values().filter(|n| n.state == state).count()
    }

    /// Iterations judged and consecutive infrastructure failures of `story`.
    pub fn counts(&self, story: &str) -> (u32, u32) {
        self.nodes.get(story).map_or((0, 0), |n| (n.iterations, n.infra_streak))
    }

    /// Iterations of `story` started by this run.
    pub fn runs(&self, story: &str) -> u32 {
        self.nodes.get(story).map_or(0, |n| n.runs)
    }

    /// Continues the counts of a story from a run the daemon was running when it died.
    pub fn restore_counts(&mut self, story: &str, iterations: u32, infra_streak: u32) {
        if let Some(node) = self.nodes.get_mut(story) {
            node.iterations = iterations;
            node.infra_streak = infra_streak;
        }
    }

    #[cfg(test)]
    pub fn iterations(&self, story: &str) -> u32 {
        self.counts(story).0
    }

    /// The stories of this phase that depend on `story`.
    pub fn dependents(&self, story: &str) -> &[String] {
        self.dependents.get(story).map_or(&[], Vec::as_slice)
    }

    pub fn blocked_by(&self, story: &str) -> &[String] {
        self.nodes.get(story).map_or(&[], |n| &n.blocked_by)
    }

    /// Why sticler failed the story when status.json could not say it.
    pub fn note(&self, story: &str) -> Option<&str> {
        self.nodes.get(story).and_then(|n| n.note.as_deref())
    }

    /// Why the story's merge waits, while it does.
    pub fn waiting(&self, story: &str) -> Option<&str> {
        self.nodes.get(story).filter(|n| n.state == StoryState::Merging).and_then(|n| n.waiting.as_deref())
    }

    /// Stories whose merge waits.
    pub fn merging(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| n.state == StoryState::Merging).map(|(id, _)| id.clone()).collect()
    }

    /// The waiting merge of `story` landed: it is completed.
    pub fn merged(&mut self, story: &str) -> Vec<Action> {
        match self.nodes.get_mut(story) {
            Some(node) if node.state == StoryState::Merging => {
                node.state = StoryState::Completed;
                node.waiting = None;
                vec![Action::Completed(story.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// Why the story's waiting merge still waits.
    pub fn merge_waits(&mut self, story: &str, why: String) {
        if let Some(node) = self.nodes.get_mut(story).filter(|n| n.state == StoryState::Merging) {
            node.waiting = Some(why);
        }
    }

    /// A waiting merge that can no longer land as it is (it now conflicts): the story goes back
    /// to pending, its agent resolves it at its next dispatch.
    pub fn merge_back(&mut self, story: &str) -> Vec<Action> {
        if let Some(node) = self.nodes.get_mut(story).filter(|n| n.state == StoryState::Merging) {
            node.state = StoryState::Pending;
            node.waiting = None;
        }
        Vec::new()
    }

    /// Records why the story failed, for status, when status.json cannot carry it.
    pub fn set_note(&mut self, story: &str, note: String) {
        if let Some(node) = self.nodes.get_mut(story) {
            node.note = Some(note);
        }
    }

    /// Stories running or verifying, each holding a daemon-wide slot.
    pub fn running(&self) -> usize {
        self.running
    }

    pub fn total_iterations(&self) -> u32 {
        self.nodes.values().map(|n| n.iterations).sum()
    }

    pub fn ended(&self) -> Option<RunOutcome> {
        self.ended
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Holds back every new iteration (`None`: lets them go again; call `schedule` afterwards).
    /// A spent budget is final for the run: a pause neither replaces nor lifts it.
    pub fn hold(&mut self, hold: Option<Hold>) {
        if self.hold != Some(Hold::Spent) {
            self.hold = hold;
        }
    }

    pub fn held(&self) -> Option<Hold> {
        self.hold
    }

    /// Starts what can start, given `free_slots` daemon-wide slots, and ends the run when
    /// nothing can move any more.
    pub fn schedule(&mut self, free_slots: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.ended.is_some() {
            return actions;
        }
        if !self.stopping && self.hold.is_none() {
            self.propagate_blocks(&mut actions);
            let room = self.limits.max_parallel.saturating_sub(self.running).min(free_slots);
            let ready: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.state == StoryState::Pending && self.deps_done(n))
                .map(|(id, _)| id.clone())
                .take(room)
                .collect();
            for id in ready {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.state = StoryState::Running;
                }
                self.running += 1;
                actions.push(Action::Start(id));
            }
        }
        if self.running == 0 {
            let outcome = if self.stopping {
                RunOutcome::Stopped
            } else if self.nodes.values().all(|n| n.state == StoryState::Completed) {
                RunOutcome::Completed
            } else if self.hold == Some(Hold::Paused) {
                // Waiting for the usage limit to reset: the run goes on, idle.
                return actions;
            } else if self.nodes.values().any(|n| n.state == StoryState::Merging) {
                // A completed story's merge waits for the user: so does the run.
                return actions;
            } else if self.hold == Some(Hold::Spent) {
                RunOutcome::Failed
            } else if self.nodes.values().any(|n| n.state == StoryState::Pending && self.deps_done(n)) {
                // Ready work exists but no daemon-wide slot is free: wait for one.
                return actions;
            } else if self.waits_outside() {
                // A story waits for an earlier phase's story to complete (see `external`).
                return actions;
            } else {
                RunOutcome::Failed
            };
            self.ended = Some(outcome);
            actions.push(Action::Ended(outcome));
        }
        actions
    }

    fn deps_done(&self, node: &Node) -> bool {
        node.unmet_external.is_empty()
            && node.failed_external.is_empty()
            && node.deps.iter().all(|d| self.nodes.get(d).map(|n| n.state) == Some(StoryState::Completed))
    }

    /// A pending story whose iteration a daemon that ended left running is adopted: it runs,
    /// holding a slot, without a start of its own. False when the story cannot run.
    pub fn adopt(&mut self, story: &str) -> bool {
        let Some(node) = self.nodes.get_mut(story).filter(|n| n.state == StoryState::Pending) else { return false };
        node.state = StoryState::Running;
        node.runs += 1;
        self.running += 1;
        true
    }

    /// An iteration of `story` was spawned.
    pub fn iteration_started(&mut self, story: &str) {
        if let Some(node) = self.nodes.get_mut(story) {
            node.runs += 1;
        }
    }

    /// The story claimed completion and its verify command runs (in the slot it holds).
    pub fn verifying(&mut self, story: &str) {
        if let Some(node) = self.nodes.get_mut(story).filter(|n| n.state == StoryState::Running) {
            node.state = StoryState::Verifying;
        }
    }

    /// The agent's error result of the iteration that just ended (`None`: it ended without
    /// one). Returns why the story fails when the same error came `SAME_ERROR_LIMIT` times in a
    /// row: the agent is stuck (its own signal, next to the byte-identical status.json rule).
    pub fn agent_error(&mut self, story: &str, error: Option<&str>) -> Option<String> {
        let node = self.nodes.get_mut(story)?;
        let Some(error) = error else {
            node.same_error = None;
            return None;
        };
        let streak = match &mut node.same_error {
            Some((last, streak)) if last == error => {
                *streak += 1;
                *streak
            }
            other => {
                *other = Some((error.to_string(), 1));
                1
            }
        };
        rules::same_error(streak, error)
    }

    /// Records the end of one iteration (or verify command) of a running story and says what
    /// follows. A story that does not continue gives its slot back (`Release`); call
    /// `schedule` afterwards.
    pub fn iteration_ended(&mut self, story: &str, verdict: Verdict) -> Vec<Action> {
        let limits = self.limits;
        let stopping = self.stopping;
        let held = self.hold.is_some();
        let Some(node) = self.nodes.get_mut(story) else { return Vec::new() };
        if !holds_slot(node.state) {
            return Vec::new();
        }
        node.state = StoryState::Running;
        let mut actions = Vec::new();
        if !matches!(verdict, Verdict::Stopped | Verdict::Limited) {
            node.iterations += 1;
        }
        let failure = apply_verdict(node, story, &verdict, limits, &mut actions);
        let failure = failure.or_else(|| {
            (node.state == StoryState::Running)
                .then(|| rules::too_many_iterations(node.iterations, limits.max_iterations))
                .flatten()
        });
        if let Some(reason) = failure {
            node.state = StoryState::Failed;
            actions.push(Action::Failed { story: story.to_string(), reason, record: true });
        }
        if node.state == StoryState::Running {
            if stopping || held {
                node.state = StoryState::Pending;
            } else {
                // The story keeps its slot: the next fresh iteration starts at once.
                actions.push(Action::Next(story.to_string()));
                return actions;
            }
        }
        let failed = node.state == StoryState::Failed;
        self.running -= 1;
        actions.push(Action::Release(story.to_string()));
        // Its dependents are blocked in this same step, not at the next `schedule`: nobody
        // reading the state in between sees a failed story whose dependents look pending.
        if failed && !stopping && !held {
            self.propagate_blocks(&mut actions);
        }
        actions
    }

    /// Takes back a `Start` or `Next` that was not carried out (no daemon-wide slot after
    /// all, or a usage-limit wait began): the story is pending again. The caller gives back
    /// the slot of a `Next`.
    pub fn unstart(&mut self, story: &str) {
        if let Some(node) = self.nodes.get_mut(story).filter(|n| holds_slot(n.state)) {
            node.state = StoryState::Pending;
            self.running -= 1;
        }
    }

    /// No new iterations from now on; the run ends `stopped` once nothing runs.
    pub fn stop(&mut self) -> Vec<Action> {
        self.stopping = true;
        // A merge that waits resumes at the next start (its work is on its branch).
        for node in self.nodes.values_mut().filter(|n| n.state == StoryState::Merging) {
            node.state = StoryState::Pending;
            node.waiting = None;
        }
        self.schedule(0)
    }

    /// Puts a failed or blocked story back to pending, with fresh counts; the stories it
    /// blocked (and only those) no longer wait for it. A run that has ended keeps its final
    /// states: the story runs at the next start (found by fuzzing).
    pub fn retry(&mut self, story: &str) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let Some(node) = self.nodes.get_mut(story) else { return false };
        if !matches!(node.state, StoryState::Failed | StoryState::Blocked) {
            return false;
        }
        node.state = StoryState::Pending;
        node.iterations = 0;
        node.infra_streak = 0;
        node.same_streak = 0;
        node.same_error = None;
        node.blocked_by.clear();
        node.note = None;
        node.conflicts = 0;
        self.unblock(story);
        true
    }
}

/// What one iteration's verdict does to its story's node: the new state and streaks, the
/// actions to announce, and the reason the story fails, if a rule says it does.
fn apply_verdict(
    node: &mut Node,
    story: &str,
    verdict: &Verdict,
    limits: Limits,
    actions: &mut Vec<Action>,
) -> Option<String> {
    match verdict {
        Verdict::Completed => {
            node.state = StoryState::Completed;
            node.conflicts = 0;
            actions.push(Action::Completed(story.to_string()));
            None
        }
        Verdict::SelfFailed => {
            node.state = StoryState::Failed;
            actions.push(Action::Failed {
                story: story.to_string(),
                reason: "the worker marked the story failed".into(),
                record: false,
            });
            None
        }
        Verdict::Stopped | Verdict::Limited => {
            node.state = StoryState::Pending;
            None
        }
        Verdict::Rejected(why) | Verdict::Fail(why) => Some(why.clone()),
        Verdict::MergeWaits(why) => {
            node.state = StoryState::Merging;
            node.waiting = Some(why.clone());
            None
        }
        Verdict::Conflict(files) => {
            node.infra_streak = 0;
            node.same_streak = 0;
            node.conflicts += 1;
            rules::too_many_conflicts(node.conflicts, limits.retry_limit, files)
        }
        Verdict::Progress => {
            node.infra_streak = 0;
            node.same_streak = 0;
            None
        }
        Verdict::NoChange => {
            node.infra_streak = 0;
            node.same_streak += 1;
            rules::no_progress(node.same_streak)
        }
        Verdict::Infra(why) => {
            node.infra_streak += 1;
            rules::too_many_infra_failures(node.infra_streak, limits.retry_limit, why)
        }
    }
}

#[cfg(test)]
mod tests;
