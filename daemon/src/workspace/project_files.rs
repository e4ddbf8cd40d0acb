//! The project folder's files as a merge brings them along: each compared with the merge's two
//! sides, and written as git's checkout writes it. A file under a line-ending, `ident`,
//! `filter` or encoding attribute (or any file, when the configuration asks for conversions)
//! goes through libgit2's filters: its blob's bytes are not what git puts on disk (`eol=crlf`
//! writes CRLF line ends, for one). Every other file is its blob's bytes, the cheap way.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, Tree};

use crate::git::{self, GitError};
use crate::tree_diff::Change;

/// The attributes under which git's checkout writes something other than the blob's bytes.
const FILTER_ATTRIBUTES: [&str; 6] = ["text", "eol", "crlf", "ident", "filter", "working-tree-encoding"];

/// The project folder between the two trees of a merge: `old` (the integration branch before
/// it) and `new` (after it).
pub struct ProjectFiles<'a> {
    repo: &'a Repository,
    root: PathBuf,
    old: &'a Tree<'a>,
    new: &'a Tree<'a>,
    /// The configuration asks for conversions (`core.autocrlf`, an attributes file outside the
    /// tree...): every file goes through the filters.
    filters_everywhere: bool,
}

impl<'a> ProjectFiles<'a> {
    pub fn new(repo: &'a Repository, old: &'a Tree<'a>, new: &'a Tree<'a>) -> ProjectFiles<'a> {
        let root = repo.workdir().map(Path::to_path_buf).unwrap_or_default();
        ProjectFiles { repo, root, old, new, filters_everywhere: !git::plain_config(repo) }
    }

    /// Whether git's checkout of `path` passes its content through a filter.
    fn filtered(&self, path: &Path) -> bool {
        if self.filters_everywhere {
            return true;
        }
        // A path's attributes come from the `.gitattributes` of its folders (the others are
        // the configuration's): with none there, libgit2's lookup is not asked.
        let near = path.ancestors().skip(1).any(|dir| {
            let file = dir.join(".gitattributes");
            self.old.get_path(&file).is_ok() || self.new.get_path(&file).is_ok() || self.root.join(&file).exists()
        });
        near && FILTER_ATTRIBUTES.iter().any(|name| {
            // An attribute that cannot be read counts as set: the filters are then asked.
            self.repo.get_attr_bytes(path, name, git2::AttrCheckFlags::FILE_THEN_INDEX).map_or(true, |v| v.is_some())
        })
    }

    /// For each of `changes`, whether the user changed its path in the project folder: what is
    /// there differs from both sides of the merge. Judged before anything is written; a path
    /// told twice (a file turned symlink: its removal, then its addition) against both of its
    /// sides.
    pub fn user_edits(&self, changes: &[Change]) -> Vec<bool> {
        let mut sides: HashMap<&Path, (Option<Oid>, Option<Oid>)> = HashMap::new();
        for change in changes {
            let side = sides.entry(change.path.as_path()).or_default();
            side.0 = side.0.or(change.old.map(|(oid, _)| oid));
            side.1 = side.1.or(change.new.map(|(oid, _)| oid));
        }
        changes.iter().map(|c| self.edited(&c.path, sides.get(c.path.as_path()).copied().unwrap_or_default())).collect()
    }

    /// Whether what is at `path` is neither side (`old`, `new`; `None`: nothing there).
    fn edited(&self, path: &Path, (old, new): (Option<Oid>, Option<Oid>)) -> bool {
        if self.filtered(path) {
            return self.differs(self.old, path) && self.differs(self.new, path);
        }
        let Some(on_disk) = on_disk(&self.root.join(path)) else { return true };
        on_disk != old && on_disk != new
    }

    /// Whether the file at `path`, seen through the filters, differs from what `tree` holds
    /// there (nothing at both: the same).
    fn differs(&self, tree: &Tree<'_>, path: &Path) -> bool {
        let mut options = git2::DiffOptions::new();
        options
            .pathspec(path)
            .disable_pathspec_match(true)
            .include_untracked(true)
            .recurse_untracked_dirs(true)
            .include_ignored(true)
            .recurse_ignored_dirs(true)
            .include_typechange(true);
        self.repo.diff_tree_to_workdir(Some(tree), Some(&mut options)).map_or(true, |diff| diff.deltas().len() > 0)
    }

    /// Brings the file of `change` to the merge's side, unless it is there already. A regular
    /// file that goes through the filters is added to `filtered` instead: `write_filtered`
    /// writes those, all in one checkout.
    pub fn write(&self, change: &Change, umask: u32, filtered: &mut Vec<PathBuf>) -> Result<(), GitError> {
        let path = self.root.join(&change.path);
        let io = |e: std::io::Error| GitError::Git(git2::Error::from_str(&format!("{}: {e}", path.display())));
        let Some((blob, mode)) = change.new else {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            };
        };
        let link = mode == i32::from(git2::FileMode::Link);
        let executable = mode == i32::from(git2::FileMode::BlobExecutable);
        let same_kind = std::fs::symlink_metadata(&path).is_ok_and(|meta| {
            let is_link = meta.file_type().is_symlink();
            is_link == link && (link || (meta.permissions().mode() & 0o111 != 0) == executable)
        });
        let regular = !link && mode != i32::from(git2::FileMode::Commit);
        if regular && self.filtered(&change.path) {
            if !same_kind || self.differs(self.new, &change.path) {
                filtered.push(change.path.clone());
            }
            return Ok(());
        }
        if same_kind && on_disk(&path) == Some(Some(blob)) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if mode == i32::from(git2::FileMode::Commit) {
            // A submodule: git leaves an empty folder where it is not checked out.
            return std::fs::create_dir_all(&path).map_err(io);
        }
        let content = self.repo.find_blob(blob)?;
        if link {
            // A symlink, made beside and renamed over what is there (atomically, as a file is).
            let beside = path.with_file_name(format!(
                ".{}.sticler-link.tmp",
                path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ));
            let _ = std::fs::remove_file(&beside);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(content.content()), &beside).map_err(io)?;
            return std::fs::rename(&beside, &path).map_err(io);
        }
        crate::project::write_replacing(&path, content.content())
            .map_err(|e| GitError::Git(git2::Error::from_str(&e.to_string())))?;
        set_mode(&path, change, umask)
    }

    /// Writes the files `write` left to the filters, as git's checkout of the new side does
    /// (the index is left to the caller). libgit2's checkout writes a file in place, so it
    /// writes into a staging folder in the repository's git folder, and each file is then put
    /// in its place atomically, as every other file of a merge is.
    pub fn write_filtered(&self, changes: &[Change], filtered: &[PathBuf], umask: u32) -> Result<(), GitError> {
        if filtered.is_empty() {
            return Ok(());
        }
        let staging = self.repo.path().join("sticler-checkout");
        let io =
            |path: &Path, e: std::io::Error| GitError::Git(git2::Error::from_str(&format!("{}: {e}", path.display())));
        // A folder left by a daemon killed mid-merge: nothing in it is needed.
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
        let mut checkout = git2::build::CheckoutBuilder::new();
        checkout.force().recreate_missing(true).update_index(false).disable_pathspec_match(true).target_dir(&staging);
        for rel in filtered {
            checkout.path(rel);
        }
        let written =
            self.repo.checkout_tree(self.new.as_object(), Some(&mut checkout)).map_err(GitError::from).and_then(|()| {
                for rel in filtered {
                    let (staged, path) = (staging.join(rel), self.root.join(rel));
                    let bytes = std::fs::read(&staged).map_err(|e| io(&staged, e))?;
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
                    }
                    crate::project::write_replacing(&path, &bytes)
                        .map_err(|e| GitError::Git(git2::Error::from_str(&e.to_string())))?;
                    // The change that writes the path (a path told twice is first removed).
                    if let Some(change) = changes.iter().find(|c| &c.path == rel && c.new.is_some()) {
                        set_mode(&path, change, umask)?;
                    }
                }
                Ok(())
            });
        let _ = std::fs::remove_dir_all(&staging);
        written
    }
}

/// The file just written for `change` gets the modes git would give it under the user's
/// `umask` (the daemon's own umask is 077) when it is new, executable or changed mode (else
/// it kept the mode of the file it replaced).
fn set_mode(path: &Path, change: &Change, umask: u32) -> Result<(), GitError> {
    let Some((_, mode)) = change.new else { return Ok(()) };
    let executable = mode == i32::from(git2::FileMode::BlobExecutable);
    let fresh = change.old.is_none();
    let mode_changed = change.old.is_some_and(|(_, old)| old != mode);
    if !(fresh || executable || mode_changed) {
        return Ok(());
    }
    let bits = (if executable { 0o777 } else { 0o666 }) & !umask;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits))
        .map_err(|e| GitError::Git(git2::Error::from_str(&format!("{}: {e}", path.display()))))
}

/// What is at `path`, by the blob id of its bytes: a file's content, a symlink's target
/// (`Some(None)`: nothing there). `None` for anything else (a folder, say).
fn on_disk(path: &Path) -> Option<Option<Oid>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Some(Oid::hash_file(ObjectType::Blob, path).ok()),
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::read_link(path).ok()?;
            Some(Oid::hash_object(ObjectType::Blob, target.as_os_str().as_bytes()).ok())
        }
        Ok(_) => None,
        Err(_) => Some(None),
    }
}
