//! `sticler-demo-worker`: a scripted stand-in for an AI worker.
//!
//! It speaks the worker contract of `reference/phase-worker.md` (read the story's status.json, do one
//! iteration of work, write status.json back) but what "work" means is chosen per story by a `script`
//! object inside that story's status.json. `sticlerctl demo` uses it to show a phase running without an
//! AI agent, and the black-box tests use it to make workers that progress, fail, crash, hang, corrupt
//! their status file or leave SIGTERM-proof descendants behind.
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

use std::convert::Infallible;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{signal, SigHandler, Signal};
use serde::Serialize;
use serde_json::{json, Map, Value};

const WORKER_NAME: &str = "sticler-demo-worker";
/// Tells a re-executed copy of this binary which descendant role of `ignore_term_fork` to play.
const ROLE_ENV: &str = "STICLER_DEMO_WORKER_ROLE";
/// Exit code of the scripted crashes (`crash`, `crash_first`).
const CRASH_EXIT: u8 = 3;
const USAGE_EXIT: u8 = 2;
const ERROR_EXIT: u8 = 1;

/// Why the worker gives up: the file concerned (if any) and what went wrong.
#[derive(Debug)]
struct Failure {
    path: Option<PathBuf>,
    reason: String,
    exit: u8,
}

impl Failure {
    fn at(path: &Path, reason: impl Into<String>) -> Self {
        Failure { path: Some(path.to_path_buf()), reason: reason.into(), exit: ERROR_EXIT }
    }

    fn io(path: &Path, action: &str, err: io::Error) -> Self {
        Failure::at(path, format!("cannot {action}: {err}"))
    }

    fn plain(reason: impl Into<String>) -> Self {
        Failure { path: None, reason: reason.into(), exit: ERROR_EXIT }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Prints a progress line for the iteration log. A closed stdout must not kill the worker, so write
/// errors are ignored (unlike `println!`, which panics).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout().lock(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    // Taken first, so that a `start` record says when the process began, not when it got to
    // writing the record: the bench measures dispatch latency with it.
    let began = unix_nanos();
    let outcome = match std::env::var(ROLE_ENV).as_deref() {
        Ok("child") => play_child().map(|never| match never {}),
        Ok("grandchild") => play_grandchild(),
        _ => run(began),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("{WORKER_NAME}: error: {failure}");
            ExitCode::from(failure.exit)
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Invocation and script

/// Where this iteration runs, from the environment sticler gives every worker.
struct Invocation {
    status_file: PathBuf,
    story_dir: PathBuf,
    project_dir: PathBuf,
    /// `STICLER_ITERATION`, sticler's own count, shown in the banner only.
    daemon_iteration: Option<String>,
}

impl Invocation {
    fn from_env() -> Result<Self> {
        let status_file = match std::env::var_os("STICLER_STATUS_FILE") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => std::env::args_os().nth(1).map(PathBuf::from).ok_or_else(|| Failure {
                path: None,
                reason: format!(
                    "no status file: set STICLER_STATUS_FILE or pass it as the first argument \
                     (usage: {WORKER_NAME} [STATUS_JSON])"
                ),
                exit: USAGE_EXIT,
            })?,
        };
        let story_dir = match status_file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let project_dir = match std::env::var_os("STICLER_PROJECT_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => std::env::current_dir()
                .map_err(|e| Failure::plain(format!("cannot read the current directory: {e}")))?,
        };
        Ok(Invocation {
            status_file,
            story_dir,
            project_dir,
            daemon_iteration: std::env::var("STICLER_ITERATION").ok(),
        })
    }

    /// `STICLER_STORY_ID`, else the file's `story_id`, else the story folder's name.
    fn story_id(&self, status: &Value) -> String {
        if let Ok(id) = std::env::var("STICLER_STORY_ID") {
            if !id.is_empty() {
                return id;
            }
        }
        if let Some(id) = status.get("story_id").and_then(Value::as_str) {
            return id.to_string();
        }
        self.story_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown-story".to_string())
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.project_dir.join(path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Progress,
    SelfFail,
    Crash,
    Hang,
    NoProgress,
    InvalidJson,
    IgnoreTermFork,
}

impl Mode {
    const ALL: [(&'static str, Mode); 7] = [
        ("progress", Mode::Progress),
        ("self_fail", Mode::SelfFail),
        ("crash", Mode::Crash),
        ("hang", Mode::Hang),
        ("no_progress", Mode::NoProgress),
        ("invalid_json", Mode::InvalidJson),
        ("ignore_term_fork", Mode::IgnoreTermFork),
    ];

    fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.iter().find(|(n, _)| *n == name).map(|(_, mode)| *mode)
    }
}

/// The `script` object of a story's status.json.
#[derive(Debug, Default, PartialEq)]
struct Script {
    mode: Mode,
    complete_after: Option<u32>,
    crash_first: Option<u32>,
    sleep_ms: u64,
    files: Vec<String>,
    pids_file: Option<String>,
    record_dir: Option<String>,
    commit: bool,
    agent_output: Option<String>,
    cost_usd: f64,
    error_text: String,
    limit_first: Option<u32>,
    limit_form: String,
    limit_reset_secs: i64,
}

impl Script {
    const FIELDS: [&'static str; 14] = [
        "mode",
        "complete_after",
        "crash_first",
        "sleep_ms",
        "files",
        "pids_file",
        "record_dir",
        "commit",
        "agent_output",
        "cost_usd",
        "error_text",
        "limit_first",
        "limit_form",
        "limit_reset_secs",
    ];

    fn from_status(status: &Value) -> std::result::Result<Script, String> {
        let object = match status.get("script") {
            None | Some(Value::Null) => return Ok(Script::default()),
            Some(Value::Object(object)) => object,
            Some(_) => return Err("field `script` is not an object".to_string()),
        };
        for key in object.keys() {
            if !Script::FIELDS.contains(&key.as_str()) {
                eprintln!("{WORKER_NAME}: warning: unknown field `script.{key}` ignored");
            }
        }
        let mode = match object.get("mode") {
            None | Some(Value::Null) => Mode::Progress,
            Some(Value::String(name)) => Mode::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Mode::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown `script.mode` {name:?} (known: {})", known.join(", "))
            })?,
            Some(_) => return Err("field `script.mode` is not a string".to_string()),
        };
        let files = match object.get("files") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("field `script.files` must hold only strings")?,
            Some(_) => return Err("field `script.files` is not an array".to_string()),
        };
        Ok(Script {
            mode,
            complete_after: script_u32(object, "complete_after")?,
            crash_first: script_u32(object, "crash_first")?,
            sleep_ms: script_u64(object, "sleep_ms")?.unwrap_or(0),
            files,
            pids_file: script_string(object, "pids_file")?,
            record_dir: script_string(object, "record_dir")?,
            commit: match object.get("commit") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(commit)) => *commit,
                Some(_) => return Err("field `script.commit` is not a boolean".to_string()),
            },
            agent_output: script_string(object, "agent_output")?,
            cost_usd: match object.get("cost_usd") {
                None | Some(Value::Null) => 0.1,
                Some(value) => value.as_f64().ok_or("field `script.cost_usd` is not a number")?,
            },
            error_text: script_string(object, "error_text")?.unwrap_or_else(|| "tool failed".into()),
            limit_first: script_u32(object, "limit_first")?,
            limit_form: script_string(object, "limit_form")?.unwrap_or_else(|| "claude_event".into()),
            limit_reset_secs: match object.get("limit_reset_secs") {
                None | Some(Value::Null) => 2,
                Some(value) => value.as_i64().ok_or("field `script.limit_reset_secs` is not an integer")?,
            },
        })
    }
}

fn script_u64(object: &Map<String, Value>, key: &str) -> std::result::Result<Option<u64>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            value.as_u64().map(Some).ok_or_else(|| format!("field `script.{key}` is not a non-negative integer"))
        }
    }
}

fn script_u32(object: &Map<String, Value>, key: &str) -> std::result::Result<Option<u32>, String> {
    match script_u64(object, key)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| format!("field `script.{key}` is too large ({n})")),
    }
}

fn script_string(object: &Map<String, Value>, key: &str) -> std::result::Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field `script.{key}` is not a string")),
    }
}

// ---------------------------------------------------------------------------------------------------
// One iteration

fn run(began: u128) -> Result<u8> {
    let inv = Invocation::from_env()?;
    let mut status = read_status(&inv.status_file)?;
    let script = Script::from_status(&status).map_err(|r| Failure::at(&inv.status_file, r))?;
    let story_id = inv.story_id(&status);

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

    // Decided before anything is written, so a crashing run still records its pid first.
    let crash_now = match script.crash_first {
        Some(limit) => count_lines(&inv.story_dir.join(".crashes"))? < u64::from(limit),
        None => false,
    };
    let pids_file = script.pids_file.as_deref().map(|p| inv.resolve(p));
    if let Some(path) = &pids_file {
        if crash_now || script.mode != Mode::IgnoreTermFork {
            append(path, &format!("{}\n", std::process::id()))?;
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

    let limit_now = match script.limit_first {
        Some(limit) => count_lines(&inv.story_dir.join(".limits"))? < u64::from(limit),
        None => false,
    };
    let outcome = if crash_now {
        crash_first(&inv)
    } else if limit_now {
        append(&inv.story_dir.join(".limits"), "limit\n")?;
        print_limit(&script);
        Ok(ERROR_EXIT)
    } else {
        let outcome = perform(&inv, &script, &story_id, pids_file.as_deref(), &mut status);
        print_agent_result(&script);
        outcome
    };
    // The end record is written whatever happened, so `running` stays balanced.
    let ended = recorder.as_ref().map_or(Ok(()), |r| r.record(-1, "end", None));
    let code = outcome?;
    ended?;
    Ok(code)
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// What an agent refused for its usage limit prints (`script.limit_form`).
fn print_limit(script: &Script) {
    let reset = unix_now() + script.limit_reset_secs;
    match script.limit_form.as_str() {
        "pipe" => say!("Claude AI usage limit reached|{reset}"),
        "no_time" => say!("You've hit your limit · resets 5pm (Europe/Paris)"),
        _ => {
            say!("{}", json!({"type": "system", "subtype": "init", "session_id": "demo", "model": "demo"}));
            let info = json!({"status": "rejected", "resetsAt": reset, "rateLimitType": "five_hour"});
            say!("{}", json!({"type": "rate_limit_event", "rate_limit_info": info, "session_id": "demo"}));
            say!(
                "{}",
                json!({"type": "result", "subtype": "success", "is_error": true,
                       "result": "Usage limit reached for this window", "total_cost_usd": 0.0,
                       "usage": {"input_tokens": 0, "output_tokens": 0}})
            );
        }
    }
}

/// The last line of an agent's iteration (`script.agent_output`).
fn print_agent_result(script: &Script) {
    let error = match script.agent_output.as_deref() {
        Some("claude") => false,
        Some("claude_error") => true,
        _ => return,
    };
    say!("{}", json!({"type": "system", "subtype": "init", "session_id": "demo", "model": "demo"}));
    let info = json!({"status": "allowed", "resetsAt": unix_now() + 3600, "rateLimitType": "five_hour"});
    say!("{}", json!({"type": "rate_limit_event", "rate_limit_info": info, "session_id": "demo"}));
    say!(
        "{}",
        json!({"type": "result", "subtype": "success", "is_error": error,
               "result": if error { script.error_text.as_str() } else { "iteration done" },
               "duration_ms": 1200, "num_turns": 3, "total_cost_usd": script.cost_usd,
               "usage": {"input_tokens": 100, "output_tokens": 200,
                         "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 5000}})
    );
}

fn perform(
    inv: &Invocation,
    script: &Script,
    story_id: &str,
    pids_file: Option<&Path>,
    status: &mut Value,
) -> Result<u8> {
    match script.mode {
        Mode::Progress => progress(inv, script, story_id, status),
        Mode::SelfFail => {
            let iteration = apply_self_fail(status, &sticler_proto::time::now_rfc3339())
                .map_err(|r| Failure::at(&inv.status_file, r))?;
            write_status(&inv.status_file, status)?;
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
            write_atomically(&inv.status_file, b"{\"story_id\": broken\n")?;
            say!("Wrote invalid JSON to {} (scripted)", inv.status_file.display());
            Ok(0)
        }
        Mode::IgnoreTermFork => match ignore_term_fork(pids_file)? {},
    }
}

fn progress(inv: &Invocation, script: &Script, story_id: &str, status: &mut Value) -> Result<u8> {
    let input = ProgressInput {
        story_id,
        complete_after: script.complete_after,
        files: &script.files,
        now: &sticler_proto::time::now_rfc3339(),
    };
    let report = apply_progress(status, &input).map_err(|r| Failure::at(&inv.status_file, r))?;
    // Project files first, so files_modified never names a change that did not happen.
    let line = format!("{story_id} iteration {}: {}\n", report.iteration, report.worked_on);
    for file in &script.files {
        let path = inv.resolve(file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Failure::io(parent, "create directory", e))?;
        }
        append(&path, &line)?;
    }
    write_status(&inv.status_file, status)?;

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
    if report.completed && script.commit {
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
    let _lock = lock_exclusive(&inv.project_dir.join(".git").join("sticler-demo-worker.lock"))?;
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
        commit.args(["-c", "user.name=sticler-demo-worker", "-c", "user.email=demo-worker@localhost"]);
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

fn crash_first(inv: &Invocation) -> Result<u8> {
    let path = inv.story_dir.join(".crashes");
    let crashes = count_lines(&path)? + 1;
    append(&path, &format!("crash {crashes} pid {}\n", std::process::id()))?;
    say!("Crashing (scripted crash_first, crash {crashes}): exit {CRASH_EXIT}");
    Ok(CRASH_EXIT)
}

// ---------------------------------------------------------------------------------------------------
// Pure status.json updates

struct ProgressInput<'a> {
    story_id: &'a str,
    complete_after: Option<u32>,
    files: &'a [String],
    now: &'a str,
}

#[derive(Debug)]
struct ProgressReport {
    iteration: u64,
    /// Text of the first criterion not yet done when the iteration began.
    worked_on: String,
    criteria_done: usize,
    criteria_total: usize,
    completed: bool,
    focus: String,
}

/// Applies one scripted progress iteration: bumps `iteration`, marks criteria (and checklist items)
/// done in proportion to `iteration / complete_after`, all of them once `complete_after` is reached,
/// and logs the iteration. Fields it does not know are left where they are.
fn apply_progress(status: &mut Value, input: &ProgressInput<'_>) -> std::result::Result<ProgressReport, String> {
    let object = status.as_object_mut().ok_or("status.json is not a JSON object")?;
    let iteration = current_iteration(object)? + 1;

    let criteria = array_field(object, "criteria")?;
    let total = criteria.len();
    let complete_after = input.complete_after.map_or(total as u64, u64::from).max(1);
    let completed = iteration >= complete_after;
    let target = if completed { total } else { (iteration * total as u64 / complete_after) as usize };
    let mut worked_on = None;
    for (index, criterion) in criteria.iter_mut().enumerate() {
        let criterion = criterion.as_object_mut().ok_or_else(|| format!("criteria[{index}] is not an object"))?;
        if criterion.get("done").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        worked_on.get_or_insert_with(|| criterion_text(criterion));
        if index < target {
            criterion.insert("done".into(), Value::Bool(true));
            criterion.insert("notes".into(), json!(format!("done in iteration {iteration} by {WORKER_NAME}")));
        }
    }
    let criteria_done = criteria.iter().filter(|c| c.get("done").and_then(Value::as_bool) == Some(true)).count();
    let focus = criteria
        .iter()
        .find(|c| c.get("done").and_then(Value::as_bool) != Some(true))
        .and_then(Value::as_object)
        .map_or_else(|| "All criteria met".to_string(), criterion_text);
    let worked_on = worked_on.unwrap_or_else(|| "All criteria met".to_string());

    let checklist = array_field(object, "checklist")?;
    let items = checklist.len() as u64;
    let checked = if completed { items } else { (iteration * items).div_ceil(complete_after) };
    for (index, item) in checklist.iter_mut().take(checked as usize).enumerate() {
        item.as_object_mut()
            .ok_or_else(|| format!("checklist[{index}] is not an object"))?
            .insert("done".into(), Value::Bool(true));
    }

    let modified = array_field(object, "files_modified")?;
    for file in input.files {
        if !modified.iter().any(|m| m.as_str() == Some(file)) {
            modified.push(json!(file));
        }
    }

    let notes = if completed {
        format!(
            "All criteria met ({criteria_done}/{total}) after {iteration} iterations. \
             {} complete.",
            input.story_id
        )
    } else {
        format!(
            "Iteration {iteration}: worked on \"{worked_on}\". {criteria_done}/{total} criteria \
             done. Next: {focus}"
        )
    };
    object.insert("status".into(), json!(if completed { "completed" } else { "in_progress" }));
    object.insert("focus".into(), json!(focus));
    object.insert("worker_notes".into(), json!(notes));
    object.insert("iteration".into(), json!(iteration));
    array_field(object, "notes_history")?.push(json!({"iteration": iteration, "note": notes, "timestamp": input.now}));
    array_field(object, "iteration_history")?.push(json!({
        "iteration": iteration,
        "action": format!("Worked on: {worked_on}"),
        "notes": notes,
        "completed_at": input.now,
    }));
    Ok(ProgressReport { iteration, worked_on, criteria_done, criteria_total: total, completed, focus })
}

/// Applies a scripted self-reported failure; returns the new iteration number.
fn apply_self_fail(status: &mut Value, now: &str) -> std::result::Result<u64, String> {
    let object = status.as_object_mut().ok_or("status.json is not a JSON object")?;
    let iteration = current_iteration(object)? + 1;
    let reason = format!("Scripted failure (script.mode \"self_fail\") in iteration {iteration}");
    let notes = format!("BLOCKED: {reason}. Nothing to fix: this story is scripted to fail.");
    array_field(object, "failed_reasons")?.push(json!(reason));
    object.insert("status".into(), json!("failed"));
    object.insert("worker_notes".into(), json!(notes));
    object.insert("iteration".into(), json!(iteration));
    array_field(object, "notes_history")?.push(json!({"iteration": iteration, "note": notes, "timestamp": now}));
    array_field(object, "iteration_history")?.push(json!({
        "iteration": iteration,
        "action": "Gave up (scripted self_fail)",
        "notes": notes,
        "completed_at": now,
    }));
    Ok(iteration)
}

fn current_iteration(object: &Map<String, Value>) -> std::result::Result<u64, String> {
    match object.get("iteration") {
        None | Some(Value::Null) => Ok(0),
        Some(value) => value.as_u64().ok_or_else(|| "field `iteration` is not a non-negative integer".into()),
    }
}

/// The array under `key`, created empty when missing or null.
fn array_field<'a>(object: &'a mut Map<String, Value>, key: &str) -> std::result::Result<&'a mut Vec<Value>, String> {
    let slot = object.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().ok_or_else(|| format!("field `{key}` is not an array"))
}

fn criterion_text(criterion: &Map<String, Value>) -> String {
    criterion.get("text").and_then(Value::as_str).unwrap_or("(criterion without text)").to_string()
}

fn criteria_lines(status: &Value) -> Vec<(bool, String)> {
    let criteria = status.get("criteria").and_then(Value::as_array);
    criteria
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(|c| (c.get("done").and_then(Value::as_bool) == Some(true), criterion_text(c)))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Files

fn read_status(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|e| Failure::io(path, "read status file", e))?;
    // serde_json's message already ends with "at line L column C".
    serde_json::from_str(&text).map_err(|e| Failure::at(path, format!("invalid JSON: {e}")))
}

/// Pretty-prints with the 4-space indent of the seed files, keeping key order.
fn write_status(path: &Path, status: &Value) -> Result<()> {
    let mut bytes = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    status.serialize(&mut serializer).map_err(|e| Failure::at(path, format!("cannot serialize status: {e}")))?;
    bytes.push(b'\n');
    write_atomically(path, &bytes)
}

/// Temp file in the same folder, write, fsync, rename: readers see the old or the new file, never a
/// torn one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Failure::io(path, "write atomically", e));
    }
    // Makes the rename itself durable; a failure here loses nothing already visible.
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| Failure::io(path, "append to file", e))
}

fn count_lines(path: &Path) -> Result<u64> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().count() as u64),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Failure::io(path, "read", e)),
    }
}

/// Concurrency record shared by all workers of a test: how many run now, the most that ever ran at
/// once, and a start/end event log. The flock makes read-modify-write of the counters safe.
struct Recorder {
    dir: PathBuf,
    story_id: String,
}

/// An exclusive flock on `path` (created if missing), held until the guard is dropped.
fn lock_exclusive(path: &Path) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Failure::io(path, "open lock file", e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Failure::at(path, format!("cannot lock: {errno}")))
}

impl Recorder {
    /// Records `event` at time `at`, or now (after the counters are updated: as late as can be).
    fn record(&self, delta: i64, event: &str, at: Option<u128>) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Failure::io(&self.dir, "create directory", e))?;
        let _lock = lock_exclusive(&self.dir.join("lock"))?;

        let running = read_counter(&self.dir.join("running"))? + delta;
        replace(&self.dir.join("running"), running)?;
        let max_path = self.dir.join("max");
        if running > read_counter(&max_path)? {
            replace(&max_path, running)?;
        }
        let nanos = at.unwrap_or_else(unix_nanos);
        let pid = std::process::id();
        append(&self.dir.join("events.log"), &format!("{event} {} {nanos} {pid}\n", self.story_id))
    }
}

fn read_counter(path: &Path) -> Result<i64> {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(0),
        Ok(text) => {
            text.trim().parse().map_err(|e| Failure::at(path, format!("not an integer ({:?}): {e}", text.trim())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Failure::io(path, "read counter", e)),
    }
}

/// Replaces a counter file by rename, so lock-free readers never see it empty.
fn replace(path: &Path, value: i64) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    fs::write(&tmp, format!("{value}\n"))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Failure::io(path, "write counter", e))
}

// ---------------------------------------------------------------------------------------------------
// Processes

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn ignore_sigterm() -> Result<()> {
    // SAFETY: SIG_IGN installs no handler, so no code of ours ever runs in signal context.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }
        .map(drop)
        .map_err(|e| Failure::plain(format!("cannot ignore SIGTERM: {e}")))
}

/// Re-executes this binary in a descendant role (cleaner than forking a running process).
fn descendant(role: &str) -> Result<Command> {
    let exe = std::env::current_exe().map_err(|e| Failure::plain(format!("cannot find own executable: {e}")))?;
    let mut command = Command::new(exe);
    command.env(ROLE_ENV, role).stdin(Stdio::null()).stderr(Stdio::inherit());
    Ok(command)
}

/// `ignore_term_fork`: the worker, a child and a grandchild in its own session, all ignoring SIGTERM
/// and never exiting: the kind of process tree a stop must still clean up completely.
fn ignore_term_fork(pids_file: Option<&Path>) -> Result<Infallible> {
    // Before spawning: an ignored signal stays ignored in children and across exec, so no descendant
    // is ever killable by SIGTERM, not even before it runs its own `ignore_sigterm`.
    ignore_sigterm()?;
    let mut child = descendant("child")?
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::plain(format!("cannot spawn child: {e}")))?;
    let child_pid = child.id();
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| Failure::plain("child has no stdout pipe"))?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| Failure::plain(format!("cannot read grandchild pid from child: {e}")))?;
    let grandchild_pid: u32 = line
        .trim()
        .parse()
        .map_err(|_| Failure::plain(format!("child {child_pid} reported no grandchild pid (got {line:?})")))?;
    // One write of all three pids, only once every one is known: readers never see a partial tree.
    if let Some(path) = pids_file {
        append(path, &format!("{}\n{child_pid}\n{grandchild_pid}\n", std::process::id()))?;
    }
    say!(
        "Ignoring SIGTERM (scripted): worker {}, child {child_pid}, grandchild {grandchild_pid} \
         (own session); sleeping forever",
        std::process::id()
    );
    sleep_forever()
}

/// Child role: spawns the grandchild in a new session, reports its pid on stdout, sleeps forever.
fn play_child() -> Result<Infallible> {
    ignore_sigterm()?;
    let mut command = descendant("grandchild")?;
    command.stdout(Stdio::null());
    // SAFETY: the closure runs between fork and exec; it only calls setsid(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let grandchild = command.spawn().map_err(|e| Failure::plain(format!("cannot spawn grandchild: {e}")))?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", grandchild.id())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::plain(format!("cannot report grandchild pid: {e}")))?;
    sleep_forever()
}

fn play_grandchild() -> Result<u8> {
    ignore_sigterm()?;
    sleep_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        json!({
            "story_id": "US-P1-002",
            "title": "Add the list command",
            "custom_first": {"kept": true},
            "status": "pending",
            "focus": "",
            "criteria": [
                {"text": "First", "done": false, "notes": ""},
                {"text": "Second", "done": false, "notes": ""},
                {"text": "Third", "done": false, "notes": ""}
            ],
            "checklist": [
                {"item": "a", "done": false}, {"item": "b", "done": false},
                {"item": "c", "done": false}, {"item": "d", "done": false}
            ],
            "worker_notes": "",
            "notes_history": [],
            "iteration": 0,
            "failed_reasons": [],
            "files_modified": ["already.txt"],
            "iteration_history": [],
            "script": {"sleep_ms": 5, "files": ["src/a.sh"]},
            "zz_unknown_last": 42
        })
    }

    fn input<'a>(complete_after: Option<u32>, files: &'a [String]) -> ProgressInput<'a> {
        ProgressInput { story_id: "US-P1-002", complete_after, files, now: "2026-01-28T10:00:00Z" }
    }

    fn done(status: &Value) -> Vec<bool> {
        criteria_lines(status).into_iter().map(|(d, _)| d).collect()
    }

    #[test]
    fn progress_marks_the_next_criterion_and_keeps_unknown_fields_in_order() {
        let mut s = status();
        let keys_before: Vec<String> = s.as_object().map(|o| o.keys().cloned().collect()).unwrap();
        let files = vec!["src/a.sh".to_string(), "already.txt".to_string()];
        let report = apply_progress(&mut s, &input(None, &files)).unwrap();

        assert_eq!(report.iteration, 1);
        assert_eq!(report.worked_on, "First");
        assert!(!report.completed);
        assert_eq!(done(&s), [true, false, false]);
        assert_eq!(s["criteria"][0]["notes"], "done in iteration 1 by sticler-demo-worker");
        assert_eq!(s["status"], "in_progress");
        assert_eq!(s["focus"], "Second");
        assert_eq!(s["iteration"], 1);
        assert_eq!(s["custom_first"], json!({"kept": true}));
        assert_eq!(s["zz_unknown_last"], 42);
        assert_eq!(s["script"], json!({"sleep_ms": 5, "files": ["src/a.sh"]}));
        assert_eq!(s["files_modified"], json!(["already.txt", "src/a.sh"]));
        assert_eq!(s["notes_history"][0]["timestamp"], "2026-01-28T10:00:00Z");
        assert_eq!(s["iteration_history"][0]["action"], "Worked on: First");
        // ceil(1 * 4 / 3) = 2 checklist items.
        let checked: Vec<bool> = (0..4).map(|i| s["checklist"][i]["done"].as_bool().unwrap()).collect();
        assert_eq!(checked, [true, true, false, false]);
        let keys_after: Vec<String> = s.as_object().map(|o| o.keys().cloned().collect()).unwrap();
        assert_eq!(keys_after, keys_before);
    }

    #[test]
    fn story_completes_when_iteration_reaches_the_number_of_criteria() {
        let mut s = status();
        for expected in 1..=3u64 {
            let report = apply_progress(&mut s, &input(None, &[])).unwrap();
            assert_eq!(report.iteration, expected);
            assert_eq!(report.completed, expected == 3);
        }
        assert_eq!(done(&s), [true, true, true]);
        assert_eq!(s["status"], "completed");
        assert_eq!(s["focus"], "All criteria met");
        assert_eq!(s["notes_history"].as_array().map(Vec::len), Some(3));
        assert!(s["checklist"].as_array().unwrap().iter().all(|i| i["done"] == true));
    }

    #[test]
    fn complete_after_overrides_the_number_of_criteria() {
        let mut early = status();
        let report = apply_progress(&mut early, &input(Some(1), &[])).unwrap();
        assert!(report.completed);
        assert_eq!(done(&early), [true, true, true]);

        let mut late = status();
        for _ in 0..5 {
            apply_progress(&mut late, &input(Some(6), &[])).unwrap();
        }
        assert_eq!(late["status"], "in_progress");
        assert_eq!(done(&late), [true, true, false]); // 5 * 3 / 6 = 2
        apply_progress(&mut late, &input(Some(6), &[])).unwrap();
        assert_eq!(late["status"], "completed");
    }

    #[test]
    fn missing_fields_are_created_and_bad_shapes_are_errors() {
        let mut bare = json!({"story_id": "US-P1-009"});
        let report = apply_progress(&mut bare, &input(None, &[])).unwrap();
        assert!(report.completed); // no criteria: complete_after defaults to 1
        assert_eq!(bare["iteration"], 1);
        assert_eq!(bare["criteria"], json!([]));

        let mut bad = json!({"criteria": "nope"});
        assert!(apply_progress(&mut bad, &input(None, &[])).unwrap_err().contains("criteria"));
        let mut bad = json!({"iteration": -1});
        assert!(apply_progress(&mut bad, &input(None, &[])).unwrap_err().contains("iteration"));
    }

    #[test]
    fn self_fail_sets_failed_with_a_reason() {
        let mut s = status();
        assert_eq!(apply_self_fail(&mut s, "2026-01-28T10:00:00Z"), Ok(1));
        assert_eq!(s["status"], "failed");
        assert_eq!(s["failed_reasons"].as_array().map(Vec::len), Some(1));
        assert_eq!(s["zz_unknown_last"], 42);
    }

    #[test]
    fn script_parses_fields_and_rejects_bad_ones() {
        let s = json!({"script": {"mode": "crash", "crash_first": 2, "files": ["x"],
                                  "pids_file": "/tmp/p", "complete_after": 4}});
        let script = Script::from_status(&s).unwrap();
        assert_eq!(script.mode, Mode::Crash);
        assert_eq!(script.crash_first, Some(2));
        assert_eq!(script.complete_after, Some(4));
        assert_eq!(script.files, ["x"]);
        assert_eq!(Script::from_status(&json!({})).unwrap(), Script::default());
        assert!(Script::from_status(&json!({"script": {"mode": "dance"}})).is_err());
        assert!(Script::from_status(&json!({"script": {"sleep_ms": "1"}})).is_err());
        assert!(Script::from_status(&json!({"script": {"files": [1]}})).is_err());
    }
}
