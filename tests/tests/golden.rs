//! Golden tests: the human output of `status`, `validate` and common errors at 80 and 200
//! columns (`COLUMNS`), compared with tests/golden/*.txt. The project's temp folder is shown
//! as `<project>`. `STICLER_UPDATE_GOLDEN=1 cargo test -p sticler-tests --test golden`
//! rewrites the files; review the diff before committing it.

use std::path::PathBuf;

use serde_json::json;
use sticler_tests::{story, Daemon, ProjectBuilder};

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden").join(format!("{name}.txt"));
    if std::env::var_os("STICLER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "{name} differs from {} (STICLER_UPDATE_GOLDEN=1 rewrites it)", path.display());
}

/// `sticlerctl <args>` at `columns`, stdout then stderr, with the project's path masked.
fn run(daemon: &Daemon, p: &ProjectBuilder, columns: usize, args: &[&str]) -> String {
    let mut command = daemon.ctl_command(&["-C", &p.path_str()]);
    command.args(args).env("COLUMNS", columns.to_string()).env("NO_COLOR", "1");
    let out = command.output().unwrap();
    let text = format!(
        "$ sticlerctl {}\n{}{}[exit {}]\n",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    );
    text.replace(&p.path_str(), "<project>")
}

/// A phase with a long title and focus, many dependencies, and the problems `validate` finds.
fn project() -> ProjectBuilder {
    let p = ProjectBuilder::new();
    p.phase(
        1,
        "decomposed",
        &[
            story("US-P1-001", &[]),
            story("US-P1-002", &["US-P1-001"]),
            story("US-P1-003", &["US-P1-001", "US-P1-002"]),
            story("US-P1-004", &["US-P1-001", "US-P1-002", "US-P1-003", "US-P1-009"]),
        ],
    );
    let rel = format!("{}/status.json", p.story_rel("US-P1-003"));
    let mut status = p.status_json("US-P1-003");
    status["title"] = json!("Parse every option of the command line, with helpful errors for each");
    status["focus"] = json!("writing the tests of the option parser before the parser itself, one per option");
    p.write(&rel, &serde_json::to_string_pretty(&status).unwrap());
    std::fs::remove_file(p.path().join(p.story_rel("US-P1-002")).join("spec.md")).unwrap();
    p.write("phases/phase_2/phase_config.json", "[");
    std::fs::create_dir_all(p.path().join("phases/phase_2/stories")).unwrap();
    p
}

#[test]
fn status_validate_and_errors_match_their_golden_files() {
    let daemon = Daemon::start();
    let p = project();
    for columns in [80, 200] {
        golden(&format!("status_{columns}"), &run(&daemon, &p, columns, &["status"]));
        golden(&format!("validate_{columns}"), &run(&daemon, &p, columns, &["validate", "1"]));
        let errors = [
            run(&daemon, &p, columns, &["status", "7"]),
            run(&daemon, &p, columns, &["status", "1", "US-P1-042"]),
            run(&daemon, &p, columns, &["wait", "7"]),
        ];
        golden(&format!("errors_{columns}"), &errors.concat());
    }
    p.config(json!({"worker": {"command": 5}, "max_parallel_workers": "x"}));
    golden("config_error", &run(&daemon, &p, 80, &["validate", "1"]));
}

/// A story of phase 2 waiting for a story of phase 1, which does not run.
#[test]
fn a_story_waiting_for_an_earlier_phase_matches_its_golden_file() {
    let daemon = Daemon::start();
    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    p.phase(2, "decomposed", &[story("US-P2-001", &["US-P1-001"])]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "2"]);
    assert!(out.status.success(), "{}", sticler_tests::describe(&out));
    for columns in [80, 200] {
        golden(&format!("status_waiting_{columns}"), &run(&daemon, &p, columns, &["status", "2"]));
    }
    assert!(daemon.ctl(&["-C", &p.path_str(), "stop", "2"]).status.success());
}
