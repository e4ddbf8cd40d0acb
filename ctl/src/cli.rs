//! The command line: clap definitions only. Completions and the man page are generated from
//! them too, so the help, the parser and the docs cannot drift apart.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
pub struct Cli {
    /// Daemon socket [default: $STICLER_SOCKET, else $XDG_RUNTIME_DIR/sticler/sticlerd.sock,
    /// else /run/sticler/sticlerd.sock for root]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output: one JSON document (or one per line for streams)
    #[arg(long, global = true)]
    pub json: bool,
    /// Project folder (or any folder inside it)
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        /// Every phase sticlerd runs or has run (also before a restart), of all projects (no -C needed)
        #[arg(long, conflicts_with_all = ["phase", "story"])]
        all: bool,
        /// Phase number (`1` or `phase_1`); every phase of the project when left out
        phase: Option<String>,
        /// Story id (narrows to one story)
        story: Option<String>,
    },
    /// Check a phase without running it (no daemon needed): ids, dependencies, cycles, spec.md,
    /// JSON syntax and field types, orchestrator.config.json
    #[command(after_help = "Example:\n  sticlerctl validate 1")]
    Validate {
        /// Phase number (`1` or `phase_1`)
        phase: String,
    },
    /// Start (or resume) a phase
    #[command(
        after_help = "Examples:\n  sticlerctl start 1\n  sticlerctl start 1 --wait     # follow progress, exit like `wait`\n  sticlerctl start 1 --force    # run a completed phase again"
    )]
    Start {
        /// Phase number (`1` or `phase_1`)
        phase: String,
        /// Start even if phase_config.json says completed, discussing or finalized; stories
        /// completed on disk are not run again (see `retry --completed`)
        #[arg(long)]
        force: bool,
        /// Stay attached, show progress, and exit like `wait`
        #[arg(long)]
        wait: bool,
    },
    /// Stop a phase: SIGTERM to every worker, SIGKILL after the grace period; resumable
    #[command(after_help = "Example:\n  sticlerctl stop 1 --grace 30")]
    Stop {
        /// Phase number (`1` or `phase_1`); one that is not running is told so, exit 0
        phase: String,
        /// Seconds between SIGTERM and SIGKILL
        #[arg(long, value_name = "S", default_value_t = 10)]
        grace: u64,
    },
    /// Stop a phase at once (SIGKILL)
    #[command(after_help = "Example:\n  sticlerctl kill 1")]
    Kill {
        /// Phase number (`1` or `phase_1`); one that is not running is told so, exit 0
        phase: String,
    },
    /// Put failed (or blocked) stories back to pending and run them again; with --completed,
    /// completed stories
    #[command(
        after_help = "Examples:\n  sticlerctl retry US-P1-003 US-P1-004\n  sticlerctl retry --failed 1\n  sticlerctl retry --completed US-P1-001 && sticlerctl start 1 --force\n\n--completed puts completed stories of a phase that is not running back to pending: status.json\ngets `\"status\": \"pending\"` and an empty commit_hash (the story's commit stays in the history),\nits other fields are kept. The next start runs them again (`start --force` when the phase is\ncompleted); each gets a new [US-PN-XXX] commit, and the phase a new [Phase N] commit once all\nits stories are completed again. Stories that depend on them and are completed stay completed:\nname them too to run them again."
    )]
    Retry {
        /// Story ids
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        stories: Vec<String>,
        /// Every failed or blocked story of this phase
        #[arg(long, value_name = "PHASE")]
        failed: Option<String>,
        /// The stories named are completed ones, to run again (the phase must not be running)
        #[arg(long, conflicts_with = "failed")]
        completed: bool,
    },
    /// Show a story's worker output, one log per iteration
    #[command(
        after_help = "Examples:\n  sticlerctl logs US-P1-003              # latest iteration\n  sticlerctl logs US-P1-003 --iteration 2\n  sticlerctl logs US-P1-003 --all        # every iteration, in order\n  sticlerctl logs US-P1-003 --tail 20    # the last 20 lines of the latest iteration\n  sticlerctl logs US-P1-003 -f           # follow, across iterations"
    )]
    Logs {
        /// Story id, such as US-P1-003
        story: String,
        /// Show this iteration (numbered from 1) instead of the latest
        #[arg(long, value_name = "K", conflicts_with = "all")]
        iteration: Option<u32>,
        /// Follow new output and move on to the next iteration until the run ends
        #[arg(short, long)]
        follow: bool,
        /// Show every iteration's log in order, each under its header line
        #[arg(long)]
        all: bool,
        /// Show only the last N lines of the iteration shown (then follow whole with -f)
        #[arg(long, value_name = "N", conflicts_with = "all")]
        tail: Option<u32>,
    },
    /// Stream events (story started, iteration ended, completed, failed, phase ended)
    #[command(after_help = "Examples:\n  sticlerctl watch\n  sticlerctl watch 1 --json")]
    Watch {
        /// Phase number (`1` or `phase_1`); every phase (of the project of -C, else of all
        /// projects) when left out
        phase: Option<String>,
        /// Replay stored events after this sequence number first
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// Block until the phase's run ends; exit 0 completed, 4 failed, 5 stopped
    #[command(after_help = "Example:\n  sticlerctl wait 1 && echo done")]
    Wait {
        /// Phase number (`1` or `phase_1`)
        phase: String,
    },
    /// End the project's wait for an agent's usage limit now; iterations start again at once
    #[command(
        after_help = "Examples:\n  sticlerctl resume 1          # the project of phase 1 stops waiting\n  sticlerctl -C ~/my-project resume 2"
    )]
    Resume {
        /// Phase number (`1` or `phase_1`) of the project whose wait ends
        phase: String,
    },
    /// Remove the worktrees a phase kept (failed stories' work, for inspection) and its stories' branches
    #[command(
        after_help = "Removes what `\"workspace\": \"worktree\"` left for a phase that is not running: the worktrees\nkept for failed stories and the sticler/phase-N/<story> branches of stories that completed or failed.\nBranches holding unmerged work of pending stories (a stopped run) stay.\n\nExample:\n  sticlerctl clean 1"
    )]
    Clean {
        /// Phase number (`1` or `phase_1`)
        phase: String,
    },
    /// List the worker presets (coding agents) and the exact command each runs
    #[command(
        after_help = "Examples:\n  sticlerctl presets\n  sticlerctl --json presets | jq '.[] | select(.name == \"claude\") | .argv'\n\nUse one in orchestrator.config.json: {\"worker\": {\"preset\": \"claude\", \"args\": [\"--model\", \"opus\"]}}"
    )]
    Presets,
    /// Ask the daemon to stop (workers are stopped gracefully; runs resume on restart)
    #[command(
        after_help = "Examples:\n  sticlerctl shutdown\n  sticlerctl shutdown --keep-workers   # a planned restart: the next sticlerd adopts the workers"
    )]
    Shutdown {
        /// Leave the workers running; the next sticlerd adopts them and judges them at their end
        #[arg(long)]
        keep_workers: bool,
    },
    /// Re-execute sticlerd from its binary on disk, under the same pid, workers kept running
    #[command(
        after_help = "After installing a new sticlerd binary over the old one:\n  sticlerctl upgrade\n\nThe daemon flushes its state and re-executes itself in place: its workers stay its children,\nthe socket keeps its path, `watch` and `logs -f` reconnect and resume where they were."
    )]
    Upgrade,
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
    /// Serve a live web dashboard of the project's phases on 127.0.0.1 (graph, stories, logs, controls)
    #[command(
        after_help = "Prints http://127.0.0.1:PORT/?token=... and opens it when there is a desktop; Ctrl-C stops it.\nThe token keeps other users of this machine out; the address works only on this machine.\nFrom another machine: ssh -L 8080:127.0.0.1:8080 devbox, run `sticlerctl dashboard --port 8080 --no-open`\non devbox, and open the printed address locally.\n\nExamples:\n  sticlerctl dashboard\n  sticlerctl dashboard --port 8080 --no-open\n  sticlerctl --json dashboard --no-open | head -1 | jq -r .url"
    )]
    Dashboard {
        /// TCP port on 127.0.0.1 [default: a free one]
        #[arg(long, value_name = "N", default_value_t = 0)]
        port: u16,
        /// Do not open a browser; only print the address
        #[arg(long)]
        no_open: bool,
    },
    /// Run the bundled example project with a scripted worker on a private daemon
    #[command(after_help = "Example:\n  sticlerctl demo")]
    Demo {
        /// Where to put the demo project [default: a new temporary folder]
        #[arg(long, value_name = "DIR")]
        into: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_argument_and_option_has_a_help_text() {
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        for arg in cli.get_arguments() {
            if arg.get_help().is_none() {
                missing.push(format!("sticlerctl {}", arg.get_id()));
            }
        }
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && arg.get_id() != "help" && arg.get_id() != "version" {
                    missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
