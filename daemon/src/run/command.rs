//! The command line of one iteration's process (the worker, or the verify command): its
//! placeholders filled in, its environment, its stdin and its log.

use std::fs;
use std::path::{Path, PathBuf};

use super::PhaseRun;
use crate::project::{CommandSpec, StdinMode};
use crate::worker::SpawnSpec;

/// What a parent Claude Code process puts in the environment of everything it runs: a daemon
/// started from inside a Claude Code session would pass them on, and Claude Code refuses to
/// start when it finds `CLAUDECODE` (a nested session) or talks to the parent's IDE. A worker
/// gets them only when the config's `worker.env` sets them.
pub const PARENT_AGENT_VARS: &[&str] = &["CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT"];

/// Git settings every iteration's process runs with: no automatic `git gc` or `git maintenance`.
/// A worker's `git commit` would otherwise start one detached, in a session of its own: out of
/// the iteration's process group, it outlives the iteration, and its `reflog expire --all` takes
/// every worktree's HEAD.lock and every branch's lock in turn while sticler moves them.
const WORKER_GIT_CONFIG: [(&str, &str); 2] = [("gc.auto", "0"), ("maintenance.auto", "false")];

/// Where a story's files are.
#[derive(Clone)]
pub struct StoryPaths {
    pub dir: PathBuf,
    pub status: PathBuf,
    pub spec: PathBuf,
}

impl PhaseRun {
    /// Where the story's files are for its processes: in its worktree while it has one, else in
    /// the project folder.
    pub(super) fn work_paths(&self, story: &str) -> Option<StoryPaths> {
        let main = self.stories.get(story)?;
        let Some(rebase) = self.workspaces.as_ref().map(|w| |p: &Path| w.rebase(story, p)) else {
            return Some(main.clone());
        };
        match (rebase(&main.dir), rebase(&main.status), rebase(&main.spec)) {
            (Some(dir), Some(status), Some(spec)) => Some(StoryPaths { dir, status, spec }),
            _ => Some(main.clone()),
        }
    }

    /// The folder the story's processes run in: its worktree, or the project folder.
    pub(super) fn work_root(&self, story: &str) -> PathBuf {
        let worktree = self.workspaces.as_ref().and_then(|w| w.root(story));
        worktree.map_or_else(|| self.project.root.clone(), Path::to_path_buf)
    }

    /// The command (worker or verify) of one iteration with its placeholders, environment,
    /// stdin and log.
    pub(super) fn spawn_spec(
        &self,
        story: &str,
        paths: &StoryPaths,
        iteration: u32,
        token: String,
        command: &CommandSpec,
    ) -> SpawnSpec {
        let root = self.work_root(story);
        let vars: [(&str, String); 7] = [
            ("story_id", story.to_string()),
            ("story_dir", paths.dir.display().to_string()),
            ("spec", paths.spec.display().to_string()),
            ("status", paths.status.display().to_string()),
            ("phase", self.phase.to_string()),
            ("project_dir", root.display().to_string()),
            ("iteration", iteration.to_string()),
        ];
        let argv = command
            .argv()
            .iter()
            .map(|arg| vars.iter().fold(arg.clone(), |acc, (k, v)| acc.replace(&format!("{{{k}}}"), v)))
            .collect();
        let mut env: Vec<(String, String)> =
            self.config.worker.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(vars.iter().map(|(k, v)| (format!("STICLER_{}", env_name(k)), v.clone())));
        env.push(("STICLER_MAIN_DIR".into(), self.project.root.display().to_string()));
        git_config_env(&mut env, std::env::var("GIT_CONFIG_COUNT").ok());
        if let Some(files) = self.conflicts.get(story) {
            // The merge that conflicted: the agent resolves these (newline-separated paths).
            env.push(("STICLER_MERGE_CONFLICTS".into(), files.join("\n")));
        }
        let env_remove = PARENT_AGENT_VARS
            .iter()
            .filter(|name| !self.config.worker.env.contains_key(**name))
            .map(|name| name.to_string())
            .collect();
        SpawnSpec {
            argv,
            cwd: root,
            env,
            env_remove,
            stdin: (self.config.worker.stdin == StdinMode::Spec).then(|| paths.spec.clone()),
            log: crate::logs::log_path(&self.logs_root, story, iteration),
            token,
        }
    }
}

/// Adds `WORKER_GIT_CONFIG` to `env` as git's `GIT_CONFIG_KEY_<n>`/`GIT_CONFIG_VALUE_<n>`
/// pairs, after those the config's `worker.env` (in `env`) or else the daemon's environment
/// (`inherited` count) already set, which stay as they are.
fn git_config_env(env: &mut Vec<(String, String)>, inherited: Option<String>) {
    let configured = env.iter().position(|(k, _)| k == "GIT_CONFIG_COUNT").map(|i| env.remove(i).1);
    let first: usize = configured.or(inherited).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    for (n, (key, value)) in (first..).zip(WORKER_GIT_CONFIG) {
        env.push((format!("GIT_CONFIG_KEY_{n}"), key.to_string()));
        env.push((format!("GIT_CONFIG_VALUE_{n}"), value.to_string()));
    }
    env.push(("GIT_CONFIG_COUNT".into(), (first + WORKER_GIT_CONFIG.len()).to_string()));
}

fn env_name(placeholder: &str) -> String {
    match placeholder {
        "spec" => "SPEC_FILE".into(),
        "status" => "STATUS_FILE".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// Adds sticler's own line to a process's log (why it could not start, why a claim failed).
pub fn append_log(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn worker_git_config_comes_after_the_pairs_already_set() {
        let mut env = vec![("GIT_CONFIG_COUNT".to_string(), "1".to_string())];
        git_config_env(&mut env, Some("5".into()));
        assert_eq!(env.iter().filter(|(k, _)| k == "GIT_CONFIG_COUNT").count(), 1, "{env:?}");
        assert_eq!(value(&env, "GIT_CONFIG_COUNT"), Some("3"));
        assert_eq!(value(&env, "GIT_CONFIG_KEY_1"), Some("gc.auto"));
        assert_eq!(value(&env, "GIT_CONFIG_VALUE_2"), Some("false"));

        let mut env = Vec::new();
        git_config_env(&mut env, Some("2".into()));
        assert_eq!(value(&env, "GIT_CONFIG_KEY_2"), Some("gc.auto"));
        assert_eq!(value(&env, "GIT_CONFIG_COUNT"), Some("4"));

        let mut env = Vec::new();
        git_config_env(&mut env, None);
        assert_eq!(value(&env, "GIT_CONFIG_KEY_0"), Some("gc.auto"));
        assert_eq!(value(&env, "GIT_CONFIG_KEY_1"), Some("maintenance.auto"));
        assert_eq!(value(&env, "GIT_CONFIG_COUNT"), Some("2"));
    }
}
