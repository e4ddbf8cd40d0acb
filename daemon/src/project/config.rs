//! `orchestrator.config.json`: the project's optional settings (`OrchestratorConfig`), with the
//! worker's command expanded from its preset.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::Deserialize;

use super::json_doc::read_limited;
use super::runner_config::RunnerConfig;
use super::ProjectError;
use crate::agent::{self, OutputFormat};

/// How a command is given in orchestrator.config.json: an argv array, or a string run by `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandSpec {
    /// No program to run: `""`, `[]`, or a program name that is blank.
    pub fn is_empty(&self) -> bool {
        match self {
            CommandSpec::Argv(argv) => argv.first().is_none_or(|p| p.trim().is_empty()),
            CommandSpec::Shell(line) => line.trim().is_empty(),
        }
    }

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

/// Where a story's iterations work: each story in a git worktree of its own, merged back in
/// order (the default), or every worker in the project folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    Worktree,
    Shared,
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
    /// How long a worker may take to exit once its agent printed its final result event.
    pub exit_grace_secs: u64,
    /// A worker that prints nothing and leaves status.json alone this long is stalled; `None`
    /// (JSON `null`) turns the watchdog off.
    pub idle_timeout_secs: Option<u64>,
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
    exit_grace_secs: Option<u64>,
    /// Absent: the default; `null`: off.
    #[serde(deserialize_with = "present")]
    idle_timeout_secs: Option<Option<u64>>,
    env: BTreeMap<String, String>,
    /// More regexes of output lines meaning a usage or rate limit (named group `reset`: epoch).
    limit_patterns: Vec<String>,
}

const DEFAULT_EXIT_GRACE_SECS: u64 = 15;
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;

/// A field that may be given as `null`: present (`Some`, holding `None` for `null`), told apart
/// from absent (the struct's default, `None`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(deserializer).map(Some)
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
            exit_grace_secs: raw.exit_grace_secs.unwrap_or(DEFAULT_EXIT_GRACE_SECS),
            idle_timeout_secs: raw.idle_timeout_secs.unwrap_or(Some(DEFAULT_IDLE_TIMEOUT_SECS)),
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
            exit_grace_secs: DEFAULT_EXIT_GRACE_SECS,
            idle_timeout_secs: Some(DEFAULT_IDLE_TIMEOUT_SECS),
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
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    pub max_parallel_workers: usize,
    pub max_iterations_per_task: u32,
    pub retry_limit: u32,
    pub auto_commit: bool,
    pub workspace: WorkspaceMode,
    pub worker: WorkerConfig,
    pub verify: Option<CommandSpec>,
    pub push: bool,
    /// A story whose iterations cost this much (USD, as the agent reports) fails.
    pub max_cost_usd_per_story: Option<f64>,
    /// Once the phase's stories cost this much, no new iteration starts.
    pub max_cost_usd_per_phase: Option<f64>,
    pub usage_limit: UsageLimitConfig,
    /// Where iterations run: this host, or a Slurm cluster.
    pub runner: RunnerConfig,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            max_parallel_workers: 3,
            max_iterations_per_task: 20,
            retry_limit: 3,
            auto_commit: true,
            workspace: WorkspaceMode::Worktree,
            worker: WorkerConfig::default(),
            verify: None,
            push: true,
            max_cost_usd_per_story: None,
            max_cost_usd_per_phase: None,
            usage_limit: UsageLimitConfig::default(),
            runner: RunnerConfig::default(),
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
        let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| ProjectError::malformed(&path, &e))?;
        let invalid = |message| ProjectError::Invalid { path: path.clone(), message };
        super::config_keys::check(&value).map_err(invalid)?;
        if let serde_json::Value::Object(top) = &value {
            super::config_types::check(top).map_err(invalid)?;
        }
        let config: OrchestratorConfig = serde_json::from_slice(raw).map_err(|e| {
            if e.is_data() {
                // What the type check let through; the position once, serde's own cut off.
                let text = e.to_string();
                let text = text.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&text);
                invalid(format!("line {}, column {}: {text}", e.line(), e.column()))
            } else {
                ProjectError::malformed(&path, &e)
            }
        })?;
        // An empty command would spawn nothing (or a shell that does nothing) and burn every
        // iteration as a failure: refused here, before anything runs.
        let commands = [("worker.command", Some(&config.worker.command)), ("verify", config.verify.as_ref())];
        for (name, command) in commands {
            if command.is_some_and(CommandSpec::is_empty) {
                let message =
                    format!("{name} is empty; give a program and its arguments, such as [\"claude\", \"-p\", \"...\"]");
                return Err(ProjectError::Invalid { path, message });
            }
        }
        // Zero would mean no worker, no iteration or no retry at all: a typo, not a setting.
        for (name, value) in [
            ("max_parallel_workers", config.max_parallel_workers as u64),
            ("max_iterations_per_task", u64::from(config.max_iterations_per_task)),
            ("retry_limit", u64::from(config.retry_limit)),
            ("worker.iteration_timeout_secs", config.worker.iteration_timeout_secs),
            ("worker.exit_grace_secs", config.worker.exit_grace_secs),
            // `null` turns the watchdog off; 0 would call every worker stalled at once.
            ("worker.idle_timeout_secs", config.worker.idle_timeout_secs.unwrap_or(1)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn zero_limits_are_refused_with_their_name() {
        let path = Path::new("/p/orchestrator.config.json");
        for (json, name) in [
            (r#"{"max_parallel_workers": 0}"#, "max_parallel_workers"),
            (r#"{"max_iterations_per_task": 0}"#, "max_iterations_per_task"),
            (r#"{"retry_limit": 0}"#, "retry_limit"),
            (r#"{"worker": {"iteration_timeout_secs": 0}}"#, "worker.iteration_timeout_secs"),
            (r#"{"worker": {"exit_grace_secs": 0}}"#, "worker.exit_grace_secs"),
            (r#"{"worker": {"idle_timeout_secs": 0}}"#, "worker.idle_timeout_secs"),
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
    fn every_key_the_key_check_knows_is_read() {
        use super::super::config_keys::{RUNNER_KEYS, TOP_KEYS, USAGE_LIMIT_KEYS, WORKER_KEYS};
        let full = serde_json::json!({
            "max_parallel_workers": 1, "max_iterations_per_task": 1, "retry_limit": 1, "auto_commit": true,
            "workspace": "shared", "verify": null, "push": false, "max_cost_usd_per_story": null,
            "max_cost_usd_per_phase": null,
            "worker": {"preset": "command", "command": ["x"], "args": [], "stdin": "none", "iteration_timeout_secs": 1,
                       "exit_grace_secs": 1, "idle_timeout_secs": null, "env": {}, "limit_patterns": []},
            "usage_limit": {"margin_secs": 1, "backoff_min_secs": 1, "backoff_max_secs": 1},
            "runner": {"kind": "slurm", "partition": "p", "time_limit_mins": 1, "cpus": 1, "mem_mb": 1,
                       "extra_args": []},
        });
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<_>>();
        let known = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(keys(&full), known(TOP_KEYS));
        assert_eq!(keys(&full["worker"]), known(WORKER_KEYS));
        assert_eq!(keys(&full["usage_limit"]), known(USAGE_LIMIT_KEYS));
        assert_eq!(keys(&full["runner"]), known(RUNNER_KEYS));
        let path = Path::new("/p/orchestrator.config.json");
        OrchestratorConfig::parse(path, full.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn empty_commands_and_non_objects_are_refused() {
        let path = Path::new("/p/orchestrator.config.json");
        for (json, says) in [
            (r#"{"worker": {"command": ""}}"#, "worker.command is empty"),
            (r#"{"worker": {"command": "  "}}"#, "worker.command is empty"),
            (r#"{"worker": {"command": [""]}}"#, "worker.command is empty"),
            (r#"{"worker": {"command": []}}"#, "worker.command is empty"),
            (r#"{"verify": ""}"#, "verify is empty"),
            (r#"[{"max_parallel_workers": 2}]"#, "expected a JSON object of settings"),
            (r#"{"max_paralel_workers": 2}"#, "did you mean \"max_parallel_workers\"?"),
        ] {
            let err = OrchestratorConfig::parse(path, json.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with("/p/orchestrator.config.json: ") && err.contains(says), "{json}: {err}");
        }
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
        assert_eq!(config.workspace, WorkspaceMode::Worktree);
        assert_eq!(config.worker.exit_grace_secs, 15);
        assert_eq!(config.worker.idle_timeout_secs, Some(600));
        fs::write(dir.path().join(CONFIG_FILE), r#"{"worker": {"command": "echo hi"}, "workspace": "shared"}"#)
            .unwrap();
        let config = OrchestratorConfig::load(dir.path()).unwrap();
        assert_eq!(config.worker.command.argv(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(config.workspace, WorkspaceMode::Shared);
        fs::write(dir.path().join(CONFIG_FILE), r#"{"workspace": "tree"}"#).unwrap();
        let err = OrchestratorConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("workspace must be one of \"worktree\", \"shared\", not \"tree\""), "{err}");
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

    #[test]
    fn the_end_of_iteration_timings_are_read_and_null_turns_the_watchdog_off() {
        let path = Path::new("/p/orchestrator.config.json");
        let parse = |json: &str| OrchestratorConfig::parse(path, json.as_bytes()).map(|c| c.worker);
        let worker = parse(r#"{"worker": {"exit_grace_secs": 3, "idle_timeout_secs": 45}}"#).unwrap();
        assert_eq!((worker.exit_grace_secs, worker.idle_timeout_secs), (3, Some(45)));
        assert_eq!(parse(r#"{"worker": {"idle_timeout_secs": null}}"#).unwrap().idle_timeout_secs, None);
        assert_eq!(parse(r#"{"worker": {"preset": "claude"}}"#).unwrap().idle_timeout_secs, Some(600));
        // A wrong type is an error naming the key, never the default.
        for (bad, key) in [
            (r#"{"worker": {"idle_timeout_secs": "10"}}"#, "worker.idle_timeout_secs"),
            (r#"{"worker": {"exit_grace_secs": -1}}"#, "worker.exit_grace_secs"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{key} must be a whole number")), "{bad}: {err}");
        }
    }
}
