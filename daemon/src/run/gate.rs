//! A story's claim of completion and what it must pass: the verify command (when configured),
//! then the commit check, which finds the story's `[story]` commit or makes it (auto_commit)
//! and records `commit_hash` in status.json. A claim that fails either goes back to the worker.

use sticler_proto::ExitReason;

use super::command::{append_log, StoryPaths};
use super::iteration::{Process, Running};
use super::supervise::Ended;
use super::{status_edits, PhaseRun};
use crate::daemon::Daemon;
use crate::git;
use crate::project::{JsonDoc, ProjectError, StatusFields};
use crate::scheduler::Verdict;
use crate::worker::{self, SpawnSpec};

impl PhaseRun {
    /// A story claims completed and a verify command is configured: start it (its output goes
    /// to the iteration's log); its end comes back as `Exited` like a worker's. Returns `None`
    /// when it started, else the verdict of the claim (stopping, or the command cannot start).
    pub(super) fn start_verify(&mut self, story: &str, worker: &Running) -> Option<Verdict> {
        if self.state.read().sched.is_stopping() {
            return Some(Verdict::Stopped);
        }
        let (Some(paths), Some(verify)) = (self.work_paths(story), self.config.verify.clone()) else {
            return Some(Verdict::Stopped);
        };
        // Not under the worker's token, whose stray sweep must not reach the verify command.
        let token = format!("{}-verify/", worker.group.token.trim_end_matches('/'));
        let spec = SpawnSpec { stdin: None, ..self.spawn_spec(story, &paths, worker.iteration, token, &verify) };
        // Recorded, and flushed (see `record_story`), before the command starts: a daemon that
        // dies while it runs knows the claim was never verified, and turns it back instead of
        // committing it (`launch::turn_back_unverified`).
        self.state.update(|s| s.sched.verifying(story));
        self.record_story(story, None, None);
        match worker::spawn(&self.daemon.spawner, &self.daemon.logs, &spec) {
            Ok((group, exit)) => {
                let stop = self.supervise(story, worker.iteration, (group.clone(), exit), None, None);
                let running = Running {
                    iteration: worker.iteration,
                    group,
                    before: worker.before.clone(),
                    process: Process::Verify,
                    stop,
                };
                self.running.insert(story.to_string(), running);
                None
            }
            Err(e) => {
                let reason = format!("cannot start the verify command {:?}: {e}", spec.argv.join(" "));
                let _ = append_log(&spec.log, &format!("sticler: {reason}\n"));
                reopen(story, &paths, &reason);
                Some(Verdict::Progress)
            }
        }
    }

    /// The verify command ended: accept the claim (then the commit step), or turn it back.
    pub(super) fn verified(&mut self, story: &str, verify: &Running, ended: &Ended) -> Verdict {
        // A verify command the timeout ended fails as "timed out", whatever SIGTERM made it exit.
        let exit = ended.shown();
        let Some(paths) = self.work_paths(story) else { return Verdict::Stopped };
        if ended.stopped() && exit != ExitReason::Exited(0) {
            // Unverified, the claim must not be taken as it stands by the next run.
            reopen(story, &paths, "the verify command was stopped before it ended; claim completed again to run it");
            return Verdict::Stopped;
        }
        if exit == ExitReason::Exited(0) {
            // Accepted: the caller goes on to the commit (or the merge).
            return Verdict::Completed;
        }
        // The command as it ran, placeholders filled in.
        let command = match self.config.verify.clone() {
            Some(v) => self.spawn_spec(story, &paths, verify.iteration, String::new(), &v).argv.join(" "),
            None => String::new(),
        };
        let reason = format!("verify command {command:?} failed: {exit}");
        let log = crate::logs::log_path(&self.logs_root, story, verify.iteration);
        let _ = append_log(&log, &format!("sticler: {reason}; the story goes back to in_progress\n"));
        reopen(story, &paths, &reason);
        Verdict::Progress
    }

    /// The commit check of a story whose claim of completion is accepted. The commit is made
    /// before the story counts as completed (a dependent's changes must not end up in it); the
    /// `commit_hash` record in status.json is written meanwhile, off the way of the dependents.
    pub(super) fn commit_step(&mut self, story: &str) -> Verdict {
        let Some(paths) = self.stories.get(story) else { return Verdict::Stopped };
        match commit_step(&self.daemon, &self.project.root, story, paths, self.config.auto_commit, self.since) {
            Ok(None) => Verdict::Completed,
            Ok(Some(oid)) => {
                let (story, status) = (story.to_string(), paths.status.clone());
                self.later.push(Box::new(move || {
                    if let Err(why) = status_edits::record_hash(&status, oid) {
                        // The commit exists and carries the story's subject: it is found again.
                        tracing::warn!(story_id = %story, "cannot record commit_hash {oid}: {why}");
                    }
                }));
                Verdict::Completed
            }
            Err(why) => Verdict::Rejected(why.to_string()),
        }
    }
}

/// A claim of completion was turned back: `in_progress` again, with the reason.
fn reopen(story: &str, paths: &StoryPaths, reason: &str) {
    if let Err(e) = status_edits::reopen(&paths.status, reason) {
        tracing::warn!(story_id = %story, "cannot reopen the story in status.json: {e}");
    }
}

/// Why a claim of completion is turned back at the commit check.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Status(#[from] ProjectError),
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error("auto-commit failed: {0}")]
    AutoCommit(git::GitError),
    #[error("cannot record commit_hash {oid}: {source}")]
    RecordHash { oid: git2::Oid, source: ProjectError },
    #[error("no commit whose subject starts with [{0}] was made since the run started, and auto_commit is off")]
    NoCommit(String),
}

/// The commit check of a story that claims completed: its `[story]` commit (recorded, or made
/// since the run started, as `since` tells), else one made now when `auto_commit` is on.
/// Returns the commit when status.json does not record it yet.
pub(super) fn commit_step(
    daemon: &Daemon,
    root: &std::path::Path,
    story: &str,
    paths: &StoryPaths,
    auto_commit: bool,
    since: git::Since,
) -> Result<Option<git2::Oid>, ClaimError> {
    let lock = daemon.git_lock(root);
    let mut known = crate::lock::lock(&lock);
    let doc = JsonDoc::read(&paths.status)?;
    let found =
        tokio::task::block_in_place(|| git::find_story_commit(root, story, doc.commit_hash(), since, &mut known))?;
    let oid = match found {
        Some(oid) => oid,
        None if auto_commit => {
            tokio::task::block_in_place(|| git::commit_story(root, story, &doc, &paths.dir, &mut known))
                .map_err(ClaimError::AutoCommit)?
        }
        None => return Err(ClaimError::NoCommit(story.to_string())),
    };
    Ok((doc.commit_hash() != oid.to_string()).then_some(oid))
}
