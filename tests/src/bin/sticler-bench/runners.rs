//! One run of a workload under each tool. Every runner starts from a fresh copy of the project,
//! times only the run (set-up such as `git init` or `pueue add` is outside the clock) and reports
//! the orchestrator's own CPU time and peak RSS; the workers' costs are the same for all tools.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use sticler_tests::Daemon;

use crate::measure::{cpu_ms, dispatch_latencies, rfc3339_unix_ns, run_watched, status_kib, unix_ns_now};
use crate::pueue::Pueue;
use crate::workload::{git_init, Workload};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tool {
    Floor,
    Make,
    Pueue,
    /// sticler in its default `"workspace": "worktree"` mode.
    Sticler,
    /// sticler with `"workspace": "shared"` (every worker in the project folder).
    SticlerShared,
    /// sticler with `"runner": {"kind": "slurm"}` on the bench's private cluster.
    SticlerSlurm,
    /// One `srun` per story, back to back: Slurm's own floor.
    SrunLoop,
}

impl Tool {
    pub fn name(self, width: usize) -> String {
        match self {
            Tool::Floor => "shell loop (floor)".into(),
            Tool::Make => format!("make -j{width}"),
            Tool::Pueue => format!("pueue (parallel {width})"),
            Tool::Sticler => "sticler (worktree)".into(),
            Tool::SticlerShared => "sticler (shared)".into(),
            Tool::SticlerSlurm => "sticler (slurm runner)".into(),
            Tool::SrunLoop => "srun loop (Slurm floor)".into(),
        }
    }
}

pub struct Sample {
    pub wall_s: f64,
    pub cpu_ms: f64,
    pub peak_rss_kib: u64,
    pub latencies: Vec<f64>,
}

pub fn run(tool: Tool, w: &Workload, pueue_bin: Option<&Path>, kernel_clock: bool) -> Sample {
    let rec = tempfile::tempdir().expect("tempdir");
    let p = w.project(rec.path());
    let graph = w.graph();
    // A real project is a repository already: every tool starts from one (sticler would
    // otherwise make the initial commit inside its clock).
    git_init(p.path());
    let tracer = (kernel_clock && tool != Tool::Floor).then(|| crate::exectrace::Tracer::start(rec.path()));
    let mut sample = match tool {
        Tool::Sticler => sticler(w, p.path()),
        Tool::SticlerShared => {
            p.config(w.config(true));
            sticler(w, p.path())
        }
        Tool::Make => make(w, &p),
        Tool::Floor => floor(w, &p),
        Tool::Pueue => pueue(w, &p, pueue_bin.expect("pueue located")),
        Tool::SticlerSlurm => crate::slurm::sticler(cluster(), w, &p),
        Tool::SrunLoop => crate::slurm::srun_loop(cluster(), w, &p),
    };
    // Back to back, a dependent waits for every story before it, not for its dependencies: the
    // floor has no dispatch latency to speak of.
    if tool != Tool::Floor {
        let kernel = tracer.map(crate::exectrace::Tracer::finish);
        sample.latencies = dispatch_latencies(&rec.path().join("events.log"), &graph, kernel.as_ref());
    }
    sample
}

/// The bench's Slurm cluster; the Slurm tools are only chosen when it exists.
fn cluster() -> &'static sticler_tests::slurm::Cluster {
    sticler_tests::slurm::Cluster::shared().expect("a Slurm cluster for the Slurm tools")
}

/// `sticlerctl start --wait` on a fresh daemon; the daemon's CPU delta over the run and its VmHWM.
fn sticler(w: &Workload, dir: &Path) -> Sample {
    let daemon = Daemon::start_with(&["--max-workers", &w.width.to_string()]);
    let before = cpu_ms(daemon.pid());
    let start = Instant::now();
    let out = daemon.ctl(&["-C", &dir.display().to_string(), "start", "1", "--wait"]);
    let wall_s = start.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "sticler run failed: {}", String::from_utf8_lossy(&out.stderr));
    Sample {
        wall_s,
        cpu_ms: cpu_ms(daemon.pid()) - before,
        peak_rss_kib: status_kib(daemon.pid(), "VmHWM"),
        latencies: vec![],
    }
}

fn make(w: &Workload, p: &sticler_tests::ProjectBuilder) -> Sample {
    let graph = w.graph();
    let ids: Vec<&str> = graph.iter().map(|(id, _)| id.as_str()).collect();
    let mut makefile = format!("all: {}\n", ids.join(" "));
    for (id, deps) in &graph {
        // `$` is make's; `$$` passes one to the shell.
        let recipe = w.story_command(p, id).replace('$', "$$");
        makefile.push_str(&format!("{id}: {}\n\t@{recipe}\n", deps.join(" ")));
    }
    makefile.push_str(&format!(".PHONY: all {}\n", ids.join(" ")));
    p.write("Makefile", &makefile);
    let run = run_watched(
        Command::new("make").arg("-s").arg(format!("-j{}", w.width)).current_dir(p.path()).stdout(Stdio::null()),
    );
    assert!(run.status.success(), "make failed");
    Sample { wall_s: run.wall.as_secs_f64(), cpu_ms: run.cpu_ms, peak_rss_kib: run.peak_rss_kib, latencies: vec![] }
}

/// The floor: one `sh` script running every story's work back to back in dependency order.
fn floor(w: &Workload, p: &sticler_tests::ProjectBuilder) -> Sample {
    let mut script = String::from("set -e\n");
    for (id, _) in w.graph() {
        script.push_str(&w.story_command(p, &id));
        script.push('\n');
    }
    p.write("floor.sh", &script);
    let run = run_watched(Command::new("sh").arg("floor.sh").current_dir(p.path()).stdout(Stdio::null()));
    assert!(run.status.success(), "shell loop failed");
    Sample { wall_s: run.wall.as_secs_f64(), cpu_ms: run.cpu_ms, peak_rss_kib: run.peak_rss_kib, latencies: vec![] }
}

/// Every story added to the paused group `bench` with `--after` its dependencies' task ids, then
/// the group started. The run ends at the last task's end as pueued recorded it (`pueue wait`
/// polls only every 2 s, which would be pueue's client's cost, not its daemon's).
fn pueue(w: &Workload, p: &sticler_tests::ProjectBuilder, bin: &Path) -> Sample {
    let q = Pueue::start(bin, w.width);
    let mut task_ids: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (id, deps) in w.graph() {
        let after: Vec<String> = deps.iter().map(|d| task_ids[d].clone()).collect();
        let task = q.add(p.path(), &w.story_command(p, &id), &after);
        task_ids.insert(id, task);
    }
    let before = cpu_ms(q.pid());
    let start_ns = unix_ns_now();
    q.ok(&["start", "-g", "bench"]);
    q.ok(&["wait", "-g", "bench", "--quiet"]);
    let cpu = cpu_ms(q.pid()) - before;
    let rss = status_kib(q.pid(), "VmHWM");
    let status = q.status();
    let tasks = status["tasks"].as_object().expect("pueue tasks");
    let mut last_end = start_ns;
    for task in tasks.values() {
        let done = &task["status"]["Done"];
        assert_eq!(done["result"], "Success", "pueue task failed: {task}");
        let end = done["end"].as_str().and_then(rfc3339_unix_ns).expect("pueue task end time");
        last_end = last_end.max(end);
    }
    Sample { wall_s: (last_end - start_ns) as f64 / 1e9, cpu_ms: cpu, peak_rss_kib: rss, latencies: vec![] }
}
