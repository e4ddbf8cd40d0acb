//! Story worktrees: how long a story's worktree takes to be ready on a large project (a slot's
//! first use, and its reuse for the next story: a checkout of the files that differ), read from
//! the daemon's own "worktree ready" log lines; and the disk the worktrees take during a run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sticler_tests::{story, Daemon, ProjectBuilder, StorySpec};

use crate::measure::median;
use crate::workload::{git_init, Workload};

pub struct ReadyFigures {
    pub files: usize,
    pub mib: f64,
    pub first_ms: f64,
    pub reuse_ms: Vec<f64>,
}

/// A chain of `stories` stories, one at a time (one slot), on a project of `files` files of
/// `bytes` bytes each, already under git.
pub fn readiness(files: usize, bytes: usize, stories: usize) -> ReadyFigures {
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": 1}));
    let filler: String = "0123456789abcdef\n".repeat(bytes / 17 + 1)[..bytes].to_string();
    for i in 0..files {
        p.write(&format!("src/d{:03}/f{i:05}.txt", i % 100), &filler);
    }
    let list: Vec<StorySpec> = (1..=stories)
        .map(|i| {
            let id = format!("US-P1-{i:03}");
            let deps: Vec<String> = if i > 1 { vec![format!("US-P1-{:03}", i - 1)] } else { vec![] };
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            story(&id, &deps).script(json!({"files": [format!("src/d000/f00000.txt")]}))
        })
        .collect();
    p.phase(1, "decomposed", &list);
    git_init(p.path());
    let daemon = Daemon::start();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut first_ms = f64::NAN;
    let mut reuse_ms = vec![];
    for line in daemon.log_text().lines() {
        let Some(rest) = line.split("worktree ready in ").nth(1) else { continue };
        let Some((ms, how)) = rest.split_once(" ms (") else { continue };
        let Ok(ms) = ms.parse::<f64>() else { continue };
        if how.starts_with("made") {
            first_ms = ms;
        } else {
            reuse_ms.push(ms);
        }
    }
    ReadyFigures { files, mib: (files * bytes) as f64 / (1024.0 * 1024.0), first_ms, reuse_ms }
}

/// Peak disk use of the worktrees (bytes of their files, sampled every 100 ms) during one run of
/// `w` in worktree mode, and the size of the project's files (one checkout).
pub fn disk_during(w: &Workload) -> (u64, u64) {
    let rec = tempfile::tempdir().expect("tempdir");
    let p = w.project(rec.path());
    git_init(p.path());
    let tree = size_of(p.path(), true);
    let daemon = Daemon::start_with(&["--max-workers", &w.width.to_string()]);
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, dir) = (Arc::clone(&peak), Arc::clone(&done), daemon.state_dir.join("worktrees"));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(size_of(&dir, false), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    (peak.load(Ordering::Relaxed), tree)
}

/// Bytes of the files below `dir` (`skip_git`: without `.git`).
fn size_of(dir: &Path, skip_git: bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| !(skip_git && e.file_name() == ".git"))
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of(&e.path(), false),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

pub fn print(ready: &ReadyFigures, disk: (u64, u64), slots: usize) {
    let reuse = median(ready.reuse_ms.clone());
    let max = ready.reuse_ms.iter().copied().fold(0.0, f64::max);
    println!("## Story worktrees\n");
    println!("| what | figure |\n|---|---:|");
    println!(
        "| worktree ready, first use of a slot ({} files, {:.0} MiB) | {:.0} ms |",
        ready.files, ready.mib, ready.first_ms
    );
    println!(
        "| worktree ready, reused for the next story (p50 / max of {}) | {reuse:.1} / {max:.1} ms |",
        ready.reuse_ms.len()
    );
    println!(
        "| disk used by worktrees during the 200-story run, peak (one checkout: {:.1} MiB, {slots} slots) | {:.1} MiB |",
        disk.1 as f64 / 1048576.0,
        disk.0 as f64 / 1048576.0
    );
    println!();
}
