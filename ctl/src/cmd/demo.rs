//! `sticlerctl demo`: the bundled example project, run end to end on a private daemon with
//! the scripted worker, so a new user sees sticler work without an AI agent or any set-up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sticler_proto::{PhaseRef, PhaseView, Request, StatusReport};

use super::watch::follow_until_end;
use crate::client::{Client, ClientError};
use crate::{render, CliError, CmdResult};

include!(concat!(env!("OUT_DIR"), "/demo_files.rs"));

fn usage(why: String) -> CliError {
    CliError::Usage(why)
}

/// A binary installed next to sticlerctl (cargo puts all of a workspace's binaries together).
fn sibling(name: &str) -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(|e| usage(format!("cannot locate sticlerctl itself: {e}")))?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(usage(format!(
            "{} not found next to sticlerctl; build the workspace (cargo build --release)",
            path.display()
        )))
    }
}

/// The private daemon; killed on drop if it did not shut down by itself.
struct DemoDaemon {
    child: Child,
}

impl Drop for DemoDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub fn run(into: Option<PathBuf>) -> CmdResult {
    let base = match into {
        Some(dir) => dir,
        None => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            std::env::temp_dir().join(format!("sticler-demo-{}-{stamp}", std::process::id()))
        }
    };
    let project = base.join("project");
    let private = base.join("daemon");
    if project.exists() {
        return Err(usage(format!("{} already exists; pick another --into", project.display())));
    }
    let worker = sibling("sticler-demo-worker")?;
    let sticlerd = sibling("sticlerd")?;
    write_project(&project, &worker).map_err(|e| usage(format!("cannot write the demo project: {e}")))?;
    fs::create_dir_all(&private).map_err(|e| usage(format!("{}: {e}", private.display())))?;
    let socket = private.join("run").join("sticlerd.sock");
    let log_path = private.join("sticlerd.log");
    let log = fs::File::create(&log_path).map_err(|e| usage(format!("{}: {e}", log_path.display())))?;
    println!("sticler demo: project copied to {}", project.display());
    let child = Command::new(&sticlerd)
        .arg("--foreground")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(private.join("state"))
        .arg("--max-workers")
        .arg("4")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| usage(format!("cannot start {}: {e}", sticlerd.display())))?;
    let mut daemon = DemoDaemon { child };
    let mut client = connect_with_deadline(&socket, &mut daemon, &log_path)?;
    println!("sticler demo: private daemon pid {} on {}", daemon.child.id(), socket.display());
    let phase = PhaseRef { project: project.display().to_string(), phase: 1 };
    let mut watcher = crate::reconnect::Watch::start(&socket, Some(phase.project.clone()), Some(1), None)?;
    watcher.next()?;
    let _: Box<PhaseView> = client.call_expect(Request::Start { phase: phase.clone(), force: false })?;
    let code = follow_until_end(&mut watcher, false)?;
    let status = Request::Status { project: phase.project.clone(), phase: Some(1), story: None };
    let report: StatusReport = client.call_expect(status)?;
    for view in &report.phases {
        println!();
        print!("{}", render::phase(view, render::terminal_width()));
    }
    if let Ok(out) = Command::new("git").arg("-C").arg(&project).args(["log", "--oneline", "-n", "12"]).output() {
        if out.status.success() {
            println!("\nGit history of the demo project:");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
    let _ = client.call(Request::Shutdown);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && matches!(daemon.child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!();
    println!("The project the worker built: {}", project.display());
    println!("Per-iteration worker logs:    {}", private.join("state").join("logs").display());
    println!("Daemon log:                   {}", log_path.display());
    Ok(code)
}

fn connect_with_deadline(socket: &Path, daemon: &mut DemoDaemon, log: &Path) -> Result<Client, CliError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(socket) {
            Ok(client) => return Ok(client),
            Err(ClientError::Unreachable { .. }) if Instant::now() < deadline => {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    let text = fs::read_to_string(log).unwrap_or_default();
                    return Err(usage(format!("the demo daemon exited ({status}):\n{text}")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes the embedded example, pointing its worker command at the scripted worker.
fn write_project(project: &Path, worker: &Path) -> std::io::Result<()> {
    for (rel, bytes) in DEMO_FILES {
        let path = project.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        if *rel == "orchestrator.config.json" {
            let mut config: serde_json::Value = serde_json::from_slice(bytes)?;
            config["worker"]["command"] = serde_json::json!([worker.display().to_string()]);
            fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        } else {
            fs::write(&path, bytes)?;
        }
    }
    Ok(())
}
