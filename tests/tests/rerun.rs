//! Repeated and forced runs: `start --force` on a completed phase runs only what is not
//! completed and never makes a second `[Phase N]` commit for nothing; `retry --completed` puts
//! a completed story back to pending so that it runs again and gets a new commit, while its
//! completed dependents stay completed.

use std::process::Command;

use serde_json::{json, Value};
use sticler_tests::{describe, story, story_of, Daemon, ProjectBuilder};

/// Subjects of the project's history, newest first.
fn subjects(p: &ProjectBuilder) -> Vec<String> {
    let out = Command::new("git").arg("-C").arg(p.path()).args(["log", "--format=%s"]).output().expect("git log");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn count(subjects: &[String], prefix: &str) -> usize {
    subjects.iter().filter(|s| s.starts_with(prefix)).count()
}

fn start_wait(daemon: &Daemon, p: &ProjectBuilder, args: &[&str]) {
    let dir = p.path_str();
    let mut all = vec!["-C", &dir, "start", "1", "--wait"];
    all.extend_from_slice(args);
    let out = daemon.ctl(&all);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
}

/// Two stories, the second depending on the first, both changing a file of their own.
fn two_stories(p: &ProjectBuilder) {
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).script(json!({"files": ["src/one.txt"]})),
            story("US-P1-002", &["US-P1-001"]).script(json!({"files": ["src/two.txt"]})),
        ],
    );
}

#[test]
fn start_force_on_a_completed_phase_runs_nothing_and_makes_no_second_phase_commit() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    two_stories(&p);
    start_wait(&daemon, &p, &[]);
    let before = subjects(&p);
    assert_eq!(count(&before, "[Phase 1]"), 1, "{before:#?}");

    start_wait(&daemon, &p, &["--force"]);
    let after = subjects(&p);
    assert_eq!(after, before, "a forced run of a completed phase commits nothing");
    let phase = daemon.phase_status(p.path(), 1);
    assert!(phase.stories.iter().all(|s| s.runs == 0), "no story runs again: {phase:?}");
    assert_eq!(phase.status, "completed");
}

fn retry_completed_runs_the_story_again(p: ProjectBuilder) {
    let daemon = Daemon::start();
    two_stories(&p);
    let dir = p.path_str();
    let out = daemon.ctl(&["-C", &dir, "retry", "--completed", "US-P1-001"]);
    assert_eq!(out.status.code(), Some(1), "a pending story is refused: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("US-P1-001 is not completed"), "{}", describe(&out));
    start_wait(&daemon, &p, &[]);
    let old_hash = p.status_json("US-P1-001")["commit_hash"].as_str().unwrap_or_default().to_string();
    assert!(!old_hash.is_empty());

    let out = daemon.ctl(&["-C", &dir, "retry", "--completed", "US-P1-001"]);
    assert!(out.status.success(), "{}", describe(&out));
    let message = String::from_utf8_lossy(&out.stdout);
    assert!(
        message.contains("US-P1-001 is pending again; it runs at the next `sticlerctl start 1 --force`")
            && message.contains("US-P1-002, which depends on it, stays completed"),
        "{message}"
    );
    let status: Value = p.status_json("US-P1-001");
    assert_eq!((status["status"].as_str(), status["commit_hash"].as_str()), (Some("pending"), Some("")));
    assert_eq!(status["script"], json!({"files": ["src/one.txt"]}), "other fields are kept");
    assert_eq!(daemon.phase_status(p.path(), 1).stories[0].state.as_str(), "pending");

    start_wait(&daemon, &p, &["--force"]);
    let all = subjects(&p);
    assert_eq!(count(&all, "[US-P1-001]"), 2, "{all:#?}");
    assert_eq!(count(&all, "[US-P1-002]"), 1, "its completed dependent does not run again: {all:#?}");
    assert_eq!(count(&all, "[Phase 1]"), 2, "{all:#?}");
    assert!(all[0].starts_with("[Phase 1]") && all[1].starts_with("[US-P1-001]"), "{all:#?}");
    let new_hash = p.status_json("US-P1-001")["commit_hash"].as_str().unwrap_or_default().to_string();
    assert!(!new_hash.is_empty() && new_hash != old_hash, "a new commit is recorded: {new_hash} vs {old_hash}");
    let phase = daemon.phase_status(p.path(), 1);
    assert!(story_of(&phase, "US-P1-001").runs >= 1 && story_of(&phase, "US-P1-002").runs == 0, "{phase:?}");
}

#[test]
fn retry_completed_runs_the_story_again_and_it_gets_a_new_commit_in_worktree_mode() {
    retry_completed_runs_the_story_again(ProjectBuilder::new());
}

#[test]
fn retry_completed_runs_the_story_again_and_it_gets_a_new_commit_in_shared_mode() {
    retry_completed_runs_the_story_again(ProjectBuilder::shared());
}

#[test]
fn retry_completed_is_refused_while_the_phase_runs() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &[]).status("completed"), story("US-P1-002", &[]).script(json!({"mode": "hang"}))],
    );
    let dir = p.path_str();
    assert!(daemon.ctl(&["-C", &dir, "start", "1"]).status.success());
    let out = daemon.ctl(&["-C", &dir, "retry", "--completed", "US-P1-001"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("phase 1 is running"), "{}", describe(&out));
    assert_eq!(p.status_json("US-P1-001")["status"], "completed", "nothing changed");
    assert!(daemon.ctl(&["-C", &dir, "kill", "1"]).status.success());
}
