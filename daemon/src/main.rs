//! `sticlerd`: the daemon. Thin edge: arguments, logging, start-up order and shutdown.

mod adopt;
mod cleanup;
mod connection;
mod daemon;
mod events;
mod git;
mod git_locks;
mod git_show;
mod git_stage;
mod handler;
mod ledger;
mod logging;
mod logs;
mod missed;
mod notify;
mod paths;
mod pause;
mod reaper;
mod recover;
mod run;
mod server;
mod slots;
mod slurm;
mod slurm_queue;
mod spawn;
mod store;
mod stream;
#[cfg(test)]
mod testkit;
mod tree_diff;
mod upgrade;
mod views;
mod worker;
mod workspace;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};

use sticlerd::{agent_output, listing, lock, phase, project, scheduler};

use crate::daemon::{Daemon, Ending, DEFAULT_GRACE};
use crate::run::RunMsg;

/// sticlerd runs development phases of AI-built projects: it starts a fresh worker process per
/// iteration of each ready story, watches status.json, and closes the phase.
///
/// Clients talk to it with `sticlerctl` over a Unix socket (mode 0600, same uid or root only).
///
/// Example:
///   sticlerd --foreground --max-workers 4
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Socket path [default: $STICLER_SOCKET, else $XDG_RUNTIME_DIR/sticler/sticlerd.sock,
    /// else /run/sticler/sticlerd.sock for root]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Folder for the store and the iteration logs [default: $XDG_STATE_HOME/sticler, else
    /// ~/.local/state/sticler, or /var/lib/sticler for root]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Most workers running at once, over all phases and projects
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_workers: u32,
    /// Stay in the foreground (always the case under systemd, where NOTIFY_SOCKET is set)
    #[arg(long)]
    foreground: bool,
    /// Log filter when RUST_LOG is not set (error, warn, info, debug, trace)
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
    /// Where logs go; `auto` picks journald when systemd connected stderr to the journal
    #[arg(long, value_name = "TARGET", value_enum, default_value_t = logging::LogTarget::Auto)]
    log_target: logging::LogTarget,
    /// Do not serve: kill the workers the last sticlerd of this state dir left, unless they are
    /// left for the next one to adopt (it failed, per $SERVICE_RESULT, or was shut down with
    /// --keep-workers). For systemd's ExecStopPost=
    #[arg(long)]
    cleanup: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match start(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sticlerd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    // Read (and taken out of the environment) before any thread exists.
    let inherited = upgrade::Inherited::from_env();
    // Under systemd (Type=notify) the service manager tracks this very process: never fork. An
    // upgraded image is in the background already, when it should be.
    let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    let background = !args.foreground && !under_systemd && inherited.is_none();
    // Colours only for a terminal that stays ours: in the background stderr becomes a file.
    let colours = !background && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let target = logging::init(args.log_target, &args.log_level, colours)?;
    if args.cleanup {
        let state_dir = paths::state_dir(args.state_dir.clone())?;
        cleanup::run(&state_dir, std::env::var("SERVICE_RESULT").ok().as_deref())?;
        return Ok(());
    }
    // Read (and take out of the environment, so workers do not inherit it) before any thread
    // exists. A bad NOTIFY_SOCKET is logged but does not stop the daemon from serving.
    let notifier = notify::Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("{e}; not notifying systemd");
        None
    });

    // Everything the daemon creates (store, logs, socket) is private whatever the umask it was
    // started with; workers get the original umask back.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let user_umask = inherited.as_ref().map_or(umask, |i| i.user_umask);
    let socket = paths::socket_path(args.socket.clone())?;
    let state_dir = paths::state_dir(args.state_dir.clone())?;
    // Forking must happen before any thread exists (the runtime, the reaper).
    let ready = if background { Some(daemonize(&state_dir)?) } else { None };
    let notifier = notifier.map(Arc::new);
    let places = Places { socket: &socket, state_dir: &state_dir, user_umask };
    let result = serve(&args, &places, ready, notifier.clone(), inherited.map(|i| i.listener));
    let result = match result {
        Ok(Some(listener)) => {
            let extra = notifier.map(|n| n.handover_env()).unwrap_or_default();
            Err(anyhow::Error::from(upgrade::reexec(&listener, user_umask, &extra))
                .context("cannot re-execute sticlerd"))
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    // `main` prints the error on stderr; logging it too would show it twice where the logs go
    // to that same stderr (a second daemon started by hand), so only journald gets it as a log.
    if let (Err(e), logging::LogTarget::Journald) = (&result, target) {
        tracing::error!("{e:#}");
    }
    result
}

/// Forks; the parent waits until the child reports readiness (or an error) on a pipe and
/// exits with that. Returns the write end in the child.
fn daemonize(state_dir: &std::path::Path) -> anyhow::Result<OwnedFd> {
    let (read_end, write_end) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: no other thread exists yet (checked by the call order in `start`).
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            let mut text = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut text);
            match text.strip_prefix("ready ") {
                Some(rest) => {
                    println!("sticlerd started: {}", rest.trim());
                    std::process::exit(0)
                }
                None if text.is_empty() => {
                    eprintln!("sticlerd: the daemon exited during start-up; see {}/sticlerd.log", state_dir.display());
                    std::process::exit(1)
                }
                None => {
                    eprint!("{text}");
                    std::process::exit(1)
                }
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            nix::unistd::setsid().context("setsid")?;
            paths::private_dir(state_dir)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(state_dir.join("sticlerd.log"))
                .context("open sticlerd.log")?;
            let devnull = std::fs::File::open("/dev/null").context("/dev/null")?;
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), 0).context("dup2")?;
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), 1).context("dup2")?;
            nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), 2).context("dup2")?;
            Ok(write_end)
        }
    }
}

fn report(ready: &mut Option<OwnedFd>, text: &str) {
    if let Some(fd) = ready.take() {
        let mut pipe = std::fs::File::from(fd);
        let _ = pipe.write_all(text.as_bytes());
    }
}

/// What the daemon holds before it serves: its folders, the pid locks of the state dir and the
/// socket, the store, the event bus, the reaper, the log files and the spawner.
type Held = (paths::PidLock, paths::PidLock, Arc<store::Store>, Arc<Daemon>);

/// Where the daemon lives, and the umask its workers get.
struct Places<'a> {
    socket: &'a std::path::Path,
    state_dir: &'a std::path::Path,
    user_umask: nix::sys::stat::Mode,
}

/// `upgraded`: this image replaced one that left workers as its children; the reaper waits
/// for recovery to claim them.
fn open_state(args: &Args, places: &Places, upgraded: bool) -> anyhow::Result<Held> {
    let Places { socket, state_dir, user_umask } = *places;
    paths::private_dir(state_dir)?;
    let socket_dir = socket.parent().context("socket path has no folder")?;
    if !socket_dir.exists() {
        paths::private_dir(socket_dir)?;
    }
    let state_lock = paths::PidLock::acquire(&state_dir.join("sticlerd.pid"))?;
    let socket_lock = paths::PidLock::acquire(&lock_path(socket))?;
    // This daemon adopts what a `shutdown --keep-workers` left: the marker has served.
    let _ = std::fs::remove_file(cleanup::kept_marker(state_dir));
    let store = Arc::new(store::Store::open(state_dir)?);
    let bus = events::EventBus::new(Arc::clone(&store))?;
    git::configure();
    let reaper = reaper::Reaper::start(upgraded).context("cannot become a child subreaper")?;
    let logs = logs::LogFiles::start(state_dir.join("logs")).context("cannot start the log file thread")?;
    let spawner = spawn::Spawner::start(reaper, user_umask).context("cannot start the spawning thread")?;
    let mut daemon = Daemon::new(bus, spawner, logs, args.max_workers as usize, state_dir.to_path_buf());
    daemon.user_umask = user_umask.bits();
    Ok((state_lock, socket_lock, store, Arc::new(daemon)))
}

/// Serves until the shutdown. Returns the listening socket when the daemon is to re-execute
/// itself (an upgrade in place).
fn serve(
    args: &Args,
    places: &Places,
    mut ready: Option<OwnedFd>,
    notifier: Option<Arc<notify::Notifier>>,
    inherited: Option<OwnedFd>,
) -> anyhow::Result<Option<OwnedFd>> {
    let (socket, state_dir) = (places.socket, places.state_dir);
    let result = open_state(args, places, inherited.is_some());
    let (_state_lock, _socket_lock, store, daemon) = match result {
        Ok(parts) => parts,
        Err(e) => {
            report(&mut ready, &format!("sticlerd: {e:#}\n"));
            return Err(e);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (ending, listen_fd) = runtime.block_on(async {
        let bound = match inherited {
            Some(fd) => server::from_fd(fd).map_err(anyhow::Error::from),
            None => server::bind(socket).map_err(anyhow::Error::from),
        };
        let listener = match bound {
            Ok(l) => l,
            Err(e) => {
                report(&mut ready, &format!("sticlerd: {e}\n"));
                return Err(e);
            }
        };
        // A copy of the listening socket (close-on-exec) to hand to the next image of an upgrade.
        let listen_fd = server::listener_fd(&listener).context("cannot copy the listening socket")?;
        tracing::info!(socket = %socket.display(), state_dir = %state_dir.display(), pid = std::process::id(), "sticlerd {} ready", sticler_proto::VERSION);
        report(&mut ready, &format!("ready pid {}, socket {}\n", std::process::id(), socket.display()));
        recover::recover(&daemon).await;
        daemon.spawner.reaper().release();
        let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]).context("signal handlers")?;
        let shutdown_tx = daemon.shutdown.clone();
        tokio::spawn(async move {
            if let Some(sig) = signals.next().await {
                tracing::info!(signal = sig, "shutting down");
                shutdown_tx.send_replace(true);
            }
        });
        let mut shutdown = daemon.shutdown.subscribe();
        let server = tokio::spawn(server::serve(listener, Arc::clone(&daemon), daemon.shutdown.subscribe()));
        if let Some(notifier) = &notifier {
            // The listener is bound and its accept loop spawned: clients are served from now on.
            notifier.send(&format!("READY=1\nSTATUS={}", notify::status_line(&daemon)));
            tokio::spawn(notify::keep_informed(Arc::clone(notifier), Arc::clone(&daemon)));
        }
        let _ = shutdown.wait_for(|down| *down).await;
        let ending = end_runs(&daemon, notifier.as_deref()).await;
        server.abort();
        if let Err(e) = daemon.bus.close() {
            tracing::warn!(error = %e, "could not give back the reserved event numbers");
        }
        Ok((ending, listen_fd))
    })?;
    // Connections still open are closed with the runtime: their clients see a clean end.
    drop(runtime);
    after_serving(ending, places, &store, listen_fd)
}

/// The end of `serve`, with the runtime gone: the socket removed (kept for the next image of
/// an upgrade, which is handed `listen_fd`), the store flushed.
fn after_serving(
    ending: Ending,
    places: &Places,
    store: &store::Store,
    listen_fd: OwnedFd,
) -> anyhow::Result<Option<OwnedFd>> {
    let (socket, state_dir) = (places.socket, places.state_dir);
    if ending != Ending::Upgrade {
        if let Err(e) = std::fs::remove_file(socket) {
            tracing::warn!("cannot remove {}: {e}", socket.display());
        }
    }
    store.flush().context("flushing the store")?;
    match ending {
        Ending::StopWorkers => tracing::info!("sticlerd stopped"),
        Ending::KeepWorkers => {
            // Tells `--cleanup` (systemd's ExecStopPost) to leave them.
            if let Err(e) = std::fs::write(cleanup::kept_marker(state_dir), b"") {
                tracing::warn!("cannot mark the workers as kept: {e}");
            }
            tracing::info!("sticlerd stopped; its workers keep running for the next one to adopt");
        }
        Ending::Upgrade => return Ok(Some(listen_fd)),
    }
    Ok(None)
}

fn lock_path(socket: &std::path::Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Ends the runs as the shutdown asked (see `Ending`), telling systemd first.
async fn end_runs(daemon: &Daemon, notifier: Option<&notify::Notifier>) -> Ending {
    let ending = daemon.ending();
    match (notifier, ending) {
        (Some(notifier), Ending::Upgrade) => notifier.reloading(),
        // keep_informed goes on feeding the watchdog while the workers are stopped.
        (Some(notifier), _) => notifier.stopping(),
        (None, _) => {}
    }
    match ending {
        Ending::StopWorkers => stop_all_runs(daemon).await,
        Ending::KeepWorkers | Ending::Upgrade => detach_all_runs(daemon).await,
    }
    ending
}

/// Ends every run's task leaving its workers running, resumable (with its workers adopted) by
/// the next daemon, and waits for the tasks to end.
async fn detach_all_runs(daemon: &Daemon) {
    for run in daemon.active_runs() {
        let _ = run.tx.send(RunMsg::Detach);
    }
    let mut active = daemon.active_count();
    if tokio::time::timeout(Duration::from_secs(10), active.wait_for(|runs| *runs == 0)).await.is_err() {
        tracing::warn!("{} run(s) did not end in time", daemon.active_runs().len());
    }
}

/// Stops every run gracefully, resumable by the next daemon, and waits for them to end
/// (grace period plus a margin).
async fn stop_all_runs(daemon: &Daemon) {
    for run in daemon.active_runs() {
        run.stop(RunMsg::Interrupt { grace: DEFAULT_GRACE });
    }
    let mut active = daemon.active_count();
    let all_ended = active.wait_for(|runs| *runs == 0);
    if tokio::time::timeout(DEFAULT_GRACE + Duration::from_secs(5), all_ended).await.is_err() {
        tracing::warn!("{} run(s) did not end in time", daemon.active_runs().len());
    }
}
