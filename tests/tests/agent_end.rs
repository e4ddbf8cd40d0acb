//! How an iteration ends when the agent does not simply exit: after its final result event
//! (`exit_grace_secs`), on a stall (`idle_timeout_secs`), at the iteration timeout (SIGTERM, the
//! grace, SIGKILL), and the fair verdict after each: a story the worker completed stays
//! completed. Also what a worker inherits: no parent Claude Code variables, and a stdin that
//! ends. The workers are small shell scripts speaking Claude Code's stream-json.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sticler_proto::{ExitReason, StoryState, StoryView};
use sticler_tests::{describe, merge, poll, process_alive, story, Daemon, ProjectBuilder};

/// Marks the worker's story completed, atomically as a real worker does (temp file, rename).
const COMPLETE: &str = r#"sed 's/"status": "pending"/"status": "completed"/' "$STICLER_STATUS_FILE" > "$STICLER_STATUS_FILE.tmp" && mv "$STICLER_STATUS_FILE.tmp" "$STICLER_STATUS_FILE""#;
/// Claude Code's first and last stream-json lines.
const INIT: &str = r#"printf '%s\n' '{"type":"system","subtype":"init","session_id":"s-1","model":"m","tools":[]}'"#;
const RESULT: &str =
    r#"printf '%s\n' '{"type":"result","subtype":"success","is_error":false,"result":"done","total_cost_usd":0.01}'"#;

/// A project of `stories` whose worker is `script` (run by `sh -c`), merged with `config`.
fn project(script: &str, config: Value, stories: &[sticler_tests::StorySpec]) -> ProjectBuilder {
    let p = ProjectBuilder::new();
    let mut all = json!({"max_parallel_workers": 1, "worker": {"command": ["/bin/sh", "-c", script]}});
    merge(&mut all, config);
    p.config(all);
    p.phase(1, "decomposed", stories);
    p
}

fn start(daemon: &Daemon, p: &ProjectBuilder) {
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
}

fn wait_code(daemon: &Daemon, p: &ProjectBuilder) -> Option<i32> {
    daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code()
}

/// Every event of phase 1 until its run ended: (kind, the event, time in ms).
fn events(daemon: &Daemon, p: &ProjectBuilder) -> Vec<(String, Value, i64)> {
    daemon
        .project_events(p, &["watch", "1", "--since", "0"], 1)
        .into_iter()
        .map(|(kind, e)| (kind, e.clone(), e["time_ms"].as_i64().unwrap()))
        .collect()
}

fn ended(events: &[(String, Value, i64)], story: &str) -> Vec<Value> {
    events.iter().filter(|(k, e, _)| k == "iteration_ended" && e["story"] == story).map(|(_, e, _)| e.clone()).collect()
}

fn time_of(events: &[(String, Value, i64)], kind: &str, story: &str) -> i64 {
    events.iter().find(|(k, e, _)| k == kind && e["story"] == story).map(|(_, _, t)| *t).expect(kind)
}

fn story_view(daemon: &Daemon, p: &ProjectBuilder, id: &str) -> StoryView {
    sticler_tests::story_of(&daemon.phase_status(p.path(), 1), id).clone()
}

/// Waits (up to 5 s: the strays are swept just after the dispatch) until nothing the daemon
/// started is alive.
fn assert_no_process_left(daemon: &Daemon) {
    poll(Duration::from_secs(5), "no worker process left", || daemon.marked_processes().is_empty().then_some(()));
}

#[test]
fn a_worker_that_hangs_after_its_result_is_ended_within_the_exit_grace_and_its_story_completes() {
    let daemon = Daemon::start();
    let script = format!("{INIT}; {COMPLETE}; {RESULT}; sleep 600");
    let p = project(&script, json!({"worker": {"exit_grace_secs": 1}}), &[story("US-P1-001", &[])]);
    start(&daemon, &p);
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    let events = events(&daemon, &p);
    let took = time_of(&events, "story_completed", "US-P1-001") - time_of(&events, "iteration_started", "US-P1-001");
    assert!(took <= 3000, "completed {took} ms after the start: within exit_grace (1 s) + 2 s");
    let ends = ended(&events, "US-P1-001");
    assert_eq!(ends.len(), 1, "one iteration, never rerun: {ends:?}");
    assert_eq!((&ends[0]["exit"], &ends[0]["verdict"]), (&json!("after_result"), &json!("completed")));
    assert_no_process_left(&daemon);
    let s = story_view(&daemon, &p, "US-P1-001");
    assert_eq!((s.state, s.last_exit), (StoryState::Completed, Some(ExitReason::AfterResult)), "{s:?}");
    let human = daemon.ctl(&["-C", &p.path_str(), "status", "1", "US-P1-001"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("last ended:   ended after its result"),
        "{}",
        describe(&human)
    );
}

#[test]
fn a_grandchild_that_ignores_sigterm_is_gone_with_the_worker_after_its_result() {
    let daemon = Daemon::start();
    let pids = tempfile::tempdir().unwrap();
    let dir = pids.path().display();
    // An MCP server in the worker's group, and one that escaped into a session of its own; both
    // ignore SIGTERM, as a server busy with a request may.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {dir}/in-group; exec sleep 600' & \
         setsid sh -c 'trap \"\" TERM; echo $$ > {dir}/escaped; exec sleep 600' & \
         while [ ! -s {dir}/in-group ] || [ ! -s {dir}/escaped ]; do sleep 0.05; done; \
         {INIT}; {COMPLETE}; {RESULT}; sleep 600"
    );
    let p = project(&script, json!({"worker": {"exit_grace_secs": 1}}), &[story("US-P1-001", &[])]);
    start(&daemon, &p);
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    let read_pid = |name: &str| std::fs::read_to_string(pids.path().join(name)).unwrap().trim().parse::<i32>().unwrap();
    let (in_group, escaped) = (read_pid("in-group"), read_pid("escaped"));
    poll(Duration::from_secs(5), "both servers gone", || {
        (!process_alive(in_group) && !process_alive(escaped)).then_some(())
    });
    assert_no_process_left(&daemon);
    assert_eq!(ended(&events(&daemon, &p), "US-P1-001")[0]["verdict"], "completed");
}

/// A worker that exits having left a process in a session of its own (a detached `git gc`,
/// say): that process gets SIGTERM first, and the time to clean up after itself (git removes
/// its lock files), before anything harder.
#[test]
fn what_a_worker_left_detached_gets_sigterm_first() {
    let daemon = Daemon::start();
    let marks = tempfile::tempdir().unwrap();
    let dir = marks.path().display();
    let script = format!(
        "setsid sh -c 'trap \"echo cleaned > {dir}/cleaned; exit 0\" TERM; echo $$ > {dir}/escaped; \
         while :; do sleep 0.05; done' & \
         while [ ! -s {dir}/escaped ]; do sleep 0.05; done; {COMPLETE}"
    );
    let p = project(&script, json!({}), &[story("US-P1-001", &[])]);
    start(&daemon, &p);
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    let escaped: i32 = std::fs::read_to_string(marks.path().join("escaped")).unwrap().trim().parse().unwrap();
    poll(Duration::from_secs(10), "the detached process gone", || (!process_alive(escaped)).then_some(()));
    let cleaned = std::fs::read_to_string(marks.path().join("cleaned")).unwrap_or_default();
    assert_eq!(cleaned.trim(), "cleaned", "it had its SIGTERM, and the time to act on it");
    assert_no_process_left(&daemon);
}

#[test]
fn a_silent_worker_is_stalled_after_the_idle_timeout_retried_and_failed_after_retry_limit() {
    let daemon = Daemon::start();
    let config = json!({"retry_limit": 2, "worker": {"idle_timeout_secs": 1}});
    let p = project("sleep 600", config, &[story("US-P1-001", &[])]);
    start(&daemon, &p);
    // The second iteration shows its own number while it runs, not the first one's (nor the
    // worker's counter, still 0 in status.json).
    let running = poll(Duration::from_secs(20), "the second iteration running", || {
        let s = story_view(&daemon, &p, "US-P1-001");
        (s.runs == 2 && s.state == StoryState::Running).then_some(s)
    });
    assert_eq!((running.running_iteration, running.iteration), (Some(2), 0), "{running:?}");
    assert_eq!(running.last_exit, Some(ExitReason::Stalled));
    assert_eq!(wait_code(&daemon, &p), Some(4), "{}", daemon.dump(p.path()));
    let ends = ended(&events(&daemon, &p), "US-P1-001");
    assert_eq!(ends.len(), 2, "{ends:?}");
    for end in &ends {
        assert_eq!(end["exit"], "stalled");
        assert!(end["verdict"].as_str().unwrap().contains("no output for 1 s"), "{end}");
    }
    let reasons = p.status_json("US-P1-001")["failed_reasons"].to_string();
    assert!(
        reasons.contains("2 consecutive infrastructure failures") && reasons.contains("no output for 1 s"),
        "{reasons}"
    );
    assert_no_process_left(&daemon);
}

#[test]
fn a_worker_that_streams_events_or_writes_status_json_is_never_stalled() {
    let daemon = Daemon::start();
    // 3 s of life with a 1 s idle timeout: stream events first, then only status.json rewrites.
    let script = format!(
        "{INIT}; i=0; while [ $i -lt 6 ]; do printf '%s\\n' '{{\"type\":\"assistant\"}}'; sleep 0.25; i=$((i+1)); done; \
         i=0; while [ $i -lt 6 ]; do cp \"$STICLER_STATUS_FILE\" s.tmp && mv s.tmp \"$STICLER_STATUS_FILE\"; sleep 0.25; \
         i=$((i+1)); done; {COMPLETE}"
    );
    let p = project(&script, json!({"worker": {"idle_timeout_secs": 1}}), &[story("US-P1-001", &[])]);
    let started = Instant::now();
    start(&daemon, &p);
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    assert!(started.elapsed() >= Duration::from_millis(2900), "the worker lived its 3 s");
    let ends = ended(&events(&daemon, &p), "US-P1-001");
    assert_eq!(ends.len(), 1, "never killed, never rerun: {ends:?}");
    assert_eq!((&ends[0]["exit"], &ends[0]["verdict"]), (&json!({"exited": 0}), &json!("completed")));
}

#[test]
fn the_iteration_timeout_sends_sigterm_and_sigkill_only_after_the_grace() {
    let daemon = Daemon::start();
    let marks = tempfile::tempdir().unwrap();
    let term = marks.path().join("term");
    // A worker that survives SIGTERM (its sleeps do not) and notes when it came.
    let script = format!("trap 'date +%s%3N >> {}' TERM; {INIT}; while :; do sleep 0.1; done", term.display());
    let config = json!({"retry_limit": 1, "worker": {"iteration_timeout_secs": 1}});
    let p = project(&script, config, &[story("US-P1-001", &[])]);
    start(&daemon, &p);
    assert_eq!(wait_code(&daemon, &p), Some(4), "{}", daemon.dump(p.path()));
    let events = events(&daemon, &p);
    let termed: i64 = std::fs::read_to_string(&term).expect("SIGTERM came").lines().next().unwrap().parse().unwrap();
    let end = time_of(&events, "iteration_ended", "US-P1-001");
    let grace = end - termed;
    // The daemon's grace is 10 s (its default stop grace); the kill comes after it, not before.
    assert!((9_500..14_000).contains(&grace), "SIGKILL {grace} ms after SIGTERM");
    let ends = ended(&events, "US-P1-001");
    assert_eq!(ends[0]["exit"], "timed_out");
    assert!(ends[0]["verdict"].as_str().unwrap().contains("iteration timed out after 1 s"), "{}", ends[0]);
    let log = daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001"]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("sticler: the iteration timed out"), "{}", describe(&log));
    assert_no_process_left(&daemon);
}

#[test]
fn a_worker_killed_by_the_timeout_after_completing_its_story_is_completed_and_committed() {
    let daemon = Daemon::start();
    // The first story's worker completes it and then hangs, silent; the dependent's just works.
    let script = format!("case \"$STICLER_STORY_ID\" in US-P1-001) {COMPLETE}; sleep 600;; *) {COMPLETE};; esac");
    let config = json!({"worker": {"iteration_timeout_secs": 2}});
    let p = project(&script, config, &[story("US-P1-001", &[]), story("US-P1-002", &["US-P1-001"])]);
    start(&daemon, &p);
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    let events = events(&daemon, &p);
    let ends = ended(&events, "US-P1-001");
    assert_eq!(ends.len(), 1, "never rerun: {ends:?}");
    assert_eq!((&ends[0]["exit"], &ends[0]["verdict"]), (&json!("timed_out"), &json!("completed")));
    assert_eq!(ended(&events, "US-P1-002")[0]["verdict"], "completed", "the dependent ran");
    let status = p.status_json("US-P1-001");
    assert_eq!(status["status"], "completed");
    let hash = status["commit_hash"].as_str().unwrap().to_string();
    let subject = std::process::Command::new("git")
        .args(["log", "-1", "--format=%s", &hash])
        .current_dir(p.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&subject.stdout).starts_with("[US-P1-001]"), "{}", describe(&subject));
}

#[test]
fn workers_get_no_parent_claude_code_variables_and_a_stdin_that_ends() {
    let mut daemon = Daemon::unstarted();
    let mut command = daemon.command(&[]);
    // As if sticlerd had been started from inside a Claude Code session.
    command.env("CLAUDECODE", "1").env("CLAUDE_CODE_ENTRYPOINT", "cli").env("CLAUDE_CODE_SSE_PORT", "4711");
    command.env("STICLER_TEST_KEEP", "kept");
    daemon.spawn(command);
    daemon.wait_ready();
    let seen = tempfile::tempdir().unwrap();
    let dir = seen.path().display();
    // `cat` returns only at the end of stdin: with a stdin left open it would hang to the timeout.
    let script = format!("env > {dir}/env; cat > {dir}/stdin; {COMPLETE}");
    let config = json!({"retry_limit": 1, "worker": {"iteration_timeout_secs": 20, "env": {"CLAUDE_CODE_ENTRYPOINT": "sticler"}}});
    let p = project(&script, config, &[story("US-P1-001", &[])]);
    start(&daemon, &p);
    assert_eq!(wait_code(&daemon, &p), Some(0), "{}", daemon.dump(p.path()));
    let env = std::fs::read_to_string(seen.path().join("env")).unwrap();
    let vars: Vec<&str> = env.lines().collect();
    assert!(!vars.iter().any(|v| v.starts_with("CLAUDECODE=") || v.starts_with("CLAUDE_CODE_SSE_PORT=")), "{env}");
    assert!(vars.contains(&"CLAUDE_CODE_ENTRYPOINT=sticler"), "the config's env sets it: {env}");
    assert!(vars.contains(&"STICLER_TEST_KEEP=kept"), "other variables are inherited: {env}");
    let stdin = std::fs::read_to_string(seen.path().join("stdin")).unwrap();
    assert_eq!(stdin, p.read(&format!("{}/spec.md", p.story_rel("US-P1-001"))));
}
