//! A daemon that ends while agents work (`kill -9`, `shutdown --keep-workers`, `upgrade`) leaves
//! them running: the next daemon (or the next image of the same one) adopts each worker that
//! provably is its own, supervises it to its end and judges it once. No iteration starts again,
//! no story gets a second commit, each iteration shows once in the events; a pid that was
//! reused by an unrelated process is neither adopted nor killed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sticler_proto::{ExitReason, StoryState};
use sticler_tests::{bin, describe, poll, story, story_of, Daemon, ProjectBuilder, StorySpec};

const STORIES: [&str; 3] = ["US-P1-001", "US-P1-002", "US-P1-003"];

/// Stories each done in one iteration whose worker works for `ms`.
fn slow_stories(ms: u64) -> Vec<StorySpec> {
    STORIES
        .iter()
        .map(|id| story(id, &[]).script(json!({"sleep_ms": ms, "files": [format!("src/{id}.txt")]})))
        .collect()
}

fn log_of(daemon: &Daemon, p: &ProjectBuilder, story: &str, iteration: u32) -> Option<String> {
    let out = daemon.ctl(&["-C", &p.path_str(), "logs", story, "--iteration", &iteration.to_string()]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until each story's worker has printed `text` and its start is durable.
fn wait_printed(daemon: &Daemon, p: &ProjectBuilder, stories: &[&str], text: &str) {
    for id in stories {
        poll(Duration::from_secs(30), &format!("{id}'s worker at work"), || {
            log_of(daemon, p, id, 1).filter(|log| log.contains(text)).map(drop)
        });
        sticler_tests::state_dir::wait_start_recorded(daemon, id, 1);
    }
}

fn commits_of(p: &ProjectBuilder, story: &str) -> usize {
    let log = Command::new("git").arg("-C").arg(p.path()).args(["log", "--format=%s"]).output().expect("git log");
    String::from_utf8_lossy(&log.stdout).lines().filter(|s| s.starts_with(&format!("[{story}]"))).count()
}

/// The phase completed; every story ran its one iteration to the end (its whole output in its
/// log), never a second, and has one commit; every iteration started and ended once in the
/// events. Returns how the last iteration of each story ended.
fn assert_each_ran_once(daemon: &Daemon, p: &ProjectBuilder, stories: &[&str]) -> Vec<Option<ExitReason>> {
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    for id in stories {
        let log = log_of(daemon, p, id, 1).unwrap_or_default();
        let whole = log.contains("=== sticler-test-worker") && log.contains("Status: COMPLETED");
        assert!(whole, "{id}'s whole output:\n{log}");
        assert!(log_of(daemon, p, id, 2).is_none(), "{id} was started again:\n{}", daemon.dump(p.path()));
        assert_eq!(commits_of(p, id), 1, "{id} has one commit");
    }
    let events = daemon.project_events(p, &["watch", "--since", "0"], 1);
    for id in stories {
        for kind in ["iteration_started", "iteration_ended"] {
            let seen = events.iter().filter(|(k, e)| k == kind && story_in(e, kind) == Some(*id)).count();
            assert_eq!(seen, 1, "{id}: {kind} once in {events:#?}");
        }
    }
    let phase = daemon.phase_status(p.path(), 1);
    stories.iter().map(|id| story_of(&phase, id).last_exit).collect()
}

/// The story an event is about, in the nested (`{"kind": {"iteration_started": {...}}}`) or
/// the flat (`{"kind": "iteration_started", "story": ...}`) event shape.
fn story_in<'a>(event: &'a Value, kind: &str) -> Option<&'a str> {
    event.pointer(&format!("/kind/{kind}/story")).or_else(|| event.get("story")).and_then(Value::as_str)
}

#[test]
fn a_kill_9_while_three_iterations_run_adopts_them_all() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &slow_stories(5000));
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    wait_printed(&daemon, &p, &STORIES, "Working for");
    daemon.signal_and_wait(Signal::SIGKILL);
    let workers = daemon.marked_processes();
    assert_eq!(workers.len(), 3, "the workers outlive their daemon: {workers:?}");
    daemon.launch(&[]);
    let exits = assert_each_ran_once(&daemon, &p, &STORIES);
    assert!(exits.iter().all(|e| *e == Some(ExitReason::Unknown)), "not our children any more: {exits:?}");
    assert_eq!(daemon.log_text().matches("adopted the running worker").count(), 3);
    poll(Duration::from_secs(10), "no worker left", || daemon.marked_processes().is_empty().then_some(()));
}

/// The bug the adoption fixes: a worker that committed and was killed before it wrote
/// status.json did its work again in a fresh iteration, and committed again.
#[test]
fn a_worker_that_committed_before_the_crash_is_not_run_again() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    let script = json!({"commit": true, "status_after_commit_ms": 3000, "files": ["src/a.txt"]});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(script)]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    wait_printed(&daemon, &p, &["US-P1-001"], "Writing status.json in");
    assert_eq!(commits_of(&p, "US-P1-001"), 1, "committed before the kill");
    daemon.signal_and_wait(Signal::SIGKILL);
    daemon.launch(&[]);
    assert_each_ran_once(&daemon, &p, &["US-P1-001"]);
    let status = p.status_json("US-P1-001");
    assert_eq!(status["status"], "completed");
    assert!(!status["commit_hash"].as_str().unwrap_or_default().is_empty(), "its commit is recorded: {status}");
}

#[test]
fn shutdown_keep_workers_then_a_start_adopts_them() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &slow_stories(4000)[..2]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    wait_printed(&daemon, &p, &STORIES[..2], "Working for");
    let out = daemon.ctl(&["shutdown", "--keep-workers"]);
    assert!(out.status.success(), "{}", describe(&out));
    poll(Duration::from_secs(20), "the daemon gone", || (!daemon.running()).then_some(()));
    assert_eq!(daemon.marked_processes().len(), 2, "the workers keep running");
    assert!(cleanup(&daemon, "success").success(), "systemd's ExecStopPost after the shutdown");
    assert_eq!(daemon.marked_processes().len(), 2, "--cleanup leaves workers kept on purpose");
    daemon.launch(&[]);
    assert_each_ran_once(&daemon, &p, &STORIES[..2]);
    assert!(daemon.log_text().contains("its workers keep running for the next one to adopt"));
}

/// A copy of sticlerd at `to`, written by `cp`: a file this test process had open for writing
/// could be inherited by a process another test forks meanwhile, and executing it would then
/// fail with "text file busy".
fn copy_binary(to: &Path) {
    let status = Command::new("cp").arg(bin("sticlerd")).arg(to).status().expect("run cp");
    assert!(status.success(), "cp sticlerd");
}

/// The harness's sticlerd command, running `binary` instead.
fn command_of(daemon: &Daemon, binary: &Path) -> Command {
    let template = daemon.command(&[]);
    let mut command = Command::new(binary);
    command.args(template.get_args()).envs(template.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&daemon.log).expect("daemon log");
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    command
}

/// `upgrade` re-executes the binary at the daemon's path (a new file installed there) under the
/// same pid: the workers stay its children, so their real exit codes are known.
#[test]
fn an_upgrade_in_place_keeps_the_run_going() {
    let mut daemon = Daemon::unstarted();
    let binary = daemon.tmp.path().join("bin").join("sticlerd");
    std::fs::create_dir_all(binary.parent().expect("bin folder")).expect("mkdir");
    copy_binary(&binary);
    daemon.spawn(command_of(&daemon, &binary));
    daemon.wait_ready();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &slow_stories(4000));
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    wait_printed(&daemon, &p, &STORIES, "Working for");
    // Streams open across the upgrade: they connect again and go on where they were.
    let streams = tempfile::tempdir().expect("tempdir");
    let stream = |name: &str, args: &[&str]| {
        let out = std::fs::File::create(streams.path().join(name)).expect("stream file");
        let child = daemon.ctl_command(args).stdout(out).spawn().expect("spawn sticlerctl");
        sticler_tests::wait_socket_connected(child.id());
        child
    };
    let mut watch = stream("watch", &["--json", "-C", &p.path_str(), "watch", "1", "--since", "0"]);
    let mut follow = stream("logs", &["-C", &p.path_str(), "logs", "US-P1-001", "-f"]);
    let mut wait = stream("wait", &["-C", &p.path_str(), "wait", "1"]);
    let before = daemon.ctl_json(&["version"]);
    // A new binary installed over the running one, as a package manager does (a rename).
    let new = binary.with_extension("new");
    copy_binary(&new);
    std::fs::rename(&new, &binary).expect("install the new binary");
    let out = daemon.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", describe(&out));
    let after = poll(Duration::from_secs(20), "the new image serving", || {
        let out = daemon.ctl(&["--json", "version"]);
        let version: Value = serde_json::from_slice(&out.stdout).ok()?;
        (version["daemon_started_ms"].as_u64()? > before["daemon_started_ms"].as_u64()?).then_some(version)
    });
    assert_eq!(after["daemon_pid"], before["daemon_pid"], "the same process");
    assert_eq!(after["daemon_pid"].as_u64(), Some(u64::from(daemon.pid())));
    let exits = assert_each_ran_once(&daemon, &p, &STORIES);
    assert!(exits.iter().all(|e| *e == Some(ExitReason::Exited(0))), "still its children: {exits:?}");
    assert!(daemon.running(), "the daemon the harness started is the one serving");

    let waited = poll(Duration::from_secs(20), "wait to end with the run", || wait.try_wait().ok().flatten());
    assert_eq!(waited.code(), Some(0), "wait went on across the upgrade");
    let followed = poll(Duration::from_secs(20), "logs -f to end with the run", || follow.try_wait().ok().flatten());
    assert!(followed.success());
    let log = std::fs::read_to_string(streams.path().join("logs")).expect("logs -f output");
    let expected = log_of(&daemon, &p, "US-P1-001", 1).expect("the log");
    assert_eq!(log, expected, "logs -f showed the whole log once, across the upgrade");
    let text = poll(Duration::from_secs(20), "watch to show the run's end", || {
        let text = std::fs::read_to_string(streams.path().join("watch")).ok()?;
        text.contains("run_ended").then_some(text)
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let seqs: Vec<u64> = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "no event twice, in order: {seqs:?}");
    let stored: Vec<u64> = daemon
        .project_events(&p, &["watch", "1", "--since", "0"], 1)
        .iter()
        .filter_map(|(_, e)| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, stored, "watch missed nothing across the upgrade");
}

/// The store's record of a story, as sticlerd encodes it (`store::StoryRecord`, format 1).
#[derive(Debug, Serialize, Deserialize)]
struct StoryRecord {
    state: StoryState,
    iterations: u32,
    infra_streak: u32,
    pid: Option<i32>,
    start_time: Option<u64>,
    last_exit: Option<String>,
    log: Option<String>,
}

/// Points the story's record at `pid` with `start_time`, as if the kernel had given the
/// recorded worker's pid to another process since.
fn record_pid(state_dir: &Path, project: &Path, story: &str, pid: i32, start_time: u64) {
    let db = sled::open(state_dir.join("store")).expect("open the store");
    let tree = db.open_tree("story_records").expect("story records");
    let root = std::fs::canonicalize(project).expect("canonical project");
    let key = format!("{}\0{}\0{story}", root.display(), 1);
    let stored = tree.get(&key).expect("read").expect("the story's record");
    let config = bincode::config::standard();
    let (mut record, _): (StoryRecord, usize) =
        bincode::serde::decode_from_slice(&stored[1..], config).expect("a record of format 1");
    record.pid = Some(pid);
    record.start_time = Some(start_time);
    let mut value = vec![stored[0]];
    value.extend(bincode::serde::encode_to_vec(&record, config).expect("encode"));
    tree.insert(&key, value).expect("write");
    db.flush().expect("flush");
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace().nth(19).and_then(|t| t.parse().ok()).expect("start time")
}

#[test]
fn a_reused_pid_is_never_adopted_and_never_killed() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let pids_file = p.path().join("pids");
    let hang = json!({"sleep_ms": 600_000, "pids_file": pids_file.display().to_string()});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(hang)]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let worker: i32 = poll(Duration::from_secs(20), "the worker's pid", || {
        std::fs::read_to_string(&pids_file).ok()?.lines().next()?.trim().parse().ok()
    });
    wait_printed(&daemon, &p, &["US-P1-001"], "Working for");
    daemon.signal_and_wait(Signal::SIGKILL);
    // The worker is gone; an unrelated process now has "its" pid (another start time).
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).expect("kill the worker");
    poll(Duration::from_secs(10), "the worker gone", || (!sticler_tests::process_alive(worker)).then_some(()));
    let mut unrelated = Command::new("sleep").arg("120").stdin(Stdio::null()).spawn().expect("spawn sleep");
    let pid = unrelated.id();
    record_pid(&daemon.state_dir, p.path(), "US-P1-001", pid as i32, start_time(pid) + 1);
    let mut status = p.status_json("US-P1-001");
    status["script"] = json!({});
    p.write(&format!("{}/status.json", p.story_rel("US-P1-001")), &status.to_string());

    daemon.launch(&[]);
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    assert!(log_of(&daemon, &p, "US-P1-001", 2).is_some(), "a fresh iteration, nothing adopted");
    assert!(!daemon.log_text().contains("adopted the running worker"));
    assert!(matches!(unrelated.try_wait(), Ok(None)), "the unrelated process is never touched");
    let _ = unrelated.kill();
    let _ = unrelated.wait();
}

/// `sticlerd --cleanup` as systemd's ExecStopPost= runs it, with `SERVICE_RESULT` set.
fn cleanup(daemon: &Daemon, service_result: &str) -> std::process::ExitStatus {
    daemon.command(&["--cleanup"]).env("SERVICE_RESULT", service_result).status().expect("run sticlerd --cleanup")
}

/// A failed daemon's workers are left for the restarted one (Restart=on-failure); after a stop,
/// or a daemon that is gone for good, `--cleanup` leaves none.
#[test]
fn cleanup_keeps_a_failed_daemons_workers_for_its_restart_and_kills_the_rest() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &slow_stories(600_000)[..1]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    wait_printed(&daemon, &p, &STORIES[..1], "Working for");
    assert!(!cleanup(&daemon, "success").success(), "refused while the daemon serves");
    assert_eq!(daemon.marked_processes().len(), 1);
    daemon.signal_and_wait(Signal::SIGKILL);
    for failed in ["signal", "core-dump", "watchdog", "exit-code"] {
        assert!(cleanup(&daemon, failed).success());
        assert_eq!(daemon.marked_processes().len(), 1, "after {failed}: kept for the restart to adopt");
    }
    assert!(cleanup(&daemon, "success").success());
    poll(Duration::from_secs(10), "no worker left", || daemon.marked_processes().is_empty().then_some(()));
}

/// How long process `pid` has been running.
fn age(pid: i32) -> Duration {
    let uptime = std::fs::read_to_string("/proc/uptime").expect("uptime");
    let uptime: f64 = uptime.split_whitespace().next().and_then(|u| u.parse().ok()).expect("seconds");
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64((uptime - start_time(pid as u32) as f64 / ticks).max(0.0))
}

/// The iteration timeout counts from the worker's start, not from its adoption: a worker older
/// than the timeout when adopted is ended at once (counted from its adoption, this one would
/// finish its work first and complete).
#[test]
fn the_iteration_timeout_counts_from_an_adopted_workers_start() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"worker": {"iteration_timeout_secs": 5}, "retry_limit": 1}));
    let pids_file = p.path().join("pids");
    let script = json!({"sleep_ms": 7000, "pids_file": pids_file.display().to_string()});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(script)]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let worker: i32 = poll(Duration::from_secs(20), "the worker's pid", || {
        std::fs::read_to_string(&pids_file).ok()?.lines().next()?.trim().parse().ok()
    });
    sticler_tests::state_dir::wait_start_recorded(&daemon, "US-P1-001", 1);
    // The daemon frozen, so that it does not end the worker itself at the timeout.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid() as i32), Signal::SIGSTOP).expect("SIGSTOP");
    poll(Duration::from_secs(20), "the worker older than the timeout", || {
        (age(worker) > Duration::from_millis(5500)).then_some(())
    });
    daemon.signal_and_wait(Signal::SIGKILL);
    daemon.launch(&[]);
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(story_of(&phase, "US-P1-001").last_exit, Some(ExitReason::TimedOut));
    assert!(log_of(&daemon, &p, "US-P1-001", 2).is_none(), "the adopted iteration was its last");
}

/// `kill` reaches an adopted worker's whole tree, its group and the descendant that escaped
/// into a session of its own, although none of them is the daemon's child.
#[test]
fn kill_ends_an_adopted_worker_and_its_strays() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let pids_file = p.path().join("pids");
    let script = json!({"mode": "ignore_term_fork", "pids_file": pids_file.display().to_string()});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(script)]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    let tree: Vec<i32> = poll(Duration::from_secs(20), "the worker's tree", || {
        let pids: Vec<i32> = std::fs::read_to_string(&pids_file).ok()?.lines().filter_map(|l| l.parse().ok()).collect();
        (pids.len() == 3).then_some(pids)
    });
    sticler_tests::state_dir::wait_start_recorded(&daemon, "US-P1-001", 1);
    daemon.signal_and_wait(Signal::SIGKILL);
    daemon.launch(&[]);
    // The resumed run's task adopts it just after the daemon serves.
    poll(Duration::from_secs(20), "the worker adopted", || {
        daemon.log_text().contains("adopted the running worker").then_some(())
    });
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
    assert_eq!(daemon.ctl(&["-C", &p.path_str(), "wait", "1"]).status.code(), Some(5), "stopped");
    poll(Duration::from_secs(10), "the whole tree gone", || {
        tree.iter().all(|pid| !sticler_tests::process_alive(*pid)).then_some(())
    });
    assert!(daemon.marked_processes().is_empty());
}

/// Under systemd an upgrade is a reload of the same main process: RELOADING=1 (with
/// MONOTONIC_USEC), then READY=1 and the watchdog from the new image, which was handed the
/// notify socket; the pid never changes.
#[test]
fn an_upgrade_under_systemd_is_a_reload_of_the_same_main_process() {
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};
    let mut daemon = Daemon::unstarted();
    let notify_path = daemon.tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().expect("lines").extend(text.lines().map(str::to_string));
        }
    });
    let seen = || lines.lock().expect("lines").clone();
    let mut command = daemon.command(&[]);
    command.env("NOTIFY_SOCKET", &notify_path).env("WATCHDOG_USEC", "2000000");
    daemon.spawn(command);
    daemon.wait_ready();
    poll(Duration::from_secs(20), "READY=1", || seen().contains(&"READY=1".to_string()).then_some(()));
    let pid = daemon.pid();
    let out = daemon.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", describe(&out));
    let after_reload = |line: &str| {
        let lines = seen();
        let reload = lines.iter().position(|l| l == "RELOADING=1")?;
        lines[reload..].iter().any(|l| l == line).then_some(lines)
    };
    let lines_now = poll(Duration::from_secs(20), "READY=1 after RELOADING=1", || after_reload("READY=1"));
    let reload = lines_now.iter().position(|l| l == "RELOADING=1").expect("RELOADING=1");
    assert!(lines_now[reload + 1].starts_with("MONOTONIC_USEC="), "{lines_now:?}");
    poll(Duration::from_secs(20), "the new image feeding the watchdog", || {
        let lines = after_reload("READY=1")?;
        let ready = lines.iter().rposition(|l| l == "READY=1")?;
        lines[ready..].iter().any(|l| l == "WATCHDOG=1").then_some(())
    });
    let version = daemon.ctl_json(&["version"]);
    assert_eq!(version["daemon_pid"].as_u64(), Some(u64::from(pid)), "the same main pid");
    assert!(daemon.running());
}
