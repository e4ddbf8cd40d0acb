//! A private pueued for the bench: its own config, state and socket in a temp folder, so the
//! user's own pueue is never touched; shut down on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where pueue's binaries are: `$STICLER_BENCH_PUEUE_DIR`, then `$PATH`, then a build of
/// `cargo install pueue --locked --root $TMPDIR/pueue-install` (made once, then reused).
/// `Err` says why pueue is skipped.
pub fn locate() -> Result<PathBuf, String> {
    let has_both = |dir: &Path| dir.join("pueue").is_file() && dir.join("pueued").is_file();
    if let Some(dir) = std::env::var_os("STICLER_BENCH_PUEUE_DIR").map(PathBuf::from) {
        return if has_both(&dir) { Ok(dir) } else { Err(format!("no pueue and pueued in {}", dir.display())) };
    }
    if let Some(dir) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).find(|d| has_both(d)) {
        return Ok(dir);
    }
    let root = std::env::temp_dir().join("pueue-install");
    if has_both(&root.join("bin")) {
        return Ok(root.join("bin"));
    }
    eprintln!("pueue not found; building it: cargo install pueue --locked --root {}", root.display());
    let built = Command::new("cargo")
        .args(["install", "pueue", "--locked", "--root"])
        .arg(&root)
        .status()
        .map_err(|e| format!("cannot run cargo install pueue: {e}"))?;
    if built.success() && has_both(&root.join("bin")) {
        Ok(root.join("bin"))
    } else {
        Err(format!("`cargo install pueue --locked --root {}` failed ({built})", root.display()))
    }
}

pub struct Pueue {
    bin: PathBuf,
    config: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl Pueue {
    /// Starts pueued and creates the paused group `bench` running `parallel` tasks at once.
    pub fn start(bin: &Path, parallel: usize) -> Pueue {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = tmp.path().join("run");
        fs::create_dir_all(&run).expect("pueue runtime dir");
        let config = tmp.path().join("pueue.yml");
        fs::write(
            &config,
            format!(
                "shared:\n  pueue_directory: {}\n  runtime_directory: {}\n  use_unix_socket: true\n  unix_socket_path: {}\n",
                tmp.path().join("data").display(),
                run.display(),
                run.join("pueue.sock").display()
            ),
        )
        .expect("pueue config");
        let child = Command::new(bin.join("pueued"))
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pueued");
        let pueue = Pueue { bin: bin.to_path_buf(), config, child, _tmp: tmp };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pueue.cmd(&["status", "--json"]).status.success() {
            assert!(Instant::now() < deadline, "pueued not ready after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        pueue.ok(&["group", "add", "bench", "-p", &parallel.to_string()]);
        pueue.ok(&["pause", "-g", "bench"]);
        pueue
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("pueue"));
        c.arg("-c").arg(&self.config).args(args).stdin(Stdio::null()).env("RUST_BACKTRACE", "0");
        c
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run pueue")
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.cmd(args);
        assert!(out.status.success(), "pueue {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Adds a task to the group `bench` after `after`; returns its id.
    pub fn add(&self, dir: &Path, command: &str, after: &[String]) -> String {
        let dir = dir.display().to_string();
        let mut args = vec!["add", "-p", "-g", "bench", "-w", &dir];
        if !after.is_empty() {
            args.push("--after");
            args.extend(after.iter().map(String::as_str));
        }
        args.push("--");
        args.push(command);
        String::from_utf8_lossy(&self.ok(&args).stdout).trim().to_string()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.ok(&["status", "--json"]).stdout).expect("pueue status JSON")
    }
}

impl Drop for Pueue {
    fn drop(&mut self) {
        let _ = self.command(&["shutdown"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
