//! The end of a run: nothing of it left running, the outcome written into phase_config.json,
//! the phase commit (never a second one with no story commit since) and the push of a
//! completed phase, and the summary.

use std::time::Duration;

use serde_json::Value;
use sticler_proto::{EventKind, ExitReason, RunOutcome, StoryState};

use super::command::append_log;
use super::PhaseRun;
use crate::git;
use crate::project::{JsonDoc, StatusFields};
use crate::worker::{self, SpawnSpec};

impl PhaseRun {
    /// With the Slurm runner: a job whose srun is gone (killed from outside) is cancelled.
    fn cancel_jobs(&self) {
        if !matches!(self.config.runner, crate::project::RunnerConfig::Slurm(_)) {
            return;
        }
        let stories: Vec<String> = self.stories.keys().cloned().collect();
        let root = &self.project.root;
        if let Err(e) =
            tokio::task::block_in_place(|| crate::slurm::cancel_stories(&self.daemon.spawner, root, &stories, &[]))
        {
            tracing::warn!("cannot cancel the run's Slurm jobs: {e}");
        }
    }

    pub(super) fn end(&mut self, outcome: RunOutcome) {
        // Nothing of this run may outlive it.
        worker::kill_descendants_with(std::slice::from_ref(&format!("{}/", self.nonce)));
        self.cancel_jobs();
        for job in std::mem::take(&mut self.later) {
            job();
        }
        let background = std::mem::take(&mut self.background);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for work in background {
                    let _ = work.await;
                }
            })
        });
        let summary = if self.interrupted {
            "interrupted by the sticlerd shutdown; it resumes when sticlerd starts again".to_string()
        } else {
            self.close_workspaces(outcome);
            self.close(outcome)
        };
        self.state.update(|s| {
            s.outcome = Some(outcome);
            s.summary = Some(summary.clone());
        });
        self.finish();
        self.emit(EventKind::RunEnded { outcome, summary });
    }

    /// The outcome into phase_config.json, then the phase commit and the push of a completed
    /// phase. Returns the summary, with a warning for each of those that failed.
    fn close(&self, outcome: RunOutcome) -> String {
        let mut summary = self.summary(outcome);
        let phase_config = self.project.phase_dir(self.phase).join(crate::phase::PHASE_CONFIG);
        let result = JsonDoc::read(&phase_config).and_then(|mut doc| {
            doc.map.insert("status".into(), Value::String(outcome.as_str().into()));
            if outcome == RunOutcome::Completed {
                doc.map.insert("completed_at".into(), Value::String(sticler_proto::time::now_rfc3339()));
            }
            doc.write()
        });
        if let Err(e) = result {
            // The file is left as it is (never replaced by defaults); the summary says why.
            let warning = format!("the end of the run is not recorded in phase_config.json: {e}");
            tracing::error!("{warning}");
            summary.push_str(&format!("; warning: {warning}"));
        }
        if outcome == RunOutcome::Completed {
            if let Some(warning) = self.close_phase(&summary) {
                tracing::warn!("{warning}");
                summary.push_str(&format!("; warning: {warning}"));
            }
        }
        summary
    }

    /// Worktrees of the run go (a failed story's stays for inspection); merged branches go.
    fn close_workspaces(&mut self, outcome: RunOutcome) {
        let Some(workspaces) = self.workspaces.as_mut() else { return };
        let state = self.state.read();
        let merged = |story: &str| state.sched.state(story) == Some(StoryState::Completed);
        let lock = self.daemon.git_lock(&self.project.root);
        let _git = crate::lock::lock(&lock);
        tokio::task::block_in_place(|| workspaces.close(outcome != RunOutcome::Completed, &merged));
    }

    /// Tells the daemon the run ended (before the event saying so goes out: whoever waits for
    /// it may start the phase again at once).
    pub(super) fn finish(&mut self) {
        self.daemon.run_finished(&self.project.root, self.phase, self.interrupted);
        self.finished = true;
    }

    /// The phase commit, then the push when configured. Returns a warning on failure: neither
    /// fails the phase.
    fn close_phase(&self, summary: &str) -> Option<String> {
        let root = &self.project.root;
        let title = JsonDoc::read(&self.project.phase_dir(self.phase).join(crate::phase::PHASE_CONFIG))
            .map(|d| d.str_field("title").to_string())
            .unwrap_or_default();
        let stories: Vec<(String, String)> = self
            .stories
            .iter()
            .map(|(id, paths)| {
                let title = JsonDoc::read(&paths.status).map(|d| d.title().to_string()).unwrap_or_default();
                (id.clone(), title)
            })
            .collect();
        {
            let lock = self.daemon.git_lock(root);
            let _git = crate::lock::lock(&lock);
            // In worktree mode the project folder holds the user's own uncommitted edits and the
            // other phases' work in flight: the phase commit takes this phase's folder only.
            let phase_dir = self.project.phase_dir(self.phase);
            let scope = self.workspaces.is_some().then_some(phase_dir.as_path());
            let committed = tokio::task::block_in_place(|| {
                if !phase_commit_due(root, self.phase)? {
                    tracing::info!("no story commit since the last phase commit: none is made again");
                    return Ok(());
                }
                git::commit_phase(root, self.phase, &title, &stories, summary, scope).map(drop)
            });
            if let Err(e) = committed {
                return Some(format!("phase commit failed: {e}"));
            }
        }
        if !self.config.push {
            return None;
        }
        let branch = match git::push_target(root) {
            Ok(Some(branch)) => branch,
            Ok(None) => return None,
            Err(e) => return Some(format!("push skipped: {e}")),
        };
        let spec = SpawnSpec {
            argv: vec!["git".into(), "push".into(), "origin".into(), branch.clone()],
            cwd: root.clone(),
            env: vec![("GIT_TERMINAL_PROMPT".into(), "0".into())],
            env_remove: Vec::new(),
            stdin: None,
            log: self.logs_root.join(format!("phase_{}-push.log", self.phase)),
            token: format!("{}/push/", self.nonce),
        };
        match self.run_to_end(&spec, Duration::from_secs(120)) {
            Some(ExitReason::Exited(0)) => None,
            Some(exit) => Some(format!("git push origin {branch} failed ({exit}); see {}", spec.log.display())),
            None => Some(format!("git push origin {branch} was cut short: the run was told to stop")),
        }
    }

    /// Runs a helper process (git push) to its end; it is ended on timeout or when the run is
    /// told to stop meanwhile (then the exit is `None`).
    fn run_to_end(&self, spec: &SpawnSpec, timeout: Duration) -> Option<ExitReason> {
        let (group, exit) = match worker::spawn(&self.daemon.spawner, &self.daemon.logs, spec) {
            Ok(started) => started,
            Err(e) => {
                let _ = append_log(&spec.log, &format!("sticler: cannot start {:?}: {e}\n", spec.argv.join(" ")));
                return Some(ExitReason::Exited(127));
            }
        };
        let mut stop_requested = self.stop_requested.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let mut exit = exit;
                let cut_short = tokio::select! {
                    reason = &mut exit => {
                        return Some(reason.unwrap_or(ExitReason::Signalled(nix::sys::signal::Signal::SIGKILL as i32)))
                    }
                    () = tokio::time::sleep(timeout) => Some(ExitReason::TimedOut),
                    Ok(_) = stop_requested.wait_for(|stop| *stop) => None,
                };
                worker::terminate(&group, Duration::ZERO, &mut exit, std::future::pending()).await;
                cut_short
            })
        })
    }

    fn summary(&self, outcome: RunOutcome) -> String {
        let state = self.state.read();
        let sched = &state.sched;
        let in_state = |wanted: StoryState| self.stories.keys().filter(move |s| sched.state(s) == Some(wanted));
        let mut text = format!(
            "{}/{} stories completed, {} iterations, wall time {:.1} s",
            in_state(StoryState::Completed).count(),
            self.stories.len(),
            sched.total_iterations(),
            crate::events::now_ms().saturating_sub(self.started_ms) as f64 / 1000.0
        );
        let failed: Vec<&str> = in_state(StoryState::Failed).map(String::as_str).collect();
        if !failed.is_empty() {
            text.push_str(&format!("; failed: {}", failed.join(", ")));
        }
        let blocked = in_state(StoryState::Blocked).count();
        if blocked > 0 {
            text.push_str(&format!("; {blocked} blocked"));
        }
        if outcome == RunOutcome::Stopped {
            text.push_str("; stopped (start again to resume)");
        }
        text.push_str(&self.agent_summary());
        let commits: Vec<String> = in_state(StoryState::Completed)
            .filter_map(|id| {
                let doc = JsonDoc::read(&self.stories.get(id)?.status).ok()?;
                let hash = doc.commit_hash();
                (!hash.is_empty()).then(|| format!("{id} {}", hash.chars().take(7).collect::<String>()))
            })
            .collect();
        if !commits.is_empty() {
            text.push_str(&format!("; commits: {}", commits.join(", ")));
        }
        text
    }
}

/// Whether the phase's stories were committed since its last `[Phase N]` commit (or it has none
/// yet), along the first-parent history. A forced run of a completed phase that ran nothing
/// makes no second phase commit; one that ran a story again (`retry --completed`) makes one.
fn phase_commit_due(root: &std::path::Path, phase: u32) -> Result<bool, git::GitError> {
    let repo = git2::Repository::open(root)?;
    let Some(mut commit) = git::head_commit(&repo) else { return Ok(true) };
    let (phase_mark, story_mark) = (format!("[Phase {phase}] "), format!("[US-P{phase}-"));
    loop {
        let subject = commit.summary().unwrap_or("");
        if subject.starts_with(&story_mark) {
            return Ok(true);
        }
        if subject.starts_with(&phase_mark) {
            return Ok(false);
        }
        match commit.parent(0) {
            Ok(parent) => commit = parent,
            Err(_) => return Ok(true),
        }
    }
}
