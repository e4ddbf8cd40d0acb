//! What one run is asked to do: where (the environment sticler gives every worker) and how
//! (the `script` object of the story's status.json).

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::failure::{Failure, Result};
use crate::{USAGE_EXIT, WORKER_NAME};

/// Where this iteration runs, from the environment sticler gives every worker.
pub struct Invocation {
    pub status_file: PathBuf,
    pub story_dir: PathBuf,
    pub project_dir: PathBuf,
    /// `STICLER_ITERATION`, sticler's own count, shown in the banner only.
    pub daemon_iteration: Option<String>,
}

impl Invocation {
    pub fn from_env() -> Result<Self> {
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
    pub fn story_id(&self, status: &Value) -> String {
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

    /// A script path, relative to the project dir unless absolute.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.project_dir.join(path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
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

/// The `script` object of a story's status.json (the fields are described in main.rs).
#[derive(Debug, Default, PartialEq)]
pub struct Script {
    pub mode: Mode,
    pub complete_after: Option<u32>,
    pub crash_first: Option<u32>,
    pub sleep_ms: u64,
    pub files: Vec<String>,
    pub pids_file: Option<String>,
    pub record_dir: Option<String>,
    pub commit: bool,
    pub status_after_commit_ms: Option<u64>,
    pub agent_output: Option<String>,
    pub cost_usd: f64,
    pub error_text: String,
    pub limit_first: Option<u32>,
    pub limit_form: String,
    pub limit_reset_secs: i64,
}

type Parsed<T> = std::result::Result<T, String>;

impl Script {
    const FIELDS: [&'static str; 15] = [
        "mode",
        "complete_after",
        "crash_first",
        "sleep_ms",
        "files",
        "pids_file",
        "record_dir",
        "commit",
        "status_after_commit_ms",
        "agent_output",
        "cost_usd",
        "error_text",
        "limit_first",
        "limit_form",
        "limit_reset_secs",
    ];

    pub fn from_status(status: &Value) -> Parsed<Script> {
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
        Ok(Script {
            mode: mode(object)?,
            complete_after: script_u32(object, "complete_after")?,
            crash_first: script_u32(object, "crash_first")?,
            sleep_ms: script_u64(object, "sleep_ms")?.unwrap_or(0),
            files: files(object)?,
            pids_file: script_string(object, "pids_file")?,
            record_dir: script_string(object, "record_dir")?,
            commit: match object.get("commit") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(commit)) => *commit,
                Some(_) => return Err("field `script.commit` is not a boolean".to_string()),
            },
            status_after_commit_ms: script_u64(object, "status_after_commit_ms")?,
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

fn mode(object: &Map<String, Value>) -> Parsed<Mode> {
    match object.get("mode") {
        None | Some(Value::Null) => Ok(Mode::Progress),
        Some(Value::String(name)) => Mode::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Mode::ALL.iter().map(|(n, _)| *n).collect();
            format!("unknown `script.mode` {name:?} (known: {})", known.join(", "))
        }),
        Some(_) => Err("field `script.mode` is not a string".to_string()),
    }
}

fn files(object: &Map<String, Value>) -> Parsed<Vec<String>> {
    match object.get("files") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "field `script.files` must hold only strings".to_string()),
        Some(_) => Err("field `script.files` is not an array".to_string()),
    }
}

fn script_u64(object: &Map<String, Value>, key: &str) -> Parsed<Option<u64>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            value.as_u64().map(Some).ok_or_else(|| format!("field `script.{key}` is not a non-negative integer"))
        }
    }
}

fn script_u32(object: &Map<String, Value>, key: &str) -> Parsed<Option<u32>> {
    match script_u64(object, key)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| format!("field `script.{key}` is too large ({n})")),
    }
}

fn script_string(object: &Map<String, Value>, key: &str) -> Parsed<Option<String>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field `script.{key}` is not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
