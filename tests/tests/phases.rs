//! Dependencies across phases: a story whose dependency in an earlier phase is not completed
//! yet waits for it (it is not blocked), starts once it completes (also when that phase runs at
//! the same time in the same daemon), and is blocked only when it fails.

use std::fs;
use std::time::Duration;

use serde_json::json;
use sticler_proto::StoryState;
use sticler_tests::{describe, poll, states, story, story_of, Daemon, ProjectBuilder};

/// When the scripted worker's `events.log` says `kind` (`start` or `end`) of `story` happened.
fn recorded(dir: &std::path::Path, kind: &str, story: &str) -> u128 {
    let log = fs::read_to_string(dir.join("events.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.first() == Some(&kind) && parts.get(1) == Some(&story)).then(|| parts[2].parse().ok())?
        })
        .next()
        .unwrap_or_else(|| panic!("no {kind} of {story} in events.log:\n{log}"))
}

/// The waiting reason of `story` in phase 2 once it contains `what` (polled).
fn wait_reason(daemon: &Daemon, p: &ProjectBuilder, story: &str, what: &str) -> String {
    poll(Duration::from_secs(20), &format!("{story} waiting with {what:?}"), || {
        let phase = daemon.phase_status(p.path(), 2);
        let s = story_of(&phase, story);
        assert!(phase.running, "phase 2 must keep running while {story} waits:\n{}", daemon.dump(p.path()));
        assert_eq!(s.state, StoryState::Pending, "{story} waits, it is not blocked:\n{}", daemon.dump(p.path()));
        s.waiting.clone().filter(|w| w.contains(what))
    })
}

#[test]
fn a_story_waits_for_an_earlier_phase_and_starts_once_that_story_completes() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let record = json!({"record_dir": "record"});
    let slow = json!({"record_dir": "record", "sleep_ms": 1500});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).status("completed"), story("US-P1-002", &[]).script(slow)]);
    p.phase(
        2,
        "decomposed",
        &[story("US-P2-001", &["US-P1-001"]).script(record.clone()), story("US-P2-002", &["US-P1-002"]).script(record)],
    );
    let dir = p.path_str();
    let out = daemon.ctl(&["-C", &dir, "start", "2"]);
    assert!(out.status.success(), "{}", describe(&out));
    // A story completed on disk counts; one pending in a phase that does not run is waited for.
    let reason = wait_reason(&daemon, &p, "US-P2-002", "not running");
    assert_eq!(reason, "waiting for US-P1-002 (phase 1, pending; phase 1 is not running)");
    poll(Duration::from_secs(20), "US-P2-001 completed", || {
        (story_of(&daemon.phase_status(p.path(), 2), "US-P2-001").state == StoryState::Completed).then_some(())
    });
    let phase = daemon.phase_status(p.path(), 2);
    assert_eq!(phase.waiting.as_deref(), Some(format!("US-P2-002 is {reason}").as_str()), "{phase:?}");
    let human = daemon.ctl(&["-C", &dir, "status", "2"]);
    let text = String::from_utf8_lossy(&human.stdout);
    let row = text.lines().find(|l| l.contains("US-P2-002") && !l.contains("is waiting")).unwrap_or_default();
    assert!(row.contains("waiting") && row.contains("US-P1-002 (phase 1"), "{text}");

    // Phase 1 runs now, in the same daemon: the story waits for it running, then starts.
    let out = daemon.ctl(&["-C", &dir, "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    wait_reason(&daemon, &p, "US-P2-002", "(phase 1, running)");
    let out = daemon.ctl(&["-C", &dir, "wait", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    assert_eq!(states(&daemon.phase_status(p.path(), 2)), ["completed", "completed"]);
    assert_eq!(daemon.ctl(&["-C", &dir, "wait", "1"]).status.code(), Some(0));
    let record = p.path().join("record");
    assert!(
        recorded(&record, "start", "US-P2-002") > recorded(&record, "end", "US-P1-002"),
        "US-P2-002 started before its dependency ended"
    );
}

#[test]
fn a_story_waiting_for_an_earlier_phase_is_blocked_when_that_story_fails() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "self_fail", "sleep_ms": 200}))]);
    p.phase(2, "decomposed", &[story("US-P2-001", &["US-P1-001"]), story("US-P2-002", &["US-P2-001"])]);
    let dir = p.path_str();
    assert!(daemon.ctl(&["-C", &dir, "start", "2"]).status.success());
    wait_reason(&daemon, &p, "US-P2-001", "phase 1 is not running");
    assert!(daemon.ctl(&["-C", &dir, "start", "1"]).status.success());
    let out = daemon.ctl(&["-C", &dir, "wait", "2"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 2);
    assert_eq!(states(&phase), ["blocked", "blocked"]);
    assert_eq!(phase.stories[0].blocked_by, ["US-P1-001"]);
    assert_eq!(phase.stories[1].blocked_by, ["US-P1-001"]);
    assert!(phase.stories.iter().all(|s| s.waiting.is_none()), "{phase:?}");
}

/// A retry of the earlier phase's story lets the stories it blocked in a run still going wait
/// for it again; they start once it completes.
#[test]
fn a_retry_of_the_failed_earlier_story_lets_its_blocked_dependents_wait_again() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "self_fail"}))]);
    // US-P2-009 keeps phase 2's run going meanwhile.
    p.phase(
        2,
        "decomposed",
        &[story("US-P2-001", &["US-P1-001"]), story("US-P2-009", &[]).script(json!({"mode": "hang"}))],
    );
    let dir = p.path_str();
    assert!(daemon.ctl(&["-C", &dir, "start", "2"]).status.success());
    assert_eq!(daemon.ctl(&["-C", &dir, "start", "1", "--wait"]).status.code(), Some(4));
    poll(Duration::from_secs(20), "US-P2-001 blocked by US-P1-001", || {
        let phase = daemon.phase_status(p.path(), 2);
        (story_of(&phase, "US-P2-001").blocked_by == ["US-P1-001"]).then_some(())
    });

    let mut status = p.status_json("US-P1-001");
    status["script"] = json!({});
    p.write(&format!("{}/status.json", p.story_rel("US-P1-001")), &status.to_string());
    let out = daemon.ctl(&["-C", &dir, "retry", "US-P1-001"]);
    assert!(out.status.success(), "{}", describe(&out));
    // Phase 2's run hears of the retry through its event: blocked until then.
    poll(Duration::from_secs(20), "US-P2-001 waiting again", || {
        let phase = daemon.phase_status(p.path(), 2);
        let s = story_of(&phase, "US-P2-001");
        (s.state == StoryState::Pending).then(|| s.waiting.clone()).flatten()
    });
    wait_reason(&daemon, &p, "US-P2-001", "(phase 1, pending; phase 1 is not running)");
    assert_eq!(daemon.ctl(&["-C", &dir, "start", "1", "--wait"]).status.code(), Some(0));
    poll(Duration::from_secs(20), "US-P2-001 completed", || {
        (story_of(&daemon.phase_status(p.path(), 2), "US-P2-001").state == StoryState::Completed).then_some(())
    });
    assert!(daemon.ctl(&["-C", &dir, "kill", "2"]).status.success());
}
