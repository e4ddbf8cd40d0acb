//! sticler against the tools people use instead (`make -j`, pueue) and the physical floor (a
//! plain shell loop). Not a test; never run in CI. One command prints every table:
//!
//!   bench/run                       # = cargo build --release --workspace && target/release/sticler-bench all
//!   bench/run dag --stories 200 --width 8 --reps 3
//!
//! Sections: `dag` (a DAG of N trivial stories of width W, workers completing in 1 or 3
//! iterations, with and without auto_commit, under each tool, median of `--reps` runs),
//! `chain` (50 stories in a chain, width 1: dispatch latency with an idle CPU), `status`
//! (`status --json` on 1,000 stories vs `pueue status --json` on 1,000 tasks, idle RSS),
//! `callgrind` (instructions of one status request), `start` (validate and start a
//! 10,000-story phase), `slurm` (the chain under the Slurm runner against the local one and a
//! plain srun loop, on a private single-node cluster; not part of `all`), `all` (everything
//! else, then the budgets). Settings also come from
//! `STICLER_BENCH_STORIES`, `_WIDTH`, `_REPS`, `_TOOLS` (e.g. `sticler,make`).
//! pueue: `$STICLER_BENCH_PUEUE_DIR`, `$PATH`, or built once into `$TMPDIR/pueue-install`.

mod exectrace;
mod measure;
mod micro;
mod pueue;
mod runners;
mod slurm;
mod workload;
mod worktrees;

use std::path::PathBuf;

use measure::{median, percentile};
use runners::{Sample, Tool};
use workload::Workload;

struct Settings {
    section: String,
    stories: usize,
    width: usize,
    reps: usize,
    tools: Vec<Tool>,
    /// Restrict the DAG workloads to these iteration counts and auto_commit settings.
    iterations: Vec<u32>,
    auto_commit: Vec<bool>,
    pueue: Option<PathBuf>,
    /// Dispatch latency from the kernel's exit and exec events (perf), else the worker's records.
    kernel_clock: bool,
}

fn settings() -> Settings {
    let env = |name: &str, default: usize| {
        std::env::var(format!("STICLER_BENCH_{name}")).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let mut s = Settings {
        section: "all".into(),
        stories: env("STORIES", 200),
        width: env("WIDTH", 8),
        reps: env("REPS", 3),
        tools: vec![Tool::Floor, Tool::Make, Tool::Pueue, Tool::SticlerShared, Tool::Sticler],
        iterations: vec![1, 3],
        auto_commit: vec![false, true],
        pueue: None,
        kernel_clock: false,
    };
    let mut tools = std::env::var("STICLER_BENCH_TOOLS").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> usize {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--stories" => s.stories = value("--stories"),
            "--width" => s.width = value("--width"),
            "--reps" => s.reps = value("--reps").max(1),
            "--tools" => tools = args.next(),
            "--iterations" => s.iterations = vec![value("--iterations") as u32],
            "--commit" => {
                s.auto_commit = match args.next().as_deref() {
                    Some("auto") => vec![true],
                    Some("worker") => vec![false],
                    _ => usage("--commit takes auto or worker"),
                }
            }
            "all" | "dag" | "chain" | "status" | "callgrind" | "start" | "worktree" | "slurm" => s.section = arg,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if s.section == "slurm" && tools.is_none() {
        s.tools = vec![Tool::Floor, Tool::SrunLoop, Tool::Sticler, Tool::SticlerSlurm];
    }
    if let Some(list) = tools {
        s.tools = list
            .split(',')
            .map(|t| match t.trim() {
                "floor" | "shell" => Tool::Floor,
                "make" => Tool::Make,
                "pueue" => Tool::Pueue,
                "sticler" | "worktree" => Tool::Sticler,
                "shared" => Tool::SticlerShared,
                "slurm" => Tool::SticlerSlurm,
                "srun" => Tool::SrunLoop,
                other => usage(&format!("unknown tool {other:?}")),
            })
            .collect();
    }
    if s.tools.iter().any(|t| matches!(t, Tool::SticlerSlurm | Tool::SrunLoop))
        && sticler_tests::slurm::Cluster::shared().is_none()
    {
        println!("Slurm tools skipped: no cluster (above)\n");
        s.tools.retain(|t| !matches!(t, Tool::SticlerSlurm | Tool::SrunLoop));
    }
    if s.tools.contains(&Tool::Pueue) || matches!(s.section.as_str(), "all" | "status") {
        match pueue::locate() {
            Ok(dir) => s.pueue = Some(dir),
            Err(why) => {
                println!("pueue skipped: {why}\n");
                s.tools.retain(|t| *t != Tool::Pueue);
            }
        }
    }
    // A Slurm job's processes are slurmstepd's, not the tracer's to follow: both Slurm rows and
    // the local ones they are compared with take the worker's own records.
    s.kernel_clock = s.section != "slurm" && exectrace::available();
    if !s.kernel_clock {
        println!(
            "perf cannot record sched tracepoints here (not installed, or perf_event_paranoid): dispatch \
             latency comes from the worker's records and includes its start-up and exit\n"
        );
    }
    s
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "sticler-bench: {problem}\nusage: sticler-bench [all|dag|chain|status|callgrind|start|worktree|slurm] \
         [--stories N] [--width W] [--reps R] [--tools floor,make,pueue,shared,sticler,slurm,srun] [--iterations 1|3] \
         [--commit auto|worker]"
    );
    std::process::exit(2);
}

/// Medians over the runs of one tool on one workload; latencies of all runs pooled.
struct Row {
    tool: Tool,
    wall_s: f64,
    cpu_ms: f64,
    rss_mib: f64,
    latencies: Vec<f64>,
}

fn bench_workloads(s: &Settings, workloads: &[Workload]) -> Vec<(Workload, Vec<Row>)> {
    println!("| workload | tool | wall s | × floor | sticler ÷ tool | orchestrator CPU ms | peak RSS MiB | dispatch p50 / p99 ms |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut all = vec![];
    for w in workloads {
        let mut samples: Vec<Vec<Sample>> = s.tools.iter().map(|_| vec![]).collect();
        // Tools take turns within each repetition, so a change of machine load hits all of them.
        for _ in 0..s.reps {
            for (i, tool) in s.tools.iter().enumerate() {
                samples[i].push(runners::run(*tool, w, s.pueue.as_deref(), s.kernel_clock));
            }
        }
        let rows: Vec<Row> = s
            .tools
            .iter()
            .zip(samples)
            .map(|(tool, runs)| Row {
                tool: *tool,
                wall_s: median(runs.iter().map(|r| r.wall_s).collect()),
                cpu_ms: median(runs.iter().map(|r| r.cpu_ms).collect()),
                rss_mib: median(runs.iter().map(|r| r.peak_rss_kib as f64 / 1024.0).collect()),
                latencies: runs.into_iter().flat_map(|r| r.latencies).collect(),
            })
            .collect();
        let wall = |t: Tool| rows.iter().find(|r| r.tool == t).map(|r| r.wall_s);
        for r in &rows {
            let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) => format!("{:.2}", x / y),
                _ => "–".into(),
            };
            let dispatch = if r.latencies.is_empty() {
                "–".to_string()
            } else {
                format!("{:.2} / {:.2}", percentile(r.latencies.clone(), 0.5), percentile(r.latencies.clone(), 0.99))
            };
            println!(
                "| {} | {} | {:.3} | {} | {} | {:.0} | {:.1} | {dispatch} |",
                short(w),
                r.tool.name(w.width),
                r.wall_s,
                ratio(Some(r.wall_s), wall(Tool::Floor)),
                ratio(wall(Tool::Sticler), Some(r.wall_s)),
                r.cpu_ms,
                r.rss_mib,
            );
        }
        all.push((*w, rows));
    }
    println!();
    all
}

fn short(w: &Workload) -> String {
    format!(
        "N={} W={} it={} {}",
        w.stories,
        w.width,
        w.iterations,
        if w.auto_commit { "auto_commit" } else { "worker commits" }
    )
}

fn dag_workloads(s: &Settings) -> Vec<Workload> {
    let mut list = vec![];
    for &iterations in &s.iterations {
        for &auto_commit in &s.auto_commit {
            list.push(Workload { stories: s.stories, width: s.width, iterations, auto_commit });
        }
    }
    list
}

fn chain_workload() -> Workload {
    Workload { stories: 50, width: 1, iterations: 1, auto_commit: false }
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name"))?.split(':').nth(1).map(|m| m.trim().to_string()))
        .unwrap_or_default();
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "machine: {} cores, {cpu}, kernel {}; load {}; TMPDIR {} ({})\n",
        sh("nproc"),
        sh("uname -r"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        std::env::temp_dir().display(),
        sh("df -T \"${TMPDIR:-/tmp}\" | awk 'NR==2 {print $2}'"),
    );
}

fn main() {
    // Debug logging would measure the logger, not sticler.
    std::env::set_var("STICLER_TEST_LOG", "info");
    let s = settings();
    machine();
    let section = s.section.clone();
    let mut dag = vec![];
    let mut chain = vec![];
    if matches!(section.as_str(), "all" | "dag") {
        println!("## DAG workloads (median of {} runs each)\n", s.reps);
        dag = bench_workloads(&s, &dag_workloads(&s));
    }
    if matches!(section.as_str(), "all" | "chain") {
        println!("## Chain (one worker at a time: dispatch latency on an idle CPU)\n");
        chain = bench_workloads(&s, &[chain_workload()]);
    }
    if section == "slurm" {
        println!("## Chain on Slurm (a private single-node cluster) against local (median of {} runs)\n", s.reps);
        bench_workloads(&s, &[chain_workload()]);
    }
    let mut figures = Figures::default();
    if matches!(section.as_str(), "all" | "status") {
        let f = micro::status(1000, s.pueue.as_deref());
        let pueue = f.pueue_ms.map_or("skipped".into(), |ms| format!("{ms:.2} ms"));
        println!("## Single figures\n");
        println!("| what | figure |\n|---|---:|");
        println!(
            "| `sticlerctl status --json`, 1,000 stories (whole process, median of 20) | {:.2} ms |",
            f.sticler_ms
        );
        println!("| `pueue status --json`, 1,000 tasks (whole process, median of 20) | {pueue} |");
        println!(
            "| sticlerd RSS idle / after the status runs | {:.1} / {:.1} MiB |",
            mib(f.idle_rss_kib),
            mib(f.rss_after_kib)
        );
        figures.status = Some(f);
    }
    if matches!(section.as_str(), "all" | "callgrind") {
        match micro::callgrind_status(1000, 10) {
            Ok((daemon, ctl)) => {
                println!("| sticlerd instructions for one status request, 1,000 stories (callgrind) | {daemon} |");
                if let Some(ctl) = ctl {
                    println!("| instructions of one whole `sticlerctl --json status` process (callgrind) | {ctl} |");
                }
            }
            Err(why) => println!("| callgrind | skipped: {why} |"),
        }
    }
    if matches!(section.as_str(), "all" | "start") {
        let f = micro::big_start(10_000, true);
        println!("| `sticlerctl validate`, 10,000 stories | {:.0} ms |", f.validate_ms);
        println!(
            "| `sticlerctl start` until Started, 10,000 stories, project already a git repo | {:.0} ms |",
            f.start_ms
        );
        let bare = micro::big_start(10_000, false);
        println!(
            "| same, project without `.git` (start makes the initial commit of 20,000 files) | {:.0} ms |",
            bare.start_ms
        );
        figures.start = Some(f);
    }
    println!();
    if matches!(section.as_str(), "all" | "worktree") {
        let ready = worktrees::readiness(10_000, 10 * 1024, 6);
        let w = Workload { stories: s.stories, width: s.width, iterations: 1, auto_commit: true };
        let disk = worktrees::disk_during(&w);
        worktrees::print(&ready, disk, s.width);
        figures.reuse_ms = Some(median(ready.reuse_ms));
    }
    if section == "all" {
        budgets(&dag, &chain, &figures);
    }
}

#[derive(Default)]
struct Figures {
    /// p50 of a reused worktree's readiness.
    reuse_ms: Option<f64>,
    status: Option<micro::StatusFigures>,
    start: Option<micro::StartFigures>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn budgets(dag: &[(Workload, Vec<Row>)], chain: &[(Workload, Vec<Row>)], f: &Figures) {
    println!("## Budgets\n");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let wall = |rows: &[Row], t: Tool| rows.iter().find(|r| r.tool == t).map(|r| r.wall_s);
    for (w, rows) in dag {
        if let (Some(s), Some(m)) = (wall(rows, Tool::Sticler), wall(rows, Tool::Make)) {
            println!("- {}: sticler ÷ make = {:.2} (≤ 1.30): {}", short(w), s / m, verdict(s / m <= 1.3));
        }
        if let (Some(s), Some(shared)) = (wall(rows, Tool::Sticler), wall(rows, Tool::SticlerShared)) {
            let ratio = s / shared;
            println!("- {}: worktree ÷ shared = {ratio:.2} (≤ 1.30): {}", short(w), verdict(ratio <= 1.3));
        }
        if let (Some(s), Some(p)) = (wall(rows, Tool::Sticler), wall(rows, Tool::Pueue)) {
            println!("- {}: sticler ÷ pueue = {:.2} (< 1): {}", short(w), s / p, verdict(s < p));
        }
    }
    for (w, rows) in chain {
        if let Some(r) = rows.iter().find(|r| r.tool == Tool::Sticler) {
            let p50 = percentile(r.latencies.clone(), 0.5);
            println!("- dispatch p50 ({}): {p50:.2} ms (< 2 ms): {}", short(w), verdict(p50 < 2.0));
        }
    }
    if let Some(ms) = f.reuse_ms {
        println!("- reused worktree ready p50 {ms:.1} ms (< 50 ms): {}", verdict(ms < 50.0));
    }
    if let Some(s) = &f.status {
        if let Some(p) = s.pueue_ms {
            let ratio = s.sticler_ms / p;
            println!("- status ÷ pueue status = {ratio:.2} (≤ 0.5): {}", verdict(ratio <= 0.5));
        }
        println!("- status --json {:.2} ms (< 5 ms): {}", s.sticler_ms, verdict(s.sticler_ms < 5.0));
        println!("- idle RSS {:.1} MiB (< 15 MiB): {}", mib(s.idle_rss_kib), verdict(mib(s.idle_rss_kib) < 15.0));
    }
    if let Some(s) = &f.start {
        println!(
            "- 10,000 stories: validate {:.0} ms, start {:.0} ms (< 1000 ms): {}",
            s.validate_ms,
            s.start_ms,
            verdict(s.validate_ms < 1000.0 && s.start_ms < 1000.0)
        );
    }
}
