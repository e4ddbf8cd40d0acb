//! Phase validation: every error names the file and what is wrong, and nothing is changed.

use sticler_proto::{StoryState, ValidationReport};
use sticler_tests::{describe, story, Daemon, ProjectBuilder};

fn problems(daemon: &Daemon, project: &ProjectBuilder) -> Vec<String> {
    let out = daemon.ctl(&["--json", "-C", &project.path_str(), "validate", "1"]);
    assert_eq!(out.status.code(), Some(1), "validate must exit 1 on problems: {}", describe(&out));
    let report: ValidationReport = serde_json::from_slice(&out.stdout).unwrap();
    report.problems.iter().map(ToString::to_string).collect()
}

fn assert_problem(list: &[String], needle: &str) {
    assert!(list.iter().any(|p| p.contains(needle)), "no problem containing {needle:?} in {list:#?}");
}

#[test]
fn a_valid_phase_passes() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &["US-P1-001"])]);
    let out = daemon.ctl(&["-C", &p.path_str(), "validate", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid (2 stories)"));
}

#[test]
fn unknown_dependency_is_reported_but_other_phases_count() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "completed", &[story("US-P1-001", &[])]);
    p.phase(2, "decomposed", &[story("US-P2-001", &["US-P1-001"]), story("US-P2-002", &["US-P2-009", "US-P1-777"])]);
    let out = daemon.ctl(&["--json", "-C", &p.path_str(), "validate", "2"]);
    let report: ValidationReport = serde_json::from_slice(&out.stdout).unwrap();
    let list: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_problem(&list, "unknown dependency US-P2-009");
    assert_problem(&list, "unknown dependency US-P1-777");
    assert!(list.iter().all(|p| p.contains("US-P2-002/status.json")), "{list:#?}");
}

#[test]
fn dependency_cycle_is_printed() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &["US-P1-003"]),
            story("US-P1-002", &["US-P1-001"]),
            story("US-P1-003", &["US-P1-002"]),
            story("US-P1-004", &[]),
        ],
    );
    let list = problems(&daemon, &p);
    assert_problem(&list, "dependency cycle: US-P1-001 -> US-P1-003 -> US-P1-002 -> US-P1-001");
}

#[test]
fn duplicate_and_mismatched_ids_and_bad_folder_names() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    // US-P1-002's status.json claims to be US-P1-001.
    let rel = "phases/phase_1/stories/US-P1-002/status.json";
    p.write(rel, &p.read(rel).replace("\"story_id\": \"US-P1-002\"", "\"story_id\": \"US-P1-001\""));
    p.write("phases/phase_1/stories/story-three/spec.md", "# x\n");
    p.write("phases/phase_1/stories/US-P2-001/spec.md", "# x\n");
    let list = problems(&daemon, &p);
    assert_problem(&list, "US-P1-002/status.json: story_id \"US-P1-001\" does not match its folder US-P1-002");
    assert_problem(&list, "duplicate story id US-P1-001");
    assert_problem(&list, "story-three: folder name \"story-three\" is not a story id");
    assert_problem(&list, "story US-P2-001 belongs to phase 2");
}

#[test]
fn missing_spec_is_reported() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    std::fs::remove_file(p.path().join("phases/phase_1/stories/US-P1-001/spec.md")).unwrap();
    let list = problems(&daemon, &p);
    assert_problem(&list, "US-P1-001/spec.md: missing spec.md");
}

#[test]
fn malformed_json_names_line_and_column_and_is_left_untouched() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    let rel = "phases/phase_1/stories/US-P1-002/status.json";
    let broken = "{\n    \"story_id\": \"US-P1-002\",\n    \"status\": pending\n}\n";
    p.write(rel, broken);
    let list = problems(&daemon, &p);
    assert_problem(&list, "US-P1-002/status.json: malformed JSON at line 3, column 15");
    // start refuses too, and neither touches the file.
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3, column 15"), "{}", describe(&out));
    assert_eq!(p.read(rel), broken);
    assert!(p.read("phases/phase_1/phase_config.json").contains("\"decomposed\""));
    // status still shows the phase, with the story marked invalid.
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.stories[1].state, StoryState::Invalid);
    assert_eq!(phase.counts.invalid, 1);
}

#[test]
fn malformed_phase_config_is_reported_with_position() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    p.write("phases/phase_1/phase_config.json", "{\"status\": \"decomposed\",,}");
    let list = problems(&daemon, &p);
    assert_problem(&list, "phase_config.json: malformed JSON at line 1, column 25");
}

#[test]
fn status_fields_of_the_wrong_type_make_the_story_invalid_and_are_left_untouched() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    let ids = ["US-P1-001", "US-P1-002", "US-P1-003", "US-P1-004", "US-P1-005"];
    p.phase(1, "decomposed", &ids.map(|id| story(id, &[])));
    let edits = [
        ("US-P1-002", "\"dependencies\": []", "\"dependencies\": \"US-P1-001\""),
        ("US-P1-003", "\"criteria\": [", "\"criteria\": \"all of them\", \"old_criteria\": ["),
        ("US-P1-004", "\"iteration\": 0", "\"iteration\": \"three\""),
        ("US-P1-005", "\"status\": \"pending\"", "\"status\": \"complete\""),
    ];
    let mut written = Vec::new();
    for (id, from, to) in edits {
        let rel = format!("{}/status.json", p.story_rel(id));
        let text = p.read(&rel);
        assert!(text.contains(from), "{text}");
        p.write(&rel, &text.replace(from, to));
        written.push((rel, text.replace(from, to)));
    }
    let list = problems(&daemon, &p);
    assert_eq!(list.len(), 4, "{list:#?}");
    assert_problem(&list, "US-P1-002/status.json: field `dependencies` must be a list of story ids");
    assert_problem(&list, "US-P1-003/status.json: field `criteria` must be a list of objects");
    assert_problem(&list, "US-P1-004/status.json: field `iteration` must be a whole number (0 or more), not \"three\"");
    assert_problem(
        &list,
        "US-P1-005/status.json: field `status` is \"complete\"; it must be one of \"pending\", \"in_progress\", \"completed\", \"failed\"",
    );
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.counts.invalid, 4, "{phase:?}");
    assert_eq!(phase.stories[0].state, StoryState::Pending);
    for (rel, text) in written {
        assert_eq!(p.read(&rel), text, "{rel} is left as written");
    }
}

#[test]
fn an_unknown_status_written_by_the_worker_is_a_failed_iteration_naming_it() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    // The plausible agent typo: "complete" for "completed".
    let typo = r#"sed -i 's/"status": "[a-z_]*"/"status": "complete"/' "$STICLER_STATUS_FILE""#;
    p.config(serde_json::json!({"workspace": "shared", "retry_limit": 2, "worker": {"command": typo}}));
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    let story = &phase.stories[0];
    assert_eq!((story.state, story.runs), (StoryState::Failed, 2), "{phase:?}");
    let reasons = story.failed_reasons.join("\n");
    assert!(reasons.contains("field `status` is \"complete\""), "{reasons}");
}

#[test]
fn config_typos_arrays_and_empty_commands_are_refused_by_name() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    for (config, says) in [
        (
            r#"{"max_paralel_workers": 2}"#,
            "orchestrator.config.json: unknown key \"max_paralel_workers\"; did you mean \"max_parallel_workers\"?",
        ),
        (
            r#"{"worker": {"comand": ["x"]}}"#,
            "orchestrator.config.json: unknown key \"worker.comand\"; did you mean \"worker.command\"?",
        ),
        (r#"[{"max_parallel_workers": 2}]"#, "orchestrator.config.json: expected a JSON object of settings"),
        (r#"{"worker": {"command": ""}}"#, "orchestrator.config.json: worker.command is empty"),
        (r#"{"worker": {"command": [""]}}"#, "orchestrator.config.json: worker.command is empty"),
    ] {
        p.write("orchestrator.config.json", config);
        let list = problems(&daemon, &p);
        assert_eq!(list.len(), 1, "{config}: {list:#?}");
        assert_problem(&list, says);
        let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
        assert_eq!(out.status.code(), Some(1), "{config}: {}", describe(&out));
        assert_eq!(p.read("orchestrator.config.json"), config);
    }
}

#[test]
fn story_numbers_of_any_length_are_ids_and_a_phase_beyond_u32_is_named() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-0000000007", &[]), story("US-P1-0000000008", &["US-P1-0000000007"])]);
    let out = daemon.ctl(&["-C", &p.path_str(), "validate", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = daemon.ctl(&["-C", &p.path_str(), "status", "1", "US-P1-0000000008"]);
    assert!(out.status.success(), "{}", describe(&out));
    p.add_story(&story("US-P1-0000000009", &["US-P4294967296-001"]));
    let list = problems(&daemon, &p);
    assert_problem(
        &list,
        "dependency \"US-P4294967296-001\": phase number 4294967296 is too large; phase numbers go up to 4294967295",
    );
    let out = daemon.ctl(&["-C", &p.path_str(), "logs", "US-P4294967296-001"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("phase number 4294967296 is too large"),
        "{}",
        describe(&out)
    );
}

#[test]
fn dependencies_on_later_phases_and_cycles_across_phases_are_reported() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &["US-P2-001"]), story("US-P1-002", &[])]);
    p.phase(2, "decomposed", &[story("US-P2-001", &["US-P1-001"]), story("US-P2-002", &["US-P1-002"])]);
    let cycle = "dependency cycle: US-P1-001 -> US-P2-001 -> US-P1-001";
    let list = problems(&daemon, &p);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_problem(
        &list,
        "US-P1-001/status.json: dependency US-P2-001 is in phase 2, after this phase 1; a story may depend only on stories of its own or earlier phases",
    );
    assert_problem(&list, cycle);
    let out = daemon.ctl(&["--json", "-C", &p.path_str(), "validate", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report: ValidationReport = serde_json::from_slice(&out.stdout).unwrap();
    let list: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_problem(&list, &format!("phase_2/stories: {cycle}"));
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(cycle), "{}", describe(&out));
    // Without the backward edge both phases are valid: an earlier phase is fine.
    p.add_story(&story("US-P1-001", &[]));
    assert!(daemon.ctl(&["-C", &p.path_str(), "validate", "1"]).status.success());
    assert!(daemon.ctl(&["-C", &p.path_str(), "validate", "2"]).status.success());
}

/// `validate` only reads files: with no daemon it gives the report the daemon gives.
#[test]
fn validate_works_without_a_daemon_and_reports_what_the_daemon_reports() {
    use std::io::{BufRead, Write};
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &["US-P1-009"]), story("US-P1-002", &[])]);
    let root = std::fs::canonicalize(p.path()).unwrap().display().to_string();
    let mut socket = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let request = serde_json::json!({"request": {"validate": {"project": root, "phase": 1}}});
    socket.write_all(format!("{request}\n").as_bytes()).unwrap();
    let line = std::io::BufReader::new(socket).lines().next().unwrap().unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    let from_daemon: ValidationReport = serde_json::from_value(reply["response"]["validated"].clone()).unwrap();
    drop(daemon);

    let nobody = Daemon::unstarted();
    assert!(!nobody.ctl(&["ping"]).status.success(), "no daemon runs");
    let out = nobody.ctl(&["--json", "-C", &p.path_str(), "validate", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report: ValidationReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report, from_daemon);
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let out = nobody.ctl(&["-C", &p.path_str(), "validate", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("phase 1 of ") && text.contains("unknown dependency US-P1-009"), "{}", describe(&out));
    let out = nobody.ctl(&["-C", &p.path_str(), "validate", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("phase 7 not found"), "{}", describe(&out));
}

/// Library internals never reach the user: a missing story_id is named as missing (not
/// `story_id ""`), a config value of the wrong type names its key and what to write (not
/// "expected usize" or "untagged enum CommandSpec"), and no position is printed twice.
#[test]
fn problems_are_said_in_words_not_library_internals() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let rel = &format!("{}/status.json", p.story_rel("US-P1-001"));
    p.write(rel, &p.read(rel).replace("\"story_id\": \"US-P1-001\",", ""));
    p.config(serde_json::json!({"worker": {"command": 5}}));
    let list = problems(&daemon, &p);
    assert_problem(&list, "US-P1-001/status.json: status.json has no story_id; add \"story_id\": \"US-P1-001\"");
    assert_problem(&list, "orchestrator.config.json: worker.command must be an argv array of strings");
    p.config(serde_json::json!({"max_parallel_workers": "x"}));
    let list = problems(&daemon, &p);
    assert_problem(&list, "max_parallel_workers must be a whole number such as 3, not \"x\"");
    for p in &list {
        assert!(!p.contains("expected usize") && !p.contains("untagged") && !p.contains("story_id \"\""), "{p}");
        assert!(p.matches("line ").count() <= 1, "position printed twice: {p}");
    }
}
