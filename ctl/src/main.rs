//! `sticlerctl`: the client of sticlerd. Every subcommand maps to one protocol request.

mod client;
mod demo;
mod progress;
mod render;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use sticler_proto::{EventKind, PhaseRef, Request, Response, RunOutcome, ServerMessage};

use crate::client::{Client, ClientError};

/// Exit codes (also in the README): 0 ok, 1 request failed, 2 usage, 3 daemon unreachable;
/// `wait`: 0 completed, 4 failed, 5 stopped.
const EXIT_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;

/// Control sticlerd, the daemon that runs development phases of AI-built projects.
///
/// The project is the folder holding `phases/` (found by walking up from -C, default the
/// current folder). A phase is given by its number (`1` or `phase_1`), a story by its id.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Examples:\n  sticlerctl status\n  sticlerctl start 1 --wait\n  sticlerctl logs US-P1-003 -f\n  sticlerctl --json status 1 | jq '.phases[0].counts'"
)]
struct Cli {
    /// Daemon socket [default: $STICLER_SOCKET, else $XDG_RUNTIME_DIR/sticler/sticlerd.sock,
    /// else /run/sticler/sticlerd.sock for root]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable output: one JSON document (or one per line for streams)
    #[arg(long, global = true)]
    json: bool,
    /// Project folder (or any folder inside it)
    #[arg(short = 'C', global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the daemon answers
    #[command(after_help = "Example:\n  sticlerctl ping")]
    Ping,
    /// Show the client's and the daemon's versions
    #[command(after_help = "Example:\n  sticlerctl version")]
    Version,
    /// Show phases and stories: state, iteration, criteria, dependencies, focus
    #[command(
        after_help = "Examples:\n  sticlerctl status            # every phase of the project\n  sticlerctl status 1          # one phase\n  sticlerctl status 1 US-P1-003\n  sticlerctl status --all      # every phase sticlerd runs or ran, of all projects\n  sticlerctl --json status 1"
    )]
    Status {
        /// Every phase sticlerd runs or has run since it started, of all projects (no -C needed)
        #[arg(long, conflicts_with_all = ["phase", "story"])]
        all: bool,
        /// Phase number
        phase: Option<String>,
        /// Story id (narrows to one story)
        story: Option<String>,
    },
    /// Check a phase without running it: ids, dependencies, cycles, spec.md, JSON syntax
    #[command(after_help = "Example:\n  sticlerctl validate 1")]
    Validate { phase: String },
    /// Start (or resume) a phase
    #[command(
        after_help = "Examples:\n  sticlerctl start 1\n  sticlerctl start 1 --wait     # follow progress, exit like `wait`\n  sticlerctl start 1 --force    # run a completed phase again"
    )]
    Start {
        phase: String,
        /// Start even if phase_config.json says completed, discussing or finalized
        #[arg(long)]
        force: bool,
        /// Stay attached, show progress, and exit like `wait`
        #[arg(long)]
        wait: bool,
    },
    /// Stop a phase: SIGTERM to every worker, SIGKILL after the grace period; resumable
    #[command(after_help = "Example:\n  sticlerctl stop 1 --grace 30")]
    Stop {
        phase: String,
        /// Seconds between SIGTERM and SIGKILL
        #[arg(long, value_name = "S", default_value_t = 10)]
        grace: u64,
    },
    /// Stop a phase at once (SIGKILL)
    #[command(after_help = "Example:\n  sticlerctl kill 1")]
    Kill { phase: String },
    /// Put failed (or blocked) stories back to pending and run them again
    #[command(after_help = "Examples:\n  sticlerctl retry US-P1-003 US-P1-004\n  sticlerctl retry --failed 1")]
    Retry {
        /// Story ids
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        stories: Vec<String>,
        /// Every failed or blocked story of this phase
        #[arg(long, value_name = "PHASE")]
        failed: Option<String>,
    },
    /// Show a story's worker output, one log per iteration
    #[command(
        after_help = "Examples:\n  sticlerctl logs US-P1-003              # latest iteration\n  sticlerctl logs US-P1-003 --iteration 2\n  sticlerctl logs US-P1-003 -f           # follow, across iterations"
    )]
    Logs {
        story: String,
        #[arg(long, value_name = "K")]
        iteration: Option<u32>,
        /// Follow new output and move on to the next iteration until the run ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Stream events (story started, iteration ended, completed, failed, phase ended)
    #[command(after_help = "Examples:\n  sticlerctl watch\n  sticlerctl watch 1 --json")]
    Watch {
        phase: Option<String>,
        /// Replay stored events after this sequence number first
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// Block until the phase's run ends; exit 0 completed, 4 failed, 5 stopped
    #[command(after_help = "Example:\n  sticlerctl wait 1 && echo done")]
    Wait { phase: String },
    /// End the project's wait for an agent's usage limit now; iterations start again at once
    #[command(
        after_help = "Examples:\n  sticlerctl resume 1          # the project of phase 1 stops waiting\n  sticlerctl -C ~/my-project resume 2"
    )]
    Resume { phase: String },
    /// List the worker presets (coding agents) and the exact command each runs
    #[command(
        after_help = "Examples:\n  sticlerctl presets\n  sticlerctl --json presets | jq '.[] | select(.name == \"claude\") | .argv'\n\nUse one in orchestrator.config.json: {\"worker\": {\"preset\": \"claude\", \"args\": [\"--model\", \"opus\"]}}"
    )]
    Presets,
    /// Ask the daemon to stop (workers are stopped gracefully; runs resume on restart)
    #[command(after_help = "Example:\n  sticlerctl shutdown")]
    Shutdown,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(
        after_help = "Examples:\n  sticlerctl completions bash > ~/.local/share/bash-completion/completions/sticlerctl\n  sticlerctl completions zsh > ~/.zfunc/_sticlerctl     # with fpath+=~/.zfunc in ~/.zshrc\n  sticlerctl completions fish > ~/.config/fish/completions/sticlerctl.fish"
    )]
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of sticlerctl
    #[command(
        after_help = "Examples:\n  sticlerctl man > ~/.local/share/man/man1/sticlerctl.1 && man sticlerctl\n  sticlerctl man | man -l -"
    )]
    Man,
    /// Run the bundled example project with a scripted worker on a private daemon
    #[command(after_help = "Example:\n  sticlerctl demo")]
    Demo {
        /// Where to put the demo project [default: a new temporary folder]
        #[arg(long, value_name = "DIR")]
        into: Option<PathBuf>,
    },
}

/// Outcome of a command: an exit code, or an error to print.
type CmdResult = Result<u8, CliError>;

enum CliError {
    Client(ClientError),
    Usage(String),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

fn main() -> ExitCode {
    // `sticlerctl watch | head` must end quietly when the reader goes away, like other tools.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    let cli = Cli::parse();
    let json = cli.json;
    render::init_colours(std::io::stdout().is_terminal());
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(CliError::Usage(why)) => {
            eprintln!("sticlerctl: {why}");
            ExitCode::from(2)
        }
        Err(CliError::Client(e)) => {
            let code = match e {
                ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
                _ => EXIT_FAILED,
            };
            if json {
                // The daemon's kinds as the protocol spells them; two more of the client's own.
                let (kind, message) = match &e {
                    ClientError::Refused(r) => (serde_json::json!(r.kind), r.message.clone()),
                    ClientError::Unreachable { .. } => (serde_json::json!("unreachable"), e.to_string()),
                    ClientError::Protocol(_) => (serde_json::json!("protocol"), e.to_string()),
                };
                println!("{}", serde_json::json!({"error": {"kind": kind, "message": message}}));
            } else {
                eprintln!("sticlerctl: {e}");
            }
            ExitCode::from(code)
        }
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
    sticler_proto::StoryId::parse(story)
        .map(|id| id.phase)
        .ok_or_else(|| CliError::Usage(format!("{story:?} is not a story id like US-P1-003")))
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

/// Completions and the man page come from the same clap definitions as the parser, so they
/// never drift from the CLI. Neither needs the daemon, nor does the preset table.
fn generate(command: &Command, json: bool) -> Option<CmdResult> {
    let mut cli = Cli::command();
    match command {
        Command::Presets => {
            presets(json);
            Some(Ok(0))
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "sticlerctl", &mut std::io::stdout());
            Some(Ok(0))
        }
        Command::Man => Some(match clap_mangen::Man::new(cli).render(&mut std::io::stdout()) {
            Ok(()) => Ok(0),
            Err(e) => Err(CliError::Usage(format!("cannot write the man page: {e}"))),
        }),
        _ => None,
    }
}

fn run(cli: Cli) -> CmdResult {
    if let Some(result) = generate(&cli.command, cli.json) {
        return result;
    }
    let socket = client::socket_path(cli.socket.clone()).ok_or_else(|| {
        CliError::Usage("cannot choose a socket path: set STICLER_SOCKET or XDG_RUNTIME_DIR, or pass --socket".into())
    })?;
    let json = cli.json;
    let dir = cli.dir.as_deref();
    let phase_ref = |phase: &str| -> Result<PhaseRef, CliError> {
        Ok(PhaseRef { project: project_dir(dir)?, phase: phase_number(phase)? })
    };
    match &cli.command {
        Command::Demo { into } => return demo::run(into.clone()),
        // Answered by `generate` above, before a socket is needed.
        Command::Completions { .. } | Command::Man | Command::Presets => {}
        Command::Resume { phase } => done(Client::connect(&socket)?.call(Request::Resume(phase_ref(phase)?))?, json),
        Command::Ping => {
            let mut client = Client::connect(&socket)?;
            let start = std::time::Instant::now();
            client.call(Request::Ping)?;
            if json {
                print_json(&serde_json::json!({"pong": true, "micros": start.elapsed().as_micros() as u64}));
            } else {
                println!("pong from sticlerd at {} ({} µs)", socket.display(), start.elapsed().as_micros());
            }
        }
        Command::Version => {
            let mut client = Client::connect(&socket)?;
            if let Response::Version { daemon_version, protocol_version, pid } = client.call(Request::Version)? {
                if json {
                    print_json(&serde_json::json!({
                        "client_version": sticler_proto::VERSION,
                        "daemon_version": daemon_version,
                        "protocol_version": protocol_version,
                        "daemon_pid": pid,
                    }));
                } else {
                    println!(
                        "sticlerctl {}\nsticlerd {daemon_version} (pid {pid}, protocol {protocol_version})",
                        sticler_proto::VERSION
                    );
                }
            }
        }
        Command::Status { all: true, .. } => {
            let request = Request::Status { project: String::new(), phase: None, story: None };
            if let Response::StatusAll(reports) = Client::connect(&socket)?.call(request)? {
                if json {
                    print_json(&reports);
                } else if reports.is_empty() {
                    println!("sticlerd has run no phase since it started");
                } else {
                    let text: Vec<String> = reports
                        .iter()
                        .map(|r| {
                            let phases: Vec<String> = r.phases.iter().map(render::phase).collect();
                            format!("{}\n{}", r.project, phases.join("\n"))
                        })
                        .collect();
                    print!("{}", text.join("\n"));
                }
            }
        }
        Command::Status { phase, story, .. } => {
            let project = project_dir(dir)?;
            let phase = phase.as_deref().map(phase_number).transpose()?;
            let request = Request::Status { project, phase, story: story.clone() };
            if let Response::Status(report) = Client::connect(&socket)?.call(request)? {
                if json {
                    print_json(&report);
                } else if let (Some(id), Some(view)) = (story, report.phases.first()) {
                    if let Some(s) = view.stories.iter().find(|s| &s.id == id) {
                        print!("{}", render::story(view, s));
                    }
                } else if report.phases.is_empty() {
                    println!("no phases under {}/phases", report.project);
                } else {
                    let text: Vec<String> = report.phases.iter().map(render::phase).collect();
                    print!("{}", text.join("\n"));
                }
            }
        }
        Command::Validate { phase } => {
            let request = Request::Validate(phase_ref(phase)?);
            if let Response::Validated(report) = Client::connect(&socket)?.call(request)? {
                if json {
                    print_json(&report);
                } else {
                    print!("{}", render::validation(&report));
                }
                if !report.problems.is_empty() {
                    return Ok(EXIT_FAILED);
                }
            }
        }
        Command::Start { phase, force, wait } => {
            let phase = phase_ref(phase)?;
            let mut client = Client::connect(&socket)?;
            if *wait {
                // Watch first, so no event of the new run is missed.
                let mut watcher = Client::connect(&socket)?;
                watcher.send(Request::Watch {
                    project: Some(phase.project.clone()),
                    phase: Some(phase.phase),
                    since: None,
                })?;
                watcher.next()?;
                client.call(Request::Start { phase: phase.clone(), force: *force })?;
                if !json {
                    println!("started phase {} of {}", phase.phase, phase.project);
                }
                if !json && std::io::stdout().is_terminal() {
                    let outcome = progress::follow(watcher, &socket, Some((phase.project, phase.phase)), true)?;
                    println!("phase {}", outcome.as_str());
                    return Ok(outcome_code(outcome));
                }
                return follow_until_end(&mut watcher, json);
            }
            if let Response::Started(view) = client.call(Request::Start { phase: phase.clone(), force: *force })? {
                if json {
                    print_json(&view);
                } else {
                    println!(
                        "started phase {} of {} ({} stories); follow with `sticlerctl watch {}`",
                        view.phase, view.project, view.counts.total, view.phase
                    );
                }
            }
        }
        Command::Stop { phase, grace } => {
            let request = Request::Stop { phase: phase_ref(phase)?, grace_secs: Some(*grace) };
            done(Client::connect(&socket)?.call(request)?, json);
        }
        Command::Kill { phase } => done(Client::connect(&socket)?.call(Request::Kill(phase_ref(phase)?))?, json),
        Command::Retry { stories, failed } => {
            let request = match failed {
                Some(phase) => Request::Retry { phase: phase_ref(phase)?, stories: vec![], all_failed: true },
                None => {
                    let phase = story_phase(&stories[0])?;
                    for s in stories {
                        if story_phase(s)? != phase {
                            return Err(CliError::Usage("retry stories of one phase at a time".into()));
                        }
                    }
                    Request::Retry {
                        phase: PhaseRef { project: project_dir(dir)?, phase },
                        stories: stories.clone(),
                        all_failed: false,
                    }
                }
            };
            done(Client::connect(&socket)?.call(request)?, json);
        }
        Command::Logs { story, iteration, follow } => {
            let phase = PhaseRef { project: project_dir(dir)?, phase: story_phase(story)? };
            let mut client = Client::connect(&socket)?;
            client.send(Request::Logs { phase, story: story.clone(), iteration: *iteration, follow: *follow })?;
            let mut out = std::io::stdout().lock();
            let mut shown = None;
            loop {
                match client.next()? {
                    ServerMessage::Response(Response::LogChunk { iteration, data }) => {
                        if json {
                            let text = String::from_utf8_lossy(&data);
                            let _ = writeln!(out, "{}", serde_json::json!({"iteration": iteration, "data": text}));
                        } else {
                            if *follow && shown != Some(iteration) {
                                let _ = writeln!(out, "--- {story} iteration {iteration} ---");
                            }
                            let _ = out.write_all(&data);
                        }
                        shown = Some(iteration);
                        let _ = out.flush();
                    }
                    ServerMessage::Response(Response::LogEnd) => break,
                    other => return Err(ClientError::Protocol(format!("unexpected {other:?}")).into()),
                }
            }
        }
        Command::Watch { phase, since } => {
            let (project, phase) = match phase {
                Some(p) => (Some(project_dir(dir)?), Some(phase_number(p)?)),
                None => (cli.dir.as_ref().map(|_| project_dir(dir)).transpose()?, None),
            };
            let mut client = Client::connect(&socket)?;
            client.send(Request::Watch { project: project.clone(), phase, since: *since })?;
            if !json && std::io::stdout().is_terminal() {
                let start = project.zip(phase);
                progress::follow(client, &socket, start, false)?;
                return Ok(0);
            }
            loop {
                match client.next()? {
                    ServerMessage::Event(event) => print_event(&event, json),
                    ServerMessage::Response(Response::WatchStarted { .. }) => {}
                    other => return Err(ClientError::Protocol(format!("unexpected {other:?}")).into()),
                }
            }
        }
        Command::Wait { phase } => {
            let mut client = Client::connect(&socket)?;
            if let Response::Waited { outcome } = client.call(Request::Wait(phase_ref(phase)?))? {
                if json {
                    print_json(&serde_json::json!({"outcome": outcome}));
                } else {
                    println!("phase {}", outcome.as_str());
                }
                return Ok(outcome_code(outcome));
            }
        }
        Command::Shutdown => {
            Client::connect(&socket)?.call(Request::Shutdown)?;
            if !json {
                println!("sticlerd is shutting down");
            }
        }
    }
    Ok(0)
}

/// The preset table, with the exact command each preset runs (placeholders unexpanded).
fn presets(json: bool) {
    let presets = sticler_proto::preset::PRESETS;
    if json {
        print_json(&presets);
        return;
    }
    for p in presets {
        println!("{}: {}", p.name, p.summary);
        let argv: Vec<String> = p.argv.iter().map(|a| shell_word(a)).collect();
        println!("  command: {}", argv.join(" "));
        println!("  stdin:   {}", if p.stdin == "spec" { "the story's spec.md" } else { "nothing (/dev/null)" });
        println!(
            "  limits:  {}",
            if p.limit_patterns.is_empty() { "-".into() } else { p.limit_patterns.join("  |  ") }
        );
        println!("  note:    {}\n", p.note);
    }
}

/// `word` as a shell would need it written.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./{}=:".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn done(response: Response, json: bool) {
    if let Response::Done { message } = response {
        if json {
            print_json(&serde_json::json!({"message": message}));
        } else {
            println!("{message}");
        }
    }
}

fn outcome_code(outcome: RunOutcome) -> u8 {
    match outcome {
        RunOutcome::Completed => 0,
        RunOutcome::Failed => 4,
        RunOutcome::Stopped => 5,
    }
}

/// One event: a JSON object per line with `--json`, else a line of text.
fn print_event(event: &sticler_proto::Event, json: bool) {
    if json {
        println!("{}", serde_json::to_string(event).unwrap_or_default());
    } else {
        println!("{}", render::event(event));
    }
}

/// Prints events of a watch until the run ends; returns the `wait` exit code.
fn follow_until_end(watcher: &mut Client, json: bool) -> CmdResult {
    loop {
        match watcher.next()? {
            ServerMessage::Event(event) => {
                print_event(&event, json);
                if let EventKind::RunEnded { outcome, .. } = event.kind {
                    return Ok(outcome_code(outcome));
                }
            }
            ServerMessage::Response(_) => {}
            other => return Err(ClientError::Protocol(format!("unexpected {other:?}")).into()),
        }
    }
}
