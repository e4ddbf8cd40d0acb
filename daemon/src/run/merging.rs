//! Worktree mode's end of a story: its work committed on its branch, then merged into the
//! integration branch (recorded in the store first, so that a daemon killed mid-merge finishes
//! it or knows it never happened), a conflict given back to the agent, a merge that must wait
//! for the user retried; and the story's status.json mirrored into the project folder, where
//! `status`, `retry` and the phase commit read it.

use std::path::PathBuf;
use std::sync::Arc;

use git2::Repository;
use sticler_proto::StoryState;

use super::supervise::Ended;
use super::{status_edits, PhaseRun, RunMsg};
use crate::daemon::Daemon;
use crate::git;
use crate::project::{JsonDoc, StatusFields};
use crate::scheduler::Verdict;
use crate::store::MergeRecord;
use crate::workspace::{self, merge, worktree};

/// Everything one merge needs, owned: it runs on a blocking thread while the run goes on.
pub(super) struct MergeJob {
    story: String,
    /// The story's worktree and its open repository, and the project folder.
    root: PathBuf,
    tree_git: workspace::SlotGit,
    main_root: PathBuf,
    /// The story's status.json in its worktree, and its folder relative to the project.
    work_status: PathBuf,
    story_dir: PathBuf,
    branch: String,
    /// The branch was made by this daemon's run: no merge of it can have landed unseen.
    new_branch: bool,
    since: git::Since,
    auto_commit: bool,
    run_key: String,
    daemon: Arc<Daemon>,
    /// The ended iteration's process group: what escaped it into a session of its own is ended
    /// before the story's work is looked at, so that what it writes meanwhile is the story's.
    strays: Option<crate::worker::Group>,
}

/// How a merge went: the verdict, and the integration branch's commit of the story when it
/// landed (or had landed before).
pub(super) type MergeOutcome = (Verdict, Option<git2::Oid>);

impl MergeJob {
    /// The story's commit on its branch, then its merge under the project's git lock (merges
    /// of a project never run two at once).
    pub(super) fn run(self) -> MergeOutcome {
        if let Some(group) = &self.strays {
            group.end_strays();
        }
        let lock = self.daemon.git_lock(&self.main_root);
        // A branch of an earlier daemon's: its merge may have landed before that daemon died.
        if !self.new_branch {
            let mut known = crate::lock::lock(&lock);
            // Merged already: the daemon died after the merge landed and before its verdict.
            if let Ok(Some(oid)) = git::find_story_commit(&self.main_root, &self.story, "", self.since, &mut known) {
                return (Verdict::Completed, Some(oid));
            }
            // Merged by an earlier run whose record of it was lost: its files are finished.
            if let Ok(Some(oid)) = self.landed_unrecorded(&mut known) {
                return (Verdict::Completed, Some(oid));
            }
        }
        let doc = match JsonDoc::read(&self.work_status) {
            Ok(doc) => doc,
            Err(e) => return (Verdict::Rejected(e.to_string()), None),
        };
        // Outside the project's git lock: the story's commit touches its own worktree and
        // branch only, so another story's merge goes on meanwhile.
        match self.commit_branch(&doc) {
            Ok(None) => {}
            Ok(Some(rejected)) => return (rejected, None),
            Err(e) => return (Verdict::Infra(format!("cannot commit the story's work on its branch: {e}")), None),
        }
        let mut git = crate::lock::lock(&lock);
        match self.merge(&doc, &mut git) {
            Ok((Verdict::Conflict(files), _)) => {
                let reason = format!(
                    "merge conflict with the integration branch in {files}: the files hold conflict markers; resolve them, commit, and mark the story completed again"
                );
                if let Err(e) = status_edits::reopen(&self.work_status, &reason) {
                    tracing::warn!(story_id = %self.story, "cannot reopen the story in status.json: {e}");
                }
                (Verdict::Conflict(files), None)
            }
            Ok(outcome) => outcome,
            Err(e) => (Verdict::Infra(format!("merge into the integration branch failed: {e}")), None),
        }
    }

    /// The story's merge found on the integration branch though nothing recorded it; the
    /// project folder's files are brought along as far as they are still as the merge found them.
    fn landed_unrecorded(&self, git: &mut git::ProjectGit) -> Result<Option<git2::Oid>, git::GitError> {
        let main = git.repo(&self.main_root)?;
        let Some(oid) = merge::landed_since_fork(main, &self.branch, &self.story)? else { return Ok(None) };
        let parent = main.find_commit(oid)?.parent_id(0)?;
        merge::follow(main, (parent, oid), &self.story_dir, self.daemon.user_umask)?;
        tracing::info!(story_id = %self.story, "the story's merge had landed already (commit {oid})");
        Ok(Some(oid))
    }

    /// What the story left in its worktree, committed on its branch (as its `[US-..]` commit);
    /// without auto_commit the story must have made that commit itself (else the verdict).
    fn commit_branch(&self, doc: &JsonDoc) -> Result<Option<Verdict>, git::GitError> {
        let (story, branch) = (self.story.as_str(), self.branch.as_str());
        let mut open = crate::lock::lock(&self.tree_git);
        if !self.auto_commit {
            // Through the worktree's open repository: it shares the project's branches.
            let integration = open
                .integration_head(&self.root, &self.main_root)
                .ok_or_else(|| git::GitError::Git(git2::Error::from_str("the project's HEAD names no commit")))?;
            if !merge::has_story_commit(open.repo(&self.root)?, branch, integration, story)? {
                let why = format!(
                    "no commit whose subject starts with [{story}] on its branch {branch}, and auto_commit is off"
                );
                return Ok(Some(Verdict::Rejected(why)));
            }
        }
        worktree::commit_leftovers(&mut open, &self.root, &format!("[{story}] {}", doc.title()))?;
        Ok(None)
    }

    /// The merge itself, in the project's open repository; a merge that landed comes with its
    /// commit.
    fn merge(&self, doc: &JsonDoc, git: &mut git::ProjectGit) -> Result<MergeOutcome, git::GitError> {
        let story = self.story.as_str();
        let main = git.repo(&self.main_root)?;
        let base = main.head()?.peel_to_commit()?.id();
        let head = merge::branch_head(main, &self.branch)?.id();
        match merge::plan(main, story, head, doc, &self.story_dir)? {
            merge::Plan::Merge { branch_ref, base, commit } => {
                let record = MergeRecord { branch_ref, base: base.to_string(), commit: commit.to_string() };
                let store = self.daemon.bus.store();
                store.put_merge(&self.run_key, story, &record).map_err(store_error)?;
                merge::land(main, &record.branch_ref, (base, commit), &self.story_dir, self.daemon.user_umask)?;
                let _ = store.remove_merge(&self.run_key, story);
                Ok((Verdict::Completed, Some(commit)))
            }
            merge::Plan::Waits(why) => Ok((Verdict::MergeWaits(why), None)),
            merge::Plan::Conflict(files) => {
                let mut open = crate::lock::lock(&self.tree_git);
                let tree_repo = open.repo(&self.root)?;
                let mut conflicted = merge::hand_back(tree_repo, &self.root, base, &self.story_dir)?;
                if conflicted.is_empty() {
                    conflicted = files;
                }
                Ok((Verdict::Conflict(conflicted.join(", ")), None))
            }
        }
    }
}

impl PhaseRun {
    /// The merge of a story whose claim is accepted, or the verdict when there is nothing to
    /// merge from.
    fn merge_job(&self, story: &str) -> Result<MergeJob, Verdict> {
        let (Some(paths), Some(main_paths)) = (self.work_paths(story), self.stories.get(story)) else {
            return Err(Verdict::Stopped);
        };
        // Never the project folder: its changes are the user's and the other stories' mirrors.
        let Some((root, tree_git)) = self.workspaces.as_ref().and_then(|w| w.worktree(story)) else {
            return Err(Verdict::Infra("the story has no worktree to merge from".into()));
        };
        let root = root.to_path_buf();
        let main_root = self.project.root.clone();
        Ok(MergeJob {
            story: story.to_string(),
            root,
            tree_git,
            story_dir: main_paths.dir.strip_prefix(&main_root).unwrap_or(&main_paths.dir).to_path_buf(),
            main_root,
            work_status: paths.status,
            branch: workspace::branch_name(self.phase, story),
            new_branch: self.workspaces.as_ref().is_some_and(|w| w.new_branch(story)),
            since: self.since,
            auto_commit: self.config.auto_commit,
            run_key: self.run_key.clone(),
            daemon: Arc::clone(&self.daemon),
            strays: None,
        })
    }

    /// The claim of a story in worktree mode is accepted: its commit and merge, here and now
    /// (a merge that waits for the user, tried again).
    pub(super) fn merge_step(&mut self, story: &str) -> Verdict {
        let outcome = match self.merge_job(story) {
            Ok(job) => tokio::task::block_in_place(|| job.run()),
            Err(verdict) => return verdict,
        };
        self.merged(story, outcome)
    }

    /// The claim of a story in worktree mode is accepted: its commit and merge run on a blocking
    /// thread, the run goes on, and the iteration's end comes back as `RunMsg::Merged`. Returns
    /// the verdict at once when there is nothing to merge from.
    pub(super) fn merge_in_background(
        &mut self,
        story: &str,
        (iteration, group): (u32, crate::worker::Group),
        ended: Ended,
    ) -> Option<Verdict> {
        let job = match self.merge_job(story) {
            Ok(job) => MergeJob { strays: Some(group), ..job },
            Err(verdict) => return Some(verdict),
        };
        let (tx, story) = (self.tx.clone(), story.to_string());
        let span = tracing::Span::current();
        self.background.push(tokio::task::spawn_blocking(move || {
            let outcome = span.in_scope(|| job.run());
            let _ = tx.send(RunMsg::Merged { story, iteration, ended, outcome });
        }));
        None
    }

    /// What a merge's outcome means for the run: the commit recorded, the conflict remembered.
    pub(super) fn merged(&mut self, story: &str, (verdict, commit): MergeOutcome) -> Verdict {
        match &verdict {
            Verdict::Completed => {
                if let (Some(oid), Some(paths)) = (commit, self.stories.get(story).cloned()) {
                    self.landed(story, &paths.status, oid);
                }
            }
            Verdict::Conflict(files) => {
                self.conflicts.insert(story.to_string(), files.split(", ").map(str::to_string).collect());
            }
            _ => {}
        }
        verdict
    }

    /// The story's merge landed as `oid`: `commit_hash` records it (off the dispatch path).
    fn landed(&mut self, story: &str, status: &std::path::Path, oid: git2::Oid) {
        self.conflicts.remove(story);
        let (story, status) = (story.to_string(), status.to_path_buf());
        self.later.push(Box::new(move || {
            if let Err(why) = status_edits::record_hash(&status, oid) {
                tracing::warn!(story_id = %story, "cannot record commit_hash {oid}: {why}");
            }
        }));
    }

    /// Tries the merges that wait for the user again; each that lands completes its story.
    pub(super) fn retry_waiting_merges(&mut self) {
        let waiting = self.state.read().sched.merging();
        for story in waiting {
            match self.merge_step(&story) {
                Verdict::Completed => {
                    let actions = self.state.update(|s| s.sched.merged(&story));
                    self.leave_workspace(&story, false, true);
                    self.apply(actions);
                }
                Verdict::MergeWaits(why) => {
                    self.state.update(|s| s.sched.merge_waits(&story, why));
                }
                other => {
                    tracing::warn!(story_id = %story, "the waiting merge did not land: {}", other.label());
                    let actions = self.state.update(|s| s.sched.merge_back(&story));
                    self.apply(actions);
                }
            }
        }
        self.schedule();
    }

    /// The story's status.json, as its worker left it in the worktree, into the project folder;
    /// why it could not be.
    pub(super) fn mirror_status(&mut self, story: &str) -> Result<(), String> {
        let (Some(workspaces), Some(main)) = (self.workspaces.as_mut(), self.stories.get(story)) else { return Ok(()) };
        // A story folder gone from the project (the project removed) is never made again.
        if !main.dir.is_dir() {
            return Ok(());
        }
        workspaces.mirror(story, &main.dir).map_err(|e| {
            tracing::warn!(story_id = %story, "cannot copy status.json into the project folder: {e}");
            format!("cannot copy status.json into the project folder: {e}")
        })
    }

    /// The story leaves its worktree (see `Workspaces::leave`). When no story is left to start,
    /// the free worktrees go at once (see `Workspaces::retire_free`).
    pub(super) fn leave_workspace(&mut self, story: &str, keep: bool, merged: bool) {
        let Some(workspaces) = self.workspaces.as_mut() else { return };
        if workspace::Workspaces::leaves_without_git(keep, merged) {
            workspaces.leave(story, keep, merged);
            self.state.update(|s| s.worktrees.remove(story));
        } else {
            let lock = self.daemon.git_lock(&self.project.root);
            let _git = crate::lock::lock(&lock);
            tokio::task::block_in_place(|| workspaces.leave(story, keep, merged));
            if !keep {
                self.state.update(|s| s.worktrees.remove(story));
            }
        }
        let to_start = {
            let state = self.state.read();
            state.sched.count(StoryState::Pending) + state.sched.count(StoryState::Ready)
        };
        if to_start == 0 {
            workspaces.retire_free();
        }
    }
}

/// Merges recorded by a daemon that died before they were done: finished when the branch moved,
/// forgotten when it did not (the story merges again). Done before the run reads the stories:
/// a finished merge brings the story's status.json into the project folder.
pub(super) fn recover_merges(daemon: &crate::daemon::Daemon, run_key: &str, root: &std::path::Path) {
    {
        let store = daemon.bus.store();
        let Ok(records) = store.merges(run_key) else { return };
        let Ok(main) = Repository::open(root) else { return };
        for (story, record) in records {
            let (Ok(base), Ok(commit)) = (record.base.parse(), record.commit.parse()) else { continue };
            let Some(id) = crate::project::StoryId::parse(&story) else { continue };
            let Ok(project) = crate::project::Project::open(root) else { continue };
            let story_dir = project.story_dir(&id);
            let status = JsonDoc::read(&story_dir.join(crate::phase::STATUS_FILE));
            // commit_hash names the merge: it was finished, and its record's removal was lost.
            let finished = status.is_ok_and(|doc| doc.commit_hash() == record.commit);
            let rel = story_dir.strip_prefix(root).unwrap_or(&story_dir);
            if !finished && merge::landed(&main, &record.branch_ref, base, commit) == Some(true) {
                match merge::land(&main, &record.branch_ref, (base, commit), rel, daemon.user_umask) {
                    Ok(()) => tracing::info!(story_id = %story, "finished the merge the last daemon began"),
                    Err(e) => tracing::error!(story_id = %story, "cannot finish the merge the last daemon began: {e}"),
                }
            }
            let _ = store.remove_merge(run_key, &story);
        }
    }
}

fn store_error(e: crate::store::StoreError) -> git::GitError {
    git::GitError::Git(git2::Error::from_str(&format!("the merge cannot be recorded: {e}")))
}
