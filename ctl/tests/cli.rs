//! `sticlerctl`'s command line. (Also makes `cargo test --workspace` build the binaries that
//! the black-box tests in tests/ run.)

use std::process::Command;

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in [
        "ping", "version", "status", "validate", "start", "stop", "kill", "retry", "logs", "watch", "wait", "shutdown",
        "demo",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sticlerctl")).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Example"), "{sub} --help has no example:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_sticlerctl")).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_sticlerctl"))
        .args(["--socket", "/nonexistent/s", "status", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a phase that is not a number is a usage error");
}

#[test]
fn the_scripted_worker_is_built_alongside() {
    let out = Command::new(env!("CARGO_BIN_EXE_sticler-demo-worker")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no status file given is a usage error");
}
