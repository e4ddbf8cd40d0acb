//! Faults in the project under a running phase: the disk fills up, the file system turns
//! read-only, the project folder goes away. The run stops safely with a clear reason, no file
//! is truncated or left half-written, and once the fault is gone the phase finishes.
//!
//! The full and read-only cases need a small tmpfs (mount needs root or CAP_SYS_ADMIN, as in
//! CI); where mounting is refused they say so and pass.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sticler_proto::StoryState;
use sticler_tests::{describe, poll, story, Daemon, ProjectBuilder};

/// A tmpfs mounted over a folder for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        }
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn remount(&self, mode: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.0).status().unwrap();
        assert!(ok.success(), "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Two stories of three iterations each, the second after the first, slow enough that a fault
/// lands in the middle of the first.
fn slow_phase(p: &ProjectBuilder) {
    p.config(json!({"max_parallel_workers": 1, "retry_limit": 2}));
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]).criteria(3).script(json!({"sleep_ms": 300, "files": ["src/one.txt"]})),
            story("US-P1-002", &["US-P1-001"]).criteria(3).script(json!({"files": ["src/two.txt"]})),
        ],
    );
}

/// Every JSON file of the project parses, and no temporary file of an atomic write is left.
fn assert_files_whole(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name == ".git" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".json") {
                let text = fs::read_to_string(&path).unwrap();
                assert!(serde_json::from_str::<Value>(&text).is_ok(), "{} is not whole:\n{text}", path.display());
            } else {
                assert!(!name.contains(".sticler-"), "temporary file left behind: {}", path.display());
            }
        }
    }
}

/// Starts `slow_phase` and waits for the first story's first iteration.
fn start_slow_phase(daemon: &Daemon, p: &ProjectBuilder) {
    slow_phase(p);
    assert!(daemon.ctl(&["-C", &p.path_str(), "start", "1"]).status.success());
    poll(Duration::from_secs(20), "a first iteration", || (iteration_of_first(daemon, p) >= 1).then_some(()));
}

/// The run ends failed on `fault` and safely (see below); once `repair` ran, a new start
/// finishes the phase.
fn assert_fault_then_finish(daemon: &Daemon, p: &ProjectBuilder, fault: &str, repair: impl FnOnce()) {
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    assert_stopped_with_reason(daemon, p, fault);
    assert!(daemon.ctl(&["ping"]).status.success());
    repair();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    assert_files_whole(p.path());
}

/// The run ended failed with the fault as its reason; status.json could not take the failure,
/// so the files still say `in_progress` (whole, untouched) and a later start resumes.
fn assert_stopped_with_reason(daemon: &Daemon, p: &ProjectBuilder, fault: &str) {
    let status = daemon.phase_status(p.path(), 1);
    assert!(status.summary.as_deref().unwrap_or("").contains("failed: US-P1-001"), "{status:?}");
    let reasons = status.stories[0].failed_reasons.join("\n");
    assert!(reasons.contains("infrastructure failures") && reasons.contains(fault), "{reasons}");
    assert_eq!(status.stories[0].disk_status, "in_progress", "{status:?}");
    assert_eq!(status.stories[1].state, StoryState::Blocked, "{status:?}");
    assert_files_whole(p.path());
}

fn iteration_of_first(daemon: &Daemon, p: &ProjectBuilder) -> u64 {
    u64::from(daemon.phase_status(p.path(), 1).stories[0].iteration)
}

#[test]
fn a_full_disk_stops_the_run_safely_and_the_phase_finishes_once_there_is_room() {
    full_disk(ProjectBuilder::shared());
}

/// The same in worktree mode: the worker writes status.json in its worktree (under the daemon's
/// state dir, with room to spare); its copy into the full project folder fails, and that fails
/// the iteration as the worker's own write does in shared mode.
#[test]
fn a_full_disk_in_worktree_mode_stops_the_run_safely_and_the_phase_finishes_once_there_is_room() {
    full_disk(ProjectBuilder::new());
}

fn full_disk(p: ProjectBuilder) {
    let daemon = Daemon::start();
    let Some(fs_guard) = Tmpfs::mount(p.path(), "8m") else { return };
    start_slow_phase(&daemon, &p);

    // Fill the file system to the last byte.
    let filler = p.path().join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    while std::io::Write::write_all(&mut file, &[0u8]).is_ok() {}
    drop(file);

    assert_fault_then_finish(&daemon, &p, "No space left on device", || fs::remove_file(&filler).unwrap());
    drop(fs_guard);
}

#[test]
fn a_read_only_project_stops_the_run_safely_and_the_phase_finishes_once_writable() {
    read_only_project(ProjectBuilder::shared());
}

/// The same in worktree mode: the worktree stays writable, the project folder does not.
#[test]
fn a_read_only_project_in_worktree_mode_stops_the_run_safely_and_the_phase_finishes_once_writable() {
    read_only_project(ProjectBuilder::new());
}

fn read_only_project(p: ProjectBuilder) {
    let daemon = Daemon::start();
    let Some(fs_guard) = Tmpfs::mount(p.path(), "16m") else { return };
    start_slow_phase(&daemon, &p);
    fs_guard.remount("ro");

    assert_fault_then_finish(&daemon, &p, "Read-only file system", || fs_guard.remount("rw"));
    drop(fs_guard);
}

#[test]
fn a_project_folder_removed_mid_run_ends_the_run_and_the_daemon_keeps_serving() {
    project_folder_removed_mid_run(ProjectBuilder::shared());
}

/// The same in worktree mode: the stories' worktrees live outside the project, under the
/// daemon's state dir, and the run ends all the same.
#[test]
fn a_project_folder_removed_mid_run_in_worktree_mode_ends_the_run_and_the_daemon_keeps_serving() {
    project_folder_removed_mid_run(ProjectBuilder::new());
}

fn project_folder_removed_mid_run(p: ProjectBuilder) {
    let daemon = Daemon::start();
    start_slow_phase(&daemon, &p);
    let root = p.path_str();
    // A running worker may add a file while the folder is emptied: try again.
    poll(Duration::from_secs(10), "the project removed", || fs::remove_dir_all(p.path()).ok());

    // The run ends (its stories cannot go on): the project cannot be named any more, so its
    // end is read from the whole event history.
    let mut watch =
        daemon.ctl_command(&["--json", "watch", "--since", "0"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let lines = std::io::BufReader::new(watch.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(lines).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ended = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the run to end within 30 s");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["kind"] == "run_ended" {
            break event;
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(ended["outcome"], "failed", "{ended}");
    poll(Duration::from_secs(10), "no worker left", || daemon.marked_processes().is_empty().then_some(()));
    let out = daemon.ctl(&["-C", &root, "status"]);
    assert!(!out.status.success(), "the project is gone: {}", describe(&out));
    assert!(daemon.ctl(&["ping"]).status.success());
    // (A worker still running may write its own files; sticler's are never made again.)
    assert!(!p.path().join("phases").exists(), "sticler never recreates a removed project");
}

/// A worker may replace spec.md with a FIFO: opening it for the next iteration's stdin must not
/// block the run (nor the daemon); the story fails with the reason.
#[test]
fn spec_md_replaced_by_a_fifo_mid_run_fails_the_story_without_blocking() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::shared();
    start_slow_phase(&daemon, &p);
    let spec = p.path().join(p.story_rel("US-P1-001")).join("spec.md");
    fs::remove_file(&spec).unwrap();
    nix::unistd::mkfifo(&spec, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let mut wait = daemon.ctl_command(&["-C", &p.path_str(), "wait", "1"]).spawn().unwrap();
    let ended = poll(Duration::from_secs(30), "the run to end", || wait.try_wait().unwrap());
    assert_eq!(ended.code(), Some(4), "{}", daemon.dump(p.path()));
    let status = daemon.phase_status(p.path(), 1);
    let reasons = status.stories[0].failed_reasons.join("\n");
    assert!(reasons.contains("spec.md is not a regular file"), "{reasons}");
    assert!(daemon.ctl(&["ping"]).status.success());
}
