//! A commit as `git show --patch` prints it (header, message, the patch against its first
//! parent), for the dashboard's story panel; read-only, so it takes no project git lock.

use std::fmt::Write;
use std::path::Path;

use git2::{DiffFormat, Oid, Repository};

use crate::git::GitError;

/// `git show` of commit `hash` in the repository at `root`, cut after about `limit` bytes.
pub fn show_commit(root: &Path, hash: &str, limit: usize) -> Result<String, GitError> {
    let repo = Repository::open(root)?;
    let commit = repo.find_commit(Oid::from_str(hash)?)?;
    let author = commit.author();
    let mut out = String::new();
    let when = sticler_proto::time::rfc3339(commit.time().seconds().max(0) as u64);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "commit {}\nAuthor: {} <{}>\nDate:   {when}\n\n",
        commit.id(),
        author.name().unwrap_or(""),
        author.email().unwrap_or("")
    );
    for line in commit.message().unwrap_or("").lines() {
        let _ = writeln!(out, "    {line}");
    }
    out.push('\n');
    let tree = commit.tree()?;
    let parent = match commit.parent(0) {
        Ok(parent) => Some(parent.tree()?),
        Err(_) => None,
    };
    let diff = repo.diff_tree_to_tree(parent.as_ref(), Some(&tree), None)?;
    let mut cut = false;
    let printed = diff.print(DiffFormat::Patch, |_, _, line| {
        if out.len() >= limit {
            cut = true;
            return false;
        }
        if matches!(line.origin(), '+' | '-' | ' ') {
            out.push(line.origin());
        }
        out.push_str(&String::from_utf8_lossy(line.content()));
        true
    });
    match printed {
        // The callback stopped the walk at the limit: say so instead of failing.
        Err(_) if cut => out.push_str("\n[... cut: the patch is longer than the dashboard shows]\n"),
        other => other?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_with_commit(dir: &Path) -> Oid {
        let repo = Repository::init(dir).unwrap();
        std::fs::write(dir.join("a.txt"), "one\ntwo\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("a.txt")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("Ann", "ann@example.com").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "[US-P1-001] First\n\nbody", &tree, &[]).unwrap()
    }

    #[test]
    fn a_commit_shows_its_header_message_and_patch() {
        let dir = tempfile::tempdir().unwrap();
        let oid = repo_with_commit(dir.path());
        let text = show_commit(dir.path(), &oid.to_string(), 1 << 20).unwrap();
        assert!(text.starts_with(&format!("commit {oid}\nAuthor: Ann <ann@example.com>\n")), "{text}");
        assert!(text.contains("    [US-P1-001] First\n"), "{text}");
        assert!(text.contains("+++ b/a.txt\n") && text.contains("\n+one\n+two\n"), "{text}");
    }

    #[test]
    fn a_long_patch_is_cut_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let oid = repo_with_commit(dir.path());
        let text = show_commit(dir.path(), &oid.to_string(), 10).unwrap();
        assert!(text.ends_with("longer than the dashboard shows]\n"), "{text}");
        assert!(show_commit(dir.path(), "0123456789012345678901234567890123456789", 10).is_err());
    }
}
