//! The on-disk formats owned by the user and the worker: `phase_config.json`, each story's
//! `status.json` and `spec.md`, and `orchestrator.config.json`.
//!
//! JSON documents are kept as `serde_json::Map` (with key order preserved) so that fields this
//! version does not know survive every rewrite. A malformed file is reported with its path, line
//! and column and is never rewritten.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::{Map, Value};

pub use sticler_proto::StoryId;

use crate::agent::{self, OutputFormat};

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: malformed JSON at line {line}, column {column}: {message}", path.display())]
    Malformed { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("no folder holding phases/ found at or above {}; pass -C <project dir>", .0.display())]
    NoProject(PathBuf),
    #[error("{}: phase {phase} not found (expected folder {})", project.display(), project.join("phases").join(format!("phase_{phase}")).display())]
    NoPhase { project: PathBuf, phase: u32 },
}

impl ProjectError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        ProjectError::Io { path: path.to_path_buf(), source }
    }

    /// A JSON syntax error at `path`. serde's own text ends with the position, which this
    /// error names already: it is cut off.
    fn malformed(path: &Path, e: &serde_json::Error) -> Self {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        ProjectError::Malformed {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: text.strip_suffix(&suffix).unwrap_or(&text).to_string(),
        }
    }

    /// The error without its leading path, for a problem that carries the path already.
    pub fn detail(&self) -> String {
        match self {
            ProjectError::Io { source, .. } => source.to_string(),
            ProjectError::Malformed { line, column, message, .. } => {
                format!("malformed JSON at line {line}, column {column}: {message}")
            }
            ProjectError::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// The protocol error a client sees (the daemon's server edge sends it as is).
impl From<ProjectError> for sticler_proto::ErrorReply {
    fn from(e: ProjectError) -> Self {
        use sticler_proto::ErrorKind;
        let kind = match e {
            ProjectError::NoProject(_) | ProjectError::NoPhase { .. } => ErrorKind::NotFound,
            ProjectError::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound => ErrorKind::NotFound,
            ProjectError::Io { .. } => ErrorKind::Internal,
            ProjectError::Malformed { .. } | ProjectError::Invalid { .. } => ErrorKind::Invalid,
        };
        sticler_proto::ErrorReply { kind, message: e.to_string() }
    }
}

/// A JSON object read from disk together with the exact bytes it came from.
#[derive(Debug, Clone)]
pub struct JsonDoc {
    pub path: PathBuf,
    pub raw: Vec<u8>,
    pub map: Map<String, Value>,
    /// The status.json fields sticler reads, taken out of `map` once per read (and again after
    /// `write`): `status` of a large phase then costs no map lookups.
    fields: StatusSummary,
}

impl JsonDoc {
    pub fn read(path: &Path) -> Result<JsonDoc, ProjectError> {
        let raw = read_limited(path)?;
        let map = parse_object(path, &raw)?;
        Ok(JsonDoc::new(path.to_path_buf(), raw, map))
    }

    pub fn new(path: PathBuf, raw: Vec<u8>, map: Map<String, Value>) -> JsonDoc {
        let fields = StatusSummary::of(&map);
        JsonDoc { path, raw, map, fields }
    }

    pub fn str_field(&self, key: &str) -> &str {
        self.map.get(key).and_then(Value::as_str).unwrap_or("")
    }

    /// Writes the document back atomically; unknown fields are kept as they were read.
    pub fn write(&mut self) -> Result<(), ProjectError> {
        // Four-space indentation, as the worker contract's examples are written.
        let mut bytes = Vec::with_capacity(self.raw.len() + 64);
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
        serde::Serialize::serialize(&self.map, &mut serializer)
            .map_err(|e| ProjectError::Invalid { path: self.path.clone(), message: format!("cannot encode: {e}") })?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes)?;
        self.raw = bytes;
        self.fields = StatusSummary::of(&self.map);
        Ok(())
    }
}

/// What identifies one version of a file without reading it: an atomic rewrite changes the
/// inode, an in-place write the size or the nanosecond mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of_stat(st: &nix::sys::stat::FileStat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            len: st.st_size as u64,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        }
    }
}

/// Parsed JSON documents by path, reused while the file is unchanged. `status` of a phase of
/// 1,000 stories then costs 1,000 `stat` calls instead of 1,000 reads and parses.
#[derive(Default)]
pub struct DocCache {
    entries: std::sync::Mutex<std::collections::HashMap<std::ffi::OsString, (Stamp, std::sync::Arc<JsonDoc>)>>,
}

/// Entries kept at most; beyond it the cache starts over (it is only a cache).
const DOC_CACHE_LIMIT: usize = 200_000;

impl DocCache {
    /// The parsed document at `dir`/`rel` (`path` is the same file, for messages and the cache
    /// key). The `stat` is relative to an open folder: the kernel then walks two path components
    /// instead of the whole absolute path, which was most of a large phase's `status` time. A
    /// symlink is not followed (reading it is refused by `JsonDoc::read`).
    pub fn read_at(&self, dir: &fs::File, rel: &Path, path: &Path) -> Result<std::sync::Arc<JsonDoc>, ProjectError> {
        use std::os::fd::AsRawFd;
        let st = nix::sys::stat::fstatat(Some(dir.as_raw_fd()), rel, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| ProjectError::io(path, std::io::Error::from(e)))?;
        let stamp = Stamp::of_stat(&st);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Keyed by the path's bytes: hashing a `Path` walks its components.
        if let Some((cached, doc)) = entries.get(path.as_os_str()) {
            if *cached == stamp {
                return Ok(std::sync::Arc::clone(doc));
            }
        }
        drop(entries);
        let doc = std::sync::Arc::new(JsonDoc::read(path)?);
        // The stamp taken before reading: a write racing the read makes the next call re-read.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= DOC_CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(path.as_os_str().to_owned(), (stamp, std::sync::Arc::clone(&doc)));
        Ok(doc)
    }
}

/// Largest JSON file sticler reads from a project. Real status.json files are a few KiB; a
/// bigger one is refused with a clear error instead of being read into memory.
pub const MAX_JSON_FILE: u64 = 4 * 1024 * 1024;

/// Reads a project file that sticler parses (status.json, phase_config.json,
/// orchestrator.config.json). The file must be a regular file, not a symlink (which could lead
/// outside the project) nor a FIFO (which would block the reader), and at most `MAX_JSON_FILE`
/// bytes: memory stays bounded whatever a worker or a user leaves there.
pub fn read_limited(path: &Path) -> Result<Vec<u8>, ProjectError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |message: String| ProjectError::Invalid { path: path.to_path_buf(), message };
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for a file.
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ELOOP) => invalid("is a symlink; sticler reads only regular files inside the project".into()),
            _ => ProjectError::io(path, e),
        },
    )?;
    let meta = file.metadata().map_err(|e| ProjectError::io(path, e))?;
    if meta.is_dir() {
        return Err(invalid("is a directory, not a regular file".into()));
    }
    if !meta.is_file() {
        return Err(invalid("is not a regular file (a FIFO, socket or device)".into()));
    }
    let too_big = |len: u64| invalid(format!("is {len} bytes, more than the {MAX_JSON_FILE} bytes sticler reads"));
    if meta.len() > MAX_JSON_FILE {
        return Err(too_big(meta.len()));
    }
    let mut raw = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never take more than the limit plus one byte.
    file.take(MAX_JSON_FILE + 1).read_to_end(&mut raw).map_err(|e| ProjectError::io(path, e))?;
    if raw.len() as u64 > MAX_JSON_FILE {
        return Err(too_big(raw.len() as u64));
    }
    Ok(raw)
}

/// Parses a JSON object, naming the file, line and column on failure.
pub fn parse_object(path: &Path, raw: &[u8]) -> Result<Map<String, Value>, ProjectError> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProjectError::Invalid {
            path: path.to_path_buf(),
            message: "expected a JSON object at the top level".into(),
        }),
        Err(e) => Err(ProjectError::malformed(path, &e)),
    }
}

/// Replaces `path` with `bytes` so that readers see either the old or the new file, never a
/// mix: temp file in the same folder, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp =
        dir.join(format!(".{name}.sticler-{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            // Keep the user's permissions on the file we replace.
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ProjectError::io(path, e)
    })
}

/// How a command is given in orchestrator.config.json: an argv array, or a string run by `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandSpec {
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandSpec::Argv(argv) => argv.clone(),
            CommandSpec::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdinMode {
    /// spec.md on the worker's stdin.
    Spec,
    /// /dev/null.
    None,
}

/// `worker` of orchestrator.config.json, with its preset expanded (see `agent`).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawWorkerConfig")]
pub struct WorkerConfig {
    /// The preset's name; `command` when the command is given explicitly.
    pub preset: String,
    pub command: CommandSpec,
    pub stdin: StdinMode,
    pub iteration_timeout_secs: u64,
    pub env: BTreeMap<String, String>,
    pub output: OutputFormat,
    /// The preset's limit patterns, then the user's `limit_patterns` (checked to compile; the
    /// run compiles them all when it starts, so `validate` and `status` pay nothing for them).
    pub limit_patterns: Vec<String>,
}

/// `worker` as written: a preset (default `command`), or an explicit command.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWorkerConfig {
    preset: Option<String>,
    command: Option<CommandSpec>,
    /// Appended to the preset's argv (e.g. `["--model", "opus"]`).
    args: Vec<String>,
    stdin: Option<StdinMode>,
    iteration_timeout_secs: Option<u64>,
    env: BTreeMap<String, String>,
    /// More regexes of output lines meaning a usage or rate limit (named group `reset`: epoch).
    limit_patterns: Vec<String>,
}

impl TryFrom<RawWorkerConfig> for WorkerConfig {
    type Error = String;

    fn try_from(raw: RawWorkerConfig) -> Result<Self, String> {
        let name = raw.preset.as_deref().unwrap_or("command");
        let preset = agent::preset(name).ok_or_else(|| {
            format!("unknown worker.preset {name:?}; one of {} (see `sticlerctl presets`)", agent::names())
        })?;
        let command = match (name, raw.command) {
            ("command", Some(command)) => command,
            ("command", None) => CommandSpec::Argv(preset.argv.iter().map(|s| s.to_string()).collect()),
            (_, Some(_)) => {
                return Err(format!(
                    "worker.command and worker.preset {name:?} are both given; use \"preset\": \"command\" to run your own command, or worker.args to add flags to the preset"
                ))
            }
            (_, None) => CommandSpec::Argv(preset.argv.iter().map(|s| s.to_string()).collect()),
        };
        let command = match command {
            CommandSpec::Argv(mut argv) => {
                argv.extend(raw.args);
                CommandSpec::Argv(argv)
            }
            CommandSpec::Shell(_) if !raw.args.is_empty() => {
                return Err("worker.args needs an argv command, not a shell string".into())
            }
            shell => shell,
        };
        crate::agent_output::compile(&raw.limit_patterns).map_err(|e| format!("worker.limit_patterns: {e}"))?;
        let mut patterns: Vec<String> = preset.limit_patterns.iter().map(|p| p.to_string()).collect();
        patterns.extend(raw.limit_patterns);
        Ok(WorkerConfig {
            preset: name.to_string(),
            command,
            stdin: raw.stdin.unwrap_or(if preset.stdin == "spec" { StdinMode::Spec } else { StdinMode::None }),
            iteration_timeout_secs: raw.iteration_timeout_secs.unwrap_or(1800),
            env: raw.env,
            output: preset.output,
            limit_patterns: patterns,
        })
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        // The built-in presets' patterns are known to compile (agent's tests).
        WorkerConfig::try_from(RawWorkerConfig::default()).unwrap_or_else(|_| WorkerConfig {
            preset: "command".into(),
            command: CommandSpec::Argv(vec!["claude".into()]),
            stdin: StdinMode::Spec,
            iteration_timeout_secs: 1800,
            env: BTreeMap::new(),
            output: OutputFormat::Text,
            limit_patterns: Vec::new(),
        })
    }
}

/// How long a project waits when an agent hits its usage limit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageLimitConfig {
    /// Added to the reset time the agent reported.
    pub margin_secs: u64,
    /// Wait after the first hit with no reset time; doubled at each further hit, up to the max.
    pub backoff_min_secs: u64,
    pub backoff_max_secs: u64,
}

impl Default for UsageLimitConfig {
    fn default() -> Self {
        UsageLimitConfig { margin_secs: 60, backoff_min_secs: 60, backoff_max_secs: 1800 }
    }
}

/// `orchestrator.config.json` at the project root; every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OrchestratorConfig {
    pub max_parallel_workers: usize,
    pub max_iterations_per_task: u32,
    pub retry_limit: u32,
    pub auto_commit: bool,
    pub worker: WorkerConfig,
    pub verify: Option<CommandSpec>,
    pub push: bool,
    /// A story whose iterations cost this much (USD, as the agent reports) fails.
    pub max_cost_usd_per_story: Option<f64>,
    /// Once the phase's stories cost this much, no new iteration starts.
    pub max_cost_usd_per_phase: Option<f64>,
    pub usage_limit: UsageLimitConfig,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            max_parallel_workers: 3,
            max_iterations_per_task: 20,
            retry_limit: 3,
            auto_commit: true,
            worker: WorkerConfig::default(),
            verify: None,
            push: true,
            max_cost_usd_per_story: None,
            max_cost_usd_per_phase: None,
            usage_limit: UsageLimitConfig::default(),
        }
    }
}

pub const CONFIG_FILE: &str = "orchestrator.config.json";

impl OrchestratorConfig {
    /// Reads the project's config, or the defaults when the file does not exist.
    pub fn load(project: &Path) -> Result<OrchestratorConfig, ProjectError> {
        let path = project.join(CONFIG_FILE);
        let raw = match read_limited(&path) {
            Ok(raw) => raw,
            Err(ProjectError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(e) => return Err(e),
        };
        Self::parse(&path, &raw)
    }

    /// Parses the bytes of the config file at `path` (named in errors).
    pub fn parse(path: &Path, raw: &[u8]) -> Result<OrchestratorConfig, ProjectError> {
        let path = path.to_path_buf();
        let config: OrchestratorConfig = serde_json::from_slice(raw).map_err(|e| {
            if e.is_data() {
                ProjectError::Invalid {
                    path: path.clone(),
                    message: format!("line {}, column {}: {e}", e.line(), e.column()),
                }
            } else {
                ProjectError::malformed(&path, &e)
            }
        })?;
        if config.worker.command.argv().first().is_none_or(|p| p.is_empty()) {
            return Err(ProjectError::Invalid { path, message: "worker.command is empty".into() });
        }
        // Zero would mean no worker, no iteration or no retry at all: a typo, not a setting.
        for (name, value) in [
            ("max_parallel_workers", config.max_parallel_workers as u64),
            ("max_iterations_per_task", u64::from(config.max_iterations_per_task)),
            ("retry_limit", u64::from(config.retry_limit)),
            ("worker.iteration_timeout_secs", config.worker.iteration_timeout_secs),
        ] {
            if value == 0 {
                return Err(ProjectError::Invalid { path, message: format!("{name} must be at least 1") });
            }
        }
        for (name, budget) in [
            ("max_cost_usd_per_story", config.max_cost_usd_per_story),
            ("max_cost_usd_per_phase", config.max_cost_usd_per_phase),
        ] {
            if budget.is_some_and(|b| !b.is_finite() || b <= 0.0) {
                return Err(ProjectError::Invalid {
                    path,
                    message: format!("{name} must be a positive number of USD"),
                });
            }
        }
        Ok(config)
    }
}

/// A project: the folder holding `phases/`, by its canonical path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Project {
    pub root: PathBuf,
}

impl Project {
    /// Opens the project at `dir` (which must hold `phases/`).
    pub fn open(dir: &Path) -> Result<Project, ProjectError> {
        if std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).contains(&0) {
            let message = "contains a NUL byte, so it cannot be a folder".into();
            return Err(ProjectError::Invalid { path: dir.to_path_buf(), message });
        }
        let root = fs::canonicalize(dir).map_err(|e| ProjectError::io(dir, e))?;
        if !root.join("phases").is_dir() {
            return Err(ProjectError::NoProject(root));
        }
        Ok(Project { root })
    }

    pub fn phase_dir(&self, phase: u32) -> PathBuf {
        self.root.join("phases").join(format!("phase_{phase}"))
    }

    /// Phase numbers found under `phases/`, ascending.
    pub fn phases(&self) -> Result<Vec<u32>, ProjectError> {
        let dir = self.root.join("phases");
        let entries = fs::read_dir(&dir).map_err(|e| ProjectError::io(&dir, e))?;
        let mut numbers: Vec<u32> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("phase_")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The folder of a story, from its id (`US-P3-007` lives in phase 3).
    pub fn story_dir(&self, id: &StoryId) -> PathBuf {
        self.phase_dir(id.phase).join("stories").join(id.as_str())
    }
}

/// The fields of status.json that sticler reads.
#[derive(Debug, Clone, Default)]
pub struct StatusSummary {
    status: String,
    title: String,
    focus: String,
    commit_hash: String,
    iteration: u32,
    dependencies: Vec<String>,
    failed_reasons: Vec<String>,
    criteria: (u32, u32),
}

impl StatusSummary {
    fn of(map: &Map<String, Value>) -> StatusSummary {
        let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        let iteration = map.get("iteration").and_then(Value::as_u64).unwrap_or(0);
        let criteria = match map.get("criteria") {
            Some(Value::Array(items)) => {
                let done = items.iter().filter(|c| c.get("done").and_then(Value::as_bool) == Some(true));
                (done.count() as u32, items.len() as u32)
            }
            _ => (0, 0),
        };
        StatusSummary {
            status: text("status"),
            title: text("title"),
            focus: text("focus"),
            commit_hash: text("commit_hash"),
            iteration: u32::try_from(iteration).unwrap_or(u32::MAX),
            dependencies: string_list(map.get("dependencies")),
            failed_reasons: string_list(map.get("failed_reasons")),
            criteria,
        }
    }
}

/// Accessors for the fields of status.json that sticler reads.
pub trait StatusFields {
    fn summary(&self) -> &StatusSummary;

    fn status(&self) -> &str {
        &self.summary().status
    }
    fn title(&self) -> &str {
        &self.summary().title
    }
    fn focus(&self) -> &str {
        &self.summary().focus
    }
    fn commit_hash(&self) -> &str {
        &self.summary().commit_hash
    }
    fn iteration(&self) -> u32 {
        self.summary().iteration
    }
    fn dependencies(&self) -> &[String] {
        &self.summary().dependencies
    }
    fn failed_reasons(&self) -> &[String] {
        &self.summary().failed_reasons
    }
    /// (done, total) of the acceptance criteria.
    fn criteria(&self) -> (u32, u32) {
        self.summary().criteria
    }
}

impl StatusFields for JsonDoc {
    fn summary(&self) -> &StatusSummary {
        &self.fields
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_rewrite_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let text = r#"{"zeta": {"nested": [1, 2]}, "story_id": "US-P1-001", "status": "pending", "x-custom": true}"#;
        fs::write(&path, text).unwrap();
        let mut doc = JsonDoc::read(&path).unwrap();
        doc.map.insert("status".into(), Value::String("failed".into()));
        doc.write().unwrap();
        let back: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let keys: Vec<_> = back.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["zeta", "story_id", "status", "x-custom"]);
        assert_eq!(back["zeta"]["nested"][1], 2);
        assert_eq!(back["status"], "failed");
        assert_eq!(back["x-custom"], true);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
    }

    #[test]
    fn numbers_keep_their_value_through_a_rewrite() {
        // Found by fuzzing (a float changed) and by an outside audit (integers beyond 64 bits
        // became floats, `1e400` made the file unreadable): every number is written back as
        // it was written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        // (as written by the user, as sticler writes it back): the same digits; only an
        // exponent gets its sign spelt out.
        let numbers = [
            (
                "555755555555555555555555555555555555555555555550000",
                "555755555555555555555555555555555555555555555550000",
            ),
            ("3.14159265358979323846", "3.14159265358979323846"),
            ("123456789012345678901234567890", "123456789012345678901234567890"),
            ("-9223372036854775809", "-9223372036854775809"),
            ("1.0000000000000000001", "1.0000000000000000001"),
            ("1e400", "1e+400"),
            ("18446744073709551615", "18446744073709551615"),
            ("0.1", "0.1"),
        ];
        let fields: Vec<String> = numbers.iter().enumerate().map(|(i, (n, _))| format!("\"n{i}\": {n}")).collect();
        fs::write(&path, format!("{{{}}}", fields.join(", "))).unwrap();
        let mut doc = JsonDoc::read(&path).unwrap();
        doc.map.insert("status".into(), Value::String("failed".into()));
        doc.write().unwrap();
        let written = fs::read_to_string(&path).unwrap();
        for (i, (n, back)) in numbers.iter().enumerate() {
            assert!(written.contains(&format!("\"n{i}\": {back}")), "{n} changed:\n{written}");
        }
    }

    #[test]
    fn malformed_json_names_line_and_column_and_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let text = b"{\n  \"status\": \"pending\",\n  oops\n}\n";
        fs::write(&path, text).unwrap();
        match JsonDoc::read(&path) {
            Err(ProjectError::Malformed { line, column, .. }) => assert_eq!((line, column), (3, 3)),
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), text);
    }

    #[test]
    fn only_regular_files_within_the_size_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.json");
        fs::write(&outside, "{}").unwrap();
        let link = dir.path().join("status.json");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let err = JsonDoc::read(&link).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        // A FIFO with no writer would block a plain open forever.
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = JsonDoc::read(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let big = dir.path().join("big.json");
        fs::write(&big, vec![b' '; MAX_JSON_FILE as usize + 1]).unwrap();
        let err = JsonDoc::read(&big).unwrap_err().to_string();
        assert!(err.contains("more than the 4194304 bytes"), "{err}");
        fs::write(&big, vec![b' '; MAX_JSON_FILE as usize]).unwrap();
        assert!(matches!(JsonDoc::read(&big), Err(ProjectError::Malformed { .. })), "at the limit it is parsed");
    }

    #[test]
    fn zero_limits_are_refused_with_their_name() {
        let path = Path::new("/p/orchestrator.config.json");
        for (json, name) in [
            (r#"{"max_parallel_workers": 0}"#, "max_parallel_workers"),
            (r#"{"max_iterations_per_task": 0}"#, "max_iterations_per_task"),
            (r#"{"retry_limit": 0}"#, "retry_limit"),
            (r#"{"worker": {"iteration_timeout_secs": 0}}"#, "worker.iteration_timeout_secs"),
        ] {
            match OrchestratorConfig::parse(path, json.as_bytes()) {
                Err(ProjectError::Invalid { message, .. }) => {
                    assert_eq!(message, format!("{name} must be at least 1"), "{json}")
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(OrchestratorConfig::parse(path, br#"{"max_parallel_workers": 1, "retry_limit": 1}"#).is_ok());
    }

    #[test]
    fn config_defaults_match_the_design() {
        let dir = tempfile::tempdir().unwrap();
        let config = OrchestratorConfig::load(dir.path()).unwrap();
        assert_eq!(config.max_parallel_workers, 3);
        assert_eq!(config.max_iterations_per_task, 20);
        assert_eq!(config.retry_limit, 3);
        assert!(config.auto_commit && config.push);
        assert_eq!(config.worker.stdin, StdinMode::Spec);
        assert_eq!(config.worker.iteration_timeout_secs, 1800);
        fs::write(dir.path().join(CONFIG_FILE), r#"{"worker": {"command": "echo hi"}}"#).unwrap();
        let config = OrchestratorConfig::load(dir.path()).unwrap();
        assert_eq!(config.worker.command.argv(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(config.max_parallel_workers, 3);
    }

    #[test]
    fn a_preset_expands_to_its_command_and_takes_extra_args() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        write(r#"{"worker": {"preset": "claude", "args": ["--model", "opus"], "limit_patterns": ["quota"]}}"#);
        let config = OrchestratorConfig::load(dir.path()).unwrap();
        let argv = config.worker.command.argv();
        assert_eq!(argv[..4], ["claude", "-p", "/phase-worker {story_id}", "--output-format"]);
        assert_eq!(argv[argv.len() - 2..], ["--model", "opus"]);
        assert_eq!(config.worker.output, OutputFormat::ClaudeStreamJson);
        assert_eq!(config.worker.stdin, StdinMode::Spec);
        assert_eq!(config.worker.limit_patterns.last().map(String::as_str), Some("quota"));
        assert!(config.worker.limit_patterns.len() > 1, "the preset's patterns come first");
        write(r#"{"worker": {"preset": "aider"}}"#);
        assert_eq!(OrchestratorConfig::load(dir.path()).unwrap().worker.stdin, StdinMode::None);
        for (bad, says) in [
            (r#"{"worker": {"preset": "nope"}}"#, "unknown worker.preset"),
            (r#"{"worker": {"preset": "claude", "command": ["x"]}}"#, "both given"),
            (r#"{"worker": {"limit_patterns": ["("]}}"#, "limit_patterns"),
            (r#"{"max_cost_usd_per_story": 0}"#, "max_cost_usd_per_story"),
        ] {
            write(bad);
            let err = OrchestratorConfig::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
