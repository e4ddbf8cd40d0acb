//! The pure heart of a run: a state machine over the stories of one phase. It is fed what
//! happened (an iteration ended, stop, retry) and answers what to do next. No I/O, no clocks,
//! so the same code drives live runs and can be tested exhaustively.

use std::collections::BTreeMap;

use sticler_proto::{RunOutcome, StoryState};

/// Stories that make no visible progress for this many iterations in a row fail.
pub const NO_PROGRESS_LIMIT: u32 = 3;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_parallel: usize,
    pub max_iterations: u32,
    pub retry_limit: u32,
}

/// What one iteration meant, judged by the run from the exit and status.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// status.json says completed.
    Completed,
    /// The worker marked the story failed itself.
    SelfFailed,
    /// status.json changed and the story is not finished.
    Progress,
    /// Exit 0 and status.json byte-identical.
    NoChange,
    /// Non-zero exit without a status.json change, a timeout, or status.json left invalid.
    Infra(String),
    /// Ended by stop/kill; does not count.
    Stopped,
    /// The claim of completion cannot be accepted (no commit, bogus commit_hash): the story fails.
    Rejected(String),
    /// The agent hit its usage or rate limit: the iteration does not count and the story waits.
    Limited,
    /// sticler fails the story for a reason of its own: its cost budget is spent, or the agent
    /// keeps ending with the same error.
    Fail(String),
}

impl Verdict {
    pub fn label(&self) -> String {
        match self {
            Verdict::Completed => "completed".into(),
            Verdict::SelfFailed => "failed by worker".into(),
            Verdict::Progress => "progress".into(),
            Verdict::NoChange => "no change".into(),
            Verdict::Infra(why) => format!("infrastructure failure: {why}"),
            Verdict::Stopped => "stopped".into(),
            Verdict::Rejected(why) => format!("rejected: {why}"),
            Verdict::Limited => "usage limit hit (not counted)".into(),
            Verdict::Fail(why) => format!("failed: {why}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the next iteration of this story.
    Start(String),
    Completed(String),
    /// `record`: sticler decided this, so the reason goes into status.json.
    Failed {
        story: String,
        reason: String,
        record: bool,
    },
    Blocked {
        story: String,
        by: String,
    },
    Ended(RunOutcome),
}

/// How a story enters a run.
#[derive(Debug, Clone)]
pub struct StoryInit {
    pub id: String,
    /// Dependencies inside this phase.
    pub deps: Vec<String>,
    /// Dependencies in other phases that are not completed on disk.
    pub unmet_external: Vec<String>,
    pub completed: bool,
    pub failed: bool,
}

#[derive(Debug, Clone)]
struct Node {
    deps: Vec<String>,
    unmet_external: Vec<String>,
    state: StoryState,
    iterations: u32,
    infra_streak: u32,
    same_streak: u32,
    blocked_by: Vec<String>,
}

/// Why no new iteration may start for now, although stories are ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The project waits for an agent's usage limit: the run waits too, however long.
    Paused,
    /// The phase's cost budget is spent: the run ends once its running iterations end.
    Spent,
}

#[derive(Debug)]
pub struct Scheduler {
    nodes: BTreeMap<String, Node>,
    /// The reverse edges: who depends on each story.
    dependents: BTreeMap<String, Vec<String>>,
    limits: Limits,
    running: usize,
    stopping: bool,
    ended: Option<RunOutcome>,
    hold: Option<Hold>,
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
                    state,
                    iterations: 0,
                    infra_streak: 0,
                    same_streak: 0,
                    blocked_by: Vec::new(),
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

    /// Iterations judged and consecutive infrastructure failures of `story`.
    pub fn counts(&self, story: &str) -> (u32, u32) {
        self.nodes.get(story).map_or((0, 0), |n| (n.iterations, n.infra_streak))
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

    #[cfg(test)]
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
            } else if self.hold == Some(Hold::Spent) {
                RunOutcome::Failed
            } else if self.nodes.values().any(|n| n.state == StoryState::Pending && self.deps_done(n)) {
                // Ready work exists but no daemon-wide slot is free: wait for one.
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
            && node.deps.iter().all(|d| self.nodes.get(d).map(|n| n.state) == Some(StoryState::Completed))
    }

    /// Marks pending stories whose dependencies failed (directly or through another blocked
    /// story), or whose dependencies in other phases are not completed, as blocked. Linear in
    /// the size of the graph: a failure at the head of a 10,000-long chain blocks it in one walk.
    fn propagate_blocks(&mut self, actions: &mut Vec<Action>) {
        let blocking = |n: &Node| matches!(n.state, StoryState::Failed | StoryState::Blocked);
        let pending_behind = |n: &Node| n.state == StoryState::Pending && !n.unmet_external.is_empty();
        // 1. The pending stories downstream of a failed or blocked one (or blocked themselves
        //    by another phase), found by walking the reverse edges once.
        let mut affected: BTreeMap<&str, usize> = BTreeMap::new();
        let mut stack: Vec<&str> =
            self.nodes.iter().filter(|(_, n)| blocking(n) || pending_behind(n)).map(|(id, _)| id.as_str()).collect();
        for (id, n) in &self.nodes {
            if pending_behind(n) {
                affected.insert(id, 0);
            }
        }
        while let Some(id) = stack.pop() {
            for dependent in self.dependents.get(id).into_iter().flatten() {
                let pending = self.nodes.get(dependent).is_some_and(|n| n.state == StoryState::Pending);
                if pending && !affected.contains_key(dependent.as_str()) {
                    affected.insert(dependent, 0);
                    stack.push(dependent);
                }
            }
        }
        if affected.is_empty() {
            return;
        }
        // 2. Who blocks each of them, dependencies first (the graph is acyclic once validated).
        let waits: Vec<(&str, usize)> = affected
            .keys()
            .map(|id| (*id, self.nodes[*id].deps.iter().filter(|d| affected.contains_key(d.as_str())).count()))
            .collect();
        affected.extend(waits);
        let mut ready: Vec<&str> = affected.iter().filter(|(_, w)| **w == 0).map(|(id, _)| *id).collect();
        let mut by_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut order = Vec::with_capacity(affected.len());
        while let Some(id) = ready.pop() {
            let node = &self.nodes[id];
            let mut by = node.unmet_external.clone();
            for dep in &node.deps {
                match (by_of.get(dep.as_str()), self.nodes.get(dep)) {
                    (Some(inherited), _) => by.extend(inherited.iter().cloned()),
                    (None, Some(d)) if d.state == StoryState::Failed => by.push(dep.clone()),
                    (None, Some(d)) if d.state == StoryState::Blocked => by.extend(d.blocked_by.iter().cloned()),
                    _ => {}
                }
            }
            by.sort();
            by.dedup();
            for dependent in self.dependents.get(id).into_iter().flatten() {
                if let Some(waiting) = affected.get_mut(dependent.as_str()) {
                    *waiting -= 1;
                    if *waiting == 0 {
                        ready.push(dependent);
                    }
                }
            }
            by_of.insert(id, by);
            order.push(id);
        }
        let blocked: Vec<(String, Vec<String>)> =
            order.into_iter().map(|id| (id.to_string(), by_of.remove(id).unwrap_or_default())).collect();
        for (id, by) in blocked {
            actions.push(Action::Blocked { story: id.clone(), by: by.join(", ") });
            if let Some(node) = self.nodes.get_mut(&id) {
                node.state = StoryState::Blocked;
                node.blocked_by = by;
            }
        }
    }

    /// Records the end of one iteration of a running story and says what follows.
    /// A story that does not continue gives its slot back; call `schedule` afterwards.
    pub fn iteration_ended(&mut self, story: &str, verdict: Verdict) -> Vec<Action> {
        let limits = self.limits;
        let stopping = self.stopping;
        let held = self.hold.is_some();
        let Some(node) = self.nodes.get_mut(story) else { return Vec::new() };
        if node.state != StoryState::Running {
            return Vec::new();
        }
        let mut actions = Vec::new();
        let finish = |node: &mut Node, state: StoryState| node.state = state;
        if !matches!(verdict, Verdict::Stopped | Verdict::Limited) {
            node.iterations += 1;
        }
        let failure = match &verdict {
            Verdict::Completed => {
                finish(node, StoryState::Completed);
                actions.push(Action::Completed(story.to_string()));
                None
            }
            Verdict::SelfFailed => {
                finish(node, StoryState::Failed);
                actions.push(Action::Failed {
                    story: story.to_string(),
                    reason: "the worker marked the story failed".into(),
                    record: false,
                });
                None
            }
            Verdict::Stopped | Verdict::Limited => {
                finish(node, StoryState::Pending);
                None
            }
            Verdict::Rejected(why) | Verdict::Fail(why) => Some(why.clone()),
            Verdict::Progress => {
                node.infra_streak = 0;
                node.same_streak = 0;
                None
            }
            Verdict::NoChange => {
                node.infra_streak = 0;
                node.same_streak += 1;
                (node.same_streak >= NO_PROGRESS_LIMIT).then(|| {
                    format!(
                        "no progress: status.json was left byte-identical by {NO_PROGRESS_LIMIT} consecutive iterations"
                    )
                })
            }
            Verdict::Infra(why) => {
                node.infra_streak += 1;
                (node.infra_streak >= limits.retry_limit).then(|| {
                    format!(
                        "{} consecutive infrastructure failures (retry_limit {}); last: {why}",
                        node.infra_streak, limits.retry_limit
                    )
                })
            }
        };
        let failure = failure.or_else(|| {
            (node.state == StoryState::Running && node.iterations >= limits.max_iterations)
                .then(|| format!("reached max_iterations_per_task ({}) without completing", limits.max_iterations))
        });
        if let Some(reason) = failure {
            finish(node, StoryState::Failed);
            actions.push(Action::Failed { story: story.to_string(), reason, record: true });
        }
        if node.state == StoryState::Running {
            if stopping || held {
                node.state = StoryState::Pending;
            } else {
                // The story keeps its slot: the next fresh iteration starts at once.
                actions.push(Action::Start(story.to_string()));
                return actions;
            }
        }
        self.running -= 1;
        actions
    }

    /// Takes back a `Start` that could not be carried out (no daemon-wide slot after all).
    pub fn unstart(&mut self, story: &str) {
        if let Some(node) = self.nodes.get_mut(story).filter(|n| n.state == StoryState::Running) {
            node.state = StoryState::Pending;
            self.running -= 1;
        }
    }

    /// No new iterations from now on; the run ends `stopped` once nothing runs.
    pub fn stop(&mut self) -> Vec<Action> {
        self.stopping = true;
        self.schedule(0)
    }

    /// Puts a failed or blocked story (and what it blocked) back to pending. A run that has
    /// ended keeps its final states: the story runs at the next start (found by fuzzing).
    pub fn retry(&mut self, story: &str) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let retried = match self.nodes.get_mut(story) {
            Some(node) if matches!(node.state, StoryState::Failed | StoryState::Blocked) => {
                node.state = StoryState::Pending;
                node.iterations = 0;
                node.infra_streak = 0;
                node.same_streak = 0;
                node.blocked_by.clear();
                true
            }
            _ => false,
        };
        if retried {
            // Stories blocked only because of this one get another look at the next schedule.
            for node in self.nodes.values_mut() {
                if node.state == StoryState::Blocked && node.unmet_external.is_empty() {
                    node.state = StoryState::Pending;
                    node.blocked_by.clear();
                }
            }
        }
        retried
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(id: &str, deps: &[&str]) -> StoryInit {
        StoryInit {
            id: id.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            unmet_external: vec![],
            completed: false,
            failed: false,
        }
    }

    fn limits(max_parallel: usize) -> Limits {
        Limits { max_parallel, max_iterations: 5, retry_limit: 3 }
    }

    /// An iteration ends and the run schedules again, as `run` does.
    fn end(s: &mut Scheduler, story: &str, verdict: Verdict, free: usize) -> Vec<Action> {
        let mut actions = s.iteration_ended(story, verdict);
        actions.extend(s.schedule(free));
        actions
    }

    fn starts(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ready_stories_start_in_id_order_up_to_the_limit() {
        let mut s =
            Scheduler::new(vec![story("c", &[]), story("a", &[]), story("b", &[]), story("d", &["a"])], limits(2));
        assert_eq!(starts(&s.schedule(10)), ["a", "b"]);
        let next = end(&mut s, "a", Verdict::Completed, 8);
        assert_eq!(starts(&next), ["c"]);
        let next = end(&mut s, "b", Verdict::Completed, 8);
        assert_eq!(starts(&next), ["d"]);
    }

    #[test]
    fn daemon_wide_slots_cap_the_phase_limit() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[])], limits(3));
        assert_eq!(starts(&s.schedule(1)), ["a"]);
        assert!(s.schedule(0).is_empty(), "no slot: wait, do not end the run");
        assert_eq!(s.ended(), None);
    }

    #[test]
    fn progress_keeps_the_slot_and_starts_the_next_iteration() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[])], limits(1));
        s.schedule(10);
        assert_eq!(end(&mut s, "a", Verdict::Progress, 9), [Action::Start("a".into())]);
        assert_eq!(s.running(), 1);
    }

    #[test]
    fn failure_blocks_dependents_transitively_and_ends_failed() {
        let mut s =
            Scheduler::new(vec![story("a", &[]), story("b", &["a"]), story("c", &["b"]), story("d", &[])], limits(2));
        s.schedule(10);
        let actions = end(&mut s, "a", Verdict::SelfFailed, 8);
        assert!(actions.contains(&Action::Blocked { story: "b".into(), by: "a".into() }));
        assert!(actions.contains(&Action::Blocked { story: "c".into(), by: "a".into() }));
        assert_eq!(s.blocked_by("c"), ["a"]);
        let actions = end(&mut s, "d", Verdict::Completed, 9);
        assert_eq!(actions.last(), Some(&Action::Ended(RunOutcome::Failed)));
    }

    #[test]
    fn all_completed_ends_completed() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &["a"])], limits(2));
        s.schedule(10);
        end(&mut s, "a", Verdict::Completed, 9);
        let actions = end(&mut s, "b", Verdict::Completed, 9);
        assert_eq!(actions.last(), Some(&Action::Ended(RunOutcome::Completed)));
        assert_eq!(s.total_iterations(), 2);
    }

    fn run_until_failed(verdict: Verdict) -> (u32, String) {
        let mut s = Scheduler::new(vec![story("a", &[])], limits(1));
        s.schedule(1);
        for _ in 0..100 {
            for action in end(&mut s, "a", verdict.clone(), 0) {
                if let Action::Failed { reason, record, .. } = action {
                    assert!(record);
                    return (s.iterations("a"), reason);
                }
            }
        }
        panic!("never failed");
    }

    #[test]
    fn each_failure_rule_fires_at_its_count() {
        let (n, why) = run_until_failed(Verdict::Progress);
        assert_eq!(n, 5);
        assert!(why.contains("max_iterations_per_task (5)"), "{why}");
        let (n, why) = run_until_failed(Verdict::Infra("exit code 1".into()));
        assert_eq!(n, 3);
        assert!(why.contains("3 consecutive infrastructure failures") && why.contains("exit code 1"), "{why}");
        let (n, why) = run_until_failed(Verdict::NoChange);
        assert_eq!(n, 3);
        assert!(why.contains("no progress"), "{why}");
    }

    #[test]
    fn progress_resets_the_streaks() {
        let mut s =
            Scheduler::new(vec![story("a", &[])], Limits { max_parallel: 1, max_iterations: 50, retry_limit: 2 });
        s.schedule(1);
        for _ in 0..10 {
            assert_eq!(starts(&end(&mut s, "a", Verdict::Infra("x".into()), 0)), ["a"]);
            assert_eq!(starts(&end(&mut s, "a", Verdict::NoChange, 0)), ["a"]);
            assert_eq!(starts(&end(&mut s, "a", Verdict::NoChange, 0)), ["a"]);
            assert_eq!(starts(&end(&mut s, "a", Verdict::Progress, 0)), ["a"]);
        }
    }

    #[test]
    fn stop_waits_for_running_then_ends_stopped_and_keeps_stories_resumable() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[]), story("c", &[])], limits(2));
        s.schedule(10);
        assert!(s.stop().is_empty());
        assert!(end(&mut s, "a", Verdict::Progress, 8).is_empty());
        assert_eq!(s.state("a"), Some(StoryState::Pending));
        let actions = end(&mut s, "b", Verdict::Stopped, 8);
        assert_eq!(actions, [Action::Ended(RunOutcome::Stopped)]);
        assert_eq!(s.iterations("b"), 0, "a stopped iteration does not count");
    }

    #[test]
    fn a_limited_iteration_does_not_count_and_a_pause_holds_every_start() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[]), story("c", &[])], limits(2));
        assert_eq!(starts(&s.schedule(10)), ["a", "b"]);
        s.hold(Some(Hold::Paused));
        assert!(end(&mut s, "a", Verdict::Limited, 9).is_empty(), "nothing starts while paused");
        assert_eq!((s.iterations("a"), s.state("a")), (0, Some(StoryState::Pending)));
        assert!(end(&mut s, "b", Verdict::Progress, 9).is_empty(), "a continuing story waits too");
        assert_eq!((s.iterations("b"), s.state("b"), s.running()), (1, Some(StoryState::Pending), 0));
        assert_eq!(s.ended(), None, "a paused run waits, idle");
        s.hold(None);
        assert_eq!(starts(&s.schedule(10)), ["a", "b"]);
        for _ in 0..20 {
            s.hold(Some(Hold::Paused));
            end(&mut s, "a", Verdict::Limited, 9);
            s.hold(None);
            s.schedule(10);
        }
        assert_eq!(s.iterations("a"), 0, "limits never reach max_iterations");
    }

    #[test]
    fn a_spent_budget_lets_running_iterations_end_then_fails_the_run() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[]), story("c", &[])], limits(2));
        s.schedule(10);
        s.hold(Some(Hold::Spent));
        s.hold(None);
        assert_eq!(s.held(), Some(Hold::Spent), "a spent budget is final");
        assert!(end(&mut s, "a", Verdict::Completed, 9).iter().all(|a| !matches!(a, Action::Start(_))));
        let actions = end(&mut s, "b", Verdict::Progress, 9);
        assert_eq!(actions, [Action::Ended(RunOutcome::Failed)]);
        assert_eq!(s.state("c"), Some(StoryState::Pending));
    }

    #[test]
    fn sticler_fails_a_story_with_its_reason() {
        let mut s = Scheduler::new(vec![story("a", &[])], limits(1));
        s.schedule(1);
        let actions = end(&mut s, "a", Verdict::Fail("budget".into()), 0);
        assert!(actions.contains(&Action::Failed { story: "a".into(), reason: "budget".into(), record: true }));
    }

    #[test]
    fn retry_unblocks_dependents() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &["a"]), story("x", &[])], limits(1));
        assert_eq!(starts(&s.schedule(1)), ["a"]);
        end(&mut s, "a", Verdict::SelfFailed, 0);
        assert_eq!(s.state("b"), Some(StoryState::Blocked));
        assert!(s.retry("a"));
        assert!(!s.retry("x"), "only failed or blocked stories are retried");
        assert_eq!(s.state("b"), Some(StoryState::Pending));
    }

    #[test]
    fn retry_after_the_run_ended_changes_nothing() {
        let mut s = Scheduler::new(vec![story("a", &[]), story("b", &["a"])], limits(1));
        s.schedule(1);
        let actions = end(&mut s, "a", Verdict::SelfFailed, 1);
        assert_eq!(actions.last(), Some(&Action::Ended(RunOutcome::Failed)));
        assert!(!s.retry("a") && !s.retry("b"));
        assert_eq!((s.state("a"), s.state("b")), (Some(StoryState::Failed), Some(StoryState::Blocked)));
    }

    #[test]
    fn a_failure_at_the_head_of_a_10000_long_chain_blocks_all_of_it() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("US-P1-{i:05}")).collect();
        // Reverse id order is the worst case for a pass-by-pass propagation.
        let chain = ids.iter().enumerate().map(|(i, id)| {
            let deps: Vec<&str> = if i + 1 < ids.len() { vec![ids[i + 1].as_str()] } else { vec![] };
            story(id, &deps)
        });
        let mut s = Scheduler::new(chain.collect(), limits(4));
        let t = std::time::Instant::now();
        assert_eq!(starts(&s.schedule(4)), [ids[9_999].as_str()]);
        let actions = end(&mut s, &ids[9_999], Verdict::SelfFailed, 4);
        assert_eq!(actions.last(), Some(&Action::Ended(RunOutcome::Failed)));
        assert_eq!(s.blocked_by(&ids[0]), [ids[9_999].as_str()]);
        eprintln!("10,000-long chain blocked in {:?}", t.elapsed());
    }

    #[test]
    fn unmet_external_dependency_blocks() {
        let mut ext = story("b", &[]);
        ext.unmet_external = vec!["US-P1-001".into()];
        let mut s = Scheduler::new(vec![story("a", &[]), ext], limits(2));
        let actions = s.schedule(2);
        assert!(actions.contains(&Action::Blocked { story: "b".into(), by: "US-P1-001".into() }));
        assert_eq!(starts(&actions), ["a"]);
    }

    #[test]
    fn already_completed_stories_are_not_rerun() {
        let mut done = story("a", &[]);
        done.completed = true;
        let mut s = Scheduler::new(vec![done, story("b", &["a"])], limits(2));
        assert_eq!(starts(&s.schedule(2)), ["b"]);
    }
}
