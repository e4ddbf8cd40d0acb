//! One git worktree of the project, outside it (under the state dir, where an agent inside the
//! project cannot find its way to the parent `.git`): made once per worker slot, moved to each
//! next story's branch by a checkout that rewrites only the files that differ (ignored build
//! folders stay warm), cleaned of untracked files, and removed at the run's end. Before it moves
//! on, whatever its story left uncommitted is committed to the story's branch: no work is lost.

use std::path::Path;

use git2::build::CheckoutBuilder;
use git2::{BranchType, Commit, Oid, Repository, WorktreePruneOptions};

use super::clean_mark::CleanMark;
use crate::git::{self, GitError, OpenRepo};

/// The branch of a story's work.
pub fn branch_name(phase: u32, story: &str) -> String {
    format!("sticler/phase-{phase}/{story}")
}

/// A worktree's repository, kept open (with its object cache) from one story to the next, and
/// its folders as they were when it was last clean: the look for what a story changed reads
/// only the folders changed since.
#[derive(Default)]
pub struct TreeGit {
    open: OpenRepo,
    mark: Option<CleanMark>,
}

impl TreeGit {
    /// The worktree's repository at `path`, opened when it is not open yet.
    pub fn repo(&mut self, path: &Path) -> Result<&mut Repository, GitError> {
        Ok(self.open.get(path)?.0)
    }

    /// The commit the project at `main_root` has checked out (the integration branch's head),
    /// read through the worktree at `path` when it is there.
    pub fn integration_head(&mut self, path: &Path, main_root: &Path) -> Option<Oid> {
        match self.repo(path) {
            Ok(repo) => git::head_through(repo, main_root),
            Err(_) => git::head(main_root),
        }
    }
}

/// Puts the worktree `name` at `path` (kept open in `git`) on `branch`, made at `base` when it
/// does not exist yet (a branch that exists holds the story's earlier work and is continued). An
/// existing worktree is reused: its checkout rewrites only what differs, and untracked files
/// that are not ignored go.
pub fn enter(
    main_root: &Path,
    (name, path): (&str, &Path),
    git: &mut TreeGit,
    branch: &str,
    base: Oid,
) -> Result<Entered, GitError> {
    let TreeGit { open, mark } = git;
    let last = mark.take();
    // The worktree's own repository when there is one: branches are shared with the project's.
    if let Ok((tree, _)) = open.get(path) {
        if tree.is_worktree() {
            let (reference, new_branch) = story_branch(tree, branch, base)?;
            let refname = reference.name().unwrap_or_default().to_string();
            tree.cleanup_state()?;
            // Off any branch while its files change: a daemon killed mid-checkout must not leave
            // the next story's files looking like changes of the last story's branch. HEAD.lock
            // may be a live git's (a `git gc`'s `reflog expire --all` in any worktree locks every
            // worktree's HEAD in turn): see `git::retry_locked`.
            if let Ok(current) = tree.head().and_then(|h| h.peel_to_commit()) {
                git::retry_locked(path, || tree.set_head_detached(current.id()))?;
            }
            // The target first, against the tree checked out now (the baseline), then HEAD:
            // what `git checkout` does, so only the files that differ are written.
            let target = tree.find_commit(reference.peel_to_commit()?.id())?;
            // The worktree is clean here (its last story's leftovers were committed), so a safe
            // checkout touches only what differs; a forced one (untracked files removed) is the
            // fallback when something was left after all.
            let mut safe = CheckoutBuilder::new();
            safe.safe();
            // Only the paths that differ between the two trees: a checkout limited to them does
            // not stat every file of the project.
            let changed = changed_paths(tree, &target)?;
            for path in &changed {
                safe.path(path.as_path());
            }
            safe.disable_pathspec_match(true);
            let plain = plain_files(tree, &changed);
            safe.disable_filters(plain);
            if !changed.is_empty() && tree.checkout_tree(target.as_object(), Some(&mut safe)).is_err() {
                let mut force = CheckoutBuilder::new();
                force.force().remove_untracked(true).disable_filters(plain);
                tree.checkout_tree(target.as_object(), Some(&mut force))?;
            }
            git::retry_locked(path, || tree.set_head(&refname))?;
            *mark = match last {
                Some(last) => Some(last.moved(tree)),
                None => CleanMark::take(tree, path),
            };
            return Ok(Entered { made: false, new_branch });
        }
    }
    let main = Repository::open(main_root)?;
    let (reference, new_branch) = story_branch(&main, branch, base)?;
    // Nothing usable there: a folder left by a crash mid-creation, or a registration whose
    // folder is gone. Both are cleared before the worktree is made again.
    remove(&main, name, path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(path, e))?;
    }
    // A worktree cut short while its files were checked out would look, to the next daemon, as
    // if its story deleted the files not written yet: the marker says it is unfinished.
    let marker = creating_marker(path);
    std::fs::write(&marker, b"").map_err(|e| io_error(&marker, e))?;
    make(&main, name, path, reference.name().unwrap_or_default())?;
    std::fs::remove_file(&marker).map_err(|e| io_error(&marker, e))?;
    let (tree, _) = open.get(path)?;
    *mark = CleanMark::take(tree, path);
    Ok(Entered { made: true, new_branch })
}

/// Makes the worktree `name` at `path` on the branch `refname`, laid out as `git worktree add`
/// does (its folder in the project's `.git/worktrees/` with `commondir`, `gitdir` and `HEAD`;
/// a `.git` file in `path` naming that folder), then checks the whole tree out. libgit2's own
/// `git_worktree_add` cannot make two worktrees at once: it makes `.git/worktrees` only when it
/// sees none (and fails when another made it meanwhile), and takes a worktree another thread is
/// making for one that has every branch checked out.
fn make(main: &Repository, name: &str, path: &Path, refname: &str) -> Result<(), GitError> {
    let admin = main.path().join("worktrees").join(name);
    let gitfile = path.join(".git");
    for dir in [&admin, path] {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    let files = [
        (admin.join("commondir"), format!("{}\n", main.path().display())),
        (admin.join("gitdir"), format!("{}\n", gitfile.display())),
        (admin.join("HEAD"), format!("ref: {refname}\n")),
        (gitfile.clone(), format!("gitdir: {}\n", admin.display())),
    ];
    for (file, text) in files {
        std::fs::write(&file, text).map_err(|e| io_error(&file, e))?;
    }
    let tree = Repository::open(path)?;
    let mut checkout = CheckoutBuilder::new();
    let head = tree.head()?.peel_to_tree()?;
    let mut attributes = false;
    head.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
        attributes |= git::is_attributes(entry.name_bytes());
        git2::TreeWalkResult::Ok
    })?;
    checkout.force().disable_filters(!attributes && git::plain_config(&tree));
    tree.checkout_head(Some(&mut checkout))?;
    Ok(())
}

/// How a worktree was put on its story's branch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entered {
    /// The worktree was made (not reused).
    pub made: bool,
    /// The branch was made just now, at the integration branch's head: no merge of the story
    /// can have landed since it left that branch, but one this very daemon makes.
    pub new_branch: bool,
}

/// The story's branch: the one that exists (the story's earlier work), else made at `base`;
/// and whether it was made.
fn story_branch<'r>(repo: &'r Repository, branch: &str, base: Oid) -> Result<(git2::Reference<'r>, bool), GitError> {
    Ok(match repo.find_branch(branch, BranchType::Local) {
        Ok(existing) => (existing.into_reference(), false),
        Err(_) => (repo.branch(branch, &repo.find_commit(base)?, false)?.into_reference(), true),
    })
}

/// Whether the files the worktree holds and the `changed` paths it is moving to can be
/// written as their blobs' bytes (see `git::plain_config`), without libgit2's filters.
fn plain_files(tree_repo: &Repository, changed: &[std::path::PathBuf]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    !changed.iter().any(|p| git::is_attributes(p.as_os_str().as_bytes()))
        && tree_repo.index().is_ok_and(|index| git::plain_files(tree_repo, &index))
}

/// The paths that differ between the worktree's HEAD and `target` (from the two trees: no look
/// at the files on disk).
fn changed_paths(tree_repo: &Repository, target: &Commit<'_>) -> Result<Vec<std::path::PathBuf>, GitError> {
    let head = tree_repo.head()?.peel_to_tree()?;
    let mut paths: Vec<std::path::PathBuf> =
        crate::tree_diff::changes(tree_repo, Some(&head), &target.tree()?)?.into_iter().map(|c| c.path).collect();
    // A kind change is one path told twice.
    paths.dedup();
    Ok(paths)
}

/// Commits what the story left in its worktree (new, changed and deleted files, honouring
/// .gitignore) to its branch, with a merge in progress as a second parent. Returns the commit,
/// or `None` when there was nothing to commit.
pub fn commit_leftovers(git: &mut TreeGit, path: &Path, message: &str) -> Result<Option<Oid>, GitError> {
    let TreeGit { open, mark } = git;
    let (tree_repo, _) = open.get(path)?;
    let committed = stage_and_commit(tree_repo, path, mark, message);
    // A stage that did not end in its commit leaves the index ahead of HEAD: no mark says
    // what the next look may skip.
    if committed.is_err() {
        *mark = None;
    }
    committed
}

fn stage_and_commit(
    tree_repo: &mut Repository,
    path: &Path,
    mark: &mut Option<CleanMark>,
    message: &str,
) -> Result<Option<Oid>, GitError> {
    let mut merging = Vec::new();
    // No merge in progress is an error here ("no merge heads"), not an empty list.
    let _ = tree_repo.mergehead_foreach(|oid| {
        merging.push(*oid);
        true
    });
    settle_conflicts(tree_repo, path)?;
    // Without a mark (the first look after a restart), the full status's look: the folders'
    // stat taken before it is the mark once its stage is committed.
    let before = if mark.is_none() { CleanMark::take(tree_repo, path) } else { None };
    let tree_id = git::stage_since(tree_repo, path, mark)?;
    if let Some(mut before) = before {
        before.index_written(tree_repo);
        *mark = Some(before);
    }
    let head = git::head_commit(tree_repo);
    let unchanged = head.as_ref().is_some_and(|h| h.tree_id() == tree_id);
    if unchanged && merging.is_empty() {
        return Ok(None);
    }
    let tree = tree_repo.find_tree(tree_id)?;
    let sig = git::signature(tree_repo)?;
    let others: Vec<Commit<'_>> = merging.iter().filter_map(|oid| tree_repo.find_commit(*oid).ok()).collect();
    let parents: Vec<&Commit<'_>> = head.iter().chain(others.iter()).collect();
    let oid = git::retry_locked(path, || tree_repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents))?;
    tree_repo.cleanup_state()?;
    Ok(Some(oid))
}

/// The file that stands next to a worktree while it is being made.
pub fn creating_marker(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".creating");
    std::path::PathBuf::from(name)
}

/// Lets go of the story's branch: the worktree's HEAD is detached at the same commit, so the
/// branch can be checked out by another slot, or deleted.
pub fn detach(git: &mut TreeGit, path: &Path) -> Result<(), GitError> {
    let tree_repo = git.repo(path)?;
    let head = tree_repo.head()?.peel_to_commit()?.id();
    git::retry_locked(path, || tree_repo.set_head_detached(head))
}

/// Conflicts a merge left in the index are settled as the worktree's files are now (the agent's
/// resolution, or the markers, which the next merge then refuses): a tree can be written again.
fn settle_conflicts(tree_repo: &Repository, path: &Path) -> Result<(), GitError> {
    use std::os::unix::ffi::OsStrExt;
    let mut index = tree_repo.index()?;
    if !index.has_conflicts() {
        return Ok(());
    }
    let paths: Vec<std::path::PathBuf> = index
        .conflicts()?
        .filter_map(|c| c.ok())
        .filter_map(|c| c.our.or(c.their).or(c.ancestor))
        .map(|e| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&e.path)))
        .collect();
    for rel in paths {
        index.conflict_remove(&rel)?;
        if path.join(&rel).exists() {
            index.add_path(&rel)?;
        }
    }
    index.write()?;
    Ok(())
}

/// Removes the worktree: its folder and its registration in the project's `.git`.
pub fn remove(main: &Repository, name: &str, path: &Path) {
    if path.exists() {
        if let Err(e) = std::fs::remove_dir_all(path) {
            tracing::warn!(path = %path.display(), "cannot remove a worktree: {e}");
        }
    }
    if let Ok(worktree) = main.find_worktree(name) {
        let mut options = WorktreePruneOptions::new();
        options.valid(true).working_tree(true);
        if let Err(e) = worktree.prune(Some(&mut options)) {
            tracing::warn!(name, "cannot prune a worktree: {e}");
        }
    }
    // A registration cut short by a daemon killed while making it is not a worktree git can
    // open, nor prune: its folder under .git/worktrees/ (named by sticler) goes as it is.
    let admin = main.path().join("worktrees").join(name);
    if admin.exists() {
        if let Err(e) = std::fs::remove_dir_all(&admin) {
            tracing::warn!(path = %admin.display(), "cannot remove a worktree's registration: {e}");
        }
    }
}

/// Deletes the story's branch (after its worktree moved on or went).
pub fn delete_branch(main: &Repository, branch: &str) {
    if let Ok(mut found) = main.find_branch(branch, BranchType::Local) {
        if let Err(e) = found.delete() {
            tracing::warn!(branch, "cannot delete a story branch: {e}");
        }
    }
}

/// The story branches of a phase that exist in the project.
pub fn story_branches(main: &Repository, phase: u32) -> Vec<String> {
    let prefix = format!("sticler/phase-{phase}/");
    let Ok(branches) = main.branches(Some(BranchType::Local)) else { return Vec::new() };
    branches
        .filter_map(|b| Some(b.ok()?.0.name().ok()??.to_string()))
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

fn io_error(path: &Path, e: std::io::Error) -> GitError {
    GitError::Git(git2::Error::from_str(&format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A repository with one commit, and the worktree `slot` made from it on `sticler/a`.
    fn repo_with_slot() -> (tempfile::TempDir, Repository, std::path::PathBuf, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("project")).unwrap();
        let sig = git2::Signature::now("t", "t@x").unwrap();
        let tree = repo.find_tree(repo.index().unwrap().write_tree().unwrap()).unwrap();
        let base = repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
        drop(tree);
        let slot = dir.path().join("slot");
        assert!(
            enter(repo.workdir().unwrap(), ("slot", &slot), &mut TreeGit::default(), "sticler/a", base).unwrap().made,
            "made"
        );
        (dir, repo, slot, base)
    }

    /// Takes the slot's HEAD.lock as a live git does (a `git gc`'s `reflog expire --all` of
    /// another worktree), and lets it go after `held`. Returns whether the holder found its lock
    /// still there to let go of: never deleted by someone else.
    fn hold_head_lock(repo: &Repository, held: Duration) -> std::thread::JoinHandle<bool> {
        let lock = repo.path().join("worktrees/slot/HEAD.lock");
        std::fs::OpenOptions::new().write(true).create_new(true).open(&lock).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(held);
            std::fs::remove_file(&lock).is_ok()
        })
    }

    #[test]
    fn a_slot_moves_on_once_a_live_gits_head_lock_is_let_go() {
        let (_dir, repo, slot, base) = repo_with_slot();
        let holder = hold_head_lock(&repo, Duration::from_millis(300));
        assert!(
            !enter(repo.workdir().unwrap(), ("slot", &slot), &mut TreeGit::default(), "sticler/b", base).unwrap().made,
            "reused"
        );
        assert!(holder.join().unwrap(), "the lock was waited out, not deleted");
        let head = Repository::open(&slot).unwrap().head().unwrap().name().unwrap().to_string();
        assert_eq!(head, "refs/heads/sticler/b");

        let holder = hold_head_lock(&repo, Duration::from_millis(300));
        detach(&mut TreeGit::default(), &slot).unwrap();
        assert!(holder.join().unwrap(), "the lock was waited out, not deleted");
        assert!(Repository::open(&slot).unwrap().head_detached().unwrap());
    }

    /// A git killed while it held the slot's HEAD.lock left it: after the wait it goes (no
    /// process has it open), and the slot serves its next story.
    #[test]
    fn locks_left_by_a_killed_git_go_after_the_wait() {
        let (_dir, repo, slot, base) = repo_with_slot();
        let lock = repo.path().join("worktrees/slot/HEAD.lock");
        std::fs::write(&lock, b"").unwrap();
        assert!(
            !enter(repo.workdir().unwrap(), ("slot", &slot), &mut TreeGit::default(), "sticler/b", base).unwrap().made,
            "reused"
        );
        assert!(!lock.exists());
        let head = Repository::open(&slot).unwrap().head().unwrap().name().unwrap().to_string();
        assert_eq!(head, "refs/heads/sticler/b");
    }

    /// A lock a live process has open is never taken away, however long it is held.
    #[test]
    fn a_head_lock_a_live_process_has_open_is_never_deleted() {
        let (_dir, repo, slot, _) = repo_with_slot();
        let lock = repo.path().join("worktrees/slot/HEAD.lock");
        let _held = std::fs::OpenOptions::new().write(true).create_new(true).open(&lock).unwrap();
        assert!(matches!(detach(&mut TreeGit::default(), &slot), Err(GitError::Locked(..))));
        assert!(lock.exists());
        assert!(!Repository::open(&slot).unwrap().head_detached().unwrap(), "still on its branch");
    }

    /// A lock no process has open but made during the wait (a live git between its write and
    /// its rename, as far as anyone can tell) is younger than the wait: it stays too.
    #[test]
    fn a_head_lock_younger_than_the_wait_is_never_deleted() {
        let (_dir, repo, slot, _) = repo_with_slot();
        let lock = repo.path().join("worktrees/slot/HEAD.lock");
        std::fs::write(&lock, b"").unwrap();
        // Made again halfway through the wait, as a new holder would.
        let renew = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(5));
                std::fs::write(&lock, b"").unwrap();
            })
        };
        assert!(matches!(detach(&mut TreeGit::default(), &slot), Err(GitError::Locked(..))));
        renew.join().unwrap();
        assert!(lock.exists());
    }

    /// Slots made at once, on threads of their own, are all made, each a worktree git knows
    /// (libgit2's `git_worktree_add` would race to make `.git/worktrees`, and take a half-made
    /// worktree for a checkout of every branch).
    #[test]
    fn slots_made_at_once_are_all_made() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("project")).unwrap();
        let sig = git2::Signature::now("t", "t@x").unwrap();
        let tree = repo.find_tree(repo.index().unwrap().write_tree().unwrap()).unwrap();
        let base = repo.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[]).unwrap();
        let root = repo.workdir().unwrap().to_path_buf();
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|scope| {
            for n in 0..8 {
                let (root, start, dir) = (&root, &start, dir.path());
                scope.spawn(move || {
                    let name = format!("slot{n}");
                    start.wait();
                    let made = enter(root, (&name, &dir.join(&name)), &mut TreeGit::default(), &format!("b{n}"), base);
                    assert!(made.unwrap().made, "{name} made");
                });
            }
        });
        assert_eq!(repo.worktrees().unwrap().len(), 8);
        for n in 0..8 {
            let worktree = repo.find_worktree(&format!("slot{n}")).unwrap();
            worktree.validate().unwrap();
            let head = Repository::open_from_worktree(&worktree).unwrap().head().unwrap().name().unwrap().to_string();
            assert_eq!(head, format!("refs/heads/b{n}"));
        }
        // The git command line sees them too.
        let list = std::process::Command::new("git").arg("-C").arg(&root).args(["worktree", "list"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 9, "{list:?}");
    }
}
