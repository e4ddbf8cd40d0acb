//! The files that differ between two trees, found by walking only the folders whose tree ids
//! differ. libgit2's tree-to-tree diff reads every entry of both trees, the whole project for
//! each merge and each move of a worktree, where one story's changes touch a few folders.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, Tree, TreeEntry};

/// One file (blob, symlink or submodule) that differs: its path, and its id and mode on each
/// side (None: absent on that side).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: PathBuf,
    pub old: Option<(Oid, i32)>,
    pub new: Option<(Oid, i32)>,
}

impl Change {
    /// The letter `git diff --name-status` gives it: A, D or M.
    pub fn letter(&self) -> char {
        match (self.old, self.new) {
            (None, _) => 'A',
            (_, None) => 'D',
            _ => 'M',
        }
    }
}

/// The files that differ from `old` (None: an empty tree) to `new`, ordered by path as git
/// orders them (byte by byte), as libgit2's diff tells them: a file that became a folder (or
/// the reverse), or another kind of file (a symlink, say), is one file gone and one added.
pub fn changes(repo: &Repository, old: Option<&Tree<'_>>, new: &Tree<'_>) -> Result<Vec<Change>, git2::Error> {
    let mut out = Vec::new();
    walk(repo, Path::new(""), old, Some(new), &mut out)?;
    out.sort_by(|a, b| a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()));
    Ok(out)
}

/// Adds to `out` the files that differ below `dir` between `old` and `new`.
fn walk(
    repo: &Repository,
    dir: &Path,
    old: Option<&Tree<'_>>,
    new: Option<&Tree<'_>>,
    out: &mut Vec<Change>,
) -> Result<(), git2::Error> {
    for entry in new.iter().flat_map(|t| t.iter()) {
        let before = old.and_then(|t| t.get_name_bytes(entry.name_bytes()));
        if before.as_ref().is_some_and(|b| b.id() == entry.id() && b.filemode() == entry.filemode()) {
            continue;
        }
        differs(repo, &dir.join(OsStr::from_bytes(entry.name_bytes())), before.as_ref(), Some(&entry), out)?;
    }
    for entry in old.iter().flat_map(|t| t.iter()) {
        if new.and_then(|t| t.get_name_bytes(entry.name_bytes())).is_none() {
            differs(repo, &dir.join(OsStr::from_bytes(entry.name_bytes())), Some(&entry), None, out)?;
        }
    }
    Ok(())
}

/// What differs at `path`, whose entries are `old` and `new`: folders are walked, files told.
fn differs(
    repo: &Repository,
    path: &Path,
    old: Option<&TreeEntry<'_>>,
    new: Option<&TreeEntry<'_>>,
    out: &mut Vec<Change>,
) -> Result<(), git2::Error> {
    let folder = |e: Option<&TreeEntry<'_>>| -> Result<Option<Tree<'_>>, git2::Error> {
        match e.filter(|e| e.kind() == Some(ObjectType::Tree)) {
            Some(e) => Ok(Some(repo.find_tree(e.id())?)),
            None => Ok(None),
        }
    };
    let file =
        |e: Option<&TreeEntry<'_>>| e.filter(|e| e.kind() != Some(ObjectType::Tree)).map(|e| (e.id(), e.filemode()));
    let path_buf = || path.to_path_buf();
    match (file(old), file(new)) {
        (Some(o), Some(n)) if kind(o.1) != kind(n.1) => {
            out.push(Change { path: path_buf(), old: Some(o), new: None });
            out.push(Change { path: path_buf(), old: None, new: Some(n) });
        }
        (None, None) => {}
        (old, new) => out.push(Change { path: path_buf(), old, new }),
    }
    let (old_folder, new_folder) = (folder(old)?, folder(new)?);
    if old_folder.is_some() || new_folder.is_some() {
        walk(repo, path, old_folder.as_ref(), new_folder.as_ref(), out)?;
    }
    Ok(())
}

/// The kind of entry a mode is: file (with or without the executable bit), symlink, submodule.
fn kind(mode: i32) -> i32 {
    let executable = i32::from(git2::FileMode::BlobExecutable);
    if mode == executable {
        i32::from(git2::FileMode::Blob)
    } else {
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Dice;

    /// A tree of up to `files` paths below a few folders, each a file, an executable, a
    /// symlink or (at a name a file may also take) a folder.
    fn random_tree(repo: &Repository, dice: &mut Dice, files: u64) -> Oid {
        let mut update = git2::build::TreeUpdateBuilder::new();
        let names = ["a", "b", "a-b", "c.txt", "d"];
        let mut taken: Vec<String> = Vec::new();
        for _ in 0..dice.roll(files) {
            let depth = 1 + dice.roll(3);
            let path: Vec<&str> = (0..depth).map(|_| names[dice.roll(names.len() as u64) as usize]).collect();
            let path = path.join("/");
            // A path that is a prefix folder of a taken one (or the reverse) would be both.
            let clash = taken
                .iter()
                .any(|t| t == &path || t.starts_with(&format!("{path}/")) || path.starts_with(&format!("{t}/")));
            if clash {
                continue;
            }
            let blob = repo.blob(format!("content {}", dice.roll(3)).as_bytes()).unwrap();
            let mode = match dice.roll(6) {
                0 => git2::FileMode::BlobExecutable,
                1 => git2::FileMode::Link,
                _ => git2::FileMode::Blob,
            };
            update.upsert(path.as_str(), blob, mode);
            taken.push(path);
        }
        let empty = repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap()).unwrap();
        update.create_updated(repo, &empty).unwrap()
    }

    /// libgit2's own diff of the two trees, as changes.
    fn libgit2s(repo: &Repository, old: &Tree<'_>, new: &Tree<'_>) -> Vec<(String, char)> {
        let diff = repo.diff_tree_to_tree(Some(old), Some(new), None).unwrap();
        diff.deltas()
            .map(|d| {
                let path = d.new_file().path().or(d.old_file().path()).unwrap().display().to_string();
                let letter = match d.status() {
                    git2::Delta::Added => 'A',
                    git2::Delta::Deleted => 'D',
                    git2::Delta::Typechange => 'T',
                    _ => 'M',
                };
                (path, letter)
            })
            .collect()
    }

    /// On hundreds of random pairs of trees: the same files, in the same order, as libgit2's
    /// tree-to-tree diff says (with the letters `git diff --name-status` gives).
    #[test]
    fn the_same_changes_as_libgit2s_diff() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let mut dice = Dice(0x5eed_cafe_f00d);
        for _ in 0..400 {
            let old = repo.find_tree(random_tree(&repo, &mut dice, 12)).unwrap();
            let new = repo.find_tree(random_tree(&repo, &mut dice, 12)).unwrap();
            let ours: Vec<(String, char)> = changes(&repo, Some(&old), &new)
                .unwrap()
                .iter()
                .map(|c| (c.path.display().to_string(), c.letter()))
                .collect();
            let theirs = libgit2s(&repo, &old, &new);
            assert_eq!(ours, theirs, "old {} new {}", old.id(), new.id());
        }
    }

    #[test]
    fn ids_and_modes_of_both_sides_and_kind_changes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let (one, two) = (repo.blob(b"one").unwrap(), repo.blob(b"two").unwrap());
        let empty = repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let tree = |entries: &[(&str, Oid, git2::FileMode)]| {
            let mut update = git2::build::TreeUpdateBuilder::new();
            for (path, id, mode) in entries {
                update.upsert(*path, *id, *mode);
            }
            repo.find_tree(update.create_updated(&repo, &empty).unwrap()).unwrap()
        };
        let (blob, link) = (git2::FileMode::Blob, git2::FileMode::Link);
        let old = tree(&[("src/a", one, blob), ("src/b", one, blob), ("x", one, blob)]);
        let new = tree(&[("src/a", two, blob), ("src/b", one, link), ("x/inside", one, blob)]);
        let found = changes(&repo, Some(&old), &new).unwrap();
        let told: Vec<(String, char)> = found.iter().map(|c| (c.path.display().to_string(), c.letter())).collect();
        let expected = [("src/a", 'M'), ("src/b", 'D'), ("src/b", 'A'), ("x", 'D'), ("x/inside", 'A')];
        assert_eq!(told, expected.map(|(p, l)| (p.to_string(), l)));
        assert_eq!(found[0].old, Some((one, i32::from(blob))));
        assert_eq!(found[0].new, Some((two, i32::from(blob))));
        // Against nothing: every file added.
        assert_eq!(changes(&repo, None, &new).unwrap().len(), 3);
        assert_eq!(found[2].new, Some((one, i32::from(link))));
    }
}
