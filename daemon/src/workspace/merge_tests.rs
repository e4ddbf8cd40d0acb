//! Tests of `merge`: plans, landings and conflicts on real repositories.

use std::fs;

use super::*;
use crate::testkit::repo;

fn commit_all(repo: &Repository, message: &str) -> Oid {
    let root = repo.workdir().unwrap().to_path_buf();
    let tree = repo.find_tree(git::stage_all(repo, &root).unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@x").unwrap();
    let parent = git::head_commit(repo);
    let parents: Vec<&Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).unwrap()
}

/// A story branch made from HEAD with `files` changed, without touching the working tree.
fn story_branch(repo: &Repository, files: &[(&str, &str)]) -> Oid {
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    let mut index = git2::Index::new().unwrap();
    index.read_tree(&head.tree().unwrap()).unwrap();
    for (path, text) in files {
        let blob = repo.blob(text.as_bytes()).unwrap();
        let entry = git::entry_without_stat(path.as_bytes().to_vec(), blob, 0o100644);
        index.add(&entry).unwrap();
    }
    let tree = repo.find_tree(index.write_tree_to(repo).unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@x").unwrap();
    repo.commit(None, &sig, &sig, "story work", &tree, &[&head]).unwrap()
}

fn doc() -> JsonDoc {
    let raw = br#"{"title": "A story", "criteria": []}"#.to_vec();
    let map = crate::project::parse_object(Path::new("status.json"), &raw).unwrap();
    JsonDoc::new("status.json".into(), raw, map)
}

const OWN: &str = "phases/phase_1/stories/US-P1-001";

#[test]
fn a_merge_holds_the_storys_own_changes_only_and_lands_once() {
    let (dir, repo) = repo(&[("src/a.txt", "a\n"), ("phases/phase_1/stories/US-P1-002/status.json", "{}\n")]);
    let head = story_branch(
        &repo,
        &[("src/a.txt", "a by the story\n"), ("phases/phase_1/stories/US-P1-002/status.json", "{\"x\": 1}\n")],
    );
    let Plan::Merge { branch_ref, base, commit } = plan(&repo, "US-P1-001", head, &doc(), Path::new(OWN)).unwrap()
    else {
        panic!("expected a merge")
    };
    let files: Vec<String> = changes(
        &repo,
        &repo.find_commit(base).unwrap().tree().unwrap(),
        &repo.find_commit(commit).unwrap().tree().unwrap(),
    )
    .unwrap()
    .into_iter()
    .map(|c| c.path.display().to_string())
    .collect();
    assert_eq!(files, ["src/a.txt"], "another story's status.json stays as the integration branch has it");
    land(&repo, &branch_ref, (base, commit), Path::new(OWN), 0o022).unwrap();
    assert_eq!(fs::read_to_string(dir.path().join("src/a.txt")).unwrap(), "a by the story\n");
    // The index holds the landed file as it is on disk: git sees nothing to commit.
    assert_eq!(repo.status_file(Path::new("src/a.txt")).unwrap(), git2::Status::CURRENT);
    // Landing again (a restart after a crash) changes nothing, and leaves a later edit alone.
    fs::write(dir.path().join("src/a.txt"), "the user's edit since\n").unwrap();
    land(&repo, &branch_ref, (base, commit), Path::new(OWN), 0o022).unwrap();
    assert_eq!(fs::read_to_string(dir.path().join("src/a.txt")).unwrap(), "the user's edit since\n");
    assert_eq!(landed(&repo, &branch_ref, base, commit), Some(true));
}

#[test]
fn a_merge_landed_since_the_branch_forked_is_found_and_one_from_before_it_is_not() {
    let (_dir, repo) = repo(&[("src/a.txt", "a\n")]);
    let work = story_branch(&repo, &[("src/a.txt", "a by the story\n")]);
    repo.branch("sticler/phase-1/US-P1-001", &repo.find_commit(work).unwrap(), false).unwrap();
    let branch = "sticler/phase-1/US-P1-001";
    assert_eq!(landed_since_fork(&repo, branch, "US-P1-001").unwrap(), None);
    let Plan::Merge { branch_ref, base, commit } = plan(&repo, "US-P1-001", work, &doc(), Path::new(OWN)).unwrap()
    else {
        panic!("expected a merge")
    };
    land(&repo, &branch_ref, (base, commit), Path::new(OWN), 0o022).unwrap();
    assert_eq!(landed_since_fork(&repo, branch, "US-P1-001").unwrap(), Some(commit));
    // The story run again after its merge: a branch cut after it knows nothing landed yet.
    let again = story_branch(&repo, &[("src/a.txt", "again\n")]);
    repo.branch(branch, &repo.find_commit(again).unwrap(), true).unwrap();
    assert_eq!(landed_since_fork(&repo, branch, "US-P1-001").unwrap(), None);
}

#[test]
fn a_users_uncommitted_edit_makes_the_merge_wait() {
    let (dir, repo) = repo(&[("src/a.txt", "a\n"), ("src/b.txt", "b\n")]);
    let head = story_branch(&repo, &[("src/a.txt", "a by the story\n")]);
    fs::write(dir.path().join("src/a.txt"), "the user's words\n").unwrap();
    fs::write(dir.path().join("src/b.txt"), "not touched by the merge\n").unwrap();
    match plan(&repo, "US-P1-001", head, &doc(), Path::new(OWN)).unwrap() {
        Plan::Waits(why) => assert!(why.contains("src/a.txt") && !why.contains("src/b.txt"), "{why}"),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn conflicting_lines_and_leftover_markers_are_conflicts() {
    let (_dir, repo) = repo(&[("src/a.txt", "one\n")]);
    let head = story_branch(&repo, &[("src/a.txt", "story\n")]);
    // The integration branch changes the same line meanwhile.
    fs::write(repo.workdir().unwrap().join("src/a.txt"), "integration\n").unwrap();
    commit_all(&repo, "integration");
    match plan(&repo, "US-P1-001", head, &doc(), Path::new(OWN)).unwrap() {
        Plan::Conflict(files) => assert_eq!(files, ["src/a.txt"]),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let marked = story_branch(&repo, &[("src/b.txt", "<<<<<<< HEAD\nx\n=======\ny\n>>>>>>> other\n")]);
    match plan(&repo, "US-P1-001", marked, &doc(), Path::new(OWN)).unwrap() {
        Plan::Conflict(files) => assert_eq!(files, ["src/b.txt"]),
        other => panic!("expected a conflict for the markers, got {other:?}"),
    }
}

/// Stories of a phase mostly change different files: their merge is made from the two sides'
/// changes alone, and is the very tree the 3-way merge of every file gives.
#[test]
fn disjoint_changes_merge_to_the_three_way_merges_tree() {
    let own_status = "phases/phase_1/stories/US-P1-001/status.json";
    let other_status = "phases/phase_1/stories/US-P1-002/status.json";
    let (dir, repo) = repo(&[("src/a.txt", "a\n"), ("src/b.txt", "b\n"), (own_status, "{}\n"), (other_status, "{}\n")]);
    let work = story_branch(
        &repo,
        &[
            ("src/a.txt", "a by the story\n"),
            ("docs/new.md", "new\n"),
            (own_status, "{\"done\": true}\n"),
            (other_status, "{\"not\": \"the story's\"}\n"),
        ],
    );
    // Meanwhile the integration branch: another file, a new one, sticler's note in the story's
    // own status.json (the story's side wins there).
    fs::write(dir.path().join("src/b.txt"), "b by another story\n").unwrap();
    fs::create_dir_all(dir.path().join("lib")).unwrap();
    fs::write(dir.path().join("lib/c.txt"), "c\n").unwrap();
    fs::write(dir.path().join(own_status), "{\"note\": 1}\n").unwrap();
    commit_all(&repo, "integration");
    let ours = repo.head().unwrap().peel_to_commit().unwrap();
    let theirs = repo.find_commit(work).unwrap();
    let fast = disjoint_merge(&repo, &ours, &theirs, Path::new(OWN)).unwrap().expect("disjoint changes");
    let slow = three_way_merge(&repo, &ours, &theirs, Path::new(OWN)).unwrap().unwrap();
    assert_eq!(fast, slow);
    let tree = repo.find_tree(fast).unwrap();
    let text = |path: &str| {
        let blob = tree.get_path(Path::new(path)).unwrap().to_object(&repo).unwrap().peel_to_blob().unwrap();
        String::from_utf8_lossy(blob.content()).into_owned()
    };
    assert_eq!(text("src/a.txt"), "a by the story\n");
    assert_eq!(text("src/b.txt"), "b by another story\n");
    assert_eq!(text(own_status), "{\"done\": true}\n");
    assert_eq!(text(other_status), "{}\n");
}

/// Changes of one path on both sides, or a file on one side where the other made a folder of
/// that name, are for the 3-way merge: it merges different lines of one file.
#[test]
fn changes_to_one_path_go_to_the_three_way_merge() {
    let (dir, repo) = repo(&[("src/a.txt", "one\ntwo\nthree\n"), ("keep.txt", "k\n")]);
    let same_file = story_branch(&repo, &[("src/a.txt", "one\ntwo\nthree by the story\n")]);
    let under_a_file = story_branch(&repo, &[("y/inside.txt", "in a folder\n")]);
    fs::write(dir.path().join("src/a.txt"), "one by another story\ntwo\nthree\n").unwrap();
    fs::write(dir.path().join("y"), "a file\n").unwrap();
    commit_all(&repo, "integration");
    let ours = repo.head().unwrap().peel_to_commit().unwrap();
    let same_file = repo.find_commit(same_file).unwrap();
    assert_eq!(disjoint_merge(&repo, &ours, &same_file, Path::new(OWN)).unwrap(), None);
    let merged = three_way_merge(&repo, &ours, &same_file, Path::new(OWN)).unwrap().unwrap();
    let blob = repo.find_tree(merged).unwrap().get_path(Path::new("src/a.txt")).unwrap().id();
    assert_eq!(repo.find_blob(blob).unwrap().content(), b"one by another story\ntwo\nthree by the story\n");
    let under_a_file = repo.find_commit(under_a_file).unwrap();
    assert_eq!(disjoint_merge(&repo, &ours, &under_a_file, Path::new(OWN)).unwrap(), None);
}

/// A story branch made from HEAD with `entries` (path, content, mode) written.
fn story_branch_with_modes(repo: &Repository, entries: &[(&str, &str, git2::FileMode)]) -> Oid {
    let head = repo.head().unwrap().peel_to_commit().unwrap();
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, text, mode) in entries {
        update.upsert(*path, repo.blob(text.as_bytes()).unwrap(), *mode);
    }
    let tree = repo.find_tree(update.create_updated(repo, &head.tree().unwrap()).unwrap()).unwrap();
    let sig = git2::Signature::now("t", "t@x").unwrap();
    repo.commit(None, &sig, &sig, "story work", &tree, &[&head]).unwrap()
}

/// Plans and lands a story whose branch sets `entries` (path, content, mode); it must merge.
fn land_story(repo: &Repository, entries: &[(&str, &str, git2::FileMode)]) {
    let head = story_branch_with_modes(repo, entries);
    match plan(repo, "US-P1-001", head, &doc(), Path::new(OWN)).unwrap() {
        Plan::Merge { branch_ref, base, commit } => {
            land(repo, &branch_ref, (base, commit), Path::new(OWN), 0o022).unwrap()
        }
        other => panic!("expected a merge of {entries:?}, got {other:?}"),
    }
}

/// A story's symlink lands in the project folder as a symlink (never a file holding its
/// target), git sees it unchanged, and a later story's change to it is no user's edit.
#[test]
fn a_symlink_lands_as_a_symlink_and_an_executable_keeps_its_bit() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, repo) = repo(&[("a.txt", "a\n"), ("b.txt", "b\n")]);
    let link = git2::FileMode::Link;
    land_story(&repo, &[("link", "a.txt", link), ("run.sh", "#!/bin/sh\n", git2::FileMode::BlobExecutable)]);
    let at = dir.path().join("link");
    assert_eq!(fs::read_link(&at).unwrap(), Path::new("a.txt"));
    assert_eq!(repo.status_file(Path::new("link")).unwrap(), git2::Status::CURRENT);
    let bits = fs::metadata(dir.path().join("run.sh")).unwrap().permissions().mode();
    assert_eq!(bits & 0o777, 0o755);
    assert_eq!(repo.status_file(Path::new("run.sh")).unwrap(), git2::Status::CURRENT);

    land_story(&repo, &[("link", "b.txt", link), ("run.sh", "#!/bin/sh\n", git2::FileMode::Blob)]);
    assert_eq!(fs::read_link(&at).unwrap(), Path::new("b.txt"));
    assert_eq!(repo.status_file(Path::new("link")).unwrap(), git2::Status::CURRENT);
    let bits = fs::metadata(dir.path().join("run.sh")).unwrap().permissions().mode();
    assert_eq!(bits & 0o111, 0, "no longer executable");
    assert_eq!(repo.status_file(Path::new("run.sh")).unwrap(), git2::Status::CURRENT);
}

#[test]
fn files_land_through_the_projects_line_ending_attributes() {
    // `eol=crlf`: git's checkout writes the file with CRLF line ends, its blob holds LF ones.
    let (dir, repo) = repo(&[(".gitattributes", "*.bat text eol=crlf\n"), ("run.bat", "one\n"), ("a.txt", "a\n")]);
    fs::write(dir.path().join("run.bat"), "one\r\n").unwrap();
    let mut index = repo.index().unwrap();
    index.add_path(Path::new("run.bat")).unwrap();
    index.write().unwrap();
    assert_eq!(repo.status_file(Path::new("run.bat")).unwrap(), git2::Status::CURRENT, "as git checked it out");
    let head = story_branch(&repo, &[("run.bat", "one\ntwo\n"), ("new.bat", "new\n"), ("a.txt", "a, b\n")]);
    // The file as git wrote it is not a user's edit: the merge goes ahead.
    let Plan::Merge { branch_ref, base, commit } = plan(&repo, "US-P1-001", head, &doc(), Path::new(OWN)).unwrap()
    else {
        panic!("expected a merge")
    };
    land(&repo, &branch_ref, (base, commit), Path::new(OWN), 0o022).unwrap();
    let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(
        (read("run.bat"), read("new.bat"), read("a.txt")),
        ("one\r\ntwo\r\n".into(), "new\r\n".into(), "a, b\n".into())
    );
    for name in ["run.bat", "new.bat", "a.txt"] {
        assert_eq!(repo.status_file(Path::new(name)).unwrap(), git2::Status::CURRENT, "{name}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.path().join("new.bat")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "a new file's mode follows the user's umask");
    // A user's edit of a filtered file still makes the next merge wait.
    fs::write(dir.path().join("run.bat"), "one\r\nthe user's\r\n").unwrap();
    let head = story_branch(&repo, &[("run.bat", "one\ntwo\nthree\n")]);
    match plan(&repo, "US-P1-001", head, &doc(), Path::new(OWN)).unwrap() {
        Plan::Waits(why) => assert!(why.contains("run.bat"), "{why}"),
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// A file the story turns into a symlink (and a symlink it turns into a file) is no user's
/// edit and lands as its new kind, whether or not the project's files go through filters.
#[test]
fn a_file_turned_symlink_lands_with_or_without_filters() {
    for attributes in [None, Some("* text=auto\n")] {
        let mut files = vec![("a.txt", "a\n"), ("b.txt", "b\n")];
        files.extend(attributes.map(|text| (".gitattributes", text)));
        let (dir, repo) = repo(&files);
        let link = git2::FileMode::Link;
        land_story(&repo, &[("a.txt", "b.txt", link)]);
        assert_eq!(fs::read_link(dir.path().join("a.txt")).unwrap(), Path::new("b.txt"), "{attributes:?}");
        assert_eq!(repo.status_file(Path::new("a.txt")).unwrap(), git2::Status::CURRENT, "{attributes:?}");
        land_story(&repo, &[("a.txt", "a again\n", git2::FileMode::Blob)]);
        let at = dir.path().join("a.txt");
        assert!(fs::symlink_metadata(&at).unwrap().is_file(), "{attributes:?}");
        assert_eq!(fs::read_to_string(&at).unwrap(), "a again\n");
        assert_eq!(repo.status_file(Path::new("a.txt")).unwrap(), git2::Status::CURRENT, "{attributes:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&at).unwrap().permissions().mode() & 0o777, 0o644, "{attributes:?}");
    }
}

/// A story that changes the attributes and a file they govern: the file lands under the new
/// attributes, as `git checkout` of the merge writes it.
#[test]
fn a_file_lands_under_the_attributes_its_own_merge_brings() {
    let (dir, repo) = repo(&[(".gitattributes", "*.bat -text\n"), ("a.txt", "a\n")]);
    let head = story_branch(&repo, &[(".gitattributes", "*.bat text eol=crlf\n"), ("new.bat", "x\ny\n")]);
    let Plan::Merge { branch_ref, base, commit } = plan(&repo, "US-P1-001", head, &doc(), Path::new(OWN)).unwrap()
    else {
        panic!("expected a merge")
    };
    land(&repo, &branch_ref, (base, commit), Path::new(OWN), 0o022).unwrap();
    assert_eq!(fs::read_to_string(dir.path().join("new.bat")).unwrap(), "x\r\ny\r\n");
    assert_eq!(repo.status_file(Path::new("new.bat")).unwrap(), git2::Status::CURRENT);
}
