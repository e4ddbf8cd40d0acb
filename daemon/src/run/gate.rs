//! A story's claim of completion and what it must pass: the verify command (when configured),
//! then the commit check, which finds the story's `[story]` commit or makes it (auto_commit)
//! and records `commit_hash` in status.json. A claim that fails either goes back to the worker.

use serde_json::Value;
use sticler_proto::{ExitReason, StoryState};

use super::{append_log, push_reason, PhaseRun, Running, StoryPaths};
use crate::daemon::Daemon;
use crate::git;
use crate::project::{DiskStatus, JsonDoc, StatusFields};
use crate::scheduler::Verdict;
use crate::worker::{self, SpawnSpec};

impl PhaseRun {
    /// A story claims completed and a verify command is configured: start it (its output goes
    /// to the iteration's log); its end comes back as `Exited` like a worker's. Returns `None`
    /// when it started, else the verdict of the claim (stopping, or the command cannot start).
    pub(super) fn start_verify(&mut self, story: &str, worker: &Running) -> Option<Verdict> {
        if self.sched.is_stopping() || worker.stop_signalled {
            return Some(Verdict::Stopped);
        }
        let (Some(paths), Some(verify)) = (self.stories.get(story).cloned(), self.config.verify.clone()) else {
            return Some(Verdict::Stopped);
        };
        // Not under the worker's token, whose stray sweep must not reach the verify command.
        let token = format!("{}-verify/", worker.token.trim_end_matches('/'));
        let spec =
            SpawnSpec { stdin: None, ..self.spawn_spec(story, &paths, worker.iteration, token.clone(), &verify) };
        match worker::spawn(&self.daemon.spawner, &self.daemon.logs, &spec) {
            Ok((pid, exit)) => {
                self.watch_exit(story, worker.iteration, exit);
                let running = Running {
                    pid,
                    iteration: worker.iteration,
                    token,
                    before: worker.before.clone(),
                    timed_out: false,
                    stop_signalled: false,
                    verifying: true,
                };
                self.running.insert(story.to_string(), running);
                if let Some(live) = self.live().stories.get_mut(story) {
                    live.state = StoryState::Verifying;
                }
                None
            }
            Err(e) => {
                let reason = format!("cannot start the verify command {:?}: {e}", spec.argv.join(" "));
                let _ = append_log(&spec.log, &format!("sticler: {reason}\n"));
                self.reopen(story, &paths, &reason);
                Some(Verdict::Progress)
            }
        }
    }

    /// The verify command ended: accept the claim (then the commit step), or turn it back.
    pub(super) fn verified(&mut self, story: &str, verify: &Running, exit: ExitReason) -> Verdict {
        if verify.stop_signalled && exit != ExitReason::Exited(0) {
            return Verdict::Stopped;
        }
        let Some(paths) = self.stories.get(story).cloned() else { return Verdict::Stopped };
        if exit == ExitReason::Exited(0) {
            return self.commit_step(story);
        }
        // The command as it ran, placeholders filled in.
        let command = match self.config.verify.clone() {
            Some(v) => self.spawn_spec(story, &paths, verify.iteration, String::new(), &v).argv.join(" "),
            None => String::new(),
        };
        let reason = format!("verify command {command:?} failed: {exit}");
        let log = crate::logs::log_path(&self.logs_root, story, verify.iteration);
        let _ = append_log(&log, &format!("sticler: {reason}; the story goes back to in_progress\n"));
        self.reopen(story, &paths, &reason);
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
                    if let Err(why) = record_hash(&status, oid) {
                        // The commit exists and carries the story's subject: it is found again.
                        tracing::warn!(story_id = %story, "{why}");
                    }
                }));
                Verdict::Completed
            }
            Err(why) => Verdict::Rejected(why),
        }
    }

    /// A claim of completion was turned back: `in_progress` again, with the reason.
    fn reopen(&self, story: &str, paths: &StoryPaths, reason: &str) {
        let result = JsonDoc::read(&paths.status).and_then(|mut doc| {
            doc.set_status(DiskStatus::InProgress);
            push_reason(&mut doc, reason);
            doc.write()
        });
        if let Err(e) = result {
            tracing::warn!(story_id = %story, "cannot reopen the story in status.json: {e}");
        }
    }
}

/// The commit check of a story that claims completed: its `[story]` commit (recorded, or made
/// since the run started, as `since` tells), else one made now when `auto_commit` is on. Returns the commit when
/// status.json does not record it yet, or why the claim is turned back.
pub(super) fn commit_step(
    daemon: &Daemon,
    root: &std::path::Path,
    story: &str,
    paths: &StoryPaths,
    auto_commit: bool,
    since: git::Since,
) -> Result<Option<git2::Oid>, String> {
    let lock = daemon.git_lock(root);
    let mut known = lock.lock().unwrap_or_else(|e| e.into_inner());
    let doc = JsonDoc::read(&paths.status).map_err(|e| e.to_string())?;
    let found =
        tokio::task::block_in_place(|| git::find_story_commit(root, story, doc.commit_hash(), since, &mut known));
    let oid = match found {
        Ok(Some(oid)) => oid,
        Ok(None) if auto_commit => {
            tokio::task::block_in_place(|| git::commit_story(root, story, &doc, &paths.dir, &mut known))
                .map_err(|e| format!("auto-commit failed: {e}"))?
        }
        Ok(None) => {
            return Err(format!(
                "no commit whose subject starts with [{story}] was made since the run started, and auto_commit is off"
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok((doc.commit_hash() != oid.to_string()).then_some(oid))
}

/// Records `commit_hash` in status.json, read afresh so that nothing written since the commit
/// check is lost.
pub(super) fn record_hash(status: &std::path::Path, oid: git2::Oid) -> Result<(), String> {
    let mut doc = JsonDoc::read(status).map_err(|e| format!("cannot record commit_hash {oid}: {e}"))?;
    if doc.commit_hash() == oid.to_string() {
        return Ok(());
    }
    doc.map.insert("commit_hash".into(), Value::String(oid.to_string()));
    doc.write().map_err(|e| format!("cannot record commit_hash {oid}: {e}"))
}
