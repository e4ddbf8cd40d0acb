//! `sticlerctl status` on the demo project, in human and JSON form.

use std::path::Path;

use sticler_proto::StatusReport;
use sticler_tests::{bin, describe, states, story, Daemon, ProjectBuilder};

fn demo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", src.display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

#[test]
fn status_of_the_demo_phase_in_human_form() {
    let daemon = Daemon::start();
    let demo = demo_copy();
    let out = daemon.ctl(&["-C", &demo.path().join("phases/phase_1/stories").display().to_string(), "status"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Phase 1: Core note commands [decomposed]"), "{text}");
    assert!(text.contains("6 stories: 0 completed, 0 running, 6 pending"), "{text}");
    let row = text.lines().find(|l| l.trim_start().starts_with("US-P1-005")).expect("row for US-P1-005");
    assert!(row.contains("pending") && row.contains("0/4") && row.contains("US-P1-002"), "{row}");
}

#[test]
fn status_json_is_complete_and_stable() {
    let daemon = Daemon::start();
    let demo = demo_copy();
    let dir = demo.path().display().to_string();
    let report = daemon.ctl_json(&["-C", &dir, "status", "1"]);
    let phase = &report["phases"][0];
    assert_eq!(phase["phase"], 1);
    assert_eq!(phase["status"], "decomposed");
    assert_eq!(phase["running"], false);
    assert_eq!(phase["counts"]["total"], 6);
    let stories = phase["stories"].as_array().unwrap();
    let ids: Vec<&str> = stories.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["US-P1-001", "US-P1-002", "US-P1-003", "US-P1-004", "US-P1-005", "US-P1-006"]);
    let s5 = &stories[4];
    assert_eq!(s5["state"], "pending");
    assert_eq!(s5["criteria_total"], 4);
    assert_eq!(s5["dependencies"], serde_json::json!(["US-P1-002", "US-P1-003", "US-P1-004"]));
    for key in [
        "title",
        "disk_status",
        "iteration",
        "runs",
        "criteria_done",
        "focus",
        "failed_reasons",
        "blocked_by",
        "running_secs",
        "commit_hash",
    ] {
        assert!(s5.get(key).is_some(), "story JSON lacks {key}: {s5}");
    }
    let one = daemon.status_report(demo.path(), &["1", "US-P1-003"]);
    assert_eq!(one.phases[0].stories.len(), 1);
    let out = daemon.ctl(&["-C", &dir, "status", "1", "US-P1-999"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no story US-P1-999"), "{}", describe(&out));
}

#[test]
fn unreachable_daemon_exits_3_and_says_how_to_start_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("sticlerctl"))
        .arg("--socket")
        .arg(tmp.path().join("nobody.sock"))
        .arg("ping")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running") && err.contains("sticlerd"), "{err}");
}

/// `--json` errors carry the kinds as the protocol spells them, and the client's own ones in
/// the same style.
#[test]
fn json_errors_use_the_protocol_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("sticlerctl"))
        .arg("--socket")
        .arg(tmp.path().join("nobody.sock"))
        .args(["--json", "ping"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["kind"], "unreachable", "{err}");

    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let out = daemon.ctl(&["--json", "-C", &p.path_str(), "status", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["kind"], "not_found", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains('7'), "{err}");
}

/// `status --all` lists every phase the daemon has run, of every project, with no project
/// folder needed; over the socket, a status request without a project asks the same.
#[test]
fn status_all_lists_every_project_the_daemon_ran() {
    let daemon = Daemon::start();
    let empty: Vec<StatusReport> = daemon.ctl_typed(&["status", "--all"]);
    assert_eq!(empty, [], "nothing run yet");
    let (p, q) = (ProjectBuilder::new(), ProjectBuilder::new());
    for project in [&p, &q] {
        project.phase(1, "decomposed", &[story("US-P1-001", &[])]);
        let out = daemon.ctl(&["-C", &project.path_str(), "start", "1", "--wait"]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    let nowhere = tempfile::tempdir().unwrap();
    let out = daemon.ctl_command(&["--json", "status", "--all"]).current_dir(nowhere.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let all: Vec<StatusReport> = serde_json::from_slice(&out.stdout).unwrap();
    let mut projects: Vec<String> = all.iter().map(|r| r.project.clone()).collect();
    projects.sort();
    let mut expected: Vec<String> =
        [&p, &q].iter().map(|x| std::fs::canonicalize(x.path()).unwrap().display().to_string()).collect();
    expected.sort();
    assert_eq!(projects, expected);
    for report in &all {
        assert_eq!(report.phases[0].status, "completed", "{report:?}");
        assert_eq!(states(&report.phases[0]), ["completed"], "{report:?}");
    }
    let text = String::from_utf8(daemon.ctl(&["status", "--all"]).stdout).unwrap();
    assert!(text.contains(&expected[0]) && text.contains(&expected[1]), "{text}");

    use std::io::{BufRead, Write};
    let mut socket = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    socket.write_all(b"{\"request\":{\"status\":{}}}\n").unwrap();
    let line = std::io::BufReader::new(socket).lines().next().unwrap().unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["response"]["status_all"].as_array().map(Vec::len), Some(2), "{reply}");
}

#[test]
fn version_names_both_sides() {
    let daemon = Daemon::start();
    let v = daemon.ctl_json(&["version"]);
    assert_eq!(v["daemon_pid"], daemon.pid());
    assert_eq!(v["client_version"], v["daemon_version"]);
}

/// A restarted daemon still lists the phases run before (a stop with SIGTERM and a crash alike),
/// and with nothing to list `status --all` says so in a line.
#[test]
fn status_all_remembers_phases_across_a_restart_and_says_when_there_is_nothing() {
    use nix::sys::signal::Signal;
    let mut daemon = Daemon::start();
    let out = daemon.ctl(&["status", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("nothing to show: sticlerd has not run any phase yet"), "{text}");
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let root = std::fs::canonicalize(p.path()).unwrap().display().to_string();
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        daemon.signal_and_wait(signal);
        daemon.launch(&[]);
        let all: Vec<StatusReport> = daemon.ctl_typed(&["status", "--all"]);
        assert_eq!(all.len(), 1, "after {signal}: {all:?}");
        assert_eq!((all[0].project.as_str(), all[0].phases.len()), (root.as_str(), 1), "after {signal}: {all:?}");
        assert_eq!(all[0].phases[0].status, "completed", "after {signal}: {all:?}");
    }
}

/// `status` shows every problem `validate` finds (cycle, unknown dependency, missing spec.md,
/// a malformed file), each once, the same list in the same order.
#[test]
fn status_lists_every_problem_validate_finds_once() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(
        1,
        "decomposed",
        &[story("US-P1-001", &["US-P1-002"]), story("US-P1-002", &["US-P1-001", "US-P1-009"]), story("US-P1-003", &[])],
    );
    std::fs::remove_file(p.path().join(p.story_rel("US-P1-002")).join("spec.md")).unwrap();
    p.write(&format!("{}/status.json", p.story_rel("US-P1-003")), "{\"story_id\": ");
    let phase = daemon.phase_status(p.path(), 1);
    let shown: Vec<String> = phase.problems.iter().map(ToString::to_string).collect();
    for needle in ["dependency cycle", "unknown dependency US-P1-009", "missing spec.md", "US-P1-003/status.json"] {
        assert_eq!(shown.iter().filter(|s| s.contains(needle)).count(), 1, "{needle} once in {shown:#?}");
    }
    let out = daemon.ctl(&["--json", "-C", &p.path_str(), "validate", "1"]);
    let report: sticler_proto::ValidationReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.problems, phase.problems);
    let text = String::from_utf8(daemon.ctl(&["-C", &p.path_str(), "status", "1"]).stdout).unwrap();
    assert!(text.contains("dependency cycle: US-P1-001 -> US-P1-002 -> US-P1-001"), "{text}");
}
