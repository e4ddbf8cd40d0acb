//! A completed story's branch into the integration branch (the branch checked out in the
//! project folder): one squashed `[US-..]` commit holding that story's changes only, never a
//! conflict marker, and the project folder's files brought along without overwriting a user's
//! uncommitted edit. A merge is planned first (nothing changes), recorded by the caller, then
//! landed; landing again after a crash finishes it, file by file, without doing anything twice.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use git2::{Commit, Delta, Oid, Repository, Tree};

use super::project_files::ProjectFiles;

use crate::git::{self, GitError};
use crate::project::JsonDoc;
use crate::tree_diff::Change;

/// What a merge of a story's branch would do.
#[derive(Debug)]
pub enum Plan {
    /// Land `commit` (parent `base`, the integration branch's head now) on `branch_ref`.
    Merge { branch_ref: String, base: Oid, commit: Oid },
    /// The merge would touch files the user changed in the project folder without committing.
    Waits(String),
    /// Both sides changed the same lines (or the story's files hold conflict markers).
    Conflict(Vec<String>),
}

/// Plans the merge of `story_head` into the integration branch of `main`: its story commit is
/// made (not yet on any branch) with the seed's message, from `doc` (the story's final
/// status.json). `story_dir` (relative to the project) belongs to the story: sticler's own
/// copy of its status.json there never makes the merge wait.
pub fn plan(
    main: &Repository,
    story: &str,
    story_head: Oid,
    doc: &JsonDoc,
    story_dir: &Path,
) -> Result<Plan, GitError> {
    let head = main.head()?;
    let branch_ref = head.name().unwrap_or("HEAD").to_string();
    let ours = head.peel_to_commit()?;
    let theirs = main.find_commit(story_head)?;
    let tree = match disjoint_merge(main, &ours, &theirs, story_dir)? {
        Some(tree) => tree,
        None => match three_way_merge(main, &ours, &theirs, story_dir)? {
            Ok(tree) => tree,
            Err(conflicts) => return Ok(Plan::Conflict(conflicts)),
        },
    };
    let tree = main.find_tree(tree)?;
    let ours_tree = ours.tree()?;
    let changes = changes(main, &ours_tree, &tree)?;
    let marked: Vec<String> = changes
        .iter()
        .filter(|c| c.new.is_some_and(|(blob, _)| has_conflict_markers(main, blob)))
        .map(|c| c.path.display().to_string())
        .collect();
    if !marked.is_empty() {
        return Ok(Plan::Conflict(marked));
    }
    let files = ProjectFiles::new(main, &ours_tree, &tree);
    let mut edited: Vec<String> = changes
        .iter()
        .zip(files.user_edits(&changes))
        .filter(|(c, edited)| *edited && !c.path.starts_with(story_dir))
        .map(|(c, _)| c.path.display().to_string())
        .collect();
    edited.dedup();
    if !edited.is_empty() {
        return Ok(Plan::Waits(format!(
            "the merge waits: uncommitted edits in the project folder to {} (commit or undo them)",
            edited.join(", ")
        )));
    }
    let listed = git::file_lines(&changes);
    let message = git::story_message(story, doc, &listed);
    let sig = git::signature(main)?;
    let commit = main.commit(None, &sig, &sig, &message, &tree, &[&ours])?;
    Ok(Plan::Merge { branch_ref, base: ours.id(), commit })
}

/// The merged tree of every file of both sides (the story's folder taken from the story, the
/// other stories' as the integration branch has them), or the conflicting paths.
fn three_way_merge(
    main: &Repository,
    ours: &Commit<'_>,
    theirs: &Commit<'_>,
    story_dir: &Path,
) -> Result<Result<Oid, Vec<String>>, GitError> {
    let mut index = main.merge_commits(ours, theirs, None)?;
    take_own_folder(&mut index, story_dir)?;
    if index.has_conflicts() {
        return Ok(Err(conflicted_paths(&index)?));
    }
    keep_other_stories(main, &mut index, &ours.tree()?, story_dir)?;
    Ok(Ok(index.write_tree_to(main)?))
}

/// The merged tree when the story's changes and the integration branch's since the story's
/// branch left it touch different files (stories of a phase mostly do): the integration
/// branch's tree with the story's changes written in, the same tree the 3-way merge of every
/// file would give (what the story did to `phases/` outside its own folder left out, as
/// `keep_other_stories` does), made without it. `None` when the two touch a same path (or a
/// file and a folder of one name): the 3-way merge decides.
fn disjoint_merge(
    main: &Repository,
    ours: &Commit<'_>,
    theirs: &Commit<'_>,
    story_dir: &Path,
) -> Result<Option<Oid>, GitError> {
    let Some(fork) = super::fork::fork_point(main, ours, theirs) else { return Ok(None) };
    let fork_tree = main.find_commit(fork)?.tree()?;
    let story: Vec<Change> = changes(main, &fork_tree, &theirs.tree()?)?
        .into_iter()
        .filter(|c| !c.path.starts_with(PHASES) || c.path.starts_with(story_dir))
        .collect();
    let ours_tree = ours.tree()?;
    if story.is_empty() {
        return Ok(Some(ours_tree.id()));
    }
    if fork != ours.id() {
        let touched: std::collections::HashSet<&Path> = story.iter().map(|c| c.path.as_path()).collect();
        let above: std::collections::HashSet<&Path> = story.iter().flat_map(|c| c.path.ancestors().skip(1)).collect();
        for change in changes(main, &fork_tree, &ours_tree)? {
            let path = change.path.as_path();
            // The story's own folder is the story's: its side is taken there.
            if path.starts_with(story_dir) {
                continue;
            }
            if above.contains(path) || path.ancestors().any(|p| touched.contains(p)) {
                return Ok(None);
            }
        }
    }
    let mut update = git2::build::TreeUpdateBuilder::new();
    for change in &story {
        match change.new {
            Some((blob, mode)) => update.upsert(change.path.as_path(), blob, git::file_mode(mode as u32)?),
            None => update.remove(change.path.as_path()),
        };
    }
    Ok(update.create_updated(main, &ours_tree).ok())
}

/// Lands a planned merge: the integration branch moves from `base` to `commit` (only if it is
/// still at `base`), then the project folder's files and index follow: each file still as it
/// was at `base` is brought to `commit`, the story's own folder (`story_dir`) always. Landing a
/// merge that already landed (a crash after the branch moved) finishes the files, and leaves
/// alone a file changed since.
pub fn land(
    main: &Repository,
    branch_ref: &str,
    (base, commit): (Oid, Oid),
    story_dir: &Path,
    umask: u32,
) -> Result<(), GitError> {
    let root = main.workdir().map(Path::to_path_buf).unwrap_or_default();
    let now = main.find_reference(branch_ref)?.peel_to_commit()?.id();
    if now == base {
        git::retry_locked(&root, || main.reference_matching(branch_ref, commit, true, base, "sticler: merge"))?;
    } else if now != commit {
        return Err(GitError::Git(git2::Error::from_str(&format!(
            "{branch_ref} moved to {now} during the merge of {commit}"
        ))));
    }
    follow(main, (base, commit), story_dir, umask)
}

/// The project folder's files and index brought from `base` to `commit` (see `land`): a file
/// changed since, by the user or a later merge, is left as it is.
pub fn follow(main: &Repository, (base, commit): (Oid, Oid), story_dir: &Path, umask: u32) -> Result<(), GitError> {
    let root = main.workdir().map(Path::to_path_buf).unwrap_or_default();
    let old = main.find_commit(base)?.tree()?;
    let new = main.find_commit(commit)?.tree()?;
    let changes = changes(main, &old, &new)?;
    let files = ProjectFiles::new(main, &old, &new);
    let mut written = Vec::with_capacity(changes.len());
    let mut filtered = Vec::new();
    for (change, edited) in changes.iter().zip(files.user_edits(&changes)) {
        let ours = change.path.starts_with(story_dir) || !edited;
        if ours {
            files.write(change, umask, &mut filtered)?;
        } else {
            tracing::warn!(path = %change.path.display(), "changed in the project folder since the merge began; left as it is");
        }
        written.push(ours);
    }
    files.write_filtered(&changes, &filtered, umask)?;
    git::retry_locked(&root, || {
        let mut index = main.index()?;
        index.read(false)?;
        for (change, ours) in changes.iter().zip(&written) {
            let full = root.join(&change.path);
            match change.new.filter(|_| *ours).and_then(|side| written_entry(&change.path, &full, side)) {
                Some(entry) => index.add(&entry)?,
                None if full.exists() => index.add_path(&change.path)?,
                None => {
                    let _ = index.remove_path(&change.path);
                }
            }
        }
        index.write()
    })
}

/// The index entry of a regular file the merge just wrote: its blob and mode, with the file's
/// stat, so git sees it unchanged. (`add_path` would read and hash the file again, and stream
/// the blob it already has through a temporary object file, one more file made and deleted
/// per file of every merge.)
fn written_entry(rel: &Path, full: &Path, (blob, mode): (Oid, i32)) -> Option<git2::IndexEntry> {
    let regular = [i32::from(git2::FileMode::Blob), i32::from(git2::FileMode::BlobExecutable)];
    let meta = std::fs::symlink_metadata(full).ok().filter(|m| m.is_file() && regular.contains(&mode))?;
    Some(git::entry_with_stat(rel.as_os_str().as_bytes().to_vec(), blob, mode as u32, &meta))
}

/// Whether the merge recorded as (`base` → `commit`) landed on `branch_ref`: `Some(true)` when the
/// branch is at `commit` (its files may still need to follow), `Some(false)` when it is still at
/// `base` (nothing happened), `None` when it moved elsewhere.
pub fn landed(main: &Repository, branch_ref: &str, base: Oid, commit: Oid) -> Option<bool> {
    let now = main.find_reference(branch_ref).ok()?.peel_to_commit().ok()?.id();
    match now {
        now if now == commit => Some(true),
        now if now == base => Some(false),
        _ => main.graph_descendant_of(now, commit).ok().filter(|yes| *yes).map(|_| true),
    }
}

/// Gives a conflict back to the story: the integration branch is merged into its worktree,
/// conflict markers in place and the merge left in progress (the agent resolves and commits,
/// or sticler commits its resolution with both parents). Returns the conflicting paths.
pub fn hand_back(
    tree_repo: &Repository,
    worktree: &Path,
    integration_head: Oid,
    story_dir: &Path,
) -> Result<Vec<String>, GitError> {
    let annotated = tree_repo.find_annotated_commit(integration_head)?;
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.allow_conflicts(true).conflict_style_merge(true);
    tree_repo.merge(&[&annotated], None, Some(&mut checkout))?;
    let mut index = tree_repo.index()?;
    keep_own_folder(tree_repo, worktree, &mut index, story_dir)?;
    conflicted_paths(&index)
}

/// A story's merge holds its own changes only: whatever its branch did to `phases/` outside its
/// own folder (other stories' status.json, phase_config.json) is left as the integration branch
/// has it. Those files are sticler's and their own stories'.
fn keep_other_stories(
    repo: &Repository,
    index: &mut git2::Index,
    ours: &Tree<'_>,
    story_dir: &Path,
) -> Result<(), GitError> {
    let diff = repo.diff_tree_to_index(Some(ours), Some(index), None)?;
    let mut restore = Vec::new();
    let mut drop = Vec::new();
    for delta in diff.deltas() {
        let (old, new) = (delta.old_file(), delta.new_file());
        let bytes = new.path_bytes().or(old.path_bytes()).unwrap_or_default().to_vec();
        let path = Path::new(std::ffi::OsStr::from_bytes(&bytes));
        if !path.starts_with(PHASES) || path.starts_with(story_dir) {
            continue;
        }
        match delta.status() {
            Delta::Added => drop.push(path.to_path_buf()),
            _ => restore.push((bytes, old.id(), u32::from(old.mode()))),
        }
    }
    for path in drop {
        index.remove_path(&path)?;
    }
    for (path, id, mode) in restore {
        index.add(&git::entry_without_stat(path, id, mode))?;
    }
    Ok(())
}

/// The folder of the phases: sticler's and the stories' files.
const PHASES: &str = "phases";

/// Conflicts inside the story's own folder (its status.json, which sticler mirrors into the
/// project folder) are settled for the story's side: that folder is the story's.
fn take_own_folder(index: &mut git2::Index, story_dir: &Path) -> Result<(), GitError> {
    let own: Vec<git2::IndexConflict> = index
        .conflicts()?
        .filter_map(|c| c.ok())
        .filter(|c| {
            let entry = c.their.as_ref().or(c.our.as_ref());
            entry.is_some_and(|e| Path::new(std::ffi::OsStr::from_bytes(&e.path)).starts_with(story_dir))
        })
        .collect();
    for conflict in own {
        let Some(mut entry) = conflict.their.or(conflict.our) else { continue };
        // The conflict's stage lives in the flags: the settled entry is a normal one (stage 0).
        entry.flags &= !STAGE_MASK;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&entry.path));
        index.conflict_remove(&path)?;
        if conflict_side_kept(&entry) {
            index.add(&entry)?;
        }
    }
    Ok(())
}

const STAGE_MASK: u16 = 0x3000;

/// A side of a conflict that holds a file (not a deletion).
fn conflict_side_kept(entry: &git2::IndexEntry) -> bool {
    entry.mode != 0
}

/// In the worktree, the story's own folder keeps the story's side of a conflict (the file is
/// written back without markers): the agent is given only conflicts of the project's files.
fn keep_own_folder(repo: &Repository, root: &Path, index: &mut git2::Index, story_dir: &Path) -> Result<(), GitError> {
    let own: Vec<git2::IndexEntry> = index
        .conflicts()?
        .filter_map(|c| c.ok())
        .filter_map(|c| c.our)
        .filter(|e| Path::new(std::ffi::OsStr::from_bytes(&e.path)).starts_with(story_dir))
        .collect();
    if own.is_empty() {
        return Ok(());
    }
    for mut entry in own {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&entry.path));
        index.conflict_remove(&path)?;
        entry.flags &= !STAGE_MASK;
        let blob = repo.find_blob(entry.id)?;
        crate::project::write_replacing(&root.join(&path), blob.content())
            .map_err(|e| GitError::Git(git2::Error::from_str(&e.to_string())))?;
        index.add(&entry)?;
    }
    index.write()?;
    Ok(())
}

/// The paths of the index's conflicts, for people (and `STICLER_MERGE_CONFLICTS`).
fn conflicted_paths(index: &git2::Index) -> Result<Vec<String>, GitError> {
    let mut paths: Vec<String> = index
        .conflicts()?
        .filter_map(|c| c.ok())
        .filter_map(|c| c.our.or(c.their).or(c.ancestor))
        .map(|entry| String::from_utf8_lossy(&entry.path).into_owned())
        .collect();
    paths.dedup();
    Ok(paths)
}

/// The files the merge changes, from `old` to `new` (see `tree_diff`).
fn changes(repo: &Repository, old: &Tree<'_>, new: &Tree<'_>) -> Result<Vec<Change>, GitError> {
    Ok(crate::tree_diff::changes(repo, Some(old), new)?)
}

/// A text blob with a line that opens or closes a conflict.
fn has_conflict_markers(repo: &Repository, blob: Oid) -> bool {
    let Ok(blob) = repo.find_blob(blob) else { return false };
    if blob.is_binary() {
        return false;
    }
    blob.content().split(|b| *b == b'\n').any(|line| line.starts_with(b"<<<<<<< ") || line.starts_with(b">>>>>>> "))
}

/// The story's head commit on its branch.
pub fn branch_head<'r>(main: &'r Repository, branch: &str) -> Result<Commit<'r>, GitError> {
    Ok(main.find_branch(branch, git2::BranchType::Local)?.get().peel_to_commit()?)
}

/// The `[story]` commit the integration branch gained since the story's branch left it: the
/// story's merge landed already, though nothing recorded it (a daemon killed in the middle of
/// the merge, then its store lost). A story re-run after it was merged starts from a branch cut
/// after that commit, which is then not counted.
pub fn landed_since_fork(main: &Repository, branch: &str, story: &str) -> Result<Option<Oid>, GitError> {
    let Ok(head) = branch_head(main, branch) else { return Ok(None) };
    let integration = main.head()?.peel_to_commit()?.id();
    let fork = main.merge_base(integration, head.id())?;
    let mut walk = main.revwalk()?;
    walk.push(integration)?;
    walk.hide(fork)?;
    for oid in walk {
        let oid = oid?;
        if git::subject_marks(&main.find_commit(oid)?, story) {
            return Ok(Some(oid));
        }
    }
    Ok(None)
}

/// Whether the story's branch has a commit of its own (subject `[story]`) since it left
/// `integration`.
pub fn has_story_commit(main: &Repository, branch: &str, integration: Oid, story: &str) -> Result<bool, GitError> {
    let head = branch_head(main, branch)?;
    let mut walk = main.revwalk()?;
    walk.push(head.id())?;
    walk.hide(integration)?;
    for oid in walk {
        if git::subject_marks(&main.find_commit(oid?)?, story) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
