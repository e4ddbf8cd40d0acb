//! Controlling runs: stop and kill leave no process behind, retry, logs, watch, wait.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use sticler_proto::StoryState;
use sticler_tests::{describe, poll, process_alive, states, story, wait_socket_connected, Daemon, ProjectBuilder};

fn pids(file: &std::path::Path) -> Vec<i32> {
    fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A phase whose two stories ignore SIGTERM and leave a child and a grandchild in its own
/// session; returns the project and the pids file.
fn stubborn_phase(daemon: &Daemon) -> (ProjectBuilder, std::path::PathBuf) {
    let p = ProjectBuilder::new();
    let pids_file = p.path().join("pids.txt");
    let script = json!({"mode": "ignore_term_fork", "pids_file": pids_file.display().to_string()});
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).script(script.clone()),
            story("US-P1-002", &[]).script(script),
            story("US-P1-003", &["US-P1-001"]),
        ],
    );
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    poll(Duration::from_secs(20), "6 worker pids", || (pids(&pids_file).len() == 6).then_some(()));
    (p, pids_file)
}

fn assert_all_gone(daemon: &Daemon, pids: &[i32]) {
    poll(Duration::from_secs(10), "every worker process to be gone", || {
        pids.iter().all(|p| !process_alive(*p)).then_some(())
    });
    assert!(daemon.marked_processes().is_empty(), "leftover processes: {:?}", daemon.marked_processes());
}

#[test]
fn stop_kills_grandchildren_that_ignore_sigterm_after_the_grace_period() {
    let daemon = Daemon::start();
    let (p, pids_file) = stubborn_phase(&daemon);
    let all = pids(&pids_file);
    let out = daemon.ctl(&["-C", &p.path_str(), "stop", "1", "--grace", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_all_gone(&daemon, &all);
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.status, "stopped");
    assert!(!phase.running);
    // The stories are resumable: make them behave and start again.
    for id in ["US-P1-001", "US-P1-002"] {
        let rel = format!("{}/status.json", p.story_rel(id));
        let mut status: Value = serde_json::from_str(&p.read(&rel)).unwrap();
        status["script"] = json!({});
        p.write(&rel, &status.to_string());
    }
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn kill_needs_no_grace_period() {
    let daemon = Daemon::start();
    let (p, pids_file) = stubborn_phase(&daemon);
    let all = pids(&pids_file);
    let started = std::time::Instant::now();
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code(), Some(5));
    assert_all_gone(&daemon, &all);
    // Not a timing assertion on speed, only that kill did not wait out the default 10 s grace.
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[test]
fn daemon_sigterm_stops_runs_and_leaves_no_process() {
    let mut daemon = Daemon::start();
    let (_p, pids_file) = stubborn_phase(&daemon);
    let all = pids(&pids_file);
    let status = daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert_all_gone(&daemon, &all);
}

#[test]
fn no_zombies_are_left_after_double_forking_workers() {
    let daemon = Daemon::start();
    let (p, pids_file) = stubborn_phase(&daemon);
    let all = pids(&pids_file);
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code(), Some(5));
    assert_all_gone(&daemon, &all);
    let me = daemon.pid();
    poll(Duration::from_secs(10), "no zombie children of the daemon", || {
        let zombies: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                let mut f = rest.split_whitespace();
                f.next() == Some("Z") && f.next() == Some(&me.to_string())
            })
            .collect();
        zombies.is_empty().then_some(())
    });
}

/// A running phase: US-P1-001 fails, US-P1-002 (its dependent) is blocked, US-P1-003 hangs and
/// keeps the phase running.
fn failing_blocking_hanging(daemon: &Daemon) -> ProjectBuilder {
    let p = ProjectBuilder::new();
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).script(json!({"mode": "self_fail"})),
            story("US-P1-002", &["US-P1-001"]),
            story("US-P1-003", &[]).script(json!({"mode": "hang"})),
        ],
    );
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    p
}

#[test]
fn retry_in_a_running_phase_and_at_the_next_start() {
    let daemon = Daemon::start();
    let p = failing_blocking_hanging(&daemon);
    poll(Duration::from_secs(20), "US-P1-001 to fail", || {
        (daemon.phase_status(p.path(), 1).stories[0].state == StoryState::Failed).then_some(())
    });
    assert_eq!(daemon.phase_status(p.path(), 1).stories[1].state, StoryState::Blocked);
    // "Fix" the story, then retry it while the phase still runs (US-P1-003 hangs).
    let rel = format!("{}/status.json", p.story_rel("US-P1-001"));
    let mut status: Value = serde_json::from_str(&p.read(&rel)).unwrap();
    status["script"] = json!({});
    p.write(&rel, &status.to_string());
    let out = daemon.ctl(&["-C", &p.path_str(), "retry", "US-P1-001"]);
    assert!(out.status.success(), "{}", describe(&out));
    poll(Duration::from_secs(20), "US-P1-001 and 002 to complete", || {
        let phase = daemon.phase_status(p.path(), 1);
        (states(&phase)[..2] == ["completed", "completed"]).then_some(())
    });
    let status = p.status_json("US-P1-001");
    assert_eq!(status["failed_reasons"].as_array().unwrap().len(), 1, "failed_reasons are kept as history");
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code(), Some(5));

    // Retry --failed with no run: stories go back to pending on disk and run at the next start.
    let q = ProjectBuilder::new();
    q.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &[]).script(json!({"mode": "self_fail"})), story("US-P1-002", &["US-P1-001"])],
    );
    assert_eq!(daemon.ctl(&["-C", &q.path_str(), "start", "1", "--wait"]).status.code(), Some(4));
    let rel = format!("{}/status.json", q.story_rel("US-P1-001"));
    let mut status: Value = serde_json::from_str(&q.read(&rel)).unwrap();
    status["script"] = json!({});
    q.write(&rel, &status.to_string());
    let out = daemon.ctl(&["-C", &q.path_str(), "retry", "--failed", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(q.status_json("US-P1-001")["status"], "pending");
    assert_eq!(daemon.ctl(&["-C", &q.path_str(), "start", "1", "--wait"]).status.code(), Some(0));
    let out = daemon.ctl(&["-C", &q.path_str(), "retry", "US-P1-002"]);
    assert_eq!(out.status.code(), Some(1), "a completed story is not retried: {}", describe(&out));
}

#[test]
fn logs_per_iteration_and_follow_across_iterations() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(3).script(json!({"sleep_ms": 150}))]);
    let follow =
        daemon.ctl_command(&["-C", &p.path_str(), "logs", "US-P1-001", "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    // With no log yet, `logs -f` waits for the first iteration's event.
    wait_socket_connected(follow.id());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.code(), Some(0));
    let out = follow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for k in 1..=3 {
        assert!(text.contains(&format!("--- US-P1-001 iteration {k} ---")), "{text}");
        assert!(text.contains(&format!("US-P1-001 iteration {k}")), "{text}");
    }
    let one = daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001", "--iteration", "2"]);
    let one = String::from_utf8_lossy(&one.stdout);
    assert!(one.contains("iteration 2") && !one.contains("iteration 3 ="), "{one}");
    let latest = String::from_utf8_lossy(&daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001"]).stdout).to_string();
    assert!(latest.contains("iteration 3"), "{latest}");
    let missing = daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001", "--iteration", "9"]);
    assert_eq!(missing.status.code(), Some(1));
    let zero = daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001", "--iteration", "0"]);
    assert_eq!(zero.status.code(), Some(1), "{}", describe(&zero));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("numbered from 1"), "{}", describe(&zero));
    // Logs live under the daemon's state dir, never inside the project.
    assert!(daemon.state_dir.join("logs").exists());
    let inside = walk(p.path()).into_iter().filter(|f| f.extension().is_some_and(|e| e == "log")).count();
    assert_eq!(inside, 0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn watch_json_streams_numbered_events() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(2), story("US-P1-002", &["US-P1-001"])]);
    let mut watch = daemon.ctl_command(&["--json", "watch"]).stdout(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    wait_socket_connected(watch.id());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.code(), Some(0));
    let mut kinds = vec![];
    let mut last = 0;
    for line in lines {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let seq = event["seq"].as_u64().unwrap();
        assert!(seq > last, "sequence numbers grow");
        last = seq;
        let kind = event["kind"].as_str().unwrap().to_string();
        kinds.push(kind.clone());
        if kind == "run_ended" {
            assert_eq!(event["outcome"], "completed");
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(kinds.first().map(String::as_str), Some("run_started"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "iteration_started").count(), 3, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "story_completed").count(), 2, "{kinds:?}");
    // Stored events replay with --since.
    let replay = daemon.ctl_command(&["--json", "watch", "--since", "0"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut replay = ChildGuard(replay);
    let first = BufReader::new(replay.0.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap()["seq"], 1);
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Like `systemctl stop`: stopping what does not run says so and succeeds. A phase that does not
/// exist, or has no phase_config.json, gets the same clear message from every command.
#[test]
fn stop_of_an_idle_phase_succeeds_and_missing_phases_are_named_the_same_everywhere() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    p.phase(2, "decomposed", &[story("US-P2-001", &[])]);
    fs::remove_file(p.path().join("phases/phase_2/phase_config.json")).unwrap();
    let dir = p.path_str();
    for (verb, says) in [("stop", "nothing to stop"), ("kill", "nothing to kill")] {
        let out = daemon.ctl(&["-C", &dir, verb, "1"]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("phase 1 of ") && text.contains(&format!("is not running; {says}")), "{text}");
    }
    let missing = "phases/phase_7)";
    for args in [["stop", "7"], ["kill", "7"], ["wait", "7"], ["status", "7"]] {
        let out = daemon.ctl(&[&["-C", &dir][..], &args[..]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("phase 7 not found (expected folder") && err.contains(missing), "{args:?}: {err}");
        assert!(!err.contains("os error"), "{args:?}: {err}");
    }
    let no_config = "phase_2/phase_config.json: missing; every phase folder needs a phase_config.json";
    for args in [["wait", "2"], ["validate", "2"], ["start", "2"], ["status", "2"]] {
        let out = daemon.ctl(&[&["-C", &dir][..], &args[..]].concat());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(no_config) && !text.contains("os error"), "{args:?}: {}", describe(&out));
    }
}

/// After `retry` returns, `status` shows the retried story's dependents pending, in a running
/// phase and after the run ended alike; the sentence agrees with the number of stories.
#[test]
fn retry_shows_the_dependents_pending_at_once() {
    let daemon = Daemon::start();
    let fix = |p: &ProjectBuilder, script: Value| {
        let rel = format!("{}/status.json", p.story_rel("US-P1-001"));
        let mut status: Value = serde_json::from_str(&p.read(&rel)).unwrap();
        status["script"] = script;
        p.write(&rel, &status.to_string());
    };
    let q = ProjectBuilder::new();
    q.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &[]).script(json!({"mode": "self_fail"})), story("US-P1-002", &["US-P1-001"])],
    );
    assert_eq!(daemon.ctl(&["-C", &q.path_str(), "start", "1", "--wait"]).status.code(), Some(4));
    assert_eq!(states(&daemon.phase_status(q.path(), 1)), ["failed", "blocked"]);
    fix(&q, json!({}));
    let out = daemon.ctl(&["-C", &q.path_str(), "retry", "US-P1-001"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "US-P1-001 is pending again; it runs at the next `sticlerctl start 1`");
    let phase = daemon.phase_status(q.path(), 1);
    assert_eq!(states(&phase), ["pending", "pending"], "{phase:?}");
    assert!(phase.stories[1].blocked_by.is_empty(), "{phase:?}");
    assert_eq!(daemon.ctl(&["-C", &q.path_str(), "start", "1", "--wait"]).status.code(), Some(0));

    // In a running phase (US-P1-003 keeps it running).
    let p = failing_blocking_hanging(&daemon);
    poll(Duration::from_secs(20), "US-P1-002 to be blocked", || {
        (daemon.phase_status(p.path(), 1).stories[1].state == StoryState::Blocked).then_some(())
    });
    fix(&p, json!({"sleep_ms": 5000}));
    assert!(daemon.ctl(&["-C", &p.path_str(), "retry", "US-P1-001"]).status.success());
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.stories[1].state, StoryState::Pending, "{phase:?}");
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
}

/// `logs` names the story and iteration above each log; `--all` shows every iteration in order,
/// `--tail N` the last lines.
#[test]
fn logs_have_a_header_and_take_all_and_tail() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(3)]);
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]).status.code(), Some(0));
    let logs = |args: &[&str]| {
        let out = daemon.ctl(&[&["-C", &p.path_str(), "logs", "US-P1-001"][..], args].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let latest = logs(&[]);
    assert!(latest.starts_with("--- US-P1-001 iteration 3 ---\n"), "{latest}");
    let all = logs(&["--all"]);
    let headers: Vec<&str> = all.lines().filter(|l| l.starts_with("--- ")).collect();
    assert_eq!(
        headers,
        ["--- US-P1-001 iteration 1 ---", "--- US-P1-001 iteration 2 ---", "--- US-P1-001 iteration 3 ---"],
        "{all}"
    );
    assert!(all.ends_with(&latest[latest.find('\n').unwrap() + 1..]), "the last log comes last:\n{all}");
    let body: Vec<&str> = latest.lines().skip(1).collect();
    assert!(body.len() > 2, "{latest}");
    let tail = logs(&["--tail", "2"]);
    let expected = format!("--- US-P1-001 iteration 3 ---\n{}\n", body[body.len() - 2..].join("\n"));
    assert_eq!(tail, expected);
    let out = daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001", "--all", "--iteration", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// `watch` of a phase that is not running says so at once and how to start it; of a phase that
/// does not exist, it fails instead of waiting.
#[test]
fn watch_of_an_idle_phase_says_it_waits_and_how_to_start_it() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let mut watch = daemon.ctl_command(&["-C", &p.path_str(), "watch", "1"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Read on a thread: without the line, the test fails after a while instead of hanging.
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(first.starts_with("phase 1 of "), "{first}");
    assert!(first.contains("is not running; waiting for its events (start it with `sticlerctl start 1`)"), "{first}");
    let out = daemon.ctl(&["-C", &p.path_str(), "watch", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("phase 7 not found"), "{}", describe(&out));
}
