//! Tests of `clean_mark`: on hundreds of random edits of a clean tree, the paths it finds stage
//! the tree `git add -A` stages, and they are few (the stat of the files told what changed).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use git2::Repository;

use super::*;
use crate::testkit::Dice;

/// Runs the git command line in `root`, returning its output (it must succeed).
fn git(root: &Path, env: &[(&str, &Path)], args: &[&str]) -> String {
    let mut command = Command::new("git");
    command.current_dir(root).args(["-c", "user.name=t", "-c", "user.email=t@x"]).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes `text` to `rel` and commits it with the git command line.
fn commit_file(root: &Path, rel: &str, text: &str) {
    fs::write(root.join(rel), text).unwrap();
    git(root, &[], &["add", rel]);
    git(root, &[], &["commit", "-q", "-m", rel]);
}

/// Waits until the file system stamps a change later than everything done so far: its
/// timestamps are coarser than the clock, and changes within one tick look simultaneous.
fn next_tick(root: &Path) {
    let probe = root.join(".git/tick");
    fs::write(&probe, b"").unwrap();
    let first = fs::metadata(&probe).unwrap().modified().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::metadata(&probe).unwrap().modified().unwrap() <= first {
        assert!(Instant::now() < deadline, "the file system's clock does not move");
        fs::write(&probe, b"x").unwrap();
    }
}

/// The tracked files of the test project (besides `.gitignore` and the forced `logs/kept.log`).
fn tracked() -> Vec<String> {
    let mut files = vec!["README".to_string(), "tool.sh".to_string()];
    for dir in ["src", "src/deep", "docs", "tests/unit"] {
        for n in 0..6 {
            files.push(format!("{dir}/f{n}.txt"));
        }
    }
    files
}

/// A project with `tracked()` committed, `*.log` and `build/` ignored, an ignored `build/`
/// folder on disk and a forced `logs/kept.log`.
fn project() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &[], &["init", "-q"]);
    for file in tracked() {
        fs::create_dir_all(root.join(&file).parent().unwrap()).unwrap();
        fs::write(root.join(&file), format!("{file}\n")).unwrap();
    }
    fs::write(root.join(".gitignore"), "*.log\nbuild/\n").unwrap();
    fs::create_dir_all(root.join("build/out")).unwrap();
    fs::write(root.join("build/out/bin"), "built").unwrap();
    fs::create_dir_all(root.join("logs")).unwrap();
    fs::write(root.join("logs/kept.log"), "kept").unwrap();
    git(root, &[], &["add", "-A"]);
    git(root, &[], &["add", "-f", "logs/kept.log"]);
    git(root, &[], &["commit", "-q", "-m", "initial"]);
    let repo = Repository::open(root).unwrap();
    (dir, repo)
}

/// One random edit of the kind a worker makes; returns how many paths it touched.
fn edit(root: &Path, dice: &mut Dice, round: u64) -> usize {
    let files = tracked();
    let file = &files[dice.roll(files.len() as u64) as usize];
    let path = root.join(file);
    let exists = path.exists();
    match dice.roll(16) {
        0 if exists => fs::write(&path, format!("changed in round {round} {}\n", dice.roll(1000))).unwrap(),
        // The same size, other bytes: only the stat tells.
        1 if exists => {
            let mut bytes = fs::read(&path).unwrap();
            bytes[0] ^= 0x20;
            fs::write(&path, bytes).unwrap();
        }
        2 if exists => fs::remove_file(&path).unwrap(),
        // The folder may be gone (an earlier edit of the round): then nothing is made.
        3 => drop(fs::write(path.with_file_name(format!("new{round}.txt")), "new\n")),
        4 => {
            let dir = root.join(format!("src/made{round}/inner"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("x.txt"), "x").unwrap();
            return 2;
        }
        5 => drop(fs::write(path.with_file_name("debug.log"), "ignored")),
        6 => fs::write(root.join(format!("build/out/{round}.o")), "ignored").unwrap(),
        7 if exists => fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap(),
        8 if exists => {
            fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink("README", &path).unwrap();
        }
        9 => {
            let new = format!("staged{round}.txt");
            fs::write(root.join(&new), "staged").unwrap();
            git(root, &[], &["add", &new]);
            if dice.roll(2) == 0 {
                fs::remove_file(root.join(&new)).unwrap();
            }
        }
        10 if exists => {
            git(root, &[], &["rm", "-q", "--cached", file]);
        }
        11 => {
            let _ = fs::remove_dir_all(root.join("src/deep"));
            return 6;
        }
        12 => fs::create_dir_all(root.join(format!("empty{round}/below"))).unwrap(),
        13 if exists => {
            fs::rename(&path, path.with_file_name(format!("moved{round}"))).unwrap();
            return 2;
        }
        // The worker commits what it did so far itself (HEAD and the index move).
        14 => {
            git(root, &[], &["add", "-A"]);
            git(root, &[], &["commit", "-q", "--allow-empty", "-m", &format!("[US-1] round {round}")]);
        }
        _ => {}
    }
    1
}

/// The tree `git add -A` would stage now, without touching the repository's index.
fn git_add_all_tree(root: &Path) -> String {
    let scratch = tempfile::NamedTempFile::new().unwrap();
    fs::copy(root.join(".git/index"), scratch.path()).unwrap();
    let env = [("GIT_INDEX_FILE", scratch.path())];
    git(root, &env, &["add", "-A"]);
    git(root, &env, &["write-tree"])
}

/// On hundreds of random edits of a clean project, the paths the mark finds stage the tree
/// `git add -A` does; the look goes by the mark (not the full status) in most rounds, and it
/// finds few paths, not every file.
#[test]
fn stages_what_git_add_all_stages() {
    let (dir, repo) = project();
    let root = dir.path();
    let mut dice = Dice(0x0c1e_a4ba_2b0f);
    let (mut rounds, mut marked) = (0, 0);
    for round in 0..150 {
        git(root, &[], &["reset", "-q", "--hard"]);
        git(root, &[], &["clean", "-fdq"]);
        // The index written one tick after the files: their stat in it is not "racily clean".
        next_tick(root);
        git(root, &[], &["update-index", "-q", "--really-refresh"]);
        let mark = CleanMark::take(&repo, root).expect("a clean mark");
        let mut touched = 0;
        for _ in 0..1 + dice.roll(3) {
            touched += edit(root, &mut dice, round);
        }
        let expected = git_add_all_tree(root);
        if let Some(paths) = found(&repo, root, &mark) {
            marked += 1;
            assert!(paths.len() <= touched + 1, "round {round}: {paths:?} for {touched} paths touched");
        }
        let ours = crate::git::stage_since(&repo, root, &mut Some(mark)).unwrap();
        assert_eq!(ours.to_string(), expected, "round {round}: {}", git(root, &[], &["status", "--short"]));
        rounds += 1;
    }
    assert!(marked * 10 >= rounds * 7, "the mark told the paths in {marked} of {rounds} rounds");
}

/// A folder changed within the tick of the mark is read each time: a file made there right
/// after the mark is found although the folder's stamp may not have moved.
#[test]
fn a_folder_as_new_as_the_mark_is_always_read() {
    let (dir, repo) = project();
    let root = dir.path();
    commit_file(root, "src/fresh.txt", "fresh");
    let mark = CleanMark::take(&repo, root).expect("a clean mark");
    fs::write(root.join("src/second.txt"), "second").unwrap();
    let paths = found(&repo, root, &mark).unwrap();
    assert!(paths.contains(&std::path::PathBuf::from("src/second.txt")), "{paths:?}");
}

/// What the mark finds in `root` now.
fn found(repo: &Repository, root: &Path, mark: &CleanMark) -> Option<Vec<std::path::PathBuf>> {
    let mut index = repo.index().unwrap();
    index.read(true).unwrap();
    let head = repo.head().unwrap().peel_to_tree().unwrap();
    mark.changes(repo, root, &mut index, Some(&head)).map(|(paths, _)| paths)
}

/// A changed .gitignore, a nested repository and a tracked file turned folder are beyond the
/// mark: the full status decides.
#[test]
fn what_the_mark_cannot_judge_goes_to_the_full_status() {
    let (dir, repo) = project();
    let root = dir.path();
    let mark = CleanMark::take(&repo, root).unwrap();
    fs::write(root.join(".gitignore"), "*.log\n").unwrap();
    assert!(found(&repo, root, &mark).is_none(), ".gitignore changed");
    git(root, &[], &["checkout", "-q", ".gitignore"]);

    let mark = CleanMark::take(&repo, root).unwrap();
    git(&root.join("src"), &[], &["init", "-q", "nested"]);
    assert!(found(&repo, root, &mark).is_none(), "a nested repository");
    fs::remove_dir_all(root.join("src/nested")).unwrap();

    let mark = CleanMark::take(&repo, root).unwrap();
    fs::remove_file(root.join("docs/f0.txt")).unwrap();
    fs::create_dir(root.join("docs/f0.txt")).unwrap();
    fs::write(root.join("docs/f0.txt/inside"), "inside").unwrap();
    assert!(found(&repo, root, &mark).is_none(), "a file turned folder");
}

/// Where a `.gitattributes` converts line endings, a file is staged through git's filters (its
/// blob is not its bytes), as `git add -A` stages it.
#[test]
fn files_are_staged_through_the_filters_attributes_name() {
    let (dir, repo) = project();
    let root = dir.path();
    commit_file(root, ".gitattributes", "*.txt text eol=lf\n");
    let mark = CleanMark::take(&repo, root).unwrap();
    fs::write(root.join("src/f0.txt"), "one\r\ntwo\r\n").unwrap();
    fs::write(root.join("src/crlf.txt"), "new\r\n").unwrap();
    let expected = git_add_all_tree(root);
    assert!(found(&repo, root, &mark).is_some(), "the mark tells the paths");
    let ours = crate::git::stage_since(&repo, root, &mut Some(mark)).unwrap();
    assert_eq!(ours.to_string(), expected);
}

/// The mark carried from story to story as a slot carries it: each look's mark, the stage
/// committed, the worktree moved to another commit, the mark carried; files a straggling
/// process writes between a story's look and the move are found by the next story's look.
#[test]
fn a_carried_mark_finds_what_was_written_after_the_last_look() {
    let (dir, repo) = project();
    let root = dir.path();
    let mut dice = Dice(0x57_0a_11);
    let mut mark = CleanMark::take(&repo, root);
    let mut commits = vec![repo.head().unwrap().target().unwrap()];
    let (mut rounds, mut marked) = (0, 0);
    for round in 0..120 {
        for _ in 0..1 + dice.roll(3) {
            edit(root, &mut dice, round);
        }
        let expected = git_add_all_tree(root);
        marked += usize::from(mark.is_some());
        let ours = crate::git::stage_since(&repo, root, &mut mark).unwrap();
        assert_eq!(ours.to_string(), expected, "round {round}");
        let sig = git2::Signature::now("t", "t@x").unwrap();
        let tree = repo.find_tree(ours).unwrap();
        let parent = repo.head().unwrap().peel_to_commit().unwrap();
        commits.push(repo.commit(Some("HEAD"), &sig, &sig, "story", &tree, &[&parent]).unwrap());
        // A straggler writes after the look, before the slot moves on.
        if dice.roll(3) == 0 {
            fs::write(root.join(format!("docs/straggler{round}.txt")), "late").unwrap();
        }
        let to = commits[dice.roll(commits.len() as u64) as usize].to_string();
        git(root, &[], &["checkout", "-q", "--detach", &to]);
        mark = match mark {
            Some(mark) => Some(mark.moved(&repo)),
            None => CleanMark::take(&repo, root),
        };
        rounds += 1;
    }
    assert!(marked * 10 >= rounds * 7, "the mark told the paths in {marked} of {rounds} rounds");
}

/// A FIFO left where a tracked file was is never read (the read would block until someone
/// writes to it): the stage ends, whatever it makes of it.
#[test]
fn a_fifo_in_a_files_place_does_not_block_the_stage() {
    let (dir, repo) = project();
    let root = dir.path().to_path_buf();
    let mark = CleanMark::take(&repo, &root).unwrap();
    fs::remove_file(root.join("docs/f1.txt")).unwrap();
    nix::unistd::mkfifo(&root.join("docs/f1.txt"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let repo = Repository::open(&root).unwrap();
        let _ = crate::git::stage_since(&repo, &root, &mut Some(mark));
        let _ = done.send(());
    });
    assert!(ended.recv_timeout(Duration::from_secs(30)).is_ok(), "the stage blocked on the FIFO");
}
