//! Staging what changed (`git add -A`, or one folder) and the tree it makes: the tree is built
//! from HEAD's with only the changed paths written anew, where the index's own `write_tree`
//! would read every tree of the project back afterwards to rebuild its cache.

use std::path::{Path, PathBuf};

use git2::{IndexAddOption, Oid, Repository};

use crate::git::{retry_locked, GitError};
use crate::workspace::clean_mark::CleanMark;

/// Stages every change of the working tree (new, modified, deleted), honouring .gitignore,
/// with one scan of the tree (`git add -A`), and returns the index's tree. That tree is made as
/// HEAD's with the paths that differ from it written anew: the index's own `write_tree` reads
/// every tree of the project back afterwards (to rebuild its cache), which cost more than the
/// rest of a commit.
pub fn stage_all(repo: &Repository, root: &Path) -> Result<Oid, GitError> {
    stage_since(repo, root, &mut None)
}

/// `stage_all`, where the paths to look at come from `mark` (the worktree as it was last clean)
/// when it can tell them, instead of a status of the whole tree. `mark` becomes the worktree's
/// mark once this stage is committed (`None` after a full status).
pub fn stage_since(repo: &Repository, root: &Path, mark: &mut Option<CleanMark>) -> Result<Oid, GitError> {
    let old = mark.take();
    let (tree, next) = retry_locked(root, || {
        let mut index = repo.index()?;
        index.read(false)?;
        let head = repo.head().and_then(|h| h.peel_to_tree()).ok();
        let (touched, staged, mut next) =
            match old.as_ref().and_then(|m| m.changes(repo, root, &mut index, head.as_ref())) {
                Some((paths, next)) => {
                    let (touched, staged) = stage_paths(repo, &mut index, root, paths)?;
                    (touched, staged, Some(next))
                }
                None => {
                    let (touched, staged) = stage_statuses(repo, &mut index, head.is_some())?;
                    (touched, staged, None)
                }
            };
        // Nothing staged (a worker that committed its own work): the index file stays as it
        // is, not written again through a lock file.
        if staged {
            index.write()?;
        }
        if let Some(next) = &mut next {
            next.index_written(repo);
        }
        // Submodules are left out of the status (reading theirs is slow): one staged anew would
        // be missed by an update of HEAD's tree, so an index that has any writes its tree whole.
        let gitlink = u32::from(git2::FileMode::Commit);
        let submodules = index.iter().any(|entry| entry.mode == gitlink);
        let tree = match head {
            // A file replaced by a folder of the same name (or the other way round) is beyond
            // an update of HEAD's tree: the index writes it whole.
            Some(tree) if !index.has_conflicts() && !submodules => {
                updated_tree(repo, &index, &tree, &touched).or_else(|_| index.write_tree())
            }
            _ => index.write_tree(),
        }?;
        Ok((tree, next))
    })?;
    *mark = next;
    Ok(tree)
}

/// Stages what a status of the whole tree finds changed (against HEAD too when there is one:
/// what was staged and not committed, a worker's `git add`, counts). Returns the paths looked
/// at and whether the index changed.
fn stage_statuses(repo: &Repository, index: &mut git2::Index, head: bool) -> Result<(Vec<PathBuf>, bool), git2::Error> {
    use std::os::unix::ffi::OsStrExt;
    let mut options = git2::StatusOptions::new();
    let show = if head { git2::StatusShow::IndexAndWorkdir } else { git2::StatusShow::Workdir };
    options
        .show(show)
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true);
    let statuses = repo.statuses(Some(&mut options))?;
    let mut touched = Vec::with_capacity(statuses.len());
    let mut staged = false;
    for entry in statuses.iter() {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(entry.path_bytes()));
        let status = entry.status();
        if status.contains(git2::Status::WT_DELETED) {
            index.remove_path(&path)?;
            staged = true;
        } else if status.intersects(
            git2::Status::WT_NEW | git2::Status::WT_MODIFIED | git2::Status::WT_TYPECHANGE | git2::Status::WT_RENAMED,
        ) {
            index.add_path(&path)?;
            staged = true;
        }
        touched.push(path);
    }
    Ok((touched, staged))
}

/// Stages each of `paths` as the tree has it now: a file or symlink there is added, none there
/// is removed. In a repository of plain files (see `plain_files`) a file's blob is its bytes,
/// written here; otherwise libgit2 adds it through its filters.
fn stage_paths(
    repo: &Repository,
    index: &mut git2::Index,
    root: &Path,
    paths: Vec<PathBuf>,
) -> Result<(Vec<PathBuf>, bool), git2::Error> {
    let staged = !paths.is_empty();
    let plain = staged && plain_files(repo, index);
    for path in &paths {
        match std::fs::symlink_metadata(root.join(path)) {
            // Only a regular file or a symlink is staged: a FIFO or a socket in a file's place
            // is no file to git (and reading a FIFO would block), as a status of the tree says.
            Ok(meta) if meta.is_file() || meta.is_symlink() => {
                if plain && meta.len() <= PLAIN_READ_LIMIT {
                    add_plain(repo, index, root, path, &meta)?
                } else {
                    index.add_path(path)?
                }
            }
            _ => index.remove_path(path)?,
        }
    }
    Ok((paths, staged))
}

/// Files larger than this are added by libgit2, which streams them, rather than read whole.
const PLAIN_READ_LIMIT: u64 = 16 << 20;

/// Whether every file of the repository is stored as its bytes, with its executable bit and
/// symlinks as symlinks, as far as its configuration tells: no attributes file exists (the
/// repository's, the user's or the system's) and no line endings are converted. The files must
/// also hold no `.gitattributes` (see `is_attributes`). Then files can be written and hashed
/// directly: libgit2 looks up each file's attributes before it filters it, resolving the path
/// through `realpath` and looking for a `.gitattributes` in each of its folders, which cost
/// more than the rest of a small commit.
pub fn plain_config(repo: &Repository) -> bool {
    let Ok(config) = repo.config().and_then(|mut c| c.snapshot()) else { return false };
    let flag = |name: &str, default: bool| config.get_bool(name).unwrap_or(default);
    let plain = flag("core.filemode", true)
        && flag("core.symlinks", true)
        && config.get_str("core.autocrlf").is_err()
        && config.get_str("core.eol").is_err()
        && config.get_str("core.attributesFile").is_err();
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .map(|dir| dir.join("git/attributes"));
    let files = [Some(repo.commondir().join("info/attributes")), user, Some(PathBuf::from("/etc/gitattributes"))];
    plain && !files.iter().flatten().any(|file| file.exists())
}

/// Whether `path` (relative, as git writes it) names a `.gitattributes`.
pub fn is_attributes(path: &[u8]) -> bool {
    path.rsplit(|b| *b == b'/').next() == Some(b".gitattributes")
}

/// `plain_config`, and no `.gitattributes` in `index`.
pub fn plain_files(repo: &Repository, index: &git2::Index) -> bool {
    plain_config(repo) && !index.iter().any(|entry| is_attributes(&entry.path))
}

/// Adds the file or symlink at `rel` as its bytes, with the stat taken before it was read (a
/// change while it is read shows at the next look).
fn add_plain(
    repo: &Repository,
    index: &mut git2::Index,
    root: &Path,
    rel: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), git2::Error> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let full = root.join(rel);
    let io = |e: std::io::Error| git2::Error::from_str(&format!("{}: {e}", full.display()));
    let (id, mode) = if meta.file_type().is_symlink() {
        (repo.blob(std::fs::read_link(&full).map_err(io)?.as_os_str().as_bytes())?, 0o120000)
    } else {
        let executable = meta.mode() & 0o100 != 0;
        (repo.blob(&std::fs::read(&full).map_err(io)?)?, if executable { 0o100755 } else { 0o100644 })
    };
    index.add(&entry_with_stat(rel.as_os_str().as_bytes().to_vec(), id, mode, meta))
}

/// `tree` with each of `paths` as `index` has it (absent from the index: removed).
fn updated_tree(
    repo: &Repository,
    index: &git2::Index,
    tree: &git2::Tree<'_>,
    paths: &[PathBuf],
) -> Result<Oid, git2::Error> {
    if paths.is_empty() {
        return Ok(tree.id());
    }
    let mut update = git2::build::TreeUpdateBuilder::new();
    for path in paths {
        match index.get_path(path, 0) {
            Some(entry) => update.upsert(path.as_path(), entry.id, file_mode(entry.mode)?),
            None => update.remove(path.as_path()),
        };
    }
    update.create_updated(repo, tree)
}

/// The tree entry mode of an index entry's `mode`.
pub fn file_mode(mode: u32) -> Result<git2::FileMode, git2::Error> {
    use git2::FileMode;
    [FileMode::Blob, FileMode::BlobExecutable, FileMode::Link, FileMode::Commit, FileMode::BlobGroupWritable]
        .into_iter()
        .find(|m| u32::from(*m) == mode)
        .ok_or_else(|| git2::Error::from_str(&format!("an index entry of unknown mode {mode:o}")))
}

/// An index entry of `id` at `path` with the stat of its file, `meta`: git takes the file as
/// unchanged while its stat stays.
pub fn entry_with_stat(path: Vec<u8>, id: Oid, mode: u32, meta: &std::fs::Metadata) -> git2::IndexEntry {
    use std::os::unix::fs::MetadataExt;
    // The index keeps 32-bit stat fields: git truncates them the same way.
    git2::IndexEntry {
        ctime: git2::IndexTime::new(meta.ctime() as i32, meta.ctime_nsec() as u32),
        mtime: git2::IndexTime::new(meta.mtime() as i32, meta.mtime_nsec() as u32),
        dev: meta.dev() as u32,
        ino: meta.ino() as u32,
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
        file_size: meta.len() as u32,
        id,
        flags: 0,
        flags_extended: 0,
        path,
    }
}

/// An index entry of `id` at `path` with no stat data: git compares the file on disk by its
/// content when it next looks (for entries of blobs that are not, or not yet, on disk).
pub fn entry_without_stat(path: Vec<u8>, id: Oid, mode: u32) -> git2::IndexEntry {
    git2::IndexEntry {
        ctime: git2::IndexTime::new(0, 0),
        mtime: git2::IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode,
        uid: 0,
        gid: 0,
        file_size: 0,
        id,
        flags: 0,
        flags_extended: 0,
        path,
    }
}

/// Stages every change below `dir` (relative to the project), and nothing else.
pub fn stage_folder(repo: &Repository, root: &Path, dir: &Path) -> Result<Oid, GitError> {
    let spec = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
    retry_locked(root, || {
        let mut index = repo.index()?;
        index.read(false)?;
        index.add_all([spec.as_str()], IndexAddOption::DEFAULT, None)?;
        index.update_all([spec.as_str()], None)?;
        index.write()?;
        index.write_tree()
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::testkit::repo;

    /// Every file of `tree` with its content.
    fn files(repo: &Repository, tree: Oid) -> Vec<(String, String)> {
        let mut out = Vec::new();
        repo.find_tree(tree)
            .unwrap()
            .walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
                if let Ok(blob) = entry.to_object(repo).and_then(|o| o.peel_to_blob()) {
                    let text = String::from_utf8_lossy(blob.content()).into_owned();
                    out.push((format!("{dir}{}", entry.name().unwrap_or_default()), text));
                }
                git2::TreeWalkResult::Ok
            })
            .unwrap();
        out
    }

    /// The tree the index's own writer makes of the same index: the tree `stage_all` builds
    /// from HEAD's must be that very tree.
    fn written_whole(repo: &Repository) -> Oid {
        let mut index = repo.index().unwrap();
        index.read(true).unwrap();
        index.write_tree_to(repo).unwrap()
    }

    #[test]
    fn every_change_is_staged_and_the_tree_is_the_indexs() {
        let (dir, repo) = repo(&[("a.txt", "a\n"), ("b.txt", "b\n"), ("src/c.txt", "c\n"), ("x", "a file\n")]);
        let root = dir.path();
        fs::write(root.join("a.txt"), "a changed\n").unwrap();
        fs::remove_file(root.join("b.txt")).unwrap();
        fs::create_dir_all(root.join("new/deep")).unwrap();
        fs::write(root.join("new/deep/d.txt"), "d\n").unwrap();
        fs::write(root.join(".gitignore"), "ignored.log\n").unwrap();
        fs::write(root.join("ignored.log"), "never staged\n").unwrap();
        // Staged by a worker's `git add` and left uncommitted, the file as it is since.
        fs::write(root.join("src/c.txt"), "c staged\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("src/c.txt")).unwrap();
        index.write().unwrap();

        let tree = stage_all(&repo, root).unwrap();
        let expected: Vec<(String, String)> = [
            (".gitignore", "ignored.log\n"),
            ("a.txt", "a changed\n"),
            ("new/deep/d.txt", "d\n"),
            ("src/c.txt", "c staged\n"),
            ("x", "a file\n"),
        ]
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
        assert_eq!(files(&repo, tree), expected);
        assert_eq!(tree, written_whole(&repo));
    }

    #[test]
    fn nothing_changed_is_heads_tree() {
        let (dir, repo) = repo(&[("a.txt", "a\n")]);
        let head = repo.head().unwrap().peel_to_tree().unwrap().id();
        assert_eq!(stage_all(&repo, dir.path()).unwrap(), head);
    }

    /// A file made a folder of the same name is beyond an update of HEAD's tree: the whole
    /// index is written instead, with the same result.
    #[test]
    fn a_file_replaced_by_a_folder_of_its_name_is_staged_too() {
        let (dir, repo) = repo(&[("x", "a file\n"), ("keep.txt", "k\n")]);
        fs::remove_file(dir.path().join("x")).unwrap();
        fs::create_dir_all(dir.path().join("x")).unwrap();
        fs::write(dir.path().join("x/inside.txt"), "now a folder\n").unwrap();
        let tree = stage_all(&repo, dir.path()).unwrap();
        let names: Vec<String> = files(&repo, tree).into_iter().map(|(p, _)| p).collect();
        assert_eq!(names, ["keep.txt", "x/inside.txt"]);
        assert_eq!(tree, written_whole(&repo));
    }

    #[test]
    fn an_executable_and_a_symlink_keep_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, repo) = repo(&[("a.txt", "a\n")]);
        fs::write(dir.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a.txt", dir.path().join("link")).unwrap();
        let tree = repo.find_tree(stage_all(&repo, dir.path()).unwrap()).unwrap();
        let mode = |name: &str| tree.get_name(name).unwrap().filemode();
        assert_eq!(mode("run.sh"), i32::from(git2::FileMode::BlobExecutable));
        assert_eq!(mode("link"), i32::from(git2::FileMode::Link));
        assert_eq!(tree.id(), written_whole(&repo));
    }

    /// A submodule's commit staged anew (`git add sub` after `git submodule update`) is in the
    /// tree, though the status leaves submodules out.
    #[test]
    fn a_submodule_staged_anew_is_in_the_tree() {
        let (dir, repo) = repo(&[("a.txt", "a\n")]);
        let gitlink = |id: Oid| entry_without_stat(b"sub".to_vec(), id, u32::from(git2::FileMode::Commit));
        let first = repo.head().unwrap().peel_to_commit().unwrap().id();
        let mut index = repo.index().unwrap();
        index.add(&gitlink(first)).unwrap();
        index.write().unwrap();
        let sig = git2::Signature::now("t", "t@x").unwrap();
        let tree = repo.find_tree(stage_all(&repo, dir.path()).unwrap()).unwrap();
        let parent = repo.head().unwrap().peel_to_commit().unwrap();
        let second = repo.commit(Some("HEAD"), &sig, &sig, "with sub", &tree, &[&parent]).unwrap();
        // The submodule moved on: staged, not committed.
        let mut index = repo.index().unwrap();
        index.add(&gitlink(second)).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(stage_all(&repo, dir.path()).unwrap()).unwrap();
        assert_eq!(tree.get_name("sub").unwrap().id(), second);
    }
}
