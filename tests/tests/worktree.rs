//! Story workspaces (`"workspace": "worktree"`, the default): each running story in a git
//! worktree of its own, merged back one story at a time. Results are read with the git command
//! line, so the check does not share sticler's git2 code.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sticler_proto::StoryState;
use sticler_tests::{bin, describe, poll, story, story_of, Daemon, ProjectBuilder};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Files changed by the integration branch's `[story]` commit.
fn files_of(dir: &Path, story: &str) -> Vec<String> {
    let subjects = git(dir, &["log", "--first-parent", "--format=%H %s"]);
    let commits: Vec<&str> = subjects
        .lines()
        .filter(|l| l.split_once(' ').is_some_and(|(_, s)| s.starts_with(&format!("[{story}]"))))
        .map(|l| &l[..40])
        .collect();
    assert_eq!(commits.len(), 1, "{story} must have exactly one commit on the integration branch:\n{subjects}");
    let names = git(dir, &["show", "--name-only", "--format=", commits[0]]);
    names.lines().map(str::to_string).collect()
}

/// A project whose worker runs `script` (sh) in its worktree, then the test worker.
fn project(script: &str, parallel: u32) -> ProjectBuilder {
    let p = ProjectBuilder::new();
    let worker = bin("sticler-test-worker").display().to_string();
    p.config(json!({"max_parallel_workers": parallel, "worker": {"command": ["/bin/sh", "-c", script, worker]}}));
    p
}

fn run(daemon: &Daemon, p: &ProjectBuilder) {
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
}

fn assert_no_leftovers(daemon: &Daemon, p: &ProjectBuilder) {
    let worktrees = git(p.path(), &["worktree", "list", "--porcelain"]);
    assert_eq!(worktrees.matches("worktree ").count(), 1, "only the project folder:\n{worktrees}");
    assert_eq!(git(p.path(), &["branch", "--list", "sticler/*"]), "", "no story branch left");
    let dir = daemon.state_dir.join("worktrees");
    let left: Vec<_> = walkdir(&dir);
    assert!(left.is_empty(), "worktrees left under the state dir: {left:?}");
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walkdir(&e.path()) } else { vec![e.path()] }).collect()
}

#[test]
fn parallel_stories_each_get_one_commit_holding_only_their_own_files() {
    let daemon = Daemon::start();
    // Each worker records where it runs: its cwd, the project dir and the main dir it is given.
    let script = "pwd > \"where-$STICLER_STORY_ID\"; echo \"$STICLER_PROJECT_DIR|$STICLER_MAIN_DIR\" >> \"where-$STICLER_STORY_ID\"; exec \"$0\"";
    let p = project(script, 4);
    let stories: Vec<_> = (1..=4)
        .map(|i| {
            let id = format!("US-P1-{i:03}");
            story(&id, &[]).criteria(2).script(json!({"sleep_ms": 100, "files": [format!("src/{id}.txt")]}))
        })
        .collect();
    p.phase(1, "decomposed", &stories);
    run(&daemon, &p);
    for i in 1..=4 {
        let id = format!("US-P1-{i:03}");
        let mut files = files_of(p.path(), &id);
        files.sort();
        let own = [format!("phases/phase_1/stories/{id}/status.json"), format!("src/{id}.txt"), format!("where-{id}")];
        assert_eq!(files, own, "{id}'s commit holds its own files only");
        let recorded = p.status_json(&id)["commit_hash"].as_str().unwrap().to_string();
        let subject = git(p.path(), &["log", "-1", "--format=%s", &recorded]);
        assert!(subject.starts_with(&format!("[{id}]")), "commit_hash names the story's merge: {subject}");
        let place = p.read(&format!("where-{id}"));
        let (cwd, dirs) = place.trim().split_once('\n').unwrap();
        let (project_dir, main_dir) = dirs.split_once('|').unwrap();
        assert_eq!(cwd, project_dir, "the worker runs in its worktree, which is its project dir");
        assert!(cwd.starts_with(&daemon.state_dir.display().to_string()), "outside the project: {cwd}");
        assert_eq!(main_dir, p.path().display().to_string(), "STICLER_MAIN_DIR names the project folder");
    }
    assert_eq!(git(p.path(), &["status", "--porcelain"]), "", "the project folder is clean after the phase");
    assert_no_leftovers(&daemon, &p);
}

#[test]
fn two_stories_editing_different_regions_of_one_file_merge_cleanly() {
    let daemon = Daemon::start();
    let script = "case \"$STICLER_STORY_ID\" in US-P1-001) sed -i '2s/.*/first story/' shared.txt;; \
                  US-P1-002) sed -i '19s/.*/second story/' shared.txt;; esac; exec \"$0\"";
    let p = project(script, 2);
    let lines: Vec<String> = (1..=20).map(|i| format!("line {i}")).collect();
    p.write("shared.txt", &(lines.join("\n") + "\n"));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    run(&daemon, &p);
    let text = p.read("shared.txt");
    assert!(text.contains("first story") && text.contains("second story"), "{text}");
    assert_eq!(text.lines().count(), 20);
    assert_no_leftovers(&daemon, &p);
}

#[test]
fn a_conflict_goes_back_to_the_agent_who_resolves_it_and_both_intentions_land() {
    let daemon = Daemon::start();
    // Both stories rewrite line 1. The one that merges second gets the conflict back; its next
    // iteration resolves it with both intentions and commits, as an agent would.
    let script = "if [ -n \"$STICLER_MERGE_CONFLICTS\" ]; then \
                    echo \"$STICLER_MERGE_CONFLICTS\" > \"conflicts-$STICLER_STORY_ID\"; \
                    printf 'US-P1-001 was here\\nUS-P1-002 was here\\n' > shared.txt; \
                    git add -A && git -c user.name=w -c user.email=w@x commit -qm resolved; \
                  else sed -i \"1s/.*/$STICLER_STORY_ID was here/\" shared.txt; sleep 0.2; fi; exec \"$0\"";
    let p = project(script, 2);
    p.write("shared.txt", "nobody\n");
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    run(&daemon, &p);
    assert_eq!(p.read("shared.txt"), "US-P1-001 was here\nUS-P1-002 was here\n");
    let told: Vec<String> = ["US-P1-001", "US-P1-002"]
        .iter()
        .filter_map(|id| std::fs::read_to_string(p.path().join(format!("conflicts-{id}"))).ok())
        .collect();
    assert_eq!(told, ["shared.txt\n"], "exactly one story was given the conflict, naming the file");
    let history = git(p.path(), &["log", "-p", "--first-parent"]);
    assert!(!history.contains("<<<<<<<") && !history.contains(">>>>>>>"), "no marker ever reaches the branch");
    assert_no_leftovers(&daemon, &p);
}

#[test]
fn a_dependent_starts_from_its_dependencies_merged_work() {
    let daemon = Daemon::start();
    let script =
        "if [ \"$STICLER_STORY_ID\" = US-P1-002 ]; then cat src/US-P1-001.txt > seen-by-002 || exit 7; fi; exec \"$0\"";
    let p = project(script, 2);
    p.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &[]).script(json!({"files": ["src/US-P1-001.txt"]})), story("US-P1-002", &["US-P1-001"])],
    );
    run(&daemon, &p);
    assert!(!p.read("seen-by-002").is_empty(), "the dependent's worktree held its dependency's file");
}

#[test]
fn a_worker_that_commits_itself_in_its_worktree_gets_one_commit() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"auto_commit": false}));
    let script = json!({"commit": true, "files": ["src/own.txt"]});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(2).script(script)]);
    run(&daemon, &p);
    let files = files_of(p.path(), "US-P1-001");
    assert!(files.contains(&"src/own.txt".to_string()), "{files:?}");
    assert_no_leftovers(&daemon, &p);
}

/// A worker's `git commit` would start `git gc --auto` detached, out of its process group, whose
/// `reflog expire --all` locks the HEAD of every worktree, the ones sticler is moving included:
/// the project asks for gc at every commit, yet the workers' git runs none, and git settings the
/// config gives the workers stay theirs.
#[test]
fn a_workers_git_starts_no_automatic_gc_and_keeps_the_configured_settings() {
    let daemon = Daemon::start();
    let seen = tempfile::tempdir().unwrap();
    let p = ProjectBuilder::new();
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["config", "gc.auto", "1"]);
    git(p.path(), &["config", "maintenance.auto", "true"]);
    let script = "printf '%s %s %s\\n' \"$(git config gc.auto)\" \"$(git config maintenance.auto)\" \
                  \"$(git config sticler.test)\" > \"$SEEN/$STICLER_STORY_ID\"; exec \"$0\"";
    let worker = bin("sticler-test-worker").display().to_string();
    let env = json!({"SEEN": seen.path(), "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "sticler.test",
                     "GIT_CONFIG_VALUE_0": "kept"});
    p.config(json!({"max_parallel_workers": 2, "worker": {"command": ["/bin/sh", "-c", script, worker], "env": env}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    run(&daemon, &p);
    for id in ["US-P1-001", "US-P1-002"] {
        let line = std::fs::read_to_string(seen.path().join(id)).unwrap();
        assert_eq!(line, "0 false kept\n", "{id}'s worker saw gc.auto, maintenance.auto, sticler.test");
    }
}

/// A git killed mid-write (a worker's `git gc` swept with its iteration) leaves its worktree's
/// HEAD.lock behind, held by no one: sticler waits for a holder, then clears it and commits,
/// merges and moves the slot on, where it used to fail the story on it at every try.
#[test]
fn a_head_lock_a_killed_git_left_in_the_worktree_does_not_fail_the_story() {
    let daemon = Daemon::start();
    let script = "[ \"$STICLER_STORY_ID\" = US-P1-001 ] && : > \"$(git rev-parse --git-dir)/HEAD.lock\"; exec \"$0\"";
    let p = project(script, 1);
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &["US-P1-001"])]);
    run(&daemon, &p);
    assert_eq!(files_of(p.path(), "US-P1-001").len(), 1, "its status.json");
    assert_no_leftovers(&daemon, &p);
}

#[test]
fn a_users_uncommitted_edit_is_never_overwritten_the_merge_waits_and_says_why() {
    let daemon = Daemon::start();
    // The story edits notes.txt once the user has edited it too (the flag file says so).
    let script = "while [ ! -e \"$STICLER_MAIN_DIR/go\" ]; do sleep 0.05; done; echo story >> notes.txt; exec \"$0\"";
    let p = project(script, 1);
    p.write("notes.txt", "base\n");
    p.write("other.txt", "base\n");
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    poll(Duration::from_secs(20), "the story running", || {
        (story_of(&daemon.phase_status(p.path(), 1), "US-P1-001").state == StoryState::Running).then_some(())
    });
    p.write("notes.txt", "the user's own words\n");
    p.write("other.txt", "the user's other words\n");
    p.write("go", "");
    let waiting = poll(Duration::from_secs(20), "the merge waiting", || {
        let phase = daemon.phase_status(p.path(), 1);
        let s = story_of(&phase, "US-P1-001").clone();
        (s.state == StoryState::Merging).then_some(s)
    });
    let why = waiting.waiting.unwrap_or_default();
    assert!(why.contains("notes.txt") && !why.contains("other.txt"), "{why}");
    let human = daemon.ctl(&["-C", &p.path_str(), "status", "1", "US-P1-001"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("merging") && text.contains("waiting:") && text.contains("notes.txt"), "{text}");
    assert_eq!(p.read("notes.txt"), "the user's own words\n", "the user's edit is intact");
    // The user takes their edit back: the merge lands, the other edit is left alone.
    git(p.path(), &["checkout", "--", "notes.txt"]);
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    assert_eq!(p.read("notes.txt"), "base\nstory\n");
    assert_eq!(p.read("other.txt"), "the user's other words\n", "an edit the merge does not touch stays");
}

#[test]
fn shared_mode_keeps_sticlers_temporary_files_out_of_commits() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"files": ["a.txt"]}))]);
    run(&daemon, &p);
    let exclude = std::fs::read_to_string(p.path().join(".git/info/exclude")).unwrap();
    assert!(exclude.lines().any(|l| l == ".*.sticler-*.tmp"), "{exclude}");
    // A temp file left at the moment of a `git add -A` is ignored by git.
    p.write("phases/phase_1/stories/US-P1-001/.status.json.sticler-1-1.tmp", "{}");
    assert_eq!(git(p.path(), &["status", "--porcelain", "--ignored=no"]), "");
}

#[test]
fn a_failed_storys_worktree_is_kept_for_inspection_until_clean() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "self_fail", "files": ["half.txt"]}))]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(4), "the phase fails: {}", describe(&out));
    let phase = daemon.phase_status(p.path(), 1);
    let kept = story_of(&phase, "US-P1-001").worktree.clone().expect("status shows the kept worktree");
    let human = daemon.ctl(&["-C", &p.path_str(), "status", "1", "US-P1-001"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains(&format!("worktree:     {kept}")), "{}", describe(&human));
    assert!(Path::new(&kept).join("phases/phase_1/stories/US-P1-001/status.json").is_file(), "{kept}");
    assert_eq!(git(p.path(), &["worktree", "list", "--porcelain"]).matches("worktree ").count(), 2);
    let out = daemon.ctl(&["-C", &p.path_str(), "clean", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 1 worktree(s) and 1 story branch(es)"),
        "{}",
        describe(&out)
    );
    assert!(!Path::new(&kept).exists(), "the worktree is gone");
    assert_no_leftovers(&daemon, &p);
}

/// What a worker left running in a session of its own writes as it is ended is that story's
/// work: committed with it, never with the next story to use the same worktree.
#[test]
fn what_a_detached_process_writes_as_it_ends_goes_with_its_own_story() {
    let daemon = Daemon::start();
    let marks = tempfile::tempdir().unwrap();
    let dir = marks.path().display();
    // US-P1-001 leaves a process that writes a file half a second after its SIGTERM.
    let script = format!(
        "if [ \"$STICLER_STORY_ID\" = US-P1-001 ]; then \
           setsid sh -c 'trap \"sleep 0.5; echo late > left-behind.txt; exit 0\" TERM; \
                         echo $$ > {dir}/escaped; while :; do sleep 0.05; done' & \
           while [ ! -s {dir}/escaped ]; do sleep 0.05; done; \
         fi; exec \"$0\""
    );
    let p = project(&script, 1);
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &["US-P1-001"])]);
    run(&daemon, &p);
    let subjects = git(p.path(), &["log", "--format=%s", "--", "left-behind.txt"]);
    let stories: Vec<&str> = subjects.lines().map(|s| s.split(' ').next().unwrap_or("")).collect();
    assert_eq!(stories, ["[US-P1-001]"], "{subjects}");
    assert_no_leftovers(&daemon, &p);
}
