//! Adversarial project content: ids and dependencies that try to leave the project, symlinks
//! leading outside it, non-UTF-8 names, a 50 MB status.json, deeply nested JSON, a phase of
//! 10,000 stories in one 10,000-long chain. Clear errors, bounded memory, and nothing outside
//! the project read or written.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use sticler_proto::{StoryState, ValidationReport};
use sticler_tests::raw::memory_kib;
use sticler_tests::{describe, states, story, Daemon, ProjectBuilder, StorySpec};

/// `validate <phase> --json`: the problems as `path: message` lines (none when valid).
fn problems(daemon: &Daemon, project: &ProjectBuilder, phase: u32) -> Vec<String> {
    let out = daemon.ctl(&["--json", "-C", &project.path_str(), "validate", &phase.to_string()]);
    let report: ValidationReport =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    report.problems.iter().map(ToString::to_string).collect()
}

fn assert_problem(list: &[String], path_end: &str, needle: &str) {
    assert!(
        list.iter().any(|p| p.split(": ").next().is_some_and(|path| path.ends_with(path_end)) && p.contains(needle)),
        "no problem at …{path_end} containing {needle:?} in {list:#?}"
    );
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            let bytes = if meta.is_file() { fs::read(entry.path()).unwrap() } else { vec![] };
            files.insert(entry.path(), (bytes, meta.modified().unwrap()));
        }
    }
    files
}

/// The start is refused and nothing of the project changed.
fn assert_start_refused(daemon: &Daemon, p: &ProjectBuilder, phase: u32) {
    let before = snapshot(p.path());
    let out = daemon.ctl(&["-C", &p.path_str(), "start", &phase.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(snapshot(p.path()), before, "a refused start changes nothing");
    assert!(!p.path().join(".git").exists(), "a refused start does not even create the repository");
}

#[test]
fn ids_and_dependencies_that_climb_out_of_the_project_are_refused() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let bad_deps =
        ["../US-P1-002", "US-P1-002/../../../../etc", "US-P1-002\u{0}", "/etc/passwd", "..", "US-P1-..2", "US-P1-002/"];
    p.phase(1, "decomposed", &[story("US-P1-001", &bad_deps), story("US-P1-002", &[])]);
    let rel = "phases/phase_1/stories/US-P1-002/status.json";
    p.write(rel, &p.read(rel).replace("\"story_id\": \"US-P1-002\"", "\"story_id\": \"../../../etc/US-P1-002\""));
    p.write("phases/phase_1/stories/US-P1-..3/spec.md", "# x\n");
    let list = problems(&daemon, &p, 1);
    for dep in bad_deps {
        let shown = format!("{dep:?}");
        assert_problem(&list, "US-P1-001/status.json", &format!("dependency {shown} is not a story id"));
    }
    assert_problem(&list, "US-P1-002/status.json", "story_id \"../../../etc/US-P1-002\" does not match");
    assert_problem(&list, "US-P1-..3", "is not a story id");
    assert_start_refused(&daemon, &p, 1);
}

#[test]
fn symlinks_leading_outside_the_project_are_refused_and_nothing_outside_is_touched() {
    let daemon = Daemon::start();
    let outside = ProjectBuilder::new();
    outside.phase(1, "decomposed", &[story("US-P1-002", &[]).status("completed")]);
    outside.write("secret.json", r#"{"story_id": "US-P1-003", "status": "completed", "dependencies": []}"#);
    outside.write("secret.md", "# not for the worker\n");
    let before = snapshot(outside.path());

    let p = ProjectBuilder::new();
    let ids = ["US-P1-001", "US-P1-003", "US-P1-004"];
    p.phase(1, "decomposed", &ids.map(|id| story(id, &[])));
    let stories = p.path().join("phases/phase_1/stories");
    symlink(outside.path().join("phases/phase_1/stories/US-P1-002"), stories.join("US-P1-002")).unwrap();
    fs::remove_file(stories.join("US-P1-003/status.json")).unwrap();
    symlink(outside.path().join("secret.json"), stories.join("US-P1-003/status.json")).unwrap();
    fs::remove_file(stories.join("US-P1-004/spec.md")).unwrap();
    symlink(outside.path().join("secret.md"), stories.join("US-P1-004/spec.md")).unwrap();
    let list = problems(&daemon, &p, 1);
    assert_problem(&list, "stories/US-P1-002", "story folder is a symlink");
    assert_problem(&list, "US-P1-003/status.json", "is a symlink");
    assert_problem(&list, "US-P1-004/spec.md", "spec.md is a symlink");
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(states(&phase), ["pending", "invalid", "pending"], "the symlinked folder is not a story");
    assert_start_refused(&daemon, &p, 1);

    // A symlinked phase folder, and a phase whose stories/ folder is a symlink.
    symlink(outside.path().join("phases/phase_1"), p.path().join("phases/phase_2")).unwrap();
    p.phase(3, "decomposed", &[]);
    symlink(outside.path().join("phases/phase_1/stories"), p.path().join("phases/phase_3/stories")).unwrap();
    for phase in ["2", "3"] {
        for command in ["validate", "status", "start"] {
            let out = daemon.ctl(&["-C", &p.path_str(), command, phase]);
            assert_eq!(out.status.code(), Some(1), "{command} {phase}: {}", describe(&out));
            assert!(String::from_utf8_lossy(&out.stderr).contains("is a symlink"), "{}", describe(&out));
        }
    }
    assert_eq!(snapshot(outside.path()), before, "nothing outside the project was written");
}

#[test]
fn non_utf8_names_are_reported_or_carried_through_a_run() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &["US-P1-001"])]);
    let stories = p.path().join("phases/phase_1/stories");
    let bad_folder = stories.join(OsStr::from_bytes(b"US-P1-\xff03"));
    fs::create_dir(&bad_folder).unwrap();
    let list = problems(&daemon, &p, 1);
    assert_problem(&list, "US-P1-\u{fffd}03", "not valid UTF-8");
    fs::remove_dir(&bad_folder).unwrap();
    // Files with such names inside the project are the user's business: a run carries them.
    fs::write(p.path().join(OsStr::from_bytes(b"data-\xfe.txt")), "x").unwrap();
    fs::write(stories.join(OsStr::from_bytes(b"US-P1-001/notes-\xff.md")), "y").unwrap();
    fs::create_dir(p.path().join(OsStr::from_bytes(b"phases/phase_\xff"))).unwrap();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let files = std::process::Command::new("git").args(["ls-files", "-z"]).current_dir(p.path()).output().unwrap();
    let names: Vec<&[u8]> = files.stdout.split(|b| *b == 0).collect();
    assert!(names.contains(&&b"data-\xfe.txt"[..]), "committed: {:?}", String::from_utf8_lossy(&files.stdout));
    assert!(names.contains(&&b"phases/phase_1/stories/US-P1-001/notes-\xff.md"[..]));
}

#[test]
fn a_50_mb_status_json_is_refused_without_being_read() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    assert!(problems(&daemon, &p, 1).is_empty());
    let (_, peak_before) = memory_kib(daemon.pid());
    // A valid JSON object: without the limit the daemon would read and parse all of it.
    let rel = "phases/phase_1/stories/US-P1-002/status.json";
    let mut big = p.read(rel).trim_end().trim_end_matches('}').to_string();
    big.push_str(", \"pad\": \"");
    big.push_str(&"x".repeat(50 << 20));
    big.push_str("\"}\n");
    p.write(rel, &big);
    let list = problems(&daemon, &p, 1);
    assert_problem(&list, "US-P1-002/status.json", &format!("is {} bytes, more than the 4194304 bytes", big.len()));
    assert_eq!(daemon.phase_status(p.path(), 1).stories[1].state, StoryState::Invalid);
    let (_, peak_after) = memory_kib(daemon.pid());
    eprintln!("50 MB status.json: daemon peak RSS {peak_before} -> {peak_after} KiB");
    assert!(peak_after - peak_before < 10 * 1024, "the daemon's peak memory grew by {} KiB", peak_after - peak_before);
    assert_start_refused(&daemon, &p, 1);
}

#[test]
fn a_worker_that_grows_status_json_to_50_mb_fails_its_story_with_bounded_memory() {
    worker_grows_status_json(ProjectBuilder::shared());
}

/// The same in worktree mode, where the worker grows the status.json of its worktree: neither
/// its copy into the project folder (refused above the limit) nor the commit of what the failed
/// story left in its worktree may read it whole.
#[test]
fn a_worker_that_grows_status_json_to_50_mb_in_worktree_mode_fails_its_story_with_bounded_memory() {
    worker_grows_status_json(ProjectBuilder::new());
}

fn worker_grows_status_json(p: ProjectBuilder) {
    let daemon = Daemon::start();
    // Appending whitespace keeps the document valid JSON, 50 MB more each iteration.
    let grow = "head -c 52428800 /dev/zero | tr '\\0' ' ' >> \"$STICLER_STATUS_FILE\"";
    p.config(json!({"retry_limit": 2, "max_iterations_per_task": 5, "worker": {"command": grow}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let (_, peak_before) = memory_kib(daemon.pid());
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    let reasons = phase.stories[0].failed_reasons.join("\n");
    assert!(reasons.contains("2 consecutive infrastructure failures"), "{reasons}");
    assert!(reasons.contains("more than the 4194304 bytes sticler reads"), "{reasons}");
    let (_, peak_after) = memory_kib(daemon.pid());
    eprintln!("worker-grown status.json: daemon peak RSS {peak_before} -> {peak_after} KiB");
    assert!(peak_after - peak_before < 20 * 1024, "the daemon's peak memory grew by {} KiB", peak_after - peak_before);
}

#[test]
fn deeply_nested_json_is_a_clear_error() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    let deep = |prefix: &str| format!("{prefix}{}{}}}\n", "[".repeat(100_000), "]".repeat(100_000));
    p.write("phases/phase_1/stories/US-P1-002/status.json", &deep("{\"story_id\": \"US-P1-002\", \"x\": "));
    p.write("phases/phase_1/phase_config.json", &deep("{\"status\": \"decomposed\", \"x\": "));
    p.write("orchestrator.config.json", &deep("{\"verify\": "));
    let list = problems(&daemon, &p, 1);
    assert_problem(&list, "US-P1-002/status.json", "recursion limit exceeded");
    assert_problem(&list, "phase_config.json", "recursion limit exceeded");
    assert_problem(&list, "orchestrator.config.json", "recursion limit exceeded");
    assert!(daemon.ctl(&["ping"]).status.success(), "the daemon is alive");
}

#[test]
fn a_phase_of_10000_stories_in_one_10000_long_chain() {
    const N: usize = 10_000;
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.config(json!({"auto_commit": false}));
    let id = |i: usize| format!("US-P1-{i:05}");
    let specs: Vec<StorySpec> = (1..=N)
        .map(|i| {
            let dep = if i == 1 { id(N) } else { id(i - 1) };
            let s = story(&id(i), &[dep.as_str()]);
            if i == 1 {
                s.script(json!({"mode": "self_fail"}))
            } else {
                s
            }
        })
        .collect();
    p.phase(1, "decomposed", &specs);
    // Closed into a cycle of 10,000: found and printed, no stack overflow.
    let t = Instant::now();
    let list = problems(&daemon, &p, 1);
    let cycle_secs = t.elapsed().as_secs_f64();
    assert_eq!(list.len(), 1, "{:?}", list.iter().map(|l| &l[..l.len().min(200)]).collect::<Vec<_>>());
    assert!(list[0].contains(&format!("dependency cycle: {} -> {}", id(1), id(N))), "{}", &list[0][..200]);
    assert_eq!(list[0].matches(" -> ").count(), N);
    // Opened into a chain: valid, shown, run (the head fails, the 9,999 others are blocked).
    p.add_story(&story(&id(1), &[]).script(json!({"mode": "self_fail"})));
    let t = Instant::now();
    assert!(problems(&daemon, &p, 1).is_empty());
    let validate_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let phase = daemon.phase_status(p.path(), 1);
    let status_secs = t.elapsed().as_secs_f64();
    assert_eq!(phase.counts.total as usize, N);
    let t = Instant::now();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let run_secs = t.elapsed().as_secs_f64();
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.counts.failed, 1);
    assert_eq!(phase.counts.blocked as usize, N - 1);
    assert_eq!(phase.stories[N - 1].blocked_by, [id(1)]);
    let (rss, peak) = memory_kib(daemon.pid());
    eprintln!(
        "10,000 stories: cycle found in {cycle_secs:.2} s, validate {validate_secs:.2} s, status {status_secs:.2} s, \
         failed run {run_secs:.2} s (debug build, sticlerctl process included); daemon RSS {rss} KiB, peak {peak} KiB"
    );
}
