//! What the daemon's unit tests share: a small deterministic generator (xorshift) for the tests
//! that try hundreds of random cases (the same cases on every run), and a real repository with
//! files committed.

use git2::Repository;

pub struct Dice(pub u64);

impl Dice {
    /// A number below `sides`.
    pub fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

/// A repository (its work tree in the returned folder) with `files` (path, text) committed on
/// its checked-out branch.
pub fn repo(files: &[(&str, &str)]) -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(dir.path()).unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }
    let tree = repo.find_tree(crate::git::stage_all(&repo, dir.path()).unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@x").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "initial", &tree, &[]).unwrap();
    drop(tree);
    (dir, repo)
}
