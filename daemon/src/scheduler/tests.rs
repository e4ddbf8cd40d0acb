//! The scheduler's behaviour, one rule per test.

use super::*;

fn story(id: &str, deps: &[&str]) -> StoryInit {
    StoryInit {
        id: id.into(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        unmet_external: vec![],
        failed_external: vec![],
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
            Action::Start(id) | Action::Next(id) => Some(id.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn ready_stories_start_in_id_order_up_to_the_limit() {
    let mut s = Scheduler::new(vec![story("c", &[]), story("a", &[]), story("b", &[]), story("d", &["a"])], limits(2));
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
    assert_eq!(end(&mut s, "a", Verdict::Progress, 9), [Action::Next("a".into())]);
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
    let mut s = Scheduler::new(vec![story("a", &[])], Limits { max_parallel: 1, max_iterations: 50, retry_limit: 2 });
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
    assert_eq!(end(&mut s, "a", Verdict::Progress, 8), [Action::Release("a".into())]);
    assert_eq!(s.state("a"), Some(StoryState::Pending));
    let actions = end(&mut s, "b", Verdict::Stopped, 8);
    assert_eq!(actions, [Action::Release("b".into()), Action::Ended(RunOutcome::Stopped)]);
    assert_eq!(s.iterations("b"), 0, "a stopped iteration does not count");
}

#[test]
fn a_limited_iteration_does_not_count_and_a_pause_holds_every_start() {
    let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[]), story("c", &[])], limits(2));
    assert_eq!(starts(&s.schedule(10)), ["a", "b"]);
    s.hold(Some(Hold::Paused));
    assert_eq!(end(&mut s, "a", Verdict::Limited, 9), [Action::Release("a".into())], "nothing starts while paused");
    assert_eq!((s.iterations("a"), s.state("a")), (0, Some(StoryState::Pending)));
    assert_eq!(end(&mut s, "b", Verdict::Progress, 9), [Action::Release("b".into())], "a continuing story waits too");
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
    assert_eq!(actions, [Action::Release("b".into()), Action::Ended(RunOutcome::Failed)]);
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
fn a_failed_dependency_in_another_phase_blocks() {
    let mut ext = story("b", &[]);
    ext.failed_external = vec!["US-P1-001".into()];
    let mut s = Scheduler::new(vec![story("a", &[]), ext], limits(2));
    let actions = s.schedule(2);
    assert!(actions.contains(&Action::Blocked { story: "b".into(), by: "US-P1-001".into() }));
    assert_eq!(starts(&actions), ["a"]);
}

/// A story waiting for an earlier phase's story neither blocks nor ends the run: it starts
/// when that story completes; its in-phase dependents wait with it.
#[test]
fn a_story_waits_for_an_earlier_phase_and_starts_when_it_completes() {
    let mut ext = story("b", &[]);
    ext.unmet_external = vec!["US-P1-001".into()];
    let mut s = Scheduler::new(vec![story("a", &[]), ext, story("c", &["b"])], limits(2));
    assert_eq!(starts(&s.schedule(2)), ["a"]);
    let actions = end(&mut s, "a", Verdict::Completed, 2);
    assert!(!actions.iter().any(|a| matches!(a, Action::Ended(_) | Action::Blocked { .. })), "{actions:?}");
    assert_eq!((s.state("b"), s.waits_for("b")), (Some(StoryState::Pending), &["US-P1-001".to_string()][..]));
    assert_eq!(s.shown_state("b"), Some(StoryState::Pending), "not ready while it waits");
    assert_eq!(s.external_waits(), ["US-P1-001"]);
    assert!(!s.external_settled("US-P1-999", true), "nobody waits for that one");
    assert!(s.external_settled("US-P1-001", true));
    assert_eq!(starts(&s.schedule(2)), ["b"]);
    assert!(s.waits_for("b").is_empty() && s.external_waits().is_empty());
}

#[test]
fn a_story_waiting_for_an_earlier_phase_is_blocked_when_that_story_fails() {
    let mut ext = story("b", &[]);
    ext.unmet_external = vec!["US-P1-001".into()];
    let mut s = Scheduler::new(vec![ext, story("c", &["b"])], limits(2));
    assert!(s.schedule(2).is_empty(), "nothing to start, nothing ended: {:?}", s.ended());
    assert!(s.external_settled("US-P1-001", false));
    let actions = s.schedule(2);
    assert!(actions.contains(&Action::Blocked { story: "b".into(), by: "US-P1-001".into() }), "{actions:?}");
    assert!(actions.contains(&Action::Blocked { story: "c".into(), by: "US-P1-001".into() }), "{actions:?}");
    assert_eq!(actions.last(), Some(&Action::Ended(RunOutcome::Failed)));
}

/// A retry of the earlier phase's story that blocked it: the story and its dependents wait
/// for it again, and start once it completes.
#[test]
fn a_story_blocked_by_another_phase_waits_again_when_that_story_is_retried() {
    let mut ext = story("b", &[]);
    ext.unmet_external = vec!["US-P1-001".into()];
    let mut s = Scheduler::new(vec![story("a", &[]), ext, story("c", &["b"])], limits(1));
    assert_eq!(starts(&s.schedule(1)), ["a"]);
    s.external_settled("US-P1-001", false);
    s.schedule(0);
    assert_eq!((s.state("b"), s.state("c")), (Some(StoryState::Blocked), Some(StoryState::Blocked)));
    assert!(!s.external_retried("US-P1-999"));
    assert!(s.external_retried("US-P1-001"));
    assert_eq!((s.state("b"), s.state("c")), (Some(StoryState::Pending), Some(StoryState::Pending)));
    assert_eq!(s.waits_for("b"), ["US-P1-001"]);
    let actions = end(&mut s, "a", Verdict::Completed, 1);
    assert!(!actions.iter().any(|a| matches!(a, Action::Ended(_) | Action::Blocked { .. })), "{actions:?}");
    s.external_settled("US-P1-001", true);
    assert_eq!(starts(&s.schedule(1)), ["b"]);
}

#[test]
fn already_completed_stories_are_not_rerun() {
    let mut done = story("a", &[]);
    done.completed = true;
    let mut s = Scheduler::new(vec![done, story("b", &["a"])], limits(2));
    assert_eq!(starts(&s.schedule(2)), ["b"]);
}

#[test]
fn a_verifying_story_keeps_its_slot_and_goes_back_to_running_when_turned_back() {
    let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[])], limits(1));
    assert_eq!(starts(&s.schedule(1)), ["a"]);
    s.verifying("a");
    assert_eq!((s.state("a"), s.running()), (Some(StoryState::Verifying), 1));
    assert!(starts(&s.schedule(1)).is_empty(), "verifying holds the phase's only slot");
    assert_eq!(end(&mut s, "a", Verdict::Progress, 0), [Action::Next("a".into())]);
    assert_eq!(s.state("a"), Some(StoryState::Running));
    s.verifying("a");
    let actions = end(&mut s, "a", Verdict::Completed, 0);
    assert_eq!(actions[..2], [Action::Completed("a".into()), Action::Release("a".into())]);
}

#[test]
fn retry_unblocks_only_what_the_retried_story_blocked() {
    let stories = ["a", "b", "c", "d", "e", "x"].map(|id| match id {
        "c" => story(id, &["a"]),
        "d" => story(id, &["b"]),
        "e" => story(id, &["a", "b"]),
        _ => story(id, &[]),
    });
    let mut s = Scheduler::new(stories.to_vec(), limits(3));
    assert_eq!(starts(&s.schedule(3)), ["a", "b", "x"], "x keeps the run going");
    end(&mut s, "a", Verdict::SelfFailed, 0);
    end(&mut s, "b", Verdict::SelfFailed, 0);
    assert!(s.retry("a"));
    assert_eq!(s.state("c"), Some(StoryState::Pending), "blocked by a only: pending at once");
    assert_eq!(s.state("d"), Some(StoryState::Blocked), "blocked by b: untouched");
    // e was blocked by a first; the schedule after the retry finds b failed too.
    let actions = s.schedule(0);
    assert!(actions.contains(&Action::Blocked { story: "e".into(), by: "b".into() }), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Blocked { story, .. } if story == "d")), "d stays as it was");
    assert_eq!(s.state("c"), Some(StoryState::Pending));
}

#[test]
fn a_pending_story_whose_dependencies_are_done_shows_ready_while_the_run_goes_on() {
    let mut s = Scheduler::new(vec![story("a", &[]), story("b", &["a"]), story("c", &[])], limits(1));
    assert_eq!(s.shown_state("c"), Some(StoryState::Ready));
    assert_eq!(s.shown_state("b"), Some(StoryState::Pending));
    s.schedule(1);
    end(&mut s, "a", Verdict::Completed, 0);
    assert_eq!(s.shown_state("b"), Some(StoryState::Ready), "a done, no slot yet");
}

#[test]
fn the_same_agent_error_in_a_row_fails_the_story_and_another_error_resets_the_streak() {
    let mut s = Scheduler::new(vec![story("a", &[])], limits(1));
    assert_eq!(s.agent_error("a", Some("boom")), None);
    assert_eq!(s.agent_error("a", Some("boom")), None);
    assert_eq!(s.agent_error("a", Some("bang")), None, "another error starts over");
    assert_eq!(s.agent_error("a", None), None, "no error starts over");
    for _ in 1..SAME_ERROR_LIMIT {
        assert_eq!(s.agent_error("a", Some("boom")), None);
    }
    let why = s.agent_error("a", Some("boom")).expect("stuck");
    assert!(why.contains("same error: boom"), "{why}");
}

#[test]
fn retryable_means_failed_or_blocked_and_not_running() {
    assert!(retryable(Some(StoryState::Failed), false));
    assert!(retryable(Some(StoryState::Blocked), false));
    assert!(retryable(None, true));
    assert!(!retryable(Some(StoryState::Running), true), "a running worker owns its status.json");
    assert!(!retryable(Some(StoryState::Verifying), true));
    assert!(!retryable(Some(StoryState::Pending), false));
}

#[test]
fn a_waiting_merge_holds_no_slot_keeps_the_run_going_and_completes_when_it_lands() {
    let mut s = Scheduler::new(vec![story("a", &[]), story("b", &["a"]), story("c", &[])], limits(1));
    assert_eq!(starts(&s.schedule(1)), ["a"]);
    let actions = end(&mut s, "a", Verdict::MergeWaits("your edit of x".into()), 1);
    assert!(actions.contains(&Action::Release("a".into())), "{actions:?}");
    assert_eq!(starts(&actions), ["c"], "the slot serves another story meanwhile");
    assert_eq!((s.state("a"), s.waiting("a")), (Some(StoryState::Merging), Some("your edit of x")));
    assert_eq!(s.state("b"), Some(StoryState::Pending), "a dependent waits for the merge");
    end(&mut s, "c", Verdict::Completed, 1);
    assert_eq!(s.ended(), None, "the run waits for the merge");
    assert_eq!(s.merged("a"), [Action::Completed("a".into())]);
    assert_eq!(starts(&s.schedule(1)), ["b"]);
}

#[test]
fn conflicts_go_back_to_the_agent_and_fail_the_story_at_retry_limit() {
    let mut s = Scheduler::new(vec![story("a", &[])], limits(1));
    s.schedule(1);
    assert_eq!(end(&mut s, "a", Verdict::Conflict("x.rs".into()), 0), [Action::Next("a".into())]);
    assert_eq!(end(&mut s, "a", Verdict::Conflict("x.rs".into()), 0), [Action::Next("a".into())]);
    let actions = end(&mut s, "a", Verdict::Conflict("x.rs, y.rs".into()), 0);
    let failed = actions.iter().find_map(|a| match a {
        Action::Failed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = failed.expect("failed at retry_limit");
    assert!(reason.contains("3 merges in a row conflicted") && reason.contains("x.rs, y.rs"), "{reason}");
}

#[test]
fn a_failure_blocks_its_dependents_in_the_same_step() {
    let mut s = Scheduler::new(vec![story("a", &[]), story("b", &["a"]), story("c", &[])], limits(2));
    s.schedule(10);
    // No `schedule` in between: whoever reads the state now sees b blocked already.
    let actions = s.iteration_ended("a", Verdict::SelfFailed);
    assert!(actions.contains(&Action::Blocked { story: "b".into(), by: "a".into() }), "{actions:?}");
    assert_eq!(s.state("b"), Some(StoryState::Blocked));
    assert!(s.schedule(10).iter().all(|a| !matches!(a, Action::Blocked { .. })), "blocked once, not twice");
}

/// An adopted story runs without a `Start`, counts against the limit, and its end counts one
/// iteration like any other.
#[test]
fn an_adopted_story_runs_without_a_start_and_counts_once() {
    let mut s = Scheduler::new(vec![story("a", &[]), story("b", &[]), story("c", &["a"])], limits(1));
    assert!(s.adopt("b"));
    assert!(!s.adopt("b"), "a running story is not adopted twice");
    assert!(!s.adopt("x"), "no such story");
    assert_eq!(s.state("b"), Some(StoryState::Running));
    assert!(starts(&s.schedule(8)).is_empty(), "the adopted story holds the phase's only slot");
    let actions = end(&mut s, "b", Verdict::Completed, 8);
    assert_eq!(s.iterations("b"), 1);
    assert_eq!(starts(&actions), ["a"]);
}
