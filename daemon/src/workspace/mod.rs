//! Story workspaces (`"workspace": "worktree"`): each running story works in a git worktree of
//! its own under the state dir, on branch `sticler/phase-N/US-..`, cut from the integration
//! branch when the story is dispatched. Worktrees belong to worker slots and are reused, so disk
//! use is slots × tree. `merge` brings a completed story back; this module keeps the pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::Repository;

use crate::git::GitError;
use crate::lock::lock;
use crate::phase::{SPEC_FILE, STATUS_FILE};
use crate::project::ProjectError;

pub mod clean_mark;
mod fork;
pub mod merge;
mod project_files;
pub mod worktree;

pub use worktree::branch_name;

/// The worktrees of one phase's run.
pub struct Workspaces {
    main_root: PathBuf,
    dir: PathBuf,
    phase: u32,
    slots: Vec<Slot>,
    /// Worktrees going on threads of their own (see `retire_free`).
    retiring: Vec<std::thread::JoinHandle<()>>,
}

/// A worktree's repository (see `worktree::TreeGit`); the story's merge uses it on a thread of
/// its own.
pub type SlotGit = Arc<Mutex<worktree::TreeGit>>;

struct Slot {
    name: String,
    path: PathBuf,
    git: SlotGit,
    /// The story working here, or kept here for inspection (failed).
    story: Option<String>,
    kept: bool,
    /// Its story's branch was made by this pool (see `worktree::Entered::new_branch`).
    new_branch: bool,
    /// The status.json both copies (the worktree's and the project folder's) held when sticler
    /// last made them the same, by its git blob id. The project's copy still that one means
    /// nothing new came from there: the worktree's is the worker's latest, even when copying it
    /// out failed.
    synced: Option<git2::Oid>,
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
        let mut pool =
            Workspaces { main_root: main_root.to_path_buf(), dir, phase, slots: Vec::new(), retiring: Vec::new() };
        let prefix = slot_prefix(phase);
        let mut names: Vec<String> = std::fs::read_dir(&pool.dir)
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.retain(|n| n.starts_with(&prefix));
        names.sort();
        names.retain(|n| !n.ends_with(".creating"));
        for name in names {
            let path = pool.dir.join(&name);
            let git = SlotGit::default();
            if let Some((story, _)) = busy.iter().find(|(_, root)| *root == path) {
                // Adopted: its worker runs on. `mirror` at the iteration's end sets `synced`.
                pool.slots.push(Slot {
                    name,
                    path,
                    git,
                    story: Some(story.clone()),
                    kept: false,
                    synced: None,
                    new_branch: false,
                });
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
            let adopted = {
                let mut open = lock(&git);
                worktree::commit_leftovers(&mut open, &path, "sticler: work in progress")
                    .and_then(|_| worktree::detach(&mut open, &path))
            };
            if let Err(e) = adopted {
                tracing::warn!(path = %path.display(), "a worktree left by an earlier run is not usable: {e}");
                if let Ok(main) = Repository::open(main_root) {
                    worktree::remove(&main, &name, &path);
                }
                continue;
            }
            pool.slots.push(Slot { name, path, git, story: None, kept: false, synced: None, new_branch: false });
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
        self.slot(story).map(|s| s.path.as_path())
    }

    /// The worktree `story` works in and its open repository, when it has one.
    pub fn worktree(&self, story: &str) -> Option<(&Path, SlotGit)> {
        self.slot(story).map(|s| (s.path.as_path(), Arc::clone(&s.git)))
    }

    /// Whether `story`'s branch was made by this pool: no merge of it can have landed unseen.
    pub fn new_branch(&self, story: &str) -> bool {
        self.slot(story).is_some_and(|s| s.new_branch)
    }

    fn slot(&self, story: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.story.as_deref() == Some(story))
    }

    /// The worktree of `story` for its next iteration: the slot it holds (readied by `reserve`,
    /// or kept from its last iteration). spec.md is copied in from the project folder; so is status.json when it changed there since the last sync (see
    /// `Slot::synced`: sticler's own edits, a retry, the user's), never a copy older than the
    /// worker's.
    pub fn enter(&mut self, story: &str, story_dir: &Path) -> Result<PathBuf, GitError> {
        let Some(index) = self.slots.iter().position(|s| s.story.as_deref() == Some(story)) else {
            return Err(GitError::Git(git2::Error::from_str("the story has no worktree (it was not readied)")));
        };
        let rel = story_dir.strip_prefix(&self.main_root).unwrap_or(story_dir);
        let slot = &mut self.slots[index];
        let work_dir = slot.path.join(rel);
        copy_if_changed(&story_dir.join(SPEC_FILE), &work_dir.join(SPEC_FILE)).map_err(file_error)?;
        let Some(bytes) = read_if_any(&story_dir.join(STATUS_FILE)).map_err(file_error)? else {
            return Ok(slot.path.clone());
        };
        let id = blob_id(&bytes)?;
        if slot.synced != Some(id) {
            write_if_changed(&work_dir.join(STATUS_FILE), &bytes).map_err(file_error)?;
            slot.synced = Some(id);
        }
        Ok(slot.path.clone())
    }

    /// `story`'s status.json, as its worker left it in its worktree, copied into `story_dir` in
    /// the project folder (where `status`, `retry` and the phase commit read it). On an error
    /// (the project folder full or read-only) the copy there stays as it was, and the next
    /// `enter` leaves the worktree's alone.
    pub fn mirror(&mut self, story: &str, story_dir: &Path) -> Result<(), ProjectError> {
        let rel = story_dir.strip_prefix(&self.main_root).unwrap_or(story_dir);
        let Some(slot) = self.slots.iter_mut().find(|s| s.story.as_deref() == Some(story)) else { return Ok(()) };
        let Some(bytes) = read_if_any(&slot.path.join(rel).join(STATUS_FILE))? else { return Ok(()) };
        let project_copy = story_dir.join(STATUS_FILE);
        if let Err(e) = write_if_changed(&project_copy, &bytes) {
            if slot.synced.is_none() {
                // A slot with no sync yet (an adopted worker's): the project's copy, stale now,
                // is the one `enter` must not bring back.
                slot.synced = read_if_any(&project_copy).ok().flatten().and_then(|old| blob_id(&old).ok());
            }
            return Err(e);
        }
        slot.synced = blob_id(&bytes).ok();
        Ok(())
    }

    /// Gives `story` a free slot (or a new one), to be put on its branch by the returned job on
    /// a thread of its own (`Readying::run`, a slot made for the first time writes the whole
    /// tree), then `readied`.
    pub fn reserve(&mut self, story: &str) -> Readying {
        let index = self.free_slot();
        let slot = &mut self.slots[index];
        slot.story = Some(story.to_string());
        slot.kept = false;
        slot.synced = None;
        slot.new_branch = false;
        Readying {
            main_root: self.main_root.clone(),
            name: slot.name.clone(),
            path: slot.path.clone(),
            git: Arc::clone(&slot.git),
            story: story.to_string(),
            branch: branch_name(self.phase, story),
        }
    }

    /// The end of `story`'s `Readying`: whether its branch was made just now, or why its
    /// worktree could not be readied (the slot is free again).
    pub fn readied(&mut self, story: &str, outcome: Result<bool, GitError>) -> Result<(), GitError> {
        let Some(slot) = self.slots.iter_mut().find(|s| s.story.as_deref() == Some(story)) else { return Ok(()) };
        match outcome {
            Ok(new_branch) => {
                slot.new_branch = new_branch;
                Ok(())
            }
            Err(e) => {
                slot.story = None;
                Err(e)
            }
        }
    }

    /// A free slot's index; a new slot when none is free.
    fn free_slot(&mut self) -> usize {
        if let Some(index) = self.slots.iter().position(|s| s.story.is_none()) {
            return index;
        }
        // A retiring worktree may still hold the number a new slot would take.
        self.wait_retired();
        // The first free number: slots adopted from an earlier run may leave gaps.
        let taken = |n: usize| self.slots.iter().any(|s| s.name == format!("{}{n}", slot_prefix(self.phase)));
        let number = (0..).find(|n| !taken(*n)).unwrap_or(self.slots.len());
        let name = format!("{}{number}", slot_prefix(self.phase));
        let git = SlotGit::default();
        self.slots.push(Slot {
            path: self.dir.join(&name),
            name,
            git,
            story: None,
            kept: false,
            synced: None,
            new_branch: false,
        });
        self.slots.len() - 1
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
        let mut open = lock(&slot.git);
        if !merged {
            let message = format!("sticler: work in progress of {story}");
            if let Err(e) = worktree::commit_leftovers(&mut open, &slot.path, &message) {
                tracing::warn!(story_id = %story, "cannot commit what the story left in its worktree: {e}");
            }
        }
        if keep {
            slot.kept = true;
            return;
        }
        slot.story = None;
        if let Err(e) = worktree::detach(&mut open, &slot.path) {
            tracing::warn!(story_id = %story, "cannot let go of the story's branch: {e}");
        }
    }

    /// Nothing is left to start in the run: the free slots' worktrees go now, each on a thread
    /// of its own, while the last stories end; `close` (or a slot needed after all) waits for
    /// them. The run's end then does not wait for every worktree's files to be deleted.
    pub fn retire_free(&mut self) {
        let (free, kept): (Vec<Slot>, Vec<Slot>) =
            std::mem::take(&mut self.slots).into_iter().partition(|s| s.story.is_none() && !s.kept);
        self.slots = kept;
        for slot in free {
            let main_root = self.main_root.clone();
            let retire = move || match Repository::open(&main_root) {
                Ok(main) => worktree::remove(&main, &slot.name, &slot.path),
                Err(e) => tracing::warn!(path = %slot.path.display(), "cannot remove a worktree: {e}"),
            };
            let span = tracing::Span::current();
            match std::thread::Builder::new().name("worktree-rm".into()).spawn(move || span.in_scope(retire)) {
                Ok(handle) => self.retiring.push(handle),
                Err(e) => tracing::warn!("cannot start a thread to remove a worktree: {e}"),
            }
        }
    }

    /// Waits until the retiring worktrees are gone.
    fn wait_retired(&mut self) {
        for handle in self.retiring.drain(..) {
            let _ = handle.join();
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
        self.wait_retired();
        let Ok(main) = Repository::open(&self.main_root) else { return };
        for slot in &mut self.slots {
            if keep_failed && slot.kept {
                continue;
            }
            if let Some(story) = &slot.story {
                let message = format!("sticler: work in progress of {story}");
                if let Err(e) = worktree::commit_leftovers(&mut lock(&slot.git), &slot.path, &message) {
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

/// A slot's move to a story's branch (see `Workspaces::reserve`), owned: it runs on a thread
/// of its own while the run goes on.
pub struct Readying {
    main_root: PathBuf,
    name: String,
    path: PathBuf,
    git: SlotGit,
    story: String,
    branch: String,
}

impl Readying {
    /// Puts the slot on the story's branch, made at the integration branch's head now (see
    /// `worktree::enter`), saying how long it took. Returns whether the branch was made just now.
    pub fn run(&self) -> Result<bool, GitError> {
        let started = std::time::Instant::now();
        let mut open = lock(&self.git);
        let base = open
            .integration_head(&self.path, &self.main_root)
            .ok_or_else(|| GitError::Git(git2::Error::from_str("the project's HEAD names no commit")))?;
        let entered = worktree::enter(&self.main_root, (&self.name, &self.path), &mut open, &self.branch, base)?;
        // The bench reads this line: how long a worktree takes to be ready, made or reused.
        let how = if entered.made { "made" } else { "reused" };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(story_id = %self.story, "worktree ready in {ms:.1} ms ({how})");
        Ok(entered.new_branch)
    }
}

fn slot_prefix(phase: u32) -> String {
    format!("sticler-p{phase}-")
}

/// Copies `from` over `to` when they differ (atomically; a missing `from` copies nothing).
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), ProjectError> {
    match read_if_any(from)? {
        Some(bytes) => write_if_changed(to, &bytes),
        None => Ok(()),
    }
}

/// The file at `path`, `None` when there is none. Only a regular file within the size limit is
/// read: a FIFO or a symlink a worker left there must neither block the run nor lead outside
/// the project.
fn read_if_any(path: &Path) -> Result<Option<Vec<u8>>, ProjectError> {
    match crate::project::read_limited(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ProjectError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` over `to` (atomically) unless it holds them already.
fn write_if_changed(to: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ProjectError::io(dir, e))?;
    }
    crate::project::write_replacing(to, bytes)
}

/// A file's content named by its git blob id: equal ids, equal contents, without keeping them.
fn blob_id(bytes: &[u8]) -> Result<git2::Oid, GitError> {
    Ok(git2::Oid::hash_object(git2::ObjectType::Blob, bytes)?)
}

/// A file error on the way into a worktree, told as the worktree's failure.
fn file_error(e: ProjectError) -> GitError {
    GitError::Git(git2::Error::from_str(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const STORY: &str = "US-P1-001";

    /// A project (a git repository) with one story, its pool of worktrees, and the story's folder.
    fn project() -> (tempfile::TempDir, tempfile::TempDir, Workspaces, PathBuf) {
        let main = tempfile::tempdir().unwrap();
        let story_dir = main.path().join("phases/phase_1/stories").join(STORY);
        fs::create_dir_all(&story_dir).unwrap();
        fs::write(story_dir.join(STATUS_FILE), r#"{"status": "in_progress", "iteration": 0}"#).unwrap();
        fs::write(story_dir.join(SPEC_FILE), "the spec").unwrap();
        let repo = Repository::init(main.path()).unwrap();
        let tree = repo.find_tree(crate::git::stage_all(&repo, main.path()).unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@x").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "initial", &tree, &[]).unwrap();
        let state = tempfile::tempdir().unwrap();
        let pool = Workspaces::open(state.path().to_path_buf(), main.path(), 1, &|_| false, &[]);
        (main, state, pool, story_dir)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn entering_again_keeps_the_workers_status_json_and_takes_what_changed_in_the_project() {
        let (main, _state, mut pool, story_dir) = project();
        let rel = story_dir.strip_prefix(main.path()).unwrap().join(STATUS_FILE);
        assert!(pool.enter(STORY, &story_dir).is_err(), "no worktree before it is readied");
        let readying = pool.reserve(STORY);
        pool.readied(STORY, readying.run()).unwrap();
        assert!(pool.new_branch(STORY), "the branch was made by this pool");
        let root = pool.enter(STORY, &story_dir).unwrap();
        let work_status = root.join(&rel);
        assert_eq!(read(&work_status), read(&story_dir.join(STATUS_FILE)));

        // The worker's progress, never copied out (the project folder was full, say): the
        // project's older copy must not come back over it.
        let progress = r#"{"status": "in_progress", "iteration": 1}"#;
        fs::write(&work_status, progress).unwrap();
        assert_eq!(pool.enter(STORY, &story_dir).unwrap(), root);
        assert_eq!(read(&work_status), progress);

        pool.mirror(STORY, &story_dir).unwrap();
        assert_eq!(read(&story_dir.join(STATUS_FILE)), progress);

        // Changed in the project folder since (a retry, sticler's note, the user): taken in.
        let reset = r#"{"status": "pending", "iteration": 1}"#;
        fs::write(story_dir.join(STATUS_FILE), reset).unwrap();
        pool.enter(STORY, &story_dir).unwrap();
        assert_eq!(read(&work_status), reset);
    }
}
