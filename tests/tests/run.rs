//! Running phases: dependency order, limits, the loop's failure rules, phase end.

use std::collections::HashMap;
use std::fs;

use serde_json::{json, Value};
use sticler_proto::{PhaseView, StoryState};
use sticler_tests::{describe, states, story, Daemon, ProjectBuilder};

/// Parses the scripted worker's `events.log`: (kind, story, nanos) in file order.
fn record_events(dir: &std::path::Path) -> Vec<(String, String, u128)> {
    fs::read_to_string(dir.join("events.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            let kind = parts.next().unwrap().to_string();
            let story = parts.next().unwrap().to_string();
            (kind, story, parts.next().unwrap().parse().unwrap())
        })
        .collect()
}

fn max_running(dir: &std::path::Path) -> u32 {
    fs::read_to_string(dir.join("max")).unwrap().trim().parse().unwrap()
}

fn start_and_wait(daemon: &Daemon, p: &ProjectBuilder) -> i32 {
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    out.status.code().unwrap_or_else(|| panic!("start --wait crashed: {}\n{}", describe(&out), daemon.dump(p.path())))
}

/// Waits until a worker of the project has written its pid to `pids.txt`.
fn wait_for_worker(p: &ProjectBuilder) {
    sticler_tests::poll(std::time::Duration::from_secs(20), "a worker running", || {
        fs::read_to_string(p.path().join("pids.txt")).ok().filter(|t| !t.is_empty())
    });
}

/// Kills phase 1's run and checks that it ended stopped.
fn kill_run(daemon: &Daemon, p: &ProjectBuilder) {
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code(), Some(5));
}

#[test]
fn dependencies_are_respected_and_the_parallel_limit_is_never_exceeded() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let rec = p.path().join("record");
    fs::create_dir_all(&rec).unwrap();
    let script = json!({"record_dir": rec.display().to_string(), "sleep_ms": 200});
    // A fan-out/fan-in DAG of 8 stories, width 4, 2 iterations each.
    let s = |id: &str, deps: &[&str]| story(id, deps).criteria(2).script(script.clone());
    p.config(json!({"max_parallel_workers": 2}));
    p.phase(
        1,
        "decomposed",
        &[
            s("US-P1-001", &[]),
            s("US-P1-002", &["US-P1-001"]),
            s("US-P1-003", &["US-P1-001"]),
            s("US-P1-004", &["US-P1-001"]),
            s("US-P1-005", &["US-P1-001"]),
            s("US-P1-006", &["US-P1-002", "US-P1-003"]),
            s("US-P1-007", &["US-P1-004", "US-P1-005"]),
            s("US-P1-008", &["US-P1-006", "US-P1-007"]),
        ],
    );
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(max_running(&rec), 2, "the limit is reached and never exceeded");
    let events = record_events(&rec);
    let mut first_start: HashMap<String, u128> = HashMap::new();
    let mut last_end: HashMap<String, u128> = HashMap::new();
    for (kind, story, t) in &events {
        if kind == "start" {
            first_start.entry(story.clone()).or_insert(*t);
        } else {
            last_end.insert(story.clone(), *t);
        }
    }
    let deps: &[(&str, &[&str])] = &[
        ("US-P1-002", &["US-P1-001"]),
        ("US-P1-006", &["US-P1-002", "US-P1-003"]),
        ("US-P1-007", &["US-P1-004", "US-P1-005"]),
        ("US-P1-008", &["US-P1-006", "US-P1-007"]),
    ];
    for (id, before) in deps {
        for dep in *before {
            assert!(first_start[*id] > last_end[*dep], "{id} started before {dep} ended");
        }
    }
    // Ready stories start in id order: 002 and 003 are the first two after 001 (as the daemon
    // started them; two workers started together may write their records in either order).
    let started = daemon.project_events(&p, &["watch", "1", "--since", "0"], 1);
    let mut firsts: Vec<&str> = vec![];
    for (_, event) in started.iter().filter(|(kind, _)| kind == "iteration_started") {
        let story = event["story"].as_str().unwrap();
        if !firsts.contains(&story) {
            firsts.push(story);
        }
    }
    assert_eq!(&firsts[..3], ["US-P1-001", "US-P1-002", "US-P1-003"]);
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.status, "completed");
    assert_eq!(phase.counts.completed, 8);
    assert!(phase.summary.as_deref().unwrap().contains("8/8 stories completed, 16 iterations"), "{phase:?}");
    let config: Value = serde_json::from_str(&p.read("phases/phase_1/phase_config.json")).unwrap();
    assert_eq!(config["status"], "completed");
    assert!(config["started_at"].is_string() && config["completed_at"].is_string());
}

#[test]
fn the_daemon_wide_worker_cap_holds_across_phases() {
    let daemon = Daemon::start_with(&["--max-workers", "2"]);
    let rec = tempfile::tempdir().unwrap();
    let script = json!({"record_dir": rec.path().display().to_string(), "sleep_ms": 80});
    let mut projects = vec![];
    for _ in 0..2 {
        let p = ProjectBuilder::new();
        p.config(json!({"max_parallel_workers": 4}));
        let stories: Vec<_> = (1..=4).map(|i| story(&format!("US-P1-00{i}"), &[]).script(script.clone())).collect();
        p.phase(1, "decomposed", &stories);
        let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
        assert!(out.status.success(), "{}", describe(&out));
        projects.push(p);
    }
    for p in &projects {
        let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
        assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    }
    assert_eq!(max_running(rec.path()), 2);
}

fn failed_reasons(p: &ProjectBuilder, id: &str) -> Vec<String> {
    p.status_json(id)["failed_reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_self_failed_story_blocks_its_dependents_and_fails_the_phase() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).script(json!({"mode": "self_fail"})),
            story("US-P1-002", &["US-P1-001"]),
            story("US-P1-003", &["US-P1-002"]),
            story("US-P1-004", &[]),
        ],
    );
    assert_eq!(start_and_wait(&daemon, &p), 4);
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.status, "failed");
    assert_eq!(states(&phase), ["failed", "blocked", "blocked", "completed"]);
    assert_eq!(phase.stories[2].blocked_by, ["US-P1-001"]);
    assert!(phase.summary.as_deref().unwrap().contains("failed: US-P1-001"), "{phase:?}");
    let text = String::from_utf8(daemon.ctl(&["-C", &p.path_str(), "status", "1"]).stdout).unwrap();
    assert!(text.contains("blocked by US-P1-001"), "{text}");
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code(), Some(4));
}

/// Runs a one-story phase with the given script and config; returns the story's failed_reasons.
fn fail_with(script: Value, config: Value) -> (ProjectBuilder, Vec<String>, PhaseView) {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(config);
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(50).script(script)]);
    assert_eq!(start_and_wait(&daemon, &p), 4);
    let phase = daemon.phase_status(p.path(), 1);
    let reasons = fs::read_to_string(p.path().join("phases/phase_1/stories/US-P1-001/status.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|_| failed_reasons(&p, "US-P1-001"))
        .unwrap_or_default();
    (p, reasons, phase)
}

#[test]
fn max_iterations_per_task_fails_the_story_with_the_reason_on_disk() {
    let (p, reasons, phase) = fail_with(json!({}), json!({"max_iterations_per_task": 3}));
    assert_eq!(reasons, ["sticler: reached max_iterations_per_task (3) without completing"]);
    let status = p.status_json("US-P1-001");
    assert_eq!(status["status"], "failed");
    assert_eq!(status["iteration"], 3, "the worker's own fields are kept");
    assert_eq!(status["script"], json!({}), "unknown fields survive sticler's rewrite");
    assert_eq!(phase.stories[0].state, StoryState::Failed);
}

#[test]
fn consecutive_crashes_fail_after_retry_limit() {
    let (_p, reasons, _) = fail_with(json!({"mode": "crash"}), json!({"retry_limit": 2}));
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0]
            .contains("2 consecutive infrastructure failures (retry_limit 2); last: exit code 3 without any change"),
        "{reasons:?}"
    );
}

#[test]
fn crashes_below_retry_limit_are_survived() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(2).script(json!({"crash_first": 2}))]);
    assert_eq!(start_and_wait(&daemon, &p), 0);
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.stories[0].runs, 4, "2 crashes + 2 progress iterations");
}

#[test]
fn no_progress_for_three_iterations_fails() {
    let (_p, reasons, _) = fail_with(json!({"mode": "no_progress"}), json!({}));
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("no progress: status.json was left byte-identical by 3 consecutive iterations"),
        "{reasons:?}"
    );
}

#[test]
fn an_iteration_timeout_counts_as_an_infrastructure_failure() {
    let (_p, reasons, _) =
        fail_with(json!({"mode": "hang"}), json!({"retry_limit": 1, "worker": {"iteration_timeout_secs": 1}}));
    assert!(reasons[0].contains("iteration timed out after 1 s"), "{reasons:?}");
}

#[test]
fn invalid_status_json_from_the_worker_is_never_replaced() {
    let (p, _, phase) = fail_with(json!({"mode": "invalid_json"}), json!({}));
    let raw = p.read("phases/phase_1/stories/US-P1-001/status.json");
    assert_eq!(raw, "{\"story_id\": broken\n", "sticler must not overwrite a malformed file");
    assert_eq!(phase.stories[0].state, StoryState::Invalid);
    assert!(phase.problems.iter().any(|p| p.to_string().contains("malformed JSON at line 1")), "{phase:?}");
}

#[test]
fn placeholders_environment_stdin_and_cwd_reach_the_worker() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    let worker = sticler_tests::bin("sticler-test-worker").display().to_string();
    let script = "printf '%s|%s|%s|%s|%s|%s|%s|%s|%s' {story_id} {phase} {iteration} \"$STICLER_STORY_ID\" \"$STICLER_STATUS_FILE\" \"$STICLER_SPEC_FILE\" \"$STICLER_PROJECT_DIR\" \"$STICLER_ITERATION\" \"$(pwd)\" > seen-{story_id}.txt; cat > stdin-{story_id}.txt; exec \"$0\"";
    p.config(json!({"worker": {"command": ["/bin/sh", "-c", script, worker], "env": {"EXTRA": "x"}}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    assert_eq!(start_and_wait(&daemon, &p), 0);
    let root = fs::canonicalize(p.path()).unwrap().display().to_string();
    let dir = format!("{root}/phases/phase_1/stories/US-P1-001");
    let seen = p.read("seen-US-P1-001.txt");
    assert_eq!(seen, format!("US-P1-001|1|1|US-P1-001|{dir}/status.json|{dir}/spec.md|{root}|1|{root}"));
    assert_eq!(p.read("stdin-US-P1-001.txt"), p.read("phases/phase_1/stories/US-P1-001/spec.md"));
}

/// The worker leads a session of its own (so its own process group, and no controlling
/// terminal), blocks and ignores no signal whatever the daemon does, and is found through the
/// PATH its configuration gives it.
#[test]
fn the_worker_leads_its_own_session_with_default_signals_and_its_own_path() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let worker = sticler_tests::bin("sticler-test-worker").display().to_string();
    // Shell builtins only, before any child: a shell waiting for a child blocks signals itself.
    let script = "read -r stat < /proc/$$/stat; while read -r line; do case $line in Sig*) echo \"$line\";; esac; \
                  done < /proc/$$/status > signals.txt; echo \"$stat\" > stat.txt; exec \"$0\"";
    let path = "/nonexistent/bin:/usr/bin:/bin";
    p.config(json!({"worker": {"command": ["sh", "-c", script, worker], "env": {"PATH": path}}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    assert_eq!(start_and_wait(&daemon, &p), 0);
    // pid (comm) state ppid pgrp session ...: the command name is `sh`, without spaces.
    let stat: Vec<String> = p.read("stat.txt").split_whitespace().map(String::from).collect();
    let ids = [&stat[0], &stat[4], &stat[5]];
    assert_eq!(ids[1], ids[0], "the worker leads its process group");
    assert_eq!(ids[2], ids[0], "the worker leads its session");
    let mask = |name: &str| {
        let text = p.read("signals.txt");
        let line = text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {text}"));
        u64::from_str_radix(line.trim(), 16).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    assert_eq!(mask("SigBlk:"), 0, "no signal blocked");
    // glibc's posix_spawn leaves its two internal signals (32 and 33, below SIGRTMIN) ignored;
    // programs never use them and glibc sets its own handlers when it needs them.
    let glibc_internal = (1 << 31) | (1 << 32);
    assert_eq!(mask("SigIgn:") & !glibc_internal, 0, "no signal ignored (the daemon itself ignores SIGPIPE)");
}

#[test]
fn start_refuses_completed_phases_unless_forced_and_refuses_a_second_run() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "completed", &[story("US-P1-001", &[]).status("completed")]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use --force"), "{}", describe(&out));
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--force", "--wait"]).status.code(), Some(0));
    assert_eq!(daemon.phase_status(p.path(), 1).stories[0].runs, 0, "completed stories are not rerun");

    let q = ProjectBuilder::new();
    q.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "hang"}))]);
    assert!(daemon.ctl(&["-C", &q.path_str(), "start", "1"]).status.success());
    let out = daemon.ctl(&["-C", &q.path_str(), "start", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"), "{}", describe(&out));
    kill_run(&daemon, &q);
}

/// Starts of one phase racing each other: exactly one run, every other start refused, and the
/// story's worker started once.
#[test]
fn simultaneous_starts_of_one_phase_make_one_run() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    // Many stories, so that a start takes a while; only the first one runs (and hangs).
    let mut stories = vec![story("US-P1-001", &[]).script(json!({"mode": "hang", "pids_file": "pids.txt"}))];
    stories.extend((2..=300).map(|i| story(&format!("US-P1-{i:03}"), &[])));
    p.config(json!({"max_parallel_workers": 1}));
    p.phase(1, "decomposed", &stories);
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let mut start = daemon.ctl_command(&["-C", &p.path_str(), "start", "1"]);
            start.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outs: Vec<_> = starts.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
    assert_eq!(codes.iter().filter(|c| **c == Some(0)).count(), 1, "one start wins: {codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == Some(1)).count(), 3, "the others are refused: {codes:?}");
    for out in outs.iter().filter(|o| o.status.code() == Some(1)) {
        assert!(String::from_utf8_lossy(&out.stderr).contains("already running"), "{}", describe(out));
    }
    wait_for_worker(&p);
    kill_run(&daemon, &p);
    assert_eq!(p.read("pids.txt").lines().count(), 1, "one worker for the one story that ran");
}

/// While a phase runs, a story whose dependencies are all completed but that waits for a slot
/// is `ready`; one still waiting for a dependency is `pending`.
#[test]
fn a_story_waiting_only_for_a_slot_is_ready() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    p.config(json!({"max_parallel_workers": 1}));
    let hang = json!({"mode": "hang", "pids_file": "pids.txt"});
    p.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &[]).script(hang), story("US-P1-002", &[]), story("US-P1-003", &["US-P1-001"])],
    );
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    wait_for_worker(&p);
    let status = daemon.phase_status(p.path(), 1);
    assert_eq!(states(&status), ["running", "ready", "pending"], "{status:?}");
    kill_run(&daemon, &p);
}

/// phase_config.json made malformed during the run is left as it is at the run's end, and the
/// summary says that the end is not recorded in it.
#[test]
fn a_phase_config_broken_during_the_run_is_kept_and_the_summary_says_so() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    let worker = sticler_tests::bin("sticler-test-worker").display().to_string();
    let script = "printf '{' > phases/phase_1/phase_config.json; exec \"$0\"";
    p.config(json!({"worker": {"command": ["/bin/sh", "-c", script, worker]}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    assert_eq!(start_and_wait(&daemon, &p), 0);
    assert_eq!(p.read("phases/phase_1/phase_config.json"), "{", "never replaced");
    let status = daemon.phase_status(p.path(), 1);
    let summary = status.summary.as_deref().unwrap();
    assert!(summary.contains("warning: the end of the run is not recorded in phase_config.json"), "{summary}");
}

#[test]
fn unknown_fields_of_phase_config_survive_a_run() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let rel = "phases/phase_1/phase_config.json";
    let mut config: Value = serde_json::from_str(&p.read(rel)).unwrap();
    config["x_owner"] = json!({"team": "core", "tags": [1, 2]});
    p.write(rel, &config.to_string());
    assert_eq!(start_and_wait(&daemon, &p), 0);
    let after: Value = serde_json::from_str(&p.read(rel)).unwrap();
    assert_eq!(after["x_owner"], config["x_owner"]);
    assert_eq!(after["status"], "completed");
}
