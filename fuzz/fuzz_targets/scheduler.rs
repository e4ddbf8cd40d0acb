//! The dependency graph and the scheduler, fed random graphs and random event sequences.
//!
//! Graph: `find_cycle` reports a cycle exactly when one exists, and what it reports is one.
//! Scheduler (acyclic graphs, as validation guarantees): never more stories running than the
//! phase limit, never more new starts than the free daemon-wide slots, never a story started
//! before its dependencies completed, and the run always ends (when driven to completion)
//! with every story in exactly one final state.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sticler_proto::{RunOutcome, StoryState};
use sticlerd::phase::find_cycle;
use sticlerd::scheduler::{Action, Limits, Scheduler, StoryInit, Verdict};

fuzz_target!(|data: &[u8]| {
    let _ = check(&mut Unstructured::new(data));
});

fn check(u: &mut Unstructured) -> Result<()> {
    let n = u.int_in_range(1..=24usize)?;
    let names: Vec<String> = (0..n).map(|i| format!("US-P1-{:03}", i + 1)).collect();
    let mut deps: Vec<Vec<String>> = vec![Vec::new(); n];
    for list in deps.iter_mut() {
        for _ in 0..u.int_in_range(0..=3u8)? {
            let dep = names[u.choose_index(n)?].clone();
            if !list.contains(&dep) {
                list.push(dep);
            }
        }
    }
    let edges: BTreeMap<&str, Vec<String>> = names.iter().map(String::as_str).zip(deps.iter().cloned()).collect();
    let acyclic = topological_order(&edges).is_some();
    match find_cycle(&edges) {
        Some(cycle) => {
            assert!(!acyclic, "cycle {cycle:?} reported in an acyclic graph");
            assert!(cycle.len() >= 2 && cycle.first() == cycle.last(), "{cycle:?}");
            for pair in cycle.windows(2) {
                assert!(edges[pair[0].as_str()].contains(&pair[1]), "{} does not depend on {}", pair[0], pair[1]);
            }
        }
        None => assert!(acyclic, "a cycle was missed"),
    }
    if !acyclic {
        return Ok(());
    }
    let mut inits = Vec::with_capacity(n);
    for (id, deps) in names.iter().zip(&deps) {
        let disk = u.int_in_range(0..=9u8)?;
        let external = u.int_in_range(0..=11u8)?;
        let unmet_external = if external == 0 { vec!["US-P0-001".to_string()] } else { vec![] };
        let failed_external = if external == 1 { vec!["US-P0-002".to_string()] } else { vec![] };
        inits.push(StoryInit {
            id: id.clone(),
            deps: deps.clone(),
            unmet_external,
            failed_external,
            completed: disk == 0,
            failed: disk == 1,
        });
    }
    let limits = Limits {
        max_parallel: u.int_in_range(1..=4)?,
        max_iterations: u.int_in_range(1..=5)?,
        retry_limit: u.int_in_range(1..=4)?,
    };
    let mut model = Model::new(&inits, limits);
    let mut sched = Scheduler::new(inits, limits);
    let mut steps = 0;
    let mut settled = false;
    let mut retried = false;
    while !u.is_empty() && steps < 400 {
        steps += 1;
        match u.int_in_range(0..=9u8)? {
            8 if !settled => {
                // The earlier phase's story the waiting stories wait for completes or fails.
                settled = true;
                let completed = u.ratio(1, 2u8)?;
                sched.external_settled("US-P0-001", completed);
                model.external_settled("US-P0-001", completed);
            }
            9 if !retried => {
                // The failed earlier phase's story is retried: who it blocked waits again.
                retried = true;
                sched.external_retried("US-P0-002");
            }
            0..=3 if !model.running.is_empty() => {
                let running: Vec<String> = model.running.iter().cloned().collect();
                let story = running[u.choose_index(running.len())?].clone();
                let verdict = verdict(u)?;
                let actions = sched.iteration_ended(&story, verdict);
                model.ended_iteration(&story, &actions);
                let free = u.int_in_range(0..=6)?;
                let actions = sched.schedule(free);
                model.scheduled(&actions, free);
            }
            4 => {
                let actions = sched.stop();
                model.apply(&actions);
            }
            5 => {
                let story = names[u.choose_index(n)?].clone();
                let before = sched.state(&story);
                if sched.retry(&story) {
                    assert!(matches!(before, Some(StoryState::Failed | StoryState::Blocked)), "{story} was {before:?}");
                    model.failed.remove(&story);
                }
            }
            _ => {
                let free = u.int_in_range(0..=6)?;
                let actions = sched.schedule(free);
                let fresh = model.scheduled(&actions, free);
                // The daemon-wide slot can still be lost to another run: the start is taken back.
                if let Some(story) = fresh.first().filter(|_| u.ratio(1, 4u8).unwrap_or(false)) {
                    sched.unstart(story);
                    model.running.remove(story);
                    model.held -= 1;
                } else if let Some(story) = fresh.last() {
                    // A claim of completion whose verify command runs in the story's slot.
                    sched.verifying(story);
                }
            }
        }
        model.agrees_with(&sched, &names);
    }
    // Drive the run to its end: the earlier phase's story completes, every running iteration
    // completes, slots are plentiful.
    if !settled {
        sched.external_settled("US-P0-001", true);
        model.external_settled("US-P0-001", true);
    }
    if retried {
        sched.external_settled("US-P0-002", true);
        model.external_settled("US-P0-002", true);
    }
    for _ in 0..(4 * n + 8) {
        if model.ended.is_some() {
            break;
        }
        match model.running.iter().next().cloned() {
            Some(story) => {
                let actions = sched.iteration_ended(&story, Verdict::Completed);
                model.ended_iteration(&story, &actions);
            }
            None => {}
        }
        let actions = sched.schedule(8);
        model.scheduled(&actions, 8);
        model.agrees_with(&sched, &names);
    }
    let outcome = model.ended.expect("the run never ended");
    assert_eq!(sched.ended(), Some(outcome));
    for id in &names {
        let state = sched.state(id).expect("every story keeps a state");
        let finals: &[StoryState] = match outcome {
            RunOutcome::Completed => &[StoryState::Completed],
            RunOutcome::Failed => &[StoryState::Completed, StoryState::Failed, StoryState::Blocked],
            RunOutcome::Stopped => {
                &[StoryState::Completed, StoryState::Failed, StoryState::Blocked, StoryState::Pending]
            }
        };
        assert!(finals.contains(&state), "{id} ends {state:?} in a run that ended {outcome:?}");
    }
    Ok(())
}

fn verdict(u: &mut Unstructured) -> Result<Verdict> {
    Ok(match u.int_in_range(0..=6u8)? {
        0 => Verdict::Completed,
        1 => Verdict::SelfFailed,
        2 => Verdict::Progress,
        3 => Verdict::NoChange,
        4 => Verdict::Infra("exit code 1".into()),
        5 => Verdict::Stopped,
        _ => Verdict::Rejected("no commit".into()),
    })
}

/// Kahn's algorithm, independent of `find_cycle`: `None` when the graph has a cycle.
fn topological_order(edges: &BTreeMap<&str, Vec<String>>) -> Option<Vec<String>> {
    let mut left: BTreeMap<&str, usize> =
        edges.iter().map(|(k, d)| (*k, d.iter().filter(|d| edges.contains_key(d.as_str())).count())).collect();
    let mut order = Vec::new();
    while let Some(next) = left.iter().find(|(_, n)| **n == 0).map(|(k, _)| *k) {
        left.remove(next);
        order.push(next.to_string());
        for (story, deps) in edges {
            if deps.iter().any(|d| d == next) {
                if let Some(count) = left.get_mut(story) {
                    *count -= 1;
                }
            }
        }
    }
    left.is_empty().then_some(order)
}

/// What the actions said so far, checked against the rules at every step.
struct Model {
    limits: Limits,
    deps: BTreeMap<String, Vec<String>>,
    /// Stories whose dependency in another phase is not completed (waiting for it, or failed),
    /// with that dependency.
    external: BTreeMap<String, String>,
    completed: BTreeSet<String>,
    failed: BTreeSet<String>,
    running: BTreeSet<String>,
    /// Daemon-wide slots held: one per Start, given back by Release.
    held: usize,
    ended: Option<RunOutcome>,
}

impl Model {
    fn new(inits: &[StoryInit], limits: Limits) -> Model {
        Model {
            limits,
            deps: inits.iter().map(|s| (s.id.clone(), s.deps.clone())).collect(),
            external: inits
                .iter()
                .filter_map(|s| Some((s.id.clone(), s.unmet_external.first().or(s.failed_external.first())?.clone())))
                .collect(),
            completed: inits.iter().filter(|s| s.completed).map(|s| s.id.clone()).collect(),
            failed: inits.iter().filter(|s| s.failed && !s.completed).map(|s| s.id.clone()).collect(),
            running: BTreeSet::new(),
            held: 0,
            ended: None,
        }
    }

    /// Applies actions; returns the stories newly started.
    fn apply(&mut self, actions: &[Action]) -> Vec<String> {
        let mut fresh = Vec::new();
        for action in actions {
            assert!(self.ended.is_none(), "{action:?} after the run ended");
            match action {
                Action::Next(id) => assert!(self.running.contains(id), "{id} continued without running"),
                Action::Release(id) => {
                    assert!(self.held > 0, "{id} released a slot nobody held");
                    self.held -= 1;
                    self.running.remove(id);
                }
                Action::Start(id) => {
                    assert!(!self.running.contains(id), "{id} started twice");
                    self.held += 1;
                    {
                        for dep in &self.deps[id] {
                            assert!(self.completed.contains(dep), "{id} started before its dependency {dep} completed");
                        }
                        assert!(!self.external.contains_key(id), "{id} started with an unmet dependency in another phase");
                        assert!(
                            !self.completed.contains(id) && !self.failed.contains(id),
                            "{id} restarted after it ended"
                        );
                        self.running.insert(id.clone());
                        fresh.push(id.clone());
                    }
                }
                Action::Completed(id) => {
                    assert!(self.running.remove(id), "{id} completed without running");
                    assert!(self.completed.insert(id.clone()) && !self.failed.contains(id), "{id} ended twice");
                }
                Action::Failed { story, .. } => {
                    assert!(self.running.remove(story), "{story} failed without running");
                    assert!(
                        self.failed.insert(story.clone()) && !self.completed.contains(story),
                        "{story} ended twice"
                    );
                }
                Action::Blocked { story, .. } => {
                    assert!(
                        !self.running.contains(story) && !self.completed.contains(story),
                        "{story} cannot be blocked"
                    );
                }
                Action::Ended(outcome) => {
                    assert!(self.running.is_empty(), "run ended {outcome:?} with {:?} running", self.running);
                    if *outcome == RunOutcome::Completed {
                        assert_eq!(self.completed.len(), self.deps.len(), "run completed with stories not completed");
                    }
                    self.ended = Some(*outcome);
                }
            }
            assert!(self.running.len() <= self.limits.max_parallel, "{} running > limit", self.running.len());
        }
        fresh
    }

    /// The earlier phase's story `dep` completed (else it failed).
    fn external_settled(&mut self, dep: &str, completed: bool) {
        if completed {
            self.external.retain(|_, d| d != dep);
        }
    }

    fn ended_iteration(&mut self, story: &str, actions: &[Action]) {
        self.apply(actions);
        // An iteration that is not continued gives its slot back.
        let next = actions.iter().any(|a| matches!(a, Action::Next(id) if id == story));
        let released = actions.iter().any(|a| matches!(a, Action::Release(id) if id == story));
        assert!(next != released, "{story}: exactly one of Next and Release, got {actions:?}");
    }

    fn scheduled(&mut self, actions: &[Action], free: usize) -> Vec<String> {
        let fresh = self.apply(actions);
        assert!(fresh.len() <= free, "{} new starts with {free} free slots", fresh.len());
        fresh
    }

    fn agrees_with(&self, sched: &Scheduler, names: &[String]) {
        assert_eq!(sched.running(), self.held, "the scheduler's count and the slots held differ");
        assert_eq!(self.held, self.running.len(), "a slot per running story");
        for id in names {
            let state = sched.state(id);
            let running = matches!(state, Some(StoryState::Running | StoryState::Verifying));
            assert_eq!(running, self.running.contains(id), "{id}: {state:?}");
            assert_eq!(state == Some(StoryState::Completed), self.completed.contains(id), "{id}: {state:?}");
            assert_eq!(state == Some(StoryState::Failed), self.failed.contains(id), "{id}: {state:?}");
        }
    }
}
