//! Test harness: runs the real `sticlerd` and `sticlerctl` binaries on temporary projects.
//!
//! `Daemon` owns a daemon, its socket and its temp folders and kills everything on drop,
//! including any worker process it left behind. `ProjectBuilder` writes a project in the
//! worker contract's formats, with `sticler-test-worker` as the scripted worker.

pub mod dashboard;
pub mod raw;
pub mod slurm;
pub mod state_dir;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sticler_proto::{PhaseView, StatusReport, StoryView};

/// Whether `tool` (a program on PATH, or an absolute path) is installed. The suite's one policy
/// for tools from outside Rust (tmux, setpriv, python3, systemd-journald): a test that needs an
/// absent one prints `skipped: <tool> not installed (apt-get install <package>)` and returns,
/// so `cargo test` passes on a fresh machine; `.ci/run` installs them all so CI runs every test.
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = if tool.contains('/') {
        Path::new(tool).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
    };
    if !found {
        println!("skipped: {tool} not installed (apt-get install {package})");
    }
    found
}

/// A binary of this workspace, from the same target folder as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, the bench binary from target/<profile>/.
    let mut dir = exe.parent().expect("executable folder");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let path = dir.join(name);
    assert!(path.is_file(), "{} not built; run the tests with `cargo test --workspace`", path.display());
    path
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    /// Every process the daemon starts inherits this, so leftovers can be found and killed.
    mark: String,
    pub tmp: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Daemon {
        let mut daemon = Daemon::unstarted();
        daemon.launch(args);
        daemon
    }

    /// A daemon's folders without its process, for tests that start it their own way
    /// (`command` + `spawn`).
    pub fn unstarted() -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("run").join("sticlerd.sock");
        let state_dir = tmp.path().join("state");
        Daemon {
            child: None,
            socket,
            state_dir,
            log: tmp.path().join("sticlerd.log"),
            mark: format!("{}", tmp.path().display()),
            tmp,
        }
    }

    /// Starts (or restarts) the daemon process on the same socket and state folder.
    pub fn launch(&mut self, args: &[&str]) {
        self.spawn(self.command(args));
        self.wait_ready();
    }

    /// Spawns `command` (normally from `command`) as this harness's daemon process, without
    /// waiting for it to serve. Whatever it spawns inherits the test mark and is killed on drop.
    pub fn spawn(&mut self, mut command: Command) {
        command.env("STICLER_TEST_MARK", &self.mark);
        self.child = Some(command.spawn().expect("spawn sticlerd"));
    }

    /// True while the daemon process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The sticlerd command this harness would run, for tests that want to run it themselves.
    pub fn command(&self, args: &[&str]) -> Command {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("daemon log");
        let mut command = Command::new(bin("sticlerd"));
        command
            .arg("--foreground")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .env("STICLER_TEST_MARK", &self.mark)
            .env("RUST_LOG", std::env::var("STICLER_TEST_LOG").unwrap_or_else(|_| "debug,sled=info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        command
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ctl(&["ping"]).status.success() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("sticlerd exited during start-up ({status}):\n{}", self.log_text());
                }
            }
            assert!(Instant::now() < deadline, "sticlerd not ready after 20 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the daemon and waits for it to exit; returns its exit status.
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal daemon");
        poll(Duration::from_secs(30), "daemon exit", || child.try_wait().ok().flatten())
    }

    /// Runs sticlerctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_command(args).output().expect("run sticlerctl")
    }

    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("sticlerctl"));
        command.arg("--socket").arg(&self.socket).args(args).stdin(Stdio::null());
        command
    }

    /// The events `watch_args` (a `watch` command line) streams for project `p`, until `runs`
    /// runs have ended: (kind, event).
    pub fn project_events(&self, p: &ProjectBuilder, watch_args: &[&str], runs: usize) -> Vec<(String, Value)> {
        use std::io::{BufRead, BufReader};
        let dir = p.path_str();
        let mut args = vec!["--json", "-C", &dir];
        args.extend_from_slice(watch_args);
        let mut watch = self.ctl_command(&args).stdout(Stdio::piped()).spawn().expect("spawn watch");
        let lines = BufReader::new(watch.stdout.take().expect("watch stdout")).lines();
        let mut all = vec![];
        let mut ended = 0;
        for line in lines {
            let event: Value = serde_json::from_str(&line.expect("watch line")).expect("an event");
            let kind = event["kind"].as_str().map(str::to_string).expect("event kind");
            ended += usize::from(kind == "run_ended");
            all.push((kind, event));
            if ended == runs {
                break;
            }
        }
        let _ = watch.kill();
        let _ = watch.wait();
        all
    }

    /// Runs `sticlerctl --json ...`, asserts success and parses stdout.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(out.status.success(), "sticlerctl {args:?} failed: {}", describe(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {}", describe(&out)))
    }

    /// Runs `sticlerctl --json ...`, asserts success and reads stdout as `T`: a field renamed
    /// or retyped on one side fails here, instead of reading as a quiet `null` in an assertion.
    pub fn ctl_typed<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(out.status.success(), "sticlerctl {args:?} failed: {}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("sticlerctl {args:?} printed no {}: {e}: {}", std::any::type_name::<T>(), describe(&out))
        })
    }

    /// `status --json` of `project` (every phase, or the phase and story `args` name).
    pub fn status_report(&self, project: &Path, args: &[&str]) -> StatusReport {
        let dir = project.display().to_string();
        let mut all = vec!["-C", &dir, "status"];
        all.extend_from_slice(args);
        self.ctl_typed(&all)
    }

    /// `status --json` of one phase.
    pub fn phase_status(&self, project: &Path, phase: u32) -> PhaseView {
        let mut report = self.status_report(project, &[&phase.to_string()]);
        assert_eq!(report.phases.len(), 1, "status of phase {phase} of {}", project.display());
        report.phases.remove(0)
    }

    /// Polls until the phase is not running any more and returns its status.
    pub fn wait_phase(&self, project: &Path, phase: u32) -> PhaseView {
        let dir = project.display().to_string();
        let out = self.ctl(&["-C", &dir, "wait", &phase.to_string()]);
        assert!(out.status.code().is_some(), "wait crashed: {}", describe(&out));
        self.phase_status(project, phase)
    }

    /// Status of every phase of `project` and the end of the daemon log, for failure messages.
    pub fn dump(&self, project: &Path) -> String {
        let status = self.ctl(&["--json", "-C", &project.display().to_string(), "status"]);
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("status:\n{}\ndaemon log (end):\n{}", String::from_utf8_lossy(&status.stdout), tail.join("\n"))
    }

    /// Live processes started under this daemon (they carry its test mark).
    pub fn marked_processes(&self) -> Vec<i32> {
        processes_with_env(&format!("STICLER_TEST_MARK={}", self.mark))
            .into_iter()
            .filter(|pid| Some(*pid as u32) != self.child.as_ref().map(Child::id))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(keep) = std::env::var_os("STICLER_KEEP_LOG") {
            let _ = fs::copy(&self.log, keep);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.marked_processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Story `id` of `phase`; panics naming the phase's stories when it has none of that id.
pub fn story_of<'a>(phase: &'a PhaseView, id: &str) -> &'a StoryView {
    phase.stories.iter().find(|s| s.id == id).unwrap_or_else(|| {
        let ids: Vec<&str> = phase.stories.iter().map(|s| s.id.as_str()).collect();
        panic!("no story {id} in phase {} (stories: {ids:?})", phase.phase)
    })
}

/// The daemon-side state of each story of `phase`, in order, as `--json` spells them.
pub fn states(phase: &PhaseView) -> Vec<&'static str> {
    phase.stories.iter().map(|s| s.state.as_str()).collect()
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Pids of live, non-zombie processes whose environment holds `entry` (`NAME=value`).
pub fn processes_with_env(entry: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| process_alive(*pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == entry.as_bytes()))
        })
        .collect()
}

/// Waits until process `pid` holds a socket (e.g. a sticlerctl stream is connected).
pub fn wait_socket_connected(pid: u32) {
    poll(Duration::from_secs(20), "client socket", || {
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
            .then_some(())
    });
}

/// True when `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)).is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// A story to write: id, dependencies, script for the scripted worker.
#[derive(Clone)]
pub struct StorySpec {
    pub id: String,
    pub deps: Vec<String>,
    pub criteria: usize,
    pub script: Value,
    pub status: String,
}

pub fn story(id: &str, deps: &[&str]) -> StorySpec {
    StorySpec {
        id: id.into(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        criteria: 1,
        script: json!({}),
        status: "pending".into(),
    }
}

impl StorySpec {
    pub fn script(mut self, script: Value) -> Self {
        self.script = script;
        self
    }
    pub fn criteria(mut self, n: usize) -> Self {
        self.criteria = n;
        self
    }
    pub fn status(mut self, status: &str) -> Self {
        self.status = status.into();
        self
    }
}

/// Writes projects in the seed's formats.
pub struct ProjectBuilder {
    pub dir: tempfile::TempDir,
    /// `"workspace": "shared"`: every worker in the project folder (tests of that mode).
    shared: bool,
}

impl Default for ProjectBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProjectBuilder {
    pub fn new() -> ProjectBuilder {
        ProjectBuilder::with_workspace(false)
    }

    /// A project in `"workspace": "shared"` mode, whatever `config` is given later.
    pub fn shared() -> ProjectBuilder {
        ProjectBuilder::with_workspace(true)
    }

    fn with_workspace(shared: bool) -> ProjectBuilder {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("phases")).expect("phases dir");
        let builder = ProjectBuilder { dir, shared };
        builder.config(json!({}));
        builder
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// orchestrator.config.json: `extra` is merged over a config that runs the scripted worker
    /// with auto_commit on and push off.
    pub fn config(&self, extra: Value) {
        let mut config = json!({
            "max_parallel_workers": 3,
            "max_iterations_per_task": 10,
            "retry_limit": 3,
            "auto_commit": true,
            "push": false,
            "worker": {"command": [bin("sticler-test-worker").display().to_string()], "stdin": "spec",
                       "iteration_timeout_secs": 60, "env": {}},
        });
        if self.shared {
            merge(&mut config, json!({"workspace": "shared"}));
        }
        merge(&mut config, extra);
        self.write("orchestrator.config.json", &serde_json::to_string_pretty(&config).expect("json"));
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path().join(rel)).expect("read")
    }

    pub fn story_rel(&self, id: &str) -> String {
        let phase = id.trim_start_matches("US-P").split('-').next().expect("story id");
        format!("phases/phase_{phase}/stories/{id}")
    }

    pub fn status_json(&self, id: &str) -> Value {
        serde_json::from_str(&self.read(&format!("{}/status.json", self.story_rel(id)))).expect("status.json parses")
    }

    /// A phase with phase_config.json (`status`) and the given stories.
    pub fn phase(&self, number: u32, status: &str, stories: &[StorySpec]) {
        let config = json!({
            "id": format!("phase-{number}"), "project_id": "test", "phase_number": number,
            "title": format!("Test phase {number}"), "description": "written by the test harness",
            "status": status, "spec_path": format!("phases/phase_{number}/phase_spec.md"),
            "created_at": "2026-01-28T10:00:00Z"
        });
        self.write(
            &format!("phases/phase_{number}/phase_config.json"),
            &serde_json::to_string_pretty(&config).expect("json"),
        );
        self.write(&format!("phases/phase_{number}/phase_spec.md"), "# Test phase\n");
        for s in stories {
            self.add_story(s);
        }
    }

    pub fn add_story(&self, s: &StorySpec) {
        let criteria: Vec<Value> =
            (1..=s.criteria).map(|i| json!({"text": format!("criterion {i}"), "done": false, "notes": ""})).collect();
        let status = json!({
            "story_id": s.id, "title": format!("Story {}", s.id), "status": s.status, "focus": "",
            "criteria": criteria, "checklist": [], "worker_notes": "", "notes_history": [], "iteration": 0,
            "failed_reasons": [], "dependencies": s.deps, "commit_hash": "", "files_modified": [],
            "iteration_history": [], "learnings": [], "created_at": "2026-01-28T10:00:00Z",
            "script": s.script,
        });
        let rel = self.story_rel(&s.id);
        self.write(&format!("{rel}/status.json"), &serde_json::to_string_pretty(&status).expect("json"));
        self.write(&format!("{rel}/spec.md"), &format!("# {}: Story {}\n\n## Goal\nTest.\n", s.id, s.id));
    }
}

/// Merges `extra` into `base`, object by object (the rest replaced).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn have_tool_finds_programs_on_path_and_by_absolute_path() {
        assert!(super::have_tool("sh", "dash"));
        assert!(super::have_tool("/bin/sh", "dash"));
        assert!(!super::have_tool("sticler-no-such-tool", "none"));
        assert!(!super::have_tool("/nonexistent/sticler-no-such-tool", "none"));
    }
}
