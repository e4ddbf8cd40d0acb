//! What each `script.mode` does to the story and the project, once the run is set up.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::descendants::{ignore_term_fork, sleep_forever};
use crate::failure::{Failure, Result};
use crate::files::{self, append, count_lines, lock_exclusive};
use crate::invocation::{Invocation, Mode, Script};
use crate::update::{self, criteria_lines, ProgressInput};
use crate::CRASH_EXIT;

pub fn perform(
    inv: &Invocation,
    script: &Script,
    story_id: &str,
    pids_file: Option<&Path>,
    status: &mut Value,
) -> Result<u8> {
    match script.mode {
        Mode::Progress => progress(inv, script, story_id, status),
        Mode::SelfFail => {
            let iteration = update::apply_self_fail(status, &sticler_proto::time::now_rfc3339())
                .map_err(|r| Failure::at(&inv.status_file, r))?;
            files::write_status(&inv.status_file, status)?;
            say!("=== Story FAILED (scripted) ===");
            say!("Story: {story_id}\nIterations: {iteration}\nStatus: FAILED");
            Ok(0)
        }
        Mode::Crash => {
            say!("Crashing (scripted): exit {CRASH_EXIT}, status.json untouched");
            Ok(CRASH_EXIT)
        }
        Mode::Hang => {
            say!("Hanging (scripted): sleeping forever");
            sleep_forever()
        }
        Mode::NoProgress => {
            say!("No progress (scripted): status.json untouched");
            Ok(0)
        }
        Mode::InvalidJson => {
            files::write_atomically(&inv.status_file, b"{\"story_id\": broken\n")?;
            say!("Wrote invalid JSON to {} (scripted)", inv.status_file.display());
            Ok(0)
        }
        Mode::IgnoreTermFork => match ignore_term_fork(pids_file)? {},
    }
}

/// `progress`: tick criteria, append a line to each of `files`, write status.json back.
fn progress(inv: &Invocation, script: &Script, story_id: &str, status: &mut Value) -> Result<u8> {
    let input = ProgressInput {
        story_id,
        complete_after: script.complete_after,
        files: &script.files,
        now: &sticler_proto::time::now_rfc3339(),
    };
    let report = update::apply_progress(status, &input).map_err(|r| Failure::at(&inv.status_file, r))?;
    // Project files first, so files_modified never names a change that did not happen.
    let line = format!("{story_id} iteration {}: {}\n", report.iteration, report.worked_on);
    for file in &script.files {
        let path = inv.resolve(file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Failure::io(parent, "create directory", e))?;
        }
        append(&path, &line)?;
    }
    let status_late = report.completed && script.commit && script.status_after_commit_ms.is_some();
    if status_late {
        commit_story(inv, script, story_id, status)?;
        let wait = script.status_after_commit_ms.unwrap_or_default();
        say!("Writing status.json in {wait} ms");
        std::thread::sleep(std::time::Duration::from_millis(wait));
    }
    files::write_status(&inv.status_file, status)?;

    say!("Working on: {}", report.worked_on);
    say!("Progress: {}/{} criteria complete", report.criteria_done, report.criteria_total);
    for (done, text) in criteria_lines(status) {
        say!("  [{}] {text}", if done { 'x' } else { ' ' });
    }
    if !script.files.is_empty() {
        say!("Files modified:");
        for file in &script.files {
            say!("  - {file}");
        }
    }
    if report.completed && script.commit && !status_late {
        commit_story(inv, script, story_id, status)?;
    }
    if report.completed {
        say!(
            "=== Story Complete ===\nStory: {story_id} - {}\nTotal Iterations: {}",
            status.get("title").and_then(Value::as_str).unwrap_or(""),
            report.iteration
        );
        say!("Status: COMPLETED");
    } else {
        say!("Next: {}", report.focus);
    }
    Ok(0)
}

/// `git add` of the story folder and `files`, then `git commit`, under a lock that keeps workers
/// running side by side from colliding on git's index lock.
fn commit_story(inv: &Invocation, script: &Script, story_id: &str, status: &Value) -> Result<()> {
    // In a worktree `.git` is a file naming the repository's folder: the lock goes in the folder
    // git itself shares between the worktrees.
    let common = Command::new("git")
        .current_dir(&inv.project_dir)
        .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .output()
        .map_err(|e| Failure::io(&inv.project_dir, "run git", e))?;
    let git_dir = std::path::PathBuf::from(String::from_utf8_lossy(&common.stdout).trim());
    let _lock = lock_exclusive(&git_dir.join("sticler-test-worker.lock"))?;
    let title = status.get("title").and_then(Value::as_str).unwrap_or("");
    let mut add = Command::new("git");
    add.current_dir(&inv.project_dir).args(["add", "--"]).arg(&inv.story_dir);
    add.args(script.files.iter().map(|f| inv.resolve(f)));
    let subject = format!("[{story_id}] {title}");
    let mut commit = Command::new("git");
    commit.current_dir(&inv.project_dir);
    let has_identity = Command::new("git")
        .current_dir(&inv.project_dir)
        .args(["config", "user.email"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_identity {
        commit.args(["-c", "user.name=sticler-test-worker", "-c", "user.email=test-worker@localhost"]);
    }
    commit.args(["commit", "--quiet", "--allow-empty", "-m", &subject]);
    for mut git in [add, commit] {
        let out = git.stderr(Stdio::piped()).output().map_err(|e| Failure::io(&inv.project_dir, "run git", e))?;
        if !out.status.success() {
            return Err(Failure::at(
                &inv.project_dir,
                format!("git failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
            ));
        }
    }
    say!("Committed: {subject}");
    Ok(())
}

/// `crash_first`: count this crash in `<story_dir>/.crashes` and exit untouched.
pub fn crash_first(inv: &Invocation) -> Result<u8> {
    let path = inv.story_dir.join(".crashes");
    let crashes = count_lines(&path)? + 1;
    append(&path, &format!("crash {crashes} pid {}\n", std::process::id()))?;
    say!("Crashing (scripted crash_first, crash {crashes}): exit {CRASH_EXIT}");
    Ok(CRASH_EXIT)
}
