//! Story workspaces (`"workspace": "worktree"`): each running story works in a git worktree of
//! its own under the state dir, on branch `sticler/phase-N/US-..`, cut from the integration
//! branch when the story is dispatched. Worktrees belong to worker slots and are reused, so disk
//! use is slots × tree. `merge` brings a completed story back; this module keeps the pool.

use std::path::{Path, PathBuf};

use git2::Repository;

use crate::git::GitError;

pub mod merge;
pub mod worktree;

pub use worktree::branch_name;

/// The worktrees of one phase's run.
pub struct Workspaces {
    main_root: PathBuf,
    dir: PathBuf,
    phase: u32,
    slots: Vec<Slot>,
}

struct Slot {
    name: String,
    path: PathBuf,
    /// The story working here, or kept here for inspection (failed).
    story: Option<String>,
    kept: bool,
}

impl Workspaces {
    /// The pool of `phase`: worktrees left by an earlier run (stopped, failed, or a daemon that
    /// died) have what their story left uncommitted committed to its branch, then serve again;
    /// branches of stories completed since are deleted. Worktrees in `busy` (story, root) have
    /// an adopted worker at work: they stay that story's, untouched.
    pub fn open(
        dir: PathBuf,
        main_root: &Path,
        phase: u32,
        completed: &dyn Fn(&str) -> bool,
        busy: &[(String, PathBuf)],
    ) -> Workspaces {
        let mut pool = Workspaces { main_root: main_root.to_path_buf(), dir, phase, slots: Vec::new() };
        let prefix = slot_prefix(phase);
        let mut names: Vec<String> = std::fs::read_dir(&pool.dir)
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.retain(|n| n.starts_with(&prefix));
        names.sort();
        names.retain(|n| !n.ends_with(".creating"));
        for name in names {
            let path = pool.dir.join(&name);
            if let Some((story, _)) = busy.iter().find(|(_, root)| *root == path) {
                pool.slots.push(Slot { name, path, story: Some(story.clone()), kept: false });
                continue;
            }
            let marker = worktree::creating_marker(&path);
            if marker.exists() {
                // Made by a daemon that died before its checkout ended: nothing worked there.
                if let Ok(main) = Repository::open(main_root) {
                    worktree::remove(&main, &name, &path);
                }
                let _ = std::fs::remove_file(&marker);
                continue;
            }
            let adopted =
                worktree::commit_leftovers(&path, "sticler: work in progress").and_then(|_| worktree::detach(&path));
            if let Err(e) = adopted {
                tracing::warn!(path = %path.display(), "a worktree left by an earlier run is not usable: {e}");
                if let Ok(main) = Repository::open(main_root) {
                    worktree::remove(&main, &name, &path);
                }
                continue;
            }
            pool.slots.push(Slot { name, path, story: None, kept: false });
        }
        if let Ok(main) = Repository::open(main_root) {
            for branch in worktree::story_branches(&main, phase) {
                let story = branch.rsplit('/').next().unwrap_or_default();
                if completed(story) {
                    worktree::delete_branch(&main, &branch);
                }
            }
        }
        pool
    }

    /// The worktree `story` works in, when it has one.
    pub fn root(&self, story: &str) -> Option<&Path> {
        self.slots.iter().find(|s| s.story.as_deref() == Some(story)).map(|s| s.path.as_path())
    }

    /// Gives `story` a worktree for its iterations: its own (still assigned), or a free slot put
    /// on the story's branch (made at the integration branch's head). The story's status.json
    /// and spec.md are copied in from the project folder, which sticler keeps up to date.
    pub fn enter(&mut self, story: &str, story_dir: &Path) -> Result<PathBuf, GitError> {
        let root = match self.root(story) {
            Some(root) => root.to_path_buf(),
            None => self.assign(story)?,
        };
        let rel = story_dir.strip_prefix(&self.main_root).unwrap_or(story_dir);
        for file in [crate::phase::STATUS_FILE, crate::phase::SPEC_FILE] {
            copy_if_changed(&story_dir.join(file), &root.join(rel).join(file))?;
        }
        Ok(root)
    }

    /// Gives each of `stories` that has no worktree yet a slot, all moved (or made) at once on
    /// threads of their own: slots are worktrees of their own, and a slot made for the first
    /// time writes the whole tree. A story whose worktree could not be readied is let go:
    /// `enter` tries again and reports why.
    pub fn prepare(&mut self, stories: &[String]) {
        let head = Repository::open(&self.main_root).and_then(|main| Ok(main.head()?.peel_to_commit()?.id()));
        let Ok(base) = head else { return };
        let mut jobs = Vec::new();
        for story in stories {
            if self.root(story).is_none() {
                let index = self.free_slot();
                self.slots[index].story = Some(story.clone());
                self.slots[index].kept = false;
                jobs.push((index, story.as_str()));
            }
        }
        let (main_root, phase, slots) = (&self.main_root, self.phase, &self.slots);
        let failed: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|&(index, story)| {
                    scope.spawn(move || {
                        let main = Repository::open(main_root)?;
                        ready(&main, &slots[index], story, &branch_name(phase, story), base)
                    })
                })
                .collect();
            let results: Vec<bool> = handles.into_iter().map(|h| h.join().is_ok_and(|r| r.is_ok())).collect();
            jobs.iter().zip(results).filter(|(_, ok)| !ok).map(|((index, _), _)| *index).collect()
        });
        for index in failed {
            self.slots[index].story = None;
        }
    }

    /// A free slot's index; a new slot when none is free.
    fn free_slot(&mut self) -> usize {
        if let Some(index) = self.slots.iter().position(|s| s.story.is_none()) {
            return index;
        }
        // The first free number: slots adopted from an earlier run may leave gaps.
        let taken = |n: usize| self.slots.iter().any(|s| s.name == format!("{}{n}", slot_prefix(self.phase)));
        let number = (0..).find(|n| !taken(*n)).unwrap_or(self.slots.len());
        let name = format!("{}{number}", slot_prefix(self.phase));
        self.slots.push(Slot { path: self.dir.join(&name), name, story: None, kept: false });
        self.slots.len() - 1
    }

    /// A free slot (or a new one) put on the story's branch.
    fn assign(&mut self, story: &str) -> Result<PathBuf, GitError> {
        let main = Repository::open(&self.main_root)?;
        let base = main.head()?.peel_to_commit()?.id();
        let index = self.free_slot();
        let slot = &mut self.slots[index];
        ready(&main, slot, story, &branch_name(self.phase, story), base)?;
        slot.story = Some(story.to_string());
        slot.kept = false;
        Ok(slot.path.clone())
    }

    /// `story` leaves its worktree (it completed, failed or went back to pending): what it left
    /// uncommitted goes to its branch. `keep`: the worktree stays the story's, for inspection,
    /// until `retry` or the next start; otherwise the slot serves the next story.
    /// `merged`: its work was just committed and merged, nothing is left to commit, and the
    /// slot stays on the story's branch until its next story (see `leaves_without_git`).
    pub fn leave(&mut self, story: &str, keep: bool, merged: bool) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.story.as_deref() == Some(story)) else { return };
        if Self::leaves_without_git(keep, merged) {
            slot.story = None;
            return;
        }
        if !merged {
            if let Err(e) = worktree::commit_leftovers(&slot.path, &format!("sticler: work in progress of {story}")) {
                tracing::warn!(story_id = %story, "cannot commit what the story left in its worktree: {e}");
            }
        }
        if keep {
            slot.kept = true;
            return;
        }
        slot.story = None;
        if let Err(e) = worktree::detach(&slot.path) {
            tracing::warn!(story_id = %story, "cannot let go of the story's branch: {e}");
        }
    }

    /// Whether leaving touches no git state (and needs no git lock): a merged story's slot is
    /// free at once. It is let go of its branch by the next `enter`, which detaches first, and
    /// at the run's end its worktree goes before the branch.
    pub fn leaves_without_git(keep: bool, merged: bool) -> bool {
        merged && !keep
    }

    /// The run ended: worktrees go, except those kept for failed stories (`keep_failed`); the
    /// branches of merged stories go (`merged`); branches holding unmerged work stay.
    pub fn close(&mut self, keep_failed: bool, merged: &dyn Fn(&str) -> bool) {
        let Ok(main) = Repository::open(&self.main_root) else { return };
        for slot in &mut self.slots {
            if keep_failed && slot.kept {
                continue;
            }
            if let Some(story) = &slot.story {
                if let Err(e) = worktree::commit_leftovers(&slot.path, &format!("sticler: work in progress of {story}"))
                {
                    tracing::warn!(story_id = %story, "cannot commit what the story left in its worktree: {e}");
                }
            }
            worktree::remove(&main, &slot.name, &slot.path);
            slot.story = None;
        }
        self.slots.retain(|s| s.kept && keep_failed);
        for branch in worktree::story_branches(&main, self.phase) {
            let story = branch.rsplit('/').next().unwrap_or_default();
            let in_use = self.slots.iter().any(|s| s.story.as_deref() == Some(story));
            if merged(story) && !in_use {
                worktree::delete_branch(&main, &branch);
            }
        }
    }

    /// `sticlerctl clean`: every worktree of the phase goes (what it held is committed to its
    /// story's branch first), and the branches of the stories `ended` says completed or failed.
    /// Returns how many worktrees and branches went.
    pub fn clean(&mut self, ended: &dyn Fn(&str) -> bool) -> (usize, usize) {
        let worktrees = self.slots.len();
        self.close(false, &|_| false);
        let Ok(main) = Repository::open(&self.main_root) else { return (worktrees, 0) };
        let mut branches = 0;
        for branch in worktree::story_branches(&main, self.phase) {
            if ended(branch.rsplit('/').next().unwrap_or_default()) {
                worktree::delete_branch(&main, &branch);
                branches += 1;
            }
        }
        (worktrees, branches)
    }

    /// Where `path` (inside the project folder) is in `story`'s worktree.
    pub fn rebase(&self, story: &str, path: &Path) -> Option<PathBuf> {
        let rel = path.strip_prefix(&self.main_root).ok()?;
        Some(self.root(story)?.join(rel))
    }
}

/// Puts `slot` on `story`'s branch (see `worktree::enter`), saying how long it took.
fn ready(main: &Repository, slot: &Slot, story: &str, branch: &str, base: git2::Oid) -> Result<(), GitError> {
    let started = std::time::Instant::now();
    let made = worktree::enter(main, &slot.name, &slot.path, branch, base)?;
    // The bench reads this line: how long a worktree takes to be ready, made or reused.
    let how = if made { "made" } else { "reused" };
    tracing::info!(story_id = %story, "worktree ready in {:.1} ms ({how})", started.elapsed().as_secs_f64() * 1e3);
    Ok(())
}

fn slot_prefix(phase: u32) -> String {
    format!("sticler-p{phase}-")
}

/// Copies `from` over `to` when they differ (atomically; a missing `from` copies nothing). Only
/// a regular file within the size limit is read: a FIFO or a symlink a worker left there must
/// neither block the run nor lead outside the project.
pub fn copy_if_changed(from: &Path, to: &Path) -> Result<(), GitError> {
    let bytes = match crate::project::read_limited(from) {
        Ok(bytes) => bytes,
        Err(crate::project::ProjectError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(GitError::Git(git2::Error::from_str(&e.to_string()))),
    };
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| GitError::Git(git2::Error::from_str(&format!("{}: {e}", dir.display()))))?;
    }
    crate::project::write_replacing(to, &bytes).map_err(|e| GitError::Git(git2::Error::from_str(&e.to_string())))
}
