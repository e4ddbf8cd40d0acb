//! `sticler-test-worker`: a worker that misbehaves on demand, for the black-box tests and the
//! bench.
//!
//! It speaks the worker contract of `reference/phase-worker.md` (read the story's status.json, do one
//! iteration of work, write status.json back) but what "work" means is chosen per story by a `script`
//! object inside that story's status.json: workers that progress, fail, crash, hang, corrupt their
//! status file, print what a coding agent prints, or leave SIGTERM-proof descendants behind.
//! (`sticlerctl demo` uses the much shorter `sticler-demo-worker` of the ctl crate.)
//!
//! `script` fields (all optional):
//! - `mode`: `progress` (default), `self_fail`, `crash`, `hang`, `no_progress`, `invalid_json`,
//!   `ignore_term_fork`.
//! - `complete_after` (u32): the worker iteration (status.json `iteration` after the bump) at which the
//!   story is completed; default = number of criteria, at least 1. Criteria are marked done in
//!   proportion on the way.
//! - `crash_first` (u32): the first N runs (counted in `<story_dir>/.crashes`) exit 3 untouched; later
//!   runs follow `mode`.
//! - `sleep_ms` (u64): pause before doing the work.
//! - `files` ([path]): project files (relative to the project dir) each progress iteration appends to.
//! - `pids_file` (path): every run appends its pid to it (`ignore_term_fork` also its descendants).
//! - `record_dir` (path): concurrency record (`running`, `max`, and `events.log` with
//!   `start|end <story> <unix ns> <pid>` lines) under a flock.
//! - `commit` (bool): on completion the worker commits its story folder and `files` itself with the
//!   git CLI (subject `[<story id>] <title>`), as agents do when sticler's `auto_commit` is off.
//!   Commits of workers running side by side are serialised by a flock in the git folder.
//! - `status_after_commit_ms` (u64): with `commit`, the completing iteration commits first, then
//!   waits this long, then writes status.json (an agent killed in between has committed work
//!   that status.json does not show).
//! - `agent_output`: also print what a coding agent prints, so sticler's agent parsing can be
//!   tested: `claude` (Claude Code stream-json events ending with a successful `result` that
//!   reports `cost_usd`, default 0.1, and token counts), `claude_error` (the same with an error
//!   `result` whose text is `error_text`).
//! - `limit_first` (u32): the first N runs (counted in `<story_dir>/.limits`) only report a usage
//!   limit, status.json untouched, and exit 1. `limit_form`: `claude_event` (default: a rejected
//!   `rate_limit_event` and an error `result`), `pipe` (the text `Claude AI usage limit
//!   reached|<epoch>`), `no_time` (a limit message without a reset time). The reset is
//!   `limit_reset_secs` (default 2) seconds from now.
//!
//! Relative `pids_file` / `record_dir` paths are resolved against the project dir.
//!
//! Modules: `invocation` (environment and `script`), `modes` (what each mode does), `update`
//! (the pure status.json changes), `files` (reading and writing files), `record` (the
//! concurrency record), `agent` (imitated agent output), `descendants` (the SIGTERM-proof tree).

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Prints a progress line for the iteration log. A closed stdout must not kill the worker, so write
/// errors are ignored (unlike `println!`, which panics).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout().lock(), $($arg)*);
    }};
}

mod agent;
mod descendants;
mod failure;
mod files;
mod invocation;
mod modes;
mod record;
mod update;

use crate::failure::{Failure, Result};
use crate::invocation::{Invocation, Mode, Script};
use crate::record::Recorder;

const WORKER_NAME: &str = "sticler-test-worker";
/// Exit code of the scripted crashes (`crash`, `crash_first`).
const CRASH_EXIT: u8 = 3;
const USAGE_EXIT: u8 = 2;
const ERROR_EXIT: u8 = 1;

fn main() -> ExitCode {
    // Taken first, so that a `start` record says when the process began, not when it got to
    // writing the record: the bench measures dispatch latency with it.
    let began = unix_nanos();
    let outcome = match descendants::role() {
        Some(role) => descendants::play(&role),
        None => run(began),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("{WORKER_NAME}: error: {failure}");
            ExitCode::from(failure.exit)
        }
    }
}

/// One iteration: read status.json, play the script, record start and end.
fn run(began: u128) -> Result<u8> {
    let inv = Invocation::from_env()?;
    let mut status = files::read_status(&inv.status_file)?;
    let script = Script::from_status(&status).map_err(|r| Failure::at(&inv.status_file, r))?;
    let story_id = inv.story_id(&status);
    banner(&inv, &status, &story_id);

    // Decided before anything is written, so a crashing run still records its pid first.
    let crash_now = below(&inv.story_dir.join(".crashes"), script.crash_first)?;
    let pids_file = script.pids_file.as_deref().map(|p| inv.resolve(p));
    if let Some(path) = &pids_file {
        if crash_now || script.mode != Mode::IgnoreTermFork {
            files::append(path, &format!("{}\n", std::process::id()))?;
        }
    }

    let recorder =
        script.record_dir.as_deref().map(|dir| Recorder { dir: inv.resolve(dir), story_id: story_id.clone() });
    if let Some(recorder) = &recorder {
        recorder.record(1, "start", Some(began))?;
    }
    if script.sleep_ms > 0 {
        say!("Working for {} ms...", script.sleep_ms);
        thread::sleep(Duration::from_millis(script.sleep_ms));
    }

    let limit_now = below(&inv.story_dir.join(".limits"), script.limit_first)?;
    let outcome = if crash_now {
        modes::crash_first(&inv)
    } else if limit_now {
        files::append(&inv.story_dir.join(".limits"), "limit\n")?;
        agent::print_limit(&script);
        Ok(ERROR_EXIT)
    } else {
        let outcome = modes::perform(&inv, &script, &story_id, pids_file.as_deref(), &mut status);
        agent::print_agent_result(&script);
        outcome
    };
    // The end record is written whatever happened, so `running` stays balanced.
    let ended = recorder.as_ref().map_or(Ok(()), |r| r.record(-1, "end", None));
    let code = outcome?;
    ended?;
    Ok(code)
}

/// The first lines of the iteration log: who runs, on what, after which notes.
fn banner(inv: &Invocation, status: &Value, story_id: &str) {
    // sticler's count when run by sticler, else the one this run would reach.
    let iteration = match &inv.daemon_iteration {
        Some(n) => n.clone(),
        None => status.get("iteration").and_then(Value::as_u64).map_or(1, |n| n + 1).to_string(),
    };
    say!("=== {WORKER_NAME}: {story_id} iteration {iteration} ===");
    if let Some(title) = status.get("title").and_then(Value::as_str) {
        say!("Story: {story_id} - {title}");
    }
    if let Some(notes) = status.get("worker_notes").and_then(Value::as_str) {
        if !notes.is_empty() {
            say!("Previous notes: {notes:?}");
        }
    }
}

/// True while the runs counted in `counter` (one line each) are fewer than `limit`.
fn below(counter: &std::path::Path, limit: Option<u32>) -> Result<bool> {
    match limit {
        Some(limit) => Ok(files::count_lines(counter)? < u64::from(limit)),
        None => Ok(false),
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
