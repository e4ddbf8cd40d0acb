//! Single-figure benchmarks: `status --json` against `pueue status --json`, callgrind instructions
//! of one status request, validating and starting a 10,000-story phase, idle RSS.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sticler_tests::{bin, poll, story, Daemon, ProjectBuilder, StorySpec};

use crate::measure::{median, status_kib};
use crate::pueue::Pueue;

/// A phase of `stories` stories with 3 criteria, each depending on the story 8 before it.
fn big_phase(stories: usize, script: serde_json::Value) -> ProjectBuilder {
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": 8}));
    let list: Vec<StorySpec> = (1..=stories)
        .map(|i| {
            let deps: Vec<String> = if i > 8 { vec![format!("US-P1-{:05}", i - 8)] } else { vec![] };
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            story(&format!("US-P1-{i:05}"), &deps).criteria(3).script(script.clone())
        })
        .collect();
    p.phase(1, "decomposed", &list);
    p
}

/// Median whole-process time in ms of `runs` runs of `command` after 2 warm-up runs.
fn time_command(runs: usize, mut command: impl FnMut() -> Command) -> f64 {
    let mut times = vec![];
    for i in 0..runs + 2 {
        let start = Instant::now();
        let out = command().stdout(Stdio::null()).output().expect("run");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if i >= 2 {
            times.push(ms);
        }
    }
    median(times)
}

pub struct StatusFigures {
    pub sticler_ms: f64,
    pub pueue_ms: Option<f64>,
    pub idle_rss_kib: u64,
    pub rss_after_kib: u64,
}

pub fn status(stories: usize, pueue_bin: Option<&Path>) -> StatusFigures {
    let daemon = Daemon::start();
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss_kib = status_kib(daemon.pid(), "VmRSS");
    let p = big_phase(stories, json!({}));
    let dir = p.path_str();
    let sticler_ms = time_command(20, || daemon.ctl_command(&["--json", "-C", &dir, "status", "1"]));
    let rss_after_kib = status_kib(daemon.pid(), "VmRSS");
    let pueue_ms = pueue_bin.map(|bin| {
        let q = Pueue::start(bin, 8);
        // Queued in the paused group: as many tasks as stories, none running.
        for i in 0..stories {
            q.add(p.path(), &format!("echo task {i}"), &[]);
        }
        time_command(20, || q.command(&["status", "--json"]))
    });
    StatusFigures { sticler_ms, pueue_ms, idle_rss_kib, rss_after_kib }
}

pub struct StartFigures {
    pub validate_ms: f64,
    pub start_ms: f64,
}

/// `validate` then `start` (until its Started reply) of a phase of `stories` hanging workers;
/// the phase is killed after. With `git`, the project is a repository with everything committed
/// (as a real project is); without, sticler's start makes the initial commit of every file.
pub fn big_start(stories: usize, git: bool) -> StartFigures {
    let daemon = Daemon::start_with(&["--max-workers", "8"]);
    let p = big_phase(stories, json!({"mode": "hang"}));
    if git {
        crate::workload::git_init(p.path());
    }
    let dir = p.path_str();
    let timed = |args: &[&str]| {
        let start = Instant::now();
        let out = daemon.ctl(args);
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        ms
    };
    let validate_ms = timed(&["-C", &dir, "validate", "1"]);
    let start_ms = timed(&["-C", &dir, "start", "1"]);
    let _ = daemon.ctl(&["-C", &dir, "kill", "1"]);
    let _ = daemon.ctl(&["-C", &dir, "wait", "1"]);
    StartFigures { validate_ms, start_ms }
}

/// Instructions sticlerd executes for one `status --json` of a `stories`-story phase, under
/// callgrind: 3 warm-up requests, counters zeroed (`callgrind_control -z`), `measured` requests,
/// a dump (`callgrind_control -d`), total divided by `measured`. The daemon is otherwise idle,
/// so the count is the request's own, and instruction counts do not depend on machine load.
pub fn callgrind_status(stories: usize, measured: u32) -> Result<(u64, Option<u64>), String> {
    let which = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !which("valgrind") || Command::new("callgrind_control").arg("-h").output().is_err() {
        return Err("valgrind (callgrind) not installed".into());
    }
    let mut daemon = Daemon::unstarted();
    let out_dir = daemon.tmp.path().join("callgrind");
    fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let out_file = out_dir.join("callgrind.out");
    let inner = daemon.command(&[]);
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(inner.get_program())
        .args(inner.get_args())
        .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    daemon.spawn(command);
    daemon.wait_ready();
    let p = big_phase(stories, json!({}));
    let dir = p.path_str();
    let request = || {
        let out = daemon.ctl(&["--json", "-C", &dir, "status", "1"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    for _ in 0..3 {
        request();
    }
    let pid = daemon.pid().to_string();
    let control = |flag: &str| {
        let out = Command::new("callgrind_control").arg(flag).arg(&pid).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("callgrind_control {flag}: {}", String::from_utf8_lossy(&out.stdout)))
        }
    };
    control("-z")?;
    for _ in 0..measured {
        request();
    }
    control("-d")?;
    // Dumps are numbered files next to `out_file`; the newest holds the measured requests.
    let dump = poll(Duration::from_secs(30), "callgrind dump", || {
        let mut dumps: Vec<_> = fs::read_dir(&out_dir).ok()?.flatten().map(|e| e.path()).collect();
        dumps.sort();
        dumps.into_iter().rev().find(|d| d != &out_file && fs::metadata(d).is_ok_and(|m| m.len() > 0))
    });
    let text = fs::read_to_string(&dump).map_err(|e| e.to_string())?;
    let total: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", dump.display()))?;
    Ok((total / u64::from(measured), callgrind_ctl(&daemon, &dir)))
}

/// The status request's client side for comparison: instructions of one whole
/// `sticlerctl --json status` process (start-up included), under callgrind.
fn callgrind_ctl(daemon: &Daemon, dir: &str) -> Option<u64> {
    let tmp = tempfile::tempdir().ok()?;
    let out = tmp.path().join("ctl.out");
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin("sticlerctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--json", "-C", dir, "status", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let text = fs::read_to_string(out).ok()?;
    text.lines().find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))?.trim().parse().ok()
}
