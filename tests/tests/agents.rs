//! Agent-aware runs: usage-limit waits (not counted, per project, resumable, surviving a
//! restart), cost and tokens per story and phase, cost budgets, the agent's own stuck signal,
//! and the `claude` preset's command line.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use sticler_proto::{StoryState, TokenUsage};
use sticler_tests::{bin, describe, poll, story, story_of, Daemon, ProjectBuilder};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Every stored event of the project's phase 1 up to its first `run_ended`: (kind, event).
fn events(daemon: &Daemon, p: &ProjectBuilder) -> Vec<(String, Value)> {
    daemon.project_events(p, &["watch", "1", "--since", "0"], 1)
}

fn wait_code(daemon: &Daemon, p: &ProjectBuilder) -> Option<i32> {
    daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code()
}

/// Polls `status` until the project waits for a usage limit; returns paused_until.
fn wait_for_pause(daemon: &Daemon, p: &ProjectBuilder) -> i64 {
    poll(Duration::from_secs(20), "the usage-limit wait in status", || {
        let phase = daemon.phase_status(p.path(), 1);
        let waiting = phase.waiting?;
        assert!(waiting.starts_with("waiting for usage limit until "), "{waiting}");
        phase.paused_until
    })
}

#[test]
fn a_usage_limit_pauses_the_whole_project_without_counting_then_resumes_after_the_reset() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    // One real iteration each would be allowed; the limited ones (which also exit 1 without a
    // change, an infrastructure failure otherwise) must count toward neither limit.
    p.config(json!({"max_parallel_workers": 2, "max_iterations_per_task": 2, "retry_limit": 1,
                    "usage_limit": {"margin_secs": 1}}));
    let limited = json!({"limit_first": 2, "limit_reset_secs": 2, "agent_output": "claude"});
    let other = json!({"sleep_ms": 400, "agent_output": "claude"});
    // The other story needs two iterations: its second would start during the wait.
    p.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &[]).script(limited), story("US-P1-002", &[]).criteria(2).script(other)],
    );
    let started = now();
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let until = wait_for_pause(&daemon, &p);
    assert!(until >= started + 3 && until <= now() + 4, "reset (2 s) + margin (1 s): {until}, started {started}");
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    let one = story_of(&phase, "US-P1-001");
    assert_eq!(one.state, StoryState::Completed);
    assert_eq!(one.runs, 3, "two limited iterations and the real one");

    let events = events(&daemon, &p);
    let waits: Vec<&Value> = events.iter().filter(|(k, _)| k == "usage_limit_wait").map(|(_, e)| e).collect();
    assert_eq!(waits.len(), 2, "{events:?}");
    let mut paused_since = None;
    for (kind, event) in &events {
        let time = event["time_ms"].as_i64().unwrap();
        match kind.as_str() {
            "usage_limit_wait" => {
                let until = event["until_unix"].as_i64().unwrap();
                paused_since = Some(until);
            }
            "usage_limit_resumed" => {
                let until = paused_since.take().expect("a resume follows a wait");
                assert!(time >= until * 1000, "resumed at {time} ms, before the end of the wait {until}");
                assert_eq!(event["early"], false);
            }
            "iteration_started" => {
                assert!(paused_since.is_none(), "no iteration starts anywhere in the project during the wait: {event}")
            }
            "iteration_ended" => {
                let verdict = event["verdict"].as_str().unwrap();
                if event["story"] == "US-P1-001" && event["iteration"].as_u64() < Some(3) {
                    assert!(verdict.starts_with("usage limit"), "{verdict}");
                }
            }
            _ => {}
        }
    }
    // The other story's iterations were held too: it ran, and waited like everybody else.
    assert_eq!(story_of(&phase, "US-P1-002").state, StoryState::Completed);
}

#[test]
fn a_limit_in_one_phase_holds_every_phase_of_the_project() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"usage_limit": {"margin_secs": 1}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"limit_first": 1, "limit_reset_secs": 2}))]);
    // Phase 2's story needs three iterations of 300 ms: they would start during the wait, whether
    // phase 2 starts before the limit is hit or after.
    p.phase(2, "decomposed", &[story("US-P2-001", &[]).criteria(3).script(json!({"sleep_ms": 300}))]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "2"]).status.success());
    let until = wait_for_pause(&daemon, &p);
    let phase_2 = daemon.phase_status(p.path(), 2);
    assert_eq!(phase_2.paused_until, Some(until), "phase 2 waits too: {phase_2:?}");
    for phase in ["1", "2"] {
        assert_eq!(
            daemon.ctl(&["-C", &p.path_str(), "wait", phase]).status.code(),
            Some(0),
            "{}",
            daemon.dump(p.path())
        );
    }
    let events = daemon.project_events(&p, &["watch", "--since", "0"], 2);
    let seq_of = |kind: &str| events.iter().find(|(k, _)| k == kind).map(|(_, e)| e["seq"].as_u64().unwrap());
    let (wait, resumed) =
        (seq_of("usage_limit_wait").expect("a wait"), seq_of("usage_limit_resumed").expect("its end"));
    let resumed_ms = events.iter().find(|(k, _)| k == "usage_limit_resumed").unwrap().1["time_ms"].as_i64().unwrap();
    assert!(resumed_ms >= until * 1000, "the wait lasted until the reset plus the margin");
    // One start that phase 2 decided just before phase 1 began the wait may be announced after
    // it (spawning takes a while under load); without the hold, two or three would start.
    let during: Vec<&Value> = events
        .iter()
        .filter(|(k, e)| k == "iteration_started" && (wait..resumed).contains(&e["seq"].as_u64().unwrap()))
        .map(|(_, e)| e)
        .collect();
    assert!(during.len() <= 1, "no iteration of any phase starts during the wait: {during:?}");
    assert_eq!(story_of(&daemon.phase_status(p.path(), 2), "US-P2-001").runs, 3);
}

#[test]
fn resume_ends_a_long_wait_early_and_the_wait_survives_a_daemon_restart() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"usage_limit": {"margin_secs": 5}}));
    let script = json!({"limit_first": 1, "limit_reset_secs": 3600, "limit_form": "pipe"});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(script)]);
    let out = daemon.ctl(&["-C", &p.path_str(), "resume", "1"]);
    assert_eq!(out.status.code(), Some(1), "nothing to resume yet: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not waiting"), "{}", describe(&out));
    let started = now();
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let until = wait_for_pause(&daemon, &p);
    assert!((started + 3605..=now() + 3605).contains(&until), "the plain-text reset plus the margin: {until}");

    daemon.signal_and_wait(Signal::SIGKILL);
    daemon.launch(&[]);
    let after = wait_for_pause(&daemon, &p);
    assert_eq!(after, until, "the restarted daemon keeps the same wait");
    let phase = daemon.phase_status(p.path(), 1);
    assert!(phase.running, "the run was recovered and waits");
    assert_eq!(story_of(&phase, "US-P1-001").disk_status, "pending", "no iteration ran during the wait");
    let human = daemon.ctl(&["-C", &p.path_str(), "status", "1"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("waiting for usage limit until"), "{}", describe(&human));

    let out = daemon.ctl(&["-C", &p.path_str(), "resume", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    let events = events(&daemon, &p);
    assert!(events.iter().any(|(k, e)| k == "usage_limit_resumed" && e["early"] == true), "{events:?}");
    assert_eq!(daemon.phase_status(p.path(), 1).paused_until, None);
}

#[test]
fn stop_works_during_the_wait_and_a_limit_without_a_time_backs_off() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"usage_limit": {"margin_secs": 0, "backoff_min_secs": 600}}));
    let script = json!({"limit_first": 1, "limit_form": "no_time"});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(script)]);
    let started = now();
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let until = wait_for_pause(&daemon, &p);
    assert!((started + 600..=now() + 600).contains(&until), "the first backoff step: {until}");
    let out = daemon.ctl(&["-C", &p.path_str(), "stop", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(wait_code(&daemon, &p), Some(5), "stopped at once: {}", daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    let s = story_of(&phase, "US-P1-001");
    assert_eq!((s.runs, s.disk_status.as_str()), (1, "pending"), "nothing ran: {s:?}");
}

#[test]
fn cost_and_tokens_are_read_per_iteration_and_shown_per_story_and_phase() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let script = json!({"agent_output": "claude", "cost_usd": 0.25});
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).criteria(2).script(script.clone()),
            story("US-P1-002", &[]).criteria(2).script(script),
        ],
    );
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.success());
    let phase = daemon.phase_status(p.path(), 1);
    for id in ["US-P1-001", "US-P1-002"] {
        let s = story_of(&phase, id);
        assert_eq!(s.cost_usd, Some(0.5), "two iterations of $0.25: {s:?}");
        let tokens = TokenUsage { input: 200, output: 400, cache_creation: 2000, cache_read: 10000 };
        assert_eq!(s.tokens, Some(tokens));
    }
    assert_eq!(phase.cost_usd, Some(1.0));
    assert_eq!(phase.tokens.map(|t| t.input), Some(400));
    assert!(phase.summary.as_deref().unwrap().contains("cost $1.00"), "{:?}", phase.summary);
    let human = daemon.ctl(&["-C", &p.path_str(), "status", "1", "US-P1-001"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("cost:         $0.50"), "{}", describe(&human));
}

#[test]
fn a_story_that_would_exceed_its_budget_fails_with_that_reason() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"max_cost_usd_per_story": 0.5}));
    // $0.2 per iteration: after two ($0.40) a third would exceed $0.50. $0.7 at once: spent.
    let cheap = json!({"agent_output": "claude", "cost_usd": 0.2, "complete_after": 5});
    let dear = json!({"agent_output": "claude", "cost_usd": 0.7, "complete_after": 5});
    let within = json!({"agent_output": "claude", "cost_usd": 0.2, "complete_after": 2});
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).criteria(5).script(cheap),
            story("US-P1-002", &[]).criteria(5).script(dear),
            story("US-P1-003", &[]).criteria(2).script(within),
        ],
    );
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.code(), Some(4));
    let phase = daemon.phase_status(p.path(), 1);
    let runs_and_state = |id: &str| {
        let s = story_of(&phase, id);
        (s.runs, s.state.as_str().to_string())
    };
    assert_eq!(runs_and_state("US-P1-001"), (2, "failed".to_string()));
    assert_eq!(runs_and_state("US-P1-002"), (1, "failed".to_string()));
    assert_eq!(runs_and_state("US-P1-003"), (2, "completed".to_string()), "a story within its budget completes");
    let reasons = p.status_json("US-P1-001")["failed_reasons"].to_string();
    assert!(
        reasons
            .contains("cost $0.40; another iteration like the last ($0.20) would exceed max_cost_usd_per_story $0.50"),
        "{reasons}"
    );
    let reasons = p.status_json("US-P1-002")["failed_reasons"].to_string();
    assert!(reasons.contains("cost $0.70 reached max_cost_usd_per_story $0.50"), "{reasons}");
}

#[test]
fn a_spent_phase_budget_stops_scheduling_and_says_so() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": 1, "max_cost_usd_per_phase": 0.5}));
    let script = json!({"agent_output": "claude", "cost_usd": 0.3});
    let stories: Vec<_> =
        ["US-P1-001", "US-P1-002", "US-P1-003"].iter().map(|id| story(id, &[]).script(script.clone())).collect();
    p.phase(1, "decomposed", &stories);
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.code(), Some(4));
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(story_of(&phase, "US-P1-002").state, StoryState::Completed, "the running one finished");
    let third = story_of(&phase, "US-P1-003");
    assert_eq!((third.state, third.runs), (StoryState::Pending, 0), "{third:?}");
    let summary = phase.summary.as_deref().unwrap();
    assert!(summary.contains("phase budget spent: $0.60 of max_cost_usd_per_phase $0.50"), "{summary}");
    assert_eq!(phase.budget_usd, Some(0.5));
    let events = events(&daemon, &p);
    assert!(events.iter().any(|(k, _)| k == "budget_spent"), "{events:?}");
    // A new start of a phase whose budget is spent ends at once, starting nothing.
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.code(), Some(4));
    assert_eq!(story_of(&daemon.phase_status(p.path(), 1), "US-P1-003").runs, 0);
}

#[test]
fn the_same_error_result_three_times_in_a_row_fails_the_story_as_stuck() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    // The worker makes progress on disk each time, so only the agent's own signal can tell.
    let script =
        json!({"agent_output": "claude_error", "error_text": "cannot reach the test database", "complete_after": 9});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(9).script(script)]);
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.code(), Some(4));
    let s = daemon.phase_status(p.path(), 1);
    assert_eq!(story_of(&s, "US-P1-001").runs, 3);
    let reasons = p.status_json("US-P1-001")["failed_reasons"].to_string();
    assert!(reasons.contains("stuck") && reasons.contains("cannot reach the test database"), "{reasons}");
}

#[test]
fn the_claude_preset_runs_claude_non_interactively_with_stream_json_and_its_cost_is_read() {
    let mut daemon = Daemon::unstarted();
    let fake = tempfile::tempdir().unwrap();
    let record = fake.path().join("argv");
    let stdin = fake.path().join("stdin");
    // A stand-in `claude`: records its argv and stdin, does the story's work with the scripted
    // worker, and ends with a result event as Claude Code does.
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\ncat > '{}'\n'{}' > /dev/null || exit 1\n\
         echo '{{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"ok\",\"total_cost_usd\":0.42,\
         \"usage\":{{\"input_tokens\":7,\"output_tokens\":8,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}}}}'\n",
        record.display(),
        stdin.display(),
        bin("sticler-test-worker").display()
    );
    let claude = fake.path().join("claude");
    std::fs::write(&claude, script).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = daemon.command(&[]);
    let path = std::env::var("PATH").unwrap_or_default();
    command.env("PATH", format!("{}:{path}", fake.path().display()));
    daemon.spawn(command);
    daemon.wait_ready();

    let p = ProjectBuilder::new();
    p.config(json!({"worker": {"command": null, "preset": "claude"}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let argv = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        argv.lines().collect::<Vec<_>>(),
        [
            "-p",
            "/phase-worker US-P1-001",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions"
        ]
    );
    assert_eq!(std::fs::read_to_string(&stdin).unwrap(), p.read(&format!("{}/spec.md", p.story_rel("US-P1-001"))));
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(story_of(&phase, "US-P1-001").cost_usd, Some(0.42));
    assert_eq!(story_of(&phase, "US-P1-001").tokens.map(|t| t.output), Some(8));
}

#[test]
fn presets_lists_each_agent_with_its_exact_command() {
    let daemon = Daemon::unstarted();
    let out = daemon.ctl(&["--json", "presets"]);
    assert!(out.status.success(), "{}", describe(&out));
    let presets: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = presets.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["claude", "codex", "gemini", "aider", "opencode", "command"]);
    let claude = &presets[0]["argv"];
    assert_eq!(claude[0], "claude");
    assert!(claude.as_array().unwrap().iter().any(|a| a == "stream-json"), "{claude}");
    let human = daemon.ctl(&["presets"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("command: claude -p '/phase-worker {story_id}' --output-format stream-json --verbose"),
        "{text}"
    );
    assert!(text.contains("aider --message"), "{text}");
}
