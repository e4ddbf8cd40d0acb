//! Benchmarks of sticler against the physical floor and `make -j` (not a test; never in CI).
//!
//!   cargo build --release --workspace && target/release/sticler-bench all
//!
//! `status`: `sticlerctl status --json` whole-process time on a 1,000-story phase (median of 20).
//! `dag`:    a 200-story DAG of width 8, workers completing in one iteration, 8 at once, under
//!           sticler and under `make -j8` running the same worker with the same DAG; dispatch
//!           latency from a dependency's worker exit to the dependent's worker start; daemon RSS.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sticler_tests::{bin, story, Daemon, ProjectBuilder, StorySpec};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn bench_status(stories: usize) {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let list: Vec<StorySpec> = (1..=stories)
        .map(|i| {
            let deps: Vec<String> = if i > 8 { vec![format!("US-P1-{:04}", i - 8)] } else { vec![] };
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            story(&format!("US-P1-{i:04}"), &deps).criteria(3)
        })
        .collect();
    p.phase(1, "decomposed", &list);
    let dir = p.path_str();
    let mut times = vec![];
    for _ in 0..22 {
        let start = Instant::now();
        let out = daemon.ctl(&["--json", "-C", &dir, "status", "1"]);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success());
    }
    times.drain(..2); // warm-up
    let validate_start = Instant::now();
    let out = daemon.ctl(&["-C", &dir, "validate", "1"]);
    let validate_ms = validate_start.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success());
    println!(
        "status --json, {stories} stories: median {:.2} ms, p90 {:.2} ms (20 runs, whole process); validate {validate_ms:.1} ms; daemon RSS {} KiB",
        median(times.clone()),
        percentile(times, 0.9),
        rss_kib(daemon.pid())
    );
}

/// Layers of `width` stories; each story depends on one or two stories of the layer before.
fn dag(stories: usize, width: usize) -> Vec<(String, Vec<String>)> {
    (0..stories)
        .map(|i| {
            let id = format!("US-P1-{:03}", i + 1);
            let mut deps = vec![];
            if i >= width {
                let layer_start = (i / width - 1) * width;
                deps.push(format!("US-P1-{:03}", layer_start + i % width + 1));
                deps.push(format!("US-P1-{:03}", layer_start + (i + 1) % width + 1));
                deps.dedup();
            }
            (id, deps)
        })
        .collect()
}

/// The DAG under sticler, `make -j` and the serial floor. With `auto_commit`, each make recipe
/// also commits its story (serialised by flock, as parallel `git commit`s would collide); without
/// it the workers commit their own stories, under both. Both sides do the same work.
fn bench_dag(stories: usize, width: usize, auto_commit: bool) {
    let graph = dag(stories, width);
    let rec = tempfile::tempdir().expect("tempdir");
    // Under sticler.
    let daemon = Daemon::start_with(&["--max-workers", &width.to_string()]);
    let idle_rss = rss_kib(daemon.pid());
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": width, "auto_commit": auto_commit}));
    // Without auto_commit the workers commit their own stories, under sticler and under make.
    let script = json!({"record_dir": rec.path().display().to_string(), "commit": !auto_commit});
    let list: Vec<StorySpec> = graph
        .iter()
        .map(|(id, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            story(id, &deps).script(script.clone())
        })
        .collect();
    p.phase(1, "decomposed", &list);
    let cpu_before = cpu_ms(daemon.pid());
    let start = Instant::now();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    let sticler = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let cpu = cpu_ms(daemon.pid()) - cpu_before;
    let after_rss = rss_kib(daemon.pid());
    let latencies = dispatch_latencies(&rec.path().join("events.log"), &graph);

    // Under make -j, the same worker on a fresh copy of the same stories.
    let make_rec = tempfile::tempdir().expect("tempdir");
    let make_script = json!({"record_dir": make_rec.path().display().to_string(), "commit": !auto_commit});
    let make_list: Vec<StorySpec> = list.iter().cloned().map(|s| s.script(make_script.clone())).collect();
    let m = ProjectBuilder::new();
    m.phase(1, "decomposed", &make_list);
    git_init(m.path());
    let commit = if auto_commit {
        " && flock .git/bench.lock sh -c 'git add phases/phase_1/stories/$@ && git -c user.name=bench -c user.email=bench@localhost commit --allow-empty -qm \"[$@] done\"'"
    } else {
        ""
    };
    let worker = bin("sticler-demo-worker");
    let mut makefile = String::from("all:");
    for (id, _) in &graph {
        makefile.push_str(&format!(" {id}"));
    }
    makefile.push('\n');
    for (id, deps) in &graph {
        let status = m.path().join(m.story_rel(id)).join("status.json");
        makefile.push_str(&format!(
            "{id}: {}\n\t@STICLER_STATUS_FILE={} STICLER_PROJECT_DIR={} STICLER_STORY_ID={id} {} > /dev/null{commit}\n",
            deps.join(" "),
            status.display(),
            m.path().display(),
            worker.display()
        ));
    }
    makefile.push_str(".PHONY: all");
    for (id, _) in &graph {
        makefile.push_str(&format!(" {id}"));
    }
    makefile.push('\n');
    m.write("Makefile", &makefile);
    let start = Instant::now();
    let status = Command::new("make").arg("-s").arg(format!("-j{width}")).current_dir(m.path()).status().expect("make");
    let make = start.elapsed();
    assert!(status.success());
    let make_latencies = dispatch_latencies(&make_rec.path().join("events.log"), &graph);

    // The floor: the same worker processes, back to back, with no orchestration at all.
    let f = ProjectBuilder::new();
    f.phase(1, "decomposed", &list);
    git_init(f.path());
    let start = Instant::now();
    for (id, _) in &graph {
        let status = f.path().join(f.story_rel(id)).join("status.json");
        Command::new(&worker)
            .env("STICLER_STATUS_FILE", status)
            .env("STICLER_PROJECT_DIR", f.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("worker");
    }
    let serial = start.elapsed();

    let secs = |d: Duration| d.as_secs_f64();
    let git = if auto_commit {
        "auto_commit on (make commits each story too)"
    } else {
        "auto_commit off (workers commit their stories)"
    };
    println!("dag: {stories} stories, width {width}, 1 iteration each, {width} workers at once, {git}");
    println!("  sticler            {:>7.3} s   (daemon CPU {cpu} ms)", secs(sticler));
    println!("  make -j{width:<2}          {:>7.3} s", secs(make));
    println!("  serial floor       {:>7.3} s   (same processes back to back, no parallelism)", secs(serial));
    println!("  sticler / make     {:>7.2}", secs(sticler) / secs(make));
    println!(
        "  dispatch latency (dependency's worker exit -> dependent's worker running): p50 {:.2} ms, p99 {:.2} ms, n={}",
        percentile(latencies.clone(), 0.5),
        percentile(latencies.clone(), 0.99),
        latencies.len()
    );
    println!(
        "  the same latency under make -j{width}: p50 {:.2} ms, p99 {:.2} ms",
        percentile(make_latencies.clone(), 0.5),
        percentile(make_latencies, 0.99)
    );
    println!("  daemon RSS: idle {idle_rss} KiB, after the run {after_rss} KiB");
}

/// A repository with everything committed, as sticler makes before the first story.
fn git_init(dir: &std::path::Path) {
    let git = |args: &[&str]| {
        let ok = Command::new("git").args(args).current_dir(dir).output().expect("git").status.success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "init"]);
}

fn cpu_ms(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0 };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 10 // 100 Hz clock ticks
}

/// For each story with dependencies: its worker's start minus the latest end of its dependencies.
fn dispatch_latencies(log: &std::path::Path, graph: &[(String, Vec<String>)]) -> Vec<f64> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut start = std::collections::HashMap::new();
    let mut end = std::collections::HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (Some(kind), Some(id), Some(t)) =
            (parts.first(), parts.get(1), parts.get(2).and_then(|t| t.parse::<u128>().ok()))
        else {
            continue;
        };
        if *kind == "start" {
            start.insert(id.to_string(), t);
        } else {
            end.insert(id.to_string(), t);
        }
    }
    graph
        .iter()
        .filter(|(_, deps)| !deps.is_empty())
        .filter_map(|(id, deps)| {
            let ready = deps.iter().filter_map(|d| end.get(d)).max()?;
            Some((*start.get(id)? as f64 - *ready as f64) / 1e6)
        })
        .collect()
}

fn main() {
    // Debug logging would measure the logger, not sticler.
    std::env::set_var("STICLER_TEST_LOG", "info");
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match what.as_str() {
        "status" => bench_status(1000),
        "dag" => {
            bench_dag(200, 8, false);
            bench_dag(200, 8, true);
        }
        // A chain: one worker at a time, so the latency is sticler's own, not a queue for the CPU.
        "chain" => {
            bench_dag(50, 1, false);
            bench_dag(50, 1, true);
        }
        "all" => {
            bench_status(1000);
            bench_dag(200, 8, false);
            bench_dag(200, 8, true);
            bench_dag(50, 1, false);
            bench_dag(50, 1, true);
        }
        other => {
            eprintln!("usage: sticler-bench [status|dag|chain|all] (got {other:?})");
            std::process::exit(2);
        }
    }
}
