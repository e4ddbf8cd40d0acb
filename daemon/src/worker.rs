//! How one iteration's process is run and how it is ended: `terminate` is the one place where
//! sticler ends a process (SIGTERM, a grace, SIGKILL, to the group and its strays). With `spawn`
//! (which starts processes) and `reaper` (which reaps them), the only module that touches
//! processes.
//!
//! Every worker runs in its own session (so its own process group) and carries a unique
//! `STICLER_WORKER_TOKEN` in its environment. The group catches ordinary children; the token
//! catches descendants that escaped into a session of their own, found by scanning /proc.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use sticler_proto::ExitReason;
use tokio::sync::oneshot;

use crate::logs::LogFiles;
use crate::spawn::{Launch, Spawner};

pub const TOKEN_VAR: &str = "STICLER_WORKER_TOKEN";

/// Everything needed to start one iteration.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Variables of the daemon's environment the process must not inherit.
    pub env_remove: Vec<String>,
    /// File to put on stdin (read to its end, it gives EOF: stdin is closed after it); `None`
    /// gives /dev/null.
    pub stdin: Option<PathBuf>,
    pub log: PathBuf,
    pub token: String,
}

/// A started process: it leads its own session (so its pid is its process group) and every
/// descendant carries its token.
#[derive(Debug, Clone)]
pub struct Group {
    pub pid: i32,
    pub token: String,
    /// Adopted from a daemon that died: its descendants are not in this daemon's tree, so they
    /// are looked for among every process.
    pub foreign: bool,
}

impl Group {
    /// SIGKILL to what is left in the group once its leader exited.
    pub fn kill_group(&self) {
        signal_story(Some(self.pid), &[], Signal::SIGKILL, false);
    }

    /// SIGKILL to the descendants that escaped into a session of their own (a /proc scan), for
    /// leftovers killed outright.
    pub fn sweep_strays(&self) {
        signal_story(None, std::slice::from_ref(&self.token), Signal::SIGKILL, self.foreign);
    }

    /// The descendants that escaped into a session of their own once the worker exited, ended
    /// as sticler ends any process: SIGTERM, up to `STRAY_GRACE` to go (a detached git among
    /// them removes its lock files), then SIGKILL to those still there. A /proc scan and a
    /// wait: the run does it off the way of the next dispatch.
    pub fn end_strays(&self) {
        let tokens = std::slice::from_ref(&self.token);
        if signal_story(None, tokens, Signal::SIGTERM, self.foreign) == 0 {
            return;
        }
        let deadline = std::time::Instant::now() + STRAY_GRACE;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let candidates = if self.foreign { all_pids() } else { descendants().unwrap_or_else(all_pids) };
            if processes_with_tokens(candidates, tokens).is_empty() {
                return;
            }
        }
        signal_story(None, tokens, Signal::SIGKILL, self.foreign);
    }
}

/// How long what a worker left running after its exit gets to end after SIGTERM.
const STRAY_GRACE: Duration = Duration::from_secs(2);

impl Group {}

/// SIGKILL to every process of this daemon's tree whose token starts with one of `tokens` (a
/// run's prefix at its end: nothing of the run may outlive it).
pub fn kill_descendants_with(tokens: &[String]) {
    signal_story(None, tokens, Signal::SIGKILL, false);
}

/// The one way sticler ends a process: SIGTERM to its group and its strays, `grace` for it to
/// exit, then SIGKILL to both (at once when `grace` is zero, or when `kill_now` completes
/// meanwhile: a `kill` after a `stop`). Returns how the process exited.
pub async fn terminate(
    group: &Group,
    grace: Duration,
    exit: &mut oneshot::Receiver<ExitReason>,
    kill_now: impl std::future::Future<Output = ()>,
) -> ExitReason {
    // A closed channel means the reaper is gone, which only happens at exit.
    let killed = ExitReason::Signalled(Signal::SIGKILL as i32);
    let tokens = std::slice::from_ref(&group.token);
    if !grace.is_zero() {
        signal_story(Some(group.pid), tokens, Signal::SIGTERM, group.foreign);
        tokio::select! {
            reason = &mut *exit => return reason.unwrap_or(killed),
            () = tokio::time::sleep(grace) => {}
            () = kill_now => {}
        }
    }
    signal_story(Some(group.pid), tokens, Signal::SIGKILL, group.foreign);
    exit.await.unwrap_or(killed)
}

/// Starts the worker; returns its group and its exit.
pub fn spawn(
    spawner: &Spawner,
    logs: &LogFiles,
    spec: &SpawnSpec,
) -> io::Result<(Group, oneshot::Receiver<ExitReason>)> {
    let (program, args) =
        spec.argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty worker command"))?;
    let output = logs.open(&spec.log)?;
    let stdin = spec.stdin.as_deref().map(open_stdin).transpose()?;
    let mut env = spec.env.clone();
    env.push((TOKEN_VAR.to_string(), spec.token.clone()));
    let launch = Launch {
        program: program.clone(),
        args: args.to_vec(),
        cwd: spec.cwd.clone(),
        env,
        env_remove: spec.env_remove.clone(),
        stdin,
        output,
    };
    let spawned = spawner.spawn(launch);
    logs.refill();
    spawned.map(|(pid, exit)| (Group { pid, token: spec.token.clone(), foreign: false }, exit))
}

/// Opens the file given to the worker on stdin (spec.md). Only a regular file: a symlink could
/// lead outside the project, and opening a FIFO a worker put in its place would block the run
/// (O_NONBLOCK makes that open return at once, and a regular file ignores the flag).
fn open_stdin(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{} {what}", path.display()));
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| if e.raw_os_error() == Some(libc::ELOOP) { refuse("is a symlink") } else { e })?;
    if !file.metadata()?.is_file() {
        return Err(refuse("is not a regular file"));
    }
    Ok(file)
}

/// Signals a worker's whole process group and every process of this daemon's tree (of the
/// machine when `everywhere`: an adopted worker's) carrying one of `tokens`. Returns how many
/// processes still carry one of the tokens (before this signal lands). Every descendant of a
/// worker this daemon started stays in that tree: the daemon is a child subreaper, so a process
/// that double-forks out of its group is reparented to the daemon.
fn signal_story(pgid: Option<i32>, tokens: &[String], signal: Signal, everywhere: bool) -> usize {
    // Never 0 or 1: killpg(0) would be the daemon's own group.
    if let Some(pgid) = pgid.filter(|p| *p > 1) {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
    if tokens.is_empty() {
        return 0;
    }
    let candidates = if everywhere { all_pids() } else { descendants().unwrap_or_else(all_pids) };
    signal_marked(candidates, tokens, signal)
}

/// Start time of process `pid` in clock ticks since boot (/proc/<pid>/stat field 22), None
/// when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Field `n` (counted from 3, the state) of /proc/<pid>/stat, as a number.
fn stat_field(pid: i32, n: usize) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n - 3)?.parse().ok()
}

/// The parent of process `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    stat_field(pid, 4).and_then(|p| i32::try_from(p).ok())
}

/// How long ago a process started at `start_time` (clock ticks since boot).
pub fn age(start_time: u64) -> Option<Duration> {
    let uptime = fs::read_to_string("/proc/uptime").ok()?;
    let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let started = start_time as f64 / if ticks > 0 { ticks as f64 } else { 100.0 };
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// Variable `name` of process `pid`'s environment (as it was at its exec).
pub fn environ_var(pid: i32, name: &str) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// SIGKILL to the process group led by `pid`, only when `pid` still is the process that started
/// at `start_time`: a pid the kernel gave to an unrelated process since is never touched.
/// Returns whether it signalled.
pub fn kill_recorded(pid: i32, start_time: u64) -> bool {
    if pid <= 1 || self::start_time(pid) != Some(start_time) {
        return false;
    }
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    true
}

/// Signals every process on the machine carrying one of `tokens` but none of `spared`: the
/// workers of an earlier daemon (reparented elsewhere when it died), except those adopted.
pub fn signal_everywhere(tokens: &[String], spared: &[String], signal: Signal) -> usize {
    let spared = processes_with_tokens(all_pids(), spared);
    let candidates = all_pids().into_iter().filter(|pid| !spared.contains(pid)).collect();
    signal_marked(candidates, tokens, signal)
}

/// SIGKILLs every sticler worker (any daemon's: it carries a token) of phase `phase` of the
/// project at `root`, waiting up to 5 s for them to go. Returns how many there were.
pub fn kill_phase_workers(root: &Path, phase: u32) -> usize {
    // STICLER_MAIN_DIR names the project folder in both workspace modes (STICLER_PROJECT_DIR is
    // a worktree in worktree mode); workers of versions before it only had the latter.
    let main = format!("STICLER_MAIN_DIR={}", root.display()).into_bytes();
    let project = format!("STICLER_PROJECT_DIR={}", root.display()).into_bytes();
    let phase = format!("STICLER_PHASE={phase}").into_bytes();
    let token = format!("{TOKEN_VAR}=").into_bytes();
    let me = std::process::id() as i32;
    let find = || -> Vec<i32> {
        all_pids()
            .into_iter()
            .filter(|pid| *pid != me)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                    (vars.contains(&main.as_slice()) || vars.contains(&project.as_slice()))
                        && vars.contains(&phase.as_slice())
                        && vars.iter().any(|v| v.starts_with(&token))
                })
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let first = find();
    let mut left = first.clone();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        for pid in &left {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = find();
    }
    first.len()
}

fn signal_marked(candidates: Vec<i32>, tokens: &[String], signal: Signal) -> usize {
    let marked = processes_with_tokens(candidates, tokens);
    for pid in &marked {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
    marked.len()
}

/// Those of `candidates` whose environment carries a token starting with one of `tokens` (an
/// iteration's token, or a run's prefix for all of its iterations). Zombies have an empty
/// environ, so they never match.
pub fn processes_with_tokens(candidates: Vec<i32>, tokens: &[String]) -> Vec<i32> {
    if tokens.is_empty() {
        return Vec::new();
    }
    let needles: Vec<Vec<u8>> = tokens.iter().map(|t| format!("{TOKEN_VAR}={t}").into_bytes()).collect();
    let me = std::process::id() as i32;
    candidates
        .into_iter()
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| needles.iter().any(|n| var.starts_with(n))))
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// Every process below this daemon, from /proc/<pid>/task/<tid>/children: a walk of the
/// daemon's own tree instead of a read of every process on the machine. None when the kernel
/// does not offer those files (CONFIG_PROC_CHILDREN).
fn descendants() -> Option<Vec<i32>> {
    let mut found = Vec::new();
    let mut queue = vec![std::process::id() as i32];
    let mut first = true;
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.filter_map(Result::ok) {
            match fs::read_to_string(task.path().join("children")) {
                Ok(children) => {
                    for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                        found.push(child);
                        queue.push(child);
                    }
                }
                Err(e) if first && e.kind() == io::ErrorKind::NotFound => return None,
                Err(_) => {}
            }
            first = false;
        }
    }
    Some(found)
}

/// Every file some process has open (from /proc/*/fd), for telling a stale lock file from a
/// held one.
pub fn open_files() -> std::collections::HashSet<PathBuf> {
    let Ok(procs) = fs::read_dir("/proc") else { return Default::default() };
    procs
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| fs::read_dir(e.path().join("fd")).ok())
        .flat_map(|fds| fds.filter_map(|fd| fd.ok()))
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    /// A process with the recorded pid but another start time stands for a recycled pid.
    #[test]
    fn a_recycled_pid_is_never_killed() {
        let mut child = Command::new("sleep").arg("30").process_group(0).spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        let started = start_time(pid).expect("a live process has a start time");
        assert!(!kill_recorded(pid, started + 1), "another start time: not the recorded worker");
        assert!(!kill_recorded(pid, started.saturating_sub(1)));
        assert!(child.try_wait().expect("try_wait").is_none(), "the unrelated process is still alive");
        assert!(kill_recorded(pid, started), "the recorded worker itself");
        let status = child.wait().expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(Signal::SIGKILL as i32));
        assert_eq!(start_time(pid), None, "reaped");
    }
}
