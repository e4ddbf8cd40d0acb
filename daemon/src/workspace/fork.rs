//! Where a story's branch left the integration branch (their merge base), found cheaply in the
//! usual shape of a run's history.

use git2::{Commit, Oid, Repository};

/// How far `fork_point` follows either side before it leaves the question to libgit2.
const FORK_WALK: usize = 64;

/// The merge base of the integration branch (`ours`) and a story's branch (`theirs`), found
/// through the repository's object cache in the usual case: the story's commits form a chain
/// that leaves the integration branch's first-parent line, no commit on that line (down to the
/// fork) being a merge, so nothing below the story's fork reaches the integration branch
/// another way. Otherwise libgit2's merge base, whose walk reads every commit from disk.
pub fn fork_point(main: &Repository, ours: &Commit<'_>, theirs: &Commit<'_>) -> Option<Oid> {
    walked_fork(ours, theirs).or_else(|| main.merge_base(ours.id(), theirs.id()).ok())
}

/// The fork of the usual case (see `fork_point`), `None` when the history has another shape.
fn walked_fork(ours: &Commit<'_>, theirs: &Commit<'_>) -> Option<Oid> {
    let mut line = std::collections::HashMap::new();
    let mut at = Some(ours.clone());
    for depth in 0..FORK_WALK {
        let Some(commit) = at.take() else { break };
        line.insert(commit.id(), (depth, commit.parent_count()));
        at = commit.parent(0).ok();
    }
    let mut at = Some(theirs.clone());
    for _ in 0..FORK_WALK {
        let Some(commit) = at.take() else { break };
        if let Some((depth, _)) = line.get(&commit.id()) {
            // Every commit above it on the line has one parent: no other way down.
            let single = line.values().filter(|(d, _)| d < depth).all(|(_, parents)| *parents == 1);
            if single {
                return Some(commit.id());
            }
            return None;
        }
        if commit.parent_count() != 1 {
            return None;
        }
        at = commit.parent(0).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Dice;

    /// A commit of `parents` (an empty tree, `n` in its message).
    fn commit(repo: &Repository, parents: &[Oid], n: usize) -> Oid {
        let sig = git2::Signature::now("t", "t@x").unwrap();
        let tree = repo.find_tree(repo.treebuilder(None).unwrap().write().unwrap()).unwrap();
        let parents: Vec<Commit<'_>> = parents.iter().map(|p| repo.find_commit(*p).unwrap()).collect();
        let refs: Vec<&Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, &format!("c{n}"), &tree, &refs).unwrap()
    }

    /// On hundreds of random histories (an integration line that sometimes merges a story
    /// branch for real, story branches of one to three commits cut from any point of it, and
    /// branches that merged the integration line in), the same fork as libgit2's merge base.
    #[test]
    fn the_same_fork_as_libgit2s_merge_base() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let mut dice = Dice(0xf0_4c_b4_5e);
        let (mut n, mut walked, mut asked) = (0, 0, 0);
        let mut next = |repo: &Repository, parents: &[Oid]| {
            n += 1;
            commit(repo, parents, n)
        };
        for _ in 0..200 {
            let mut line = vec![next(&repo, &[])];
            let mut stories: Vec<Oid> = Vec::new();
            for _ in 0..1 + dice.roll(20) {
                let tip = *line.last().unwrap();
                match dice.roll(6) {
                    // A story branch cut here, one to three commits long.
                    0 | 1 => {
                        let mut head = tip;
                        for _ in 0..1 + dice.roll(3) {
                            head = next(&repo, &[head]);
                        }
                        stories.push(head);
                    }
                    // The integration line merges a story branch for real.
                    2 if !stories.is_empty() => {
                        let story = stories[dice.roll(stories.len() as u64) as usize];
                        line.push(next(&repo, &[tip, story]));
                    }
                    // A story branch merges the integration line in (a conflict given back).
                    3 if !stories.is_empty() => {
                        let at = dice.roll(stories.len() as u64) as usize;
                        stories[at] = next(&repo, &[stories[at], tip]);
                    }
                    _ => line.push(next(&repo, &[tip])),
                }
            }
            let ours = repo.find_commit(*line.last().unwrap()).unwrap();
            for story in &stories {
                let theirs = repo.find_commit(*story).unwrap();
                let expected = repo.merge_base(ours.id(), theirs.id()).ok();
                assert_eq!(fork_point(&repo, &ours, &theirs), expected, "ours {} theirs {story}", ours.id());
                walked += usize::from(walked_fork(&ours, &theirs).is_some());
                asked += 1;
            }
        }
        assert!(walked * 4 >= asked, "the walk found {walked} of {asked} forks");
    }
}
