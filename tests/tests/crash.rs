//! The daemon dies (SIGKILL) or is restarted (SIGTERM) in the middle of a run: the next daemon
//! adopts the workers still running, kills what else the old one left, resumes the run from the
//! files on disk, and nothing is lost, duplicated or orphaned.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use sticler_proto::StoryState;
use sticler_tests::{describe, poll, story, Daemon, ProjectBuilder, StorySpec};

/// A small xorshift generator: the kill moments are random but replayable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn phase_of(n: usize) -> Vec<StorySpec> {
    phase_working(n, 40)
}

/// `n` stories of 3 iterations, each iteration's worker working `work_ms`.
fn phase_working(n: usize, work_ms: u64) -> Vec<StorySpec> {
    (1..=n)
        .map(|i| {
            let id = format!("US-P1-{i:03}");
            let deps: Vec<String> = if i > 3 { vec![format!("US-P1-{:03}", i - 3)] } else { vec![] };
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            story(&id, &deps).criteria(3).script(json!({"sleep_ms": work_ms, "files": [format!("src/{id}.txt")]}))
        })
        .collect()
}

fn assert_finished_cleanly(daemon: &Daemon, p: &ProjectBuilder, n: usize) {
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    if out.status.code() != Some(0) {
        let graph = Command::new("git")
            .arg("-C")
            .arg(p.path())
            .args(["log", "--all", "--graph", "--format=%h %s", "--name-only"])
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&graph.stdout));
    }
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let log = Command::new("git").arg("-C").arg(p.path()).args(["log", "--format=%s"]).output().unwrap();
    let subjects = String::from_utf8(log.stdout).unwrap();
    for i in 1..=n {
        let id = format!("US-P1-{i:03}");
        let count = subjects.lines().filter(|s| s.starts_with(&format!("[{id}]"))).count();
        assert_eq!(count, 1, "{id} must have exactly one commit:\n{subjects}");
        let status: Value = serde_json::from_str(&p.read(&format!("{}/status.json", p.story_rel(&id)))).unwrap();
        assert_eq!(status["status"], "completed", "{id}\n{}", daemon.log_text());
        assert!(!status["commit_hash"].as_str().unwrap().is_empty(), "{id}\n{}", daemon.log_text());
    }
    poll(Duration::from_secs(10), "no worker process left", || daemon.marked_processes().is_empty().then_some(()));
}

#[test]
fn kill_9_at_random_moments_loses_nothing_duplicates_nothing_orphans_nothing() {
    let seed = std::env::var("STICLER_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let kills: usize = std::env::var("STICLER_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    // Longer work makes the kills land in the middle of more iterations (adopted, not restarted).
    let work_ms: u64 = std::env::var("STICLER_CRASH_WORK_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    println!("crash test seed {seed} (replay with STICLER_CRASH_SEED={seed}), {kills} kills, {work_ms} ms of work");
    let mut rng = Rng(seed);
    let n = 30;
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": 4}));
    p.phase(1, "decomposed", &phase_working(n, work_ms));
    // Each daemon incarnation has a live watcher; what it saw must never be numbered again.
    let watches = tempfile::tempdir().unwrap();
    let watch = |daemon: &Daemon, k: usize| {
        let out = std::fs::File::create(watches.path().join(format!("{k}.jsonl"))).unwrap();
        let child = daemon.ctl_command(&["--json", "watch"]).stdout(out).spawn().unwrap();
        sticler_tests::wait_socket_connected(child.id());
        child
    };
    let mut watchers = vec![watch(&daemon, 0)];
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    for k in 1..=kills {
        // Fault injection, not synchronisation: the moment of the kill is the random input.
        std::thread::sleep(Duration::from_millis(50 + rng.next(400)));
        daemon.signal_and_wait(Signal::SIGKILL);
        // A watcher would connect to the next daemon and go on: it stops with its daemon here,
        // so that what each incarnation numbered is compared with what the next one numbers.
        if let Some(w) = watchers.last_mut() {
            let _ = w.kill();
            let _ = w.wait();
        }
        daemon.launch(&[]);
        watchers.push(watch(&daemon, k));
    }
    assert_finished_cleanly(&daemon, &p, n);
    // The workers running at each kill: adopted by the next daemon, never started again.
    let log = daemon.log_text();
    let adopted = log.matches("adopted the running worker").count();
    let restarted = log.matches("killed the recorded worker: not adoptable").count();
    let swept = log.matches("leftover process(es) of the run carrying its token").count();
    println!(
        "crash test: {kills} kills survived, {adopted} iterations adopted, {restarted} restarted, \
         {swept} recoveries killed unrecorded leftovers"
    );
    assert_eq!(restarted, 0, "no iteration in flight is killed and started again");
    for mut w in watchers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let mut seen_max = 0;
    for k in 0..=kills {
        let text = std::fs::read_to_string(watches.path().join(format!("{k}.jsonl"))).unwrap();
        let seqs: Vec<u64> =
            text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_u64()).collect();
        if let Some(first) = seqs.first() {
            assert!(*first > seen_max, "incarnation {k} reused event number {first} (seen up to {seen_max})");
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "incarnation {k}: numbers must only grow");
        seen_max = seen_max.max(seqs.last().copied().unwrap_or(0));
    }
}

/// A daemon running `phase_of(6)`, once its first story completed.
fn six_stories_one_completed() -> (Daemon, ProjectBuilder) {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &phase_of(6));
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    poll(Duration::from_secs(20), "a first story completed", || {
        (daemon.phase_status(p.path(), 1).counts.completed >= 1).then_some(())
    });
    (daemon, p)
}

#[test]
fn a_graceful_restart_resumes_the_run() {
    let (mut daemon, p) = six_stories_one_completed();
    let status = daemon.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let config: Value = serde_json::from_str(&p.read("phases/phase_1/phase_config.json")).unwrap();
    assert_eq!(config["status"], "in_progress", "a shutdown does not stop the phase");
    assert!(daemon.marked_processes().is_empty(), "no worker outlives a graceful shutdown");
    daemon.launch(&[]);
    assert_finished_cleanly(&daemon, &p, 6);
}

#[test]
fn a_run_stopped_by_the_user_stays_stopped_after_a_restart() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "hang"}))]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code(), Some(5));
    daemon.signal_and_wait(Signal::SIGTERM);
    daemon.launch(&[]);
    let phase = daemon.phase_status(p.path(), 1);
    assert!(!phase.running);
    assert_eq!(phase.status, "stopped");
}

#[test]
fn status_json_replaced_by_a_folder_mid_run_fails_the_story_safely() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"retry_limit": 2}));
    p.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &[]).criteria(20).script(json!({"sleep_ms": 100})), story("US-P1-002", &["US-P1-001"])],
    );
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let status = p.path().join("phases/phase_1/stories/US-P1-001/status.json");
    poll(Duration::from_secs(20), "a first iteration", || {
        (daemon.phase_status(p.path(), 1).stories[0].iteration >= 1).then_some(())
    });
    std::fs::remove_file(&status).unwrap();
    std::fs::create_dir(&status).unwrap();
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    assert!(status.is_dir(), "sticler never replaces what it cannot read");
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.stories[1].state, StoryState::Blocked);
    let problems: Vec<String> = phase.problems.iter().map(ToString::to_string).collect();
    let problems = problems.join("\n");
    assert!(problems.contains("US-P1-001/status.json") && problems.contains("directory"), "{problems}");
    assert!(daemon.ctl(&["ping"]).status.success());
}

/// The counts of a story survive a crash: a worker that keeps failing is not given a fresh
/// retry_limit by each restart of the daemon.
#[test]
fn a_failure_streak_survives_a_kill_9() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"retry_limit": 3}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "crash", "sleep_ms": 1000}))]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let log = |daemon: &Daemon, n: &str| {
        let out = daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001", "--iteration", n]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // Two failed iterations judged, the third at work.
    poll(Duration::from_secs(20), "a third iteration", || log(&daemon, "3").filter(|l| l.contains("Working")));
    sticler_tests::state_dir::wait_start_recorded(&daemon, "US-P1-001", 3);
    daemon.signal_and_wait(Signal::SIGKILL);
    daemon.launch(&[]);
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let status = p.status_json("US-P1-001");
    let reasons = status["failed_reasons"].to_string();
    assert!(reasons.contains("3 consecutive infrastructure failures"), "{reasons}");
    // The third iteration is adopted and judged on status.json (unchanged: a failure) as the
    // third of the streak.
    assert!(reasons.contains("exit code unknown (adopted) without any change to status.json"), "{reasons}");
    assert!(log(&daemon, "4").is_none(), "no more than retry_limit failures in all:\n{}", daemon.dump(p.path()));
}

/// A store sticlerd cannot open is named with what to do; once it is moved aside, starting the
/// phase again resumes from the files on disk, each story still with exactly one commit.
#[test]
fn an_unreadable_store_is_named_and_moving_it_aside_resumes_from_disk() {
    let (mut daemon, p) = six_stories_one_completed();
    daemon.signal_and_wait(Signal::SIGKILL);

    let store = daemon.state_dir.join("store");
    let aside = daemon.tmp.path().join("store.damaged");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"not a sled store").unwrap();
    let mut child = daemon.command(&[]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let status = poll(Duration::from_secs(20), "sticlerd to refuse the store", || child.try_wait().unwrap());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&store.display().to_string()) && stderr.contains("move it aside"), "{stderr}");
    assert!(p.path().join("phases/phase_1/phase_config.json").exists());

    std::fs::remove_file(&store).unwrap();
    daemon.launch(&[]);
    // A fresh store knows no run; the phase on disk is still in_progress and starts again.
    assert!(!daemon.phase_status(p.path(), 1).running);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    assert_finished_cleanly(&daemon, &p, 6);
}

/// Workers of a daemon whose store is lost are not left to race a new run of their phase.
#[test]
fn a_new_run_kills_workers_left_by_a_daemon_whose_store_was_lost() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let pids_file = p.path().join("pids");
    let slow = json!({"sleep_ms": 600_000, "pids_file": pids_file.display().to_string()});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(slow)]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let old: i32 = poll(Duration::from_secs(20), "the worker's pid", || {
        std::fs::read_to_string(&pids_file).ok()?.lines().next()?.trim().parse().ok()
    });
    daemon.signal_and_wait(Signal::SIGKILL);
    assert!(sticler_tests::process_alive(old), "the worker outlives its daemon");
    std::fs::remove_dir_all(daemon.state_dir.join("store")).unwrap();
    let mut status = p.status_json("US-P1-001");
    status["script"] = json!({});
    p.write(&format!("{}/status.json", p.story_rel("US-P1-001")), &status.to_string());

    daemon.launch(&[]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    poll(Duration::from_secs(10), "the old worker killed", || (!sticler_tests::process_alive(old)).then_some(()));
    assert_finished_cleanly(&daemon, &p, 1);
}

/// The number after "wall time " in a run's summary, in seconds.
fn wall_time(summary: &str) -> f64 {
    let rest = summary.split("wall time ").nth(1).unwrap_or_else(|| panic!("no wall time in {summary:?}"));
    rest.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("wall time in {summary:?}"))
}

/// A run that spans a kill -9 is summed whole: wall time from its first start, the iteration
/// that ended while no daemon ran (counted, its cost read from its log), and `watch` shows the
/// story completed meanwhile as completed. A story of a later phase waiting for it starts too.
#[test]
fn a_run_across_a_kill_9_is_summed_whole_and_what_completed_meanwhile_is_announced() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    let pids = p.path().join("pids");
    let slow = json!({"sleep_ms": 1500, "agent_output": "claude", "cost_usd": 0.25, "pids_file": pids});
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).script(json!({"agent_output": "claude", "cost_usd": 0.5})),
            story("US-P1-002", &["US-P1-001"]).script(slow),
        ],
    );
    p.phase(2, "decomposed", &[story("US-P2-001", &["US-P1-002"])]);
    let dir = p.path_str();
    let started = std::time::Instant::now();
    assert!(daemon.ctl(&["-C", &dir, "start", "1"]).status.success());
    let worker: i32 = poll(Duration::from_secs(20), "US-P1-002's worker", || {
        std::fs::read_to_string(&pids).ok()?.lines().next()?.trim().parse().ok()
    });
    // Starting a run flushes the store (its record must be durable before any worker exists),
    // and with it the story records otherwise written within 500 ms: what is counted below.
    assert!(daemon.ctl(&["-C", &dir, "start", "2"]).status.success());
    daemon.signal_and_wait(Signal::SIGKILL);
    poll(Duration::from_secs(20), "the worker to end on its own", || {
        (!sticler_tests::process_alive(worker)).then_some(())
    });
    assert_eq!(p.status_json("US-P1-002")["status"], "completed", "it completed while no daemon ran");
    let before_restart = started.elapsed().as_secs_f64();
    daemon.launch(&[]);

    let out = daemon.ctl(&["-C", &dir, "wait", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let summary = daemon.phase_status(p.path(), 1).summary.unwrap_or_default();
    assert!(summary.starts_with("2/2 stories completed, 2 iterations"), "{summary}");
    assert!(summary.contains("cost $0.75"), "{summary}");
    // The summary rounds to a tenth, and the run's start is a little after `started`; a wall
    // time counted from the restart would miss the 1.5 s the worker slept before it.
    let wall = wall_time(&summary);
    assert!(wall + 0.2 >= before_restart, "wall time of the whole run ({before_restart:.1} s): {summary}");
    let out = daemon.ctl(&["-C", &dir, "wait", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));

    let events = daemon.project_events(&p, &["watch", "1", "--since", "0"], 1);
    let completed =
        |story: &str| events.iter().any(|(kind, event)| kind == "story_completed" && event.to_string().contains(story));
    assert!(completed("US-P1-002"), "watch shows US-P1-002 completed: {events:#?}");
}
