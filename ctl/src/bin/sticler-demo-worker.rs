//! `sticler-demo-worker`: a scripted stand-in for an AI worker, so `sticlerctl demo` (and
//! examples/demo) show a phase running without an agent.
//!
//! It follows the worker contract of `reference/phase-worker.md`: read the story's status.json
//! (`$STICLER_STATUS_FILE`, or the first argument), do one iteration of work, write the file
//! back. The work is scripted by the story's `script` object: wait `sleep_ms`, tick off the
//! next acceptance criterion, append a progress line to each of `files` (relative to
//! `$STICLER_PROJECT_DIR`), and mark the story completed once every criterion is done.
//! Fields it does not know are kept where they are.
//!
//! The tests' worker that crashes, hangs or misbehaves on demand is `sticler-test-worker`, in
//! the tests crate; it is not installed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Map, Value};

const WORKER_NAME: &str = "sticler-demo-worker";
const USAGE_EXIT: u8 = 2;

fn main() -> ExitCode {
    let Some(status_file) = status_file() else {
        eprintln!(
            "{WORKER_NAME}: error: no status file: set STICLER_STATUS_FILE or pass it as the first argument \
             (usage: {WORKER_NAME} [STATUS_JSON])"
        );
        return ExitCode::from(USAGE_EXIT);
    };
    match run(&status_file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("{WORKER_NAME}: error: {}: {why}", status_file.display());
            ExitCode::FAILURE
        }
    }
}

fn status_file() -> Option<PathBuf> {
    match std::env::var_os("STICLER_STATUS_FILE") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => std::env::args_os().nth(1).map(PathBuf::from),
    }
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// One iteration of the scripted work.
fn run(status_file: &Path) -> Result<(), String> {
    let text = fs::read_to_string(status_file).map_err(|e| format!("cannot read: {e}"))?;
    let mut status: Value = serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    let story_id = env("STICLER_STORY_ID")
        .or_else(|| status.get("story_id").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "unknown-story".into());
    let script = status.get("script").cloned().unwrap_or(Value::Null);
    let sleep_ms = script.get("sleep_ms").and_then(Value::as_u64).unwrap_or(0);
    let files: Vec<String> = script
        .get("files")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    let project_dir = match env("STICLER_PROJECT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?,
    };

    say(&format!("=== {WORKER_NAME}: {story_id} iteration {} ===", env("STICLER_ITERATION").unwrap_or_default()));
    if sleep_ms > 0 {
        say(&format!("Working for {sleep_ms} ms..."));
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
    let now = sticler_proto::time::now_rfc3339();
    let report = apply_iteration(&mut status, &story_id, &files, &now)?;
    // Project files first, so files_modified never names a change that did not happen.
    let line = format!("{story_id} iteration {}: {}\n", report.iteration, report.worked_on);
    for file in &files {
        append(&project_dir.join(file), &line).map_err(|e| format!("cannot append to {file}: {e}"))?;
    }
    write_pretty(status_file, &status).map_err(|e| format!("cannot write: {e}"))?;

    say(&format!("Working on: {}", report.worked_on));
    if report.completed {
        say(&format!("=== Story Complete ===\nStory: {story_id}\nTotal Iterations: {}", report.iteration));
    } else {
        say(&format!("Next: {}", report.focus));
    }
    Ok(())
}

/// A line of the iteration log; a closed stdout must not fail the iteration.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

struct Report {
    iteration: u64,
    /// The criterion ticked off this iteration.
    worked_on: String,
    completed: bool,
    /// The next criterion, for the next iteration.
    focus: String,
}

/// Ticks off the first open criterion, the checklist in proportion, and records the iteration.
fn apply_iteration(status: &mut Value, story_id: &str, files: &[String], now: &str) -> Result<Report, String> {
    let object = status.as_object_mut().ok_or("status.json is not a JSON object")?;
    let iteration = object.get("iteration").and_then(Value::as_u64).unwrap_or(0) + 1;

    let criteria = array(object, "criteria")?;
    let open = criteria.iter().position(|c| c.get("done") != Some(&Value::Bool(true)));
    let worked_on = match open.and_then(|i| criteria[i].as_object_mut()) {
        Some(criterion) => {
            criterion.insert("done".into(), json!(true));
            criterion.insert("notes".into(), json!(format!("done in iteration {iteration} by {WORKER_NAME}")));
            text_of(criterion.get("text"))
        }
        None => "All criteria met".to_string(),
    };
    let total = criteria.len();
    let done = criteria.iter().filter(|c| c.get("done") == Some(&Value::Bool(true))).count();
    let next = criteria.iter().find(|c| c.get("done") != Some(&Value::Bool(true)));
    let completed = next.is_none();
    let focus = next.map_or_else(|| "All criteria met".to_string(), |c| text_of(c.get("text")));

    let checklist = array(object, "checklist")?;
    let checked = if total == 0 { checklist.len() } else { (done * checklist.len()).div_ceil(total) };
    for item in checklist.iter_mut().take(checked).filter_map(Value::as_object_mut) {
        item.insert("done".into(), json!(true));
    }
    let modified = array(object, "files_modified")?;
    for file in files {
        if !modified.iter().any(|m| m.as_str() == Some(file)) {
            modified.push(json!(file));
        }
    }

    let notes = if completed {
        format!("All criteria met ({done}/{total}) after {iteration} iterations. {story_id} complete.")
    } else {
        format!("Iteration {iteration}: worked on \"{worked_on}\". {done}/{total} criteria done. Next: {focus}")
    };
    object.insert("status".into(), json!(if completed { "completed" } else { "in_progress" }));
    object.insert("focus".into(), json!(focus));
    object.insert("worker_notes".into(), json!(notes));
    object.insert("iteration".into(), json!(iteration));
    array(object, "notes_history")?.push(json!({"iteration": iteration, "note": notes, "timestamp": now}));
    let action = format!("Worked on: {worked_on}");
    let entry = json!({"iteration": iteration, "action": action, "notes": notes, "completed_at": now});
    array(object, "iteration_history")?.push(entry);
    Ok(Report { iteration, worked_on, completed, focus })
}

fn text_of(text: Option<&Value>) -> String {
    text.and_then(Value::as_str).unwrap_or("(criterion without text)").to_string()
}

/// The array under `key`, created empty when missing or null.
fn array<'a>(object: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, String> {
    let slot = object.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = json!([]);
    }
    slot.as_array_mut().ok_or_else(|| format!("field `{key}` is not an array"))
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(text.as_bytes())
}

/// 4-space indent like the seed files, written to a temp file and renamed over the old one, so
/// the daemon reading status.json meanwhile sees the old file or the new one, never half of it.
fn write_pretty(path: &Path, status: &Value) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    status.serialize(&mut serde_json::Serializer::with_formatter(&mut bytes, formatter))?;
    bytes.push(b'\n');
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        json!({
            "story_id": "US-P1-002", "custom": {"kept": true}, "status": "pending",
            "criteria": [{"text": "First", "done": false}, {"text": "Second", "done": false}],
            "checklist": [{"item": "a", "done": false}, {"item": "b", "done": false}, {"item": "c", "done": false}],
            "iteration": 0, "files_modified": [], "script": {"sleep_ms": 5, "files": ["src/a.sh"]}
        })
    }

    #[test]
    fn one_criterion_per_iteration_then_completed() {
        let mut s = status();
        let files = ["src/a.sh".to_string()];
        let first = apply_iteration(&mut s, "US-P1-002", &files, "2026-01-28T10:00:00Z").unwrap();
        assert_eq!((first.iteration, first.worked_on.as_str(), first.completed), (1, "First", false));
        assert_eq!(s["status"], "in_progress");
        assert_eq!(s["focus"], "Second");
        assert_eq!(s["checklist"][1]["done"], true);
        assert_eq!(s["checklist"][2]["done"], false);
        assert_eq!(s["files_modified"], json!(["src/a.sh"]));
        let second = apply_iteration(&mut s, "US-P1-002", &files, "2026-01-28T10:00:01Z").unwrap();
        assert!(second.completed);
        assert_eq!(s["status"], "completed");
        assert_eq!(s["iteration"], 2);
        assert_eq!(s["custom"], json!({"kept": true}));
        assert_eq!(s["iteration_history"].as_array().map(Vec::len), Some(2));
        assert_eq!(s["files_modified"], json!(["src/a.sh"]));
    }

    #[test]
    fn a_story_without_criteria_completes_at_once() {
        let mut s = json!({"story_id": "US-P1-009"});
        assert!(apply_iteration(&mut s, "US-P1-009", &[], "now").unwrap().completed);
        assert!(apply_iteration(&mut json!({"criteria": "nope"}), "x", &[], "now").is_err());
    }
}
