//! `sticlerd`'s command line. (Also makes `cargo test --workspace` build the binary that the
//! black-box tests in tests/ run.)

use std::process::Command;

#[test]
fn help_explains_the_flags_and_the_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_sticlerd")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["--socket", "--state-dir", "--max-workers", "--foreground", "XDG_RUNTIME_DIR", "Example"] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_sticlerd")).arg("--max-workers").arg("0").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
