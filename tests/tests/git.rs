//! Git: the repository is prepared, each story's commit is found or made, the phase commit and
//! the push. Results are read with the git command line, not git2, so the check is independent.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sticler_proto::StoryState;
use sticler_tests::{bin, describe, story, Daemon, ProjectBuilder};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn subjects(dir: &Path) -> Vec<String> {
    git(dir, &["log", "--format=%s"]).lines().map(str::to_string).collect()
}

fn run(daemon: &Daemon, p: &ProjectBuilder) -> std::process::Output {
    daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"])
}

fn commit_of(dir: &Path, story: &str) -> String {
    git(dir, &["log", "--format=%H", &format!("--grep=^\\[{story}\\]")]).trim().to_string()
}

/// A worker that does its work, then, once completed, commits itself; `record` also writes
/// the hash into status.json.
fn committing_worker(p: &ProjectBuilder, record: bool) {
    let record = if record {
        "h=$(git rev-parse HEAD) && sed -i \"s/\\\"commit_hash\\\": \\\"\\\"/\\\"commit_hash\\\": \\\"$h\\\"/\" \"$STICLER_STATUS_FILE\""
    } else {
        "true"
    };
    let script = format!(
        "\"$0\" || exit $?; if grep -q '\"status\": \"completed\"' \"$STICLER_STATUS_FILE\"; then git add -A && git -c user.name=w -c user.email=w@x commit -qm \"[$STICLER_STORY_ID] done by the worker\" && {record}; fi"
    );
    p.config(
        json!({"worker": {"command": ["/bin/sh", "-c", script, bin("sticler-test-worker").display().to_string()]}}),
    );
}

#[test]
fn a_fresh_folder_is_initialised_with_an_initial_commit() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    assert!(!p.path().join(".git").exists());
    assert_eq!(run(&daemon, &p).status.code(), Some(0));
    let list = subjects(p.path());
    assert_eq!(list.last().map(String::as_str), Some("Initial commit - project setup"));
    let root_files = git(
        p.path(),
        &["show", "--name-only", "--format=", git(p.path(), &["rev-list", "--max-parents=0", "HEAD"]).trim()],
    );
    assert!(root_files.contains("orchestrator.config.json"), "{root_files}");
    assert!(root_files.contains("phases/phase_1/stories/US-P1-001/spec.md"), "{root_files}");

    // A repository with no commits gets the same.
    let q = ProjectBuilder::new();
    q.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    git(q.path(), &["init", "-q"]);
    assert_eq!(run(&daemon, &q).status.code(), Some(0));
    assert_eq!(subjects(q.path()).last().map(String::as_str), Some("Initial commit - project setup"));
}

#[test]
fn a_worker_that_commits_itself_gets_no_extra_commit() {
    let daemon = Daemon::start();
    for record in [true, false] {
        let p = ProjectBuilder::shared();
        committing_worker(&p, record);
        p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(2)]);
        let out = run(&daemon, &p);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let list = subjects(p.path());
        assert_eq!(list.iter().filter(|s| s.starts_with("[US-P1-001]")).count(), 1, "{list:?}");
        assert!(list.contains(&"[US-P1-001] done by the worker".to_string()), "{list:?}");
        let hash = commit_of(p.path(), "US-P1-001");
        assert_eq!(p.status_json("US-P1-001")["commit_hash"], hash, "record={record}");
    }
}

#[test]
fn a_worker_that_forgets_gets_the_exact_auto_commit() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(2).script(json!({"files": ["src/a.txt"]}))]);
    p.write("unrelated.txt", "not part of the story\n");
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "base"]);
    p.write("unrelated.txt", "changed by someone else\n");
    assert_eq!(run(&daemon, &p).status.code(), Some(0));
    let hash = commit_of(p.path(), "US-P1-001");
    assert_eq!(p.status_json("US-P1-001")["commit_hash"], hash);
    let message = git(p.path(), &["log", "-1", "--format=%B", &hash]);
    let expected = "[US-P1-001] Story US-P1-001\n\n## What was implemented\n\
        - criterion 1: done in iteration 1 by sticler-test-worker\n\
        - criterion 2: done in iteration 2 by sticler-test-worker\n";
    assert!(message.starts_with(expected), "{message}");
    assert!(
        message.contains("\n## Files changed\n- M phases/phase_1/stories/US-P1-001/status.json\n- A src/a.txt\n"),
        "{message}"
    );
    assert!(message.contains("\n## Acceptance criteria met\n- [x] criterion 1\n- [x] criterion 2\n"), "{message}");
    // files_modified limits the commit to those files and the story folder.
    let files = git(p.path(), &["show", "--name-status", "--format=", &hash]);
    assert_eq!(files, "M\tphases/phase_1/stories/US-P1-001/status.json\nA\tsrc/a.txt\n");
    let author = git(p.path(), &["log", "-1", "--format=%an <%ae>", &hash]);
    let expected_author = Command::new("git").args(["config", "user.name"]).output().unwrap();
    if !expected_author.status.success() {
        assert_eq!(author.trim(), "sticler <sticler@localhost>");
    }
    // The short hash is in status, the full one in --json.
    let text = String::from_utf8(daemon.ctl(&["-C", &p.path_str(), "status", "1"]).stdout).unwrap();
    let row = text.lines().find(|l| l.trim_start().starts_with("US-P1-001")).unwrap();
    assert!(row.contains(&hash[..7]) && !row.contains(&hash[..9]), "{row}");
    assert_eq!(daemon.phase_status(p.path(), 1).stories[0].commit_hash, hash);
    assert!(daemon
        .phase_status(p.path(), 1)
        .summary
        .as_deref()
        .unwrap()
        .contains(&format!("US-P1-001 {}", &hash[..7])));
}

#[test]
fn a_bogus_commit_hash_fails_the_story() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let rel = "phases/phase_1/stories/US-P1-001/status.json";
    let mut status: Value = serde_json::from_str(&p.read(rel)).unwrap();
    status["commit_hash"] = json!("0123456789abcdef0123456789abcdef01234567");
    p.write(rel, &status.to_string());
    assert_eq!(run(&daemon, &p).status.code(), Some(4));
    let reasons = p.status_json("US-P1-001")["failed_reasons"].to_string();
    assert!(
        reasons.contains(
            "commit_hash \\\"0123456789abcdef0123456789abcdef01234567\\\" recorded for US-P1-001 does not exist"
        ),
        "{reasons}"
    );
    assert_eq!(subjects(p.path()).iter().filter(|s| s.starts_with("[US-P1-001]")).count(), 0);
    let summary = daemon.phase_status(p.path(), 1).summary.as_deref().unwrap().to_string();
    assert!(summary.contains("failed: US-P1-001") && !summary.contains("0123456"), "no commit listed: {summary}");
}

#[test]
fn auto_commit_off_without_a_commit_fails_the_story() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"auto_commit": false}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    assert_eq!(run(&daemon, &p).status.code(), Some(4));
    let reasons = p.status_json("US-P1-001")["failed_reasons"].to_string();
    assert!(
        reasons.contains("no commit whose subject starts with [US-P1-001]") && reasons.contains("auto_commit is off"),
        "{reasons}"
    );
}

#[test]
fn the_verify_gate_turns_a_claim_back_once_then_passes() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let verify = "if [ -f {story_dir}/.verified ]; then echo verify-ok; else touch {story_dir}/.verified; echo verify-says-no; exit 7; fi";
    p.config(json!({"verify": ["/bin/sh", "-c", verify]}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let out = run(&daemon, &p);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status = p.status_json("US-P1-001");
    assert_eq!(status["status"], "completed");
    let reasons = status["failed_reasons"].to_string();
    assert!(reasons.contains("verify command") && reasons.contains("exit code 7"), "{reasons}");
    assert!(!reasons.contains("{story_dir}") && reasons.contains("US-P1-001/.verified"), "as it ran: {reasons}");
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.stories[0].runs, 2, "the failed verify counted as an iteration");
    let first =
        String::from_utf8(daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001", "--iteration", "1"]).stdout).unwrap();
    assert!(first.contains("verify-says-no"), "verify output goes to the story's log: {first}");
    let second =
        String::from_utf8(daemon.ctl(&["-C", &p.path_str(), "logs", "US-P1-001", "--iteration", "2"]).stdout).unwrap();
    assert!(second.contains("verify-ok"), "{second}");
}

#[test]
fn the_phase_commit_lists_every_story() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &["US-P1-001"])]);
    assert_eq!(run(&daemon, &p).status.code(), Some(0));
    let message = git(p.path(), &["log", "-1", "--format=%B"]);
    assert!(
        message.starts_with("[Phase 1] Test phase 1 complete\n\n## Stories completed\n- US-P1-001: Story US-P1-001\n- US-P1-002: Story US-P1-002\n\n## Summary\n2/2 stories completed"),
        "{message}"
    );
    assert_eq!(git(p.path(), &["status", "--porcelain"]), "", "the phase commit leaves a clean tree");
}

fn with_origin(p: &ProjectBuilder, origin: &Path, reject: bool) -> String {
    git(origin.parent().unwrap(), &["init", "-q", "--bare", origin.to_str().unwrap()]);
    if reject {
        let hook = origin.join("hooks/pre-receive");
        std::fs::write(&hook, "#!/bin/sh\necho rejected by policy >&2\nexit 1\n").unwrap();
        Command::new("chmod").arg("755").arg(&hook).status().unwrap();
    }
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "base"]);
    git(p.path(), &["remote", "add", "origin", origin.to_str().unwrap()]);
    git(p.path(), &["rev-parse", "--abbrev-ref", "HEAD"]).trim().to_string()
}

#[test]
fn push_to_origin_and_a_rejected_push_still_completes() {
    let daemon = Daemon::start();
    let remotes = tempfile::tempdir().unwrap();
    let p = ProjectBuilder::new();
    p.config(json!({"push": true}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let branch = with_origin(&p, &remotes.path().join("ok.git"), false);
    assert_eq!(run(&daemon, &p).status.code(), Some(0));
    let pushed = git(&remotes.path().join("ok.git"), &["log", "--format=%s", &branch]);
    assert!(pushed.starts_with("[Phase 1] Test phase 1 complete\n[US-P1-001] Story US-P1-001\n"), "{pushed}");

    let q = ProjectBuilder::new();
    q.config(json!({"push": true}));
    q.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    with_origin(&q, &remotes.path().join("rejecting.git"), true);
    let out = run(&daemon, &q);
    assert_eq!(out.status.code(), Some(0), "a failed push never fails the phase: {}", describe(&out));
    let phase = daemon.phase_status(q.path(), 1);
    assert_eq!(phase.status, "completed");
    let summary = phase.summary.as_deref().unwrap();
    assert!(summary.contains("warning: git push origin") && summary.contains("failed"), "{summary}");
    assert!(subjects(q.path())[0].starts_with("[Phase 1]"), "the phase commit stays");
}

/// A push that hangs (the remote's hook never ends) is cut short by `kill`: the run ends at
/// once, completed with a warning, and the push's processes are gone.
#[test]
fn kill_cuts_a_hanging_push_short() {
    let daemon = Daemon::start();
    let remotes = tempfile::tempdir().unwrap();
    let p = ProjectBuilder::new();
    p.config(json!({"push": true}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let origin = remotes.path().join("slow.git");
    with_origin(&p, &origin, false);
    let marker = remotes.path().join("hook-pid");
    let hook = origin.join("hooks/pre-receive");
    std::fs::write(&hook, format!("#!/bin/sh\necho $$ > {}\nexec sleep 600\n", marker.display())).unwrap();
    Command::new("chmod").arg("755").arg(&hook).status().unwrap();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let hook_pid: i32 = sticler_tests::poll(Duration::from_secs(30), "the push reached the hook", || {
        std::fs::read_to_string(&marker).ok()?.trim().parse().ok()
    });
    assert!(daemon.ctl(&["-C", &p.path_str(), "kill", "1"]).status.success());
    let waited = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(waited.status.code(), Some(0), "the phase itself completed: {}", describe(&waited));
    let summary = daemon.phase_status(p.path(), 1).summary.as_deref().unwrap().to_string();
    assert!(summary.contains("was cut short"), "{summary}");
    sticler_tests::poll(Duration::from_secs(10), "the hook's process is gone", || {
        (!sticler_tests::process_alive(hook_pid)).then_some(())
    });
}

/// A `[story]` commit that was in the history when the run started is not this run's, even
/// when its time says otherwise (git keeps whole seconds: a run that ended in the second this
/// one started looks as new; here the old commit is dated in the future to make that sure).
#[test]
fn a_story_commit_from_before_the_run_is_not_taken_for_the_new_one() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    // The earlier run's story commit, then its phase commit, in one second (dated ahead).
    let commit = |subject: &str| {
        let out = Command::new("git")
            .arg("-C")
            .arg(p.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-q", "--allow-empty", "-m", subject])
            .env("GIT_AUTHOR_DATE", "3786912000 +0000")
            .env("GIT_COMMITTER_DATE", "3786912000 +0000")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    };
    commit("[US-P1-001] an earlier run's work");
    let old = git(p.path(), &["rev-parse", "HEAD"]).trim().to_string();
    commit("[Phase 1] the earlier run's end");
    assert_eq!(run(&daemon, &p).status.code(), Some(0));
    let recorded = p.status_json("US-P1-001")["commit_hash"].as_str().unwrap().to_string();
    assert_ne!(recorded, old, "the earlier commit was taken for this run's");
    let subjects = subjects(p.path());
    assert!(
        subjects[1].starts_with("[US-P1-001]") && subjects[3] == "[US-P1-001] an earlier run's work",
        "{subjects:?}"
    );
    assert_eq!(git(p.path(), &["rev-parse", "HEAD~1"]).trim(), recorded, "the story's new commit is recorded");
}

#[test]
fn two_stories_completing_together_make_two_clean_commits() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": 2}));
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).script(json!({"files": ["one.txt"], "sleep_ms": 100})),
            story("US-P1-002", &[]).script(json!({"files": ["two.txt"], "sleep_ms": 100})),
        ],
    );
    assert_eq!(run(&daemon, &p).status.code(), Some(0));
    for (id, file) in [("US-P1-001", "one.txt"), ("US-P1-002", "two.txt")] {
        let hash = commit_of(p.path(), id);
        let files = git(p.path(), &["show", "--name-only", "--format=", &hash]);
        let mut files: Vec<&str> = files.lines().collect();
        files.sort_unstable();
        let status = format!("phases/phase_1/stories/{id}/status.json");
        let mut expected = vec![file, status.as_str()];
        expected.sort_unstable();
        assert_eq!(files, expected, "{id}");
    }
}

#[test]
fn a_workers_index_lock_is_waited_out_never_deleted() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    // The worker leaves .git/index.lock behind when it claims completion (as a git of its own
    // would while busy); the test plays that git and releases the lock a little later.
    let script = "\"$0\" || exit $?; if grep -q '\"status\": \"completed\"' \"$STICLER_STATUS_FILE\"; then touch .git/index.lock; fi";
    p.config(
        json!({"worker": {"command": ["/bin/sh", "-c", script, bin("sticler-test-worker").display().to_string()]}}),
    );
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "base"]);
    let mut wait = daemon.ctl_command(&["-C", &p.path_str(), "start", "1", "--wait"]).spawn().unwrap();
    let lock = p.path().join(".git/index.lock");
    sticler_tests::poll(std::time::Duration::from_secs(20), "the worker's index.lock", || lock.exists().then_some(()));
    // Fault timing, not synchronisation: hold the lock a while, as a busy git would.
    std::thread::sleep(std::time::Duration::from_millis(700));
    std::fs::remove_file(&lock).expect("sticler must not have deleted the worker's lock");
    assert_eq!(wait.wait().unwrap().code(), Some(0), "{}", daemon.dump(p.path()));
    assert!(!commit_of(p.path(), "US-P1-001").is_empty());
}

#[test]
fn auto_commit_without_files_modified_takes_deletions_and_honours_gitignore() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let script = "rm -f old.txt; echo secret > ignored.log; echo new > new.txt; exec \"$0\"";
    p.config(
        json!({"worker": {"command": ["/bin/sh", "-c", script, bin("sticler-test-worker").display().to_string()]}}),
    );
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    p.write("old.txt", "to be deleted\n");
    p.write(".gitignore", "*.log\n");
    assert_eq!(run(&daemon, &p).status.code(), Some(0));
    let hash = commit_of(p.path(), "US-P1-001");
    let files = git(p.path(), &["show", "--name-status", "--format=", &hash]);
    assert!(files.contains("D\told.txt") && files.contains("A\tnew.txt"), "{files}");
    assert!(!files.contains("ignored.log"), "{files}");
    let message = git(p.path(), &["log", "-1", "--format=%B", &hash]);
    assert!(message.contains("- D old.txt") && message.contains("- A new.txt"), "{message}");
}

#[test]
fn a_commit_hash_that_is_not_ascii_fails_the_story_without_harming_the_daemon() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    let rel = "phases/phase_1/stories/US-P1-001/status.json";
    let mut status: Value = serde_json::from_str(&p.read(rel)).unwrap();
    status["commit_hash"] = json!("ééééé");
    p.write(rel, &status.to_string());
    assert_eq!(run(&daemon, &p).status.code(), Some(4), "{}", daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    assert!(!phase.running);
    assert_eq!(phase.stories[1].state, StoryState::Completed);
    assert!(daemon.ctl(&["ping"]).status.success());
}

#[test]
fn stop_is_heard_while_a_verify_command_runs() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let marker = p.path().join("verify-started");
    let verify = format!("touch {}; exec sleep 600", marker.display());
    p.config(json!({"verify": ["/bin/sh", "-c", verify]}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    sticler_tests::poll(std::time::Duration::from_secs(20), "the verify command", || marker.exists().then_some(()));
    assert_eq!(daemon.phase_status(p.path(), 1).stories[0].state, StoryState::Verifying);
    assert!(daemon.ctl(&["-C", &p.path_str(), "stop", "1", "--grace", "1"]).status.success());
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    sticler_tests::poll(std::time::Duration::from_secs(10), "no process left", || {
        daemon.marked_processes().is_empty().then_some(())
    });
    // The claim was never verified: the next run must not commit it as it stands.
    let status = p.status_json("US-P1-001");
    assert_eq!(status["status"], "in_progress", "{status}");
    assert!(status["failed_reasons"].to_string().contains("verify command was stopped"), "{status}");
}

/// A daemon killed while a story's verify command runs: the claim is not taken as verified (nor
/// committed as it stands): it goes back to the worker, which claims again, and the verify
/// command runs in full before the story completes.
#[test]
fn a_claim_whose_verify_a_crash_cut_short_is_verified_again() {
    let mut daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    let runs = tempfile::tempdir().expect("temp dir");
    let (count, started) = (runs.path().join("verify-runs"), runs.path().join("verify-started"));
    let verify = format!(
        "echo run >> {count}; if [ $(wc -l < {count}) -eq 1 ]; then touch {started}; exec sleep 600; fi; echo verify-ok",
        count = count.display(),
        started = started.display()
    );
    p.config(json!({"verify": ["/bin/sh", "-c", verify]}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"commit": true}))]);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    sticler_tests::poll(Duration::from_secs(30), "the first verify command", || started.exists().then_some(()));
    daemon.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    daemon.launch(&[]);
    let phase = daemon.wait_phase(p.path(), 1);
    assert_eq!(phase.stories[0].state, StoryState::Completed, "{}", daemon.dump(p.path()));
    let verified = std::fs::read_to_string(&count).expect("the verify runs");
    assert_eq!(verified.lines().count(), 2, "verified again after the restart");
    let reasons = p.status_json("US-P1-001")["failed_reasons"].to_string();
    assert!(reasons.contains("verify command was cut short"), "{reasons}");
}
