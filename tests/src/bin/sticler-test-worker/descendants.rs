//! `ignore_term_fork`: the worker, a child and a grandchild in its own session, all ignoring
//! SIGTERM and never exiting: the kind of process tree a stop must still clean up completely.
//! The descendants are this same binary re-executed with a role in the environment (cleaner
//! than forking a running process).

use std::convert::Infallible;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{signal, SigHandler, Signal};

use crate::failure::{Failure, Result};
use crate::files::append;

/// Tells a re-executed copy of this binary which descendant role to play.
const ROLE_ENV: &str = "STICLER_TEST_WORKER_ROLE";

/// The role this process was started to play, if it is a descendant.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok().filter(|role| role == "child" || role == "grandchild")
}

pub fn play(role: &str) -> Result<u8> {
    match role {
        "child" => play_child().map(|never| match never {}),
        _ => play_grandchild(),
    }
}

pub fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn ignore_sigterm() -> Result<()> {
    // SAFETY: SIG_IGN installs no handler, so no code of ours ever runs in signal context.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }
        .map(drop)
        .map_err(|e| Failure::plain(format!("cannot ignore SIGTERM: {e}")))
}

/// This binary, to be started in a descendant role.
fn descendant(role: &str) -> Result<Command> {
    let exe = std::env::current_exe().map_err(|e| Failure::plain(format!("cannot find own executable: {e}")))?;
    let mut command = Command::new(exe);
    command.env(ROLE_ENV, role).stdin(Stdio::null()).stderr(Stdio::inherit());
    Ok(command)
}

/// The worker's part: start the child, learn the grandchild's pid from it, record all three
/// pids, sleep forever.
pub fn ignore_term_fork(pids_file: Option<&Path>) -> Result<Infallible> {
    // Before spawning: an ignored signal stays ignored in children and across exec, so no descendant
    // is ever killable by SIGTERM, not even before it runs its own `ignore_sigterm`.
    ignore_sigterm()?;
    let mut child = descendant("child")?
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::plain(format!("cannot spawn child: {e}")))?;
    let child_pid = child.id();
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| Failure::plain("child has no stdout pipe"))?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| Failure::plain(format!("cannot read grandchild pid from child: {e}")))?;
    let grandchild_pid: u32 = line
        .trim()
        .parse()
        .map_err(|_| Failure::plain(format!("child {child_pid} reported no grandchild pid (got {line:?})")))?;
    // One write of all three pids, only once every one is known: readers never see a partial tree.
    if let Some(path) = pids_file {
        append(path, &format!("{}\n{child_pid}\n{grandchild_pid}\n", std::process::id()))?;
    }
    say!(
        "Ignoring SIGTERM (scripted): worker {}, child {child_pid}, grandchild {grandchild_pid} \
         (own session); sleeping forever",
        std::process::id()
    );
    sleep_forever()
}

/// Child role: spawns the grandchild in a new session, reports its pid on stdout, sleeps forever.
fn play_child() -> Result<Infallible> {
    ignore_sigterm()?;
    let mut command = descendant("grandchild")?;
    command.stdout(Stdio::null());
    // SAFETY: the closure runs between fork and exec; it only calls setsid(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let grandchild = command.spawn().map_err(|e| Failure::plain(format!("cannot spawn grandchild: {e}")))?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", grandchild.id())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::plain(format!("cannot report grandchild pid: {e}")))?;
    sleep_forever()
}

fn play_grandchild() -> Result<u8> {
    ignore_sigterm()?;
    sleep_forever()
}
