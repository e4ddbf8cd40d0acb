//! One file per command (or per small family of commands); `run` sends each parsed command to
//! its handler. What several commands share lives here: finding the project, reading phase and
//! story arguments, printing JSON.

mod control;
mod daemon;
mod demo;
mod generate;
mod logs;
mod presets;
mod retry;
mod start;
mod status;
mod validate;
mod wait;
mod watch;

use std::path::{Path, PathBuf};

use sticler_proto::PhaseRef;

use crate::cli::{Cli, Command};
use crate::client::{self, Client};
use crate::{CliError, CmdResult};

/// What every command that talks to the daemon needs from the global options.
pub struct Context<'a> {
    pub socket: PathBuf,
    pub json: bool,
    /// `-C`, when given.
    pub dir: Option<&'a Path>,
}

impl Context<'_> {
    pub fn connect(&self) -> Result<Client, CliError> {
        Ok(Client::connect(&self.socket)?)
    }

    /// The project folder of `-C` (or of the current folder).
    pub fn project(&self) -> Result<String, CliError> {
        project_dir(self.dir)
    }

    /// Phase `phase` (`1` or `phase_1`) of the project.
    pub fn phase_ref(&self, phase: &str) -> Result<PhaseRef, CliError> {
        Ok(PhaseRef { project: self.project()?, phase: phase_number(phase)? })
    }
}

pub fn run(cli: Cli) -> CmdResult {
    // Completions, the man page and the preset table need no daemon, so no socket either.
    match &cli.command {
        Command::Presets => return presets::run(cli.json),
        Command::Completions { shell } => return generate::completions(*shell),
        Command::Man => return generate::man(),
        // Validation only reads files: no daemon needed.
        Command::Validate { phase } => return validate::run(cli.json, cli.dir.as_deref(), phase),
        _ => {}
    }
    let socket = client::socket_path(cli.socket.clone()).ok_or_else(|| {
        CliError::Usage("cannot choose a socket path: set STICLER_SOCKET or XDG_RUNTIME_DIR, or pass --socket".into())
    })?;
    let ctx = Context { socket, json: cli.json, dir: cli.dir.as_deref() };
    match &cli.command {
        // Answered above, before a socket was needed.
        Command::Presets | Command::Completions { .. } | Command::Man | Command::Validate { .. } => Ok(0),
        Command::Demo { into } => demo::run(into.clone()),
        Command::Ping => daemon::ping(&ctx),
        Command::Version => daemon::version(&ctx),
        Command::Shutdown { keep_workers } => daemon::shutdown(&ctx, *keep_workers),
        Command::Upgrade => daemon::upgrade(&ctx),
        Command::Status { all: true, .. } => status::all(&ctx),
        Command::Status { phase, story, .. } => status::project(&ctx, phase.as_deref(), story.as_deref()),
        Command::Start { phase, force, wait } => start::run(&ctx, phase, *force, *wait),
        Command::Stop { phase, grace } => control::stop(&ctx, phase, *grace),
        Command::Kill { phase } => control::kill(&ctx, phase),
        Command::Resume { phase } => control::resume(&ctx, phase),
        Command::Clean { phase } => control::clean(&ctx, phase),
        Command::Retry { stories, failed, completed } => retry::run(&ctx, stories, failed.as_deref(), *completed),
        Command::Logs { story, iteration, follow, all, tail } => {
            let options = logs::Options { iteration: *iteration, follow: *follow, all: *all, tail: *tail };
            logs::run(&ctx, story, options)
        }
        Command::Watch { phase, since } => watch::run(&ctx, phase.as_deref(), *since),
        Command::Wait { phase } => wait::run(&ctx, phase),
        Command::Dashboard { port, no_open } => crate::dashboard::run(&ctx, *port, *no_open),
    }
}

/// The folder holding `phases/`, walking up from `-C` (default: the current folder).
fn project_dir(dir: Option<&Path>) -> Result<String, CliError> {
    let start = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir().map_err(|e| CliError::Usage(format!("cannot read the current folder: {e}")))?,
    };
    let start = std::fs::canonicalize(&start).map_err(|e| CliError::Usage(format!("{}: {e}", start.display())))?;
    let mut at = start.as_path();
    loop {
        if at.join("phases").is_dir() {
            return Ok(at.display().to_string());
        }
        at = at.parent().ok_or_else(|| {
            CliError::Usage(format!(
                "no project found: neither {} nor a folder above it holds phases/; pass -C <project dir>",
                start.display()
            ))
        })?;
    }
}

fn phase_number(text: &str) -> Result<u32, CliError> {
    text.strip_prefix("phase_")
        .unwrap_or(text)
        .parse()
        .map_err(|_| CliError::Usage(format!("{text:?} is not a phase number (try `1` or `phase_1`)")))
}

/// The phase a story id belongs to (`US-P3-007` → 3).
fn story_phase(story: &str) -> Result<u32, CliError> {
    match sticler_proto::StoryId::parse_checked(story) {
        Ok(id) => Ok(id.phase),
        Err(sticler_proto::StoryIdError::NotAnId(_)) => {
            Err(CliError::Usage(format!("{story:?} is not a story id like US-P1-003")))
        }
        Err(e) => Err(CliError::Usage(e.to_string())),
    }
}

/// Pretty for a person at a terminal; one compact line for a script, written straight to
/// stdout (a 1,000-story status is half a megabyte pretty-printed).
fn print_json<T: serde::Serialize>(value: &T) {
    use std::io::{IsTerminal, Write};
    let stdout = std::io::stdout();
    let pretty = stdout.is_terminal();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let written =
        if pretty { serde_json::to_writer_pretty(&mut out, value) } else { serde_json::to_writer(&mut out, value) };
    let result = written.map_err(std::io::Error::from).and_then(|()| writeln!(out)).and_then(|()| out.flush());
    if let Err(e) = result {
        eprintln!("sticlerctl: cannot write JSON: {e}");
    }
}
