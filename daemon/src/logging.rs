//! Where the daemon's log goes: journald with structured fields under systemd, readable lines
//! on stderr otherwise.
//!
//! Under journald every field of an event and of its spans becomes a journal field with its
//! name upper-cased (`story_id` → `STORY_ID`), so `journalctl -u sticlerd STORY_ID=US-P1-003`
//! finds one story's history. The run span carries `project` and `phase`; events about a story
//! carry `story_id` and, per iteration, `iteration`.

use std::os::fd::AsRawFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// journald when stderr is connected to the journal (JOURNAL_STREAM), else stderr
    Auto,
    /// The native journald protocol (/run/systemd/journal/socket), with structured fields
    Journald,
    /// Human-readable lines on stderr
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("bad log filter {filter:?} (try info, debug or sticlerd=debug): {source}")]
    Filter { filter: String, source: tracing_subscriber::filter::ParseError },
    #[error("cannot reach journald at /run/systemd/journal/socket: {0}; use --log-target stderr")]
    Journald(std::io::Error),
}

/// Installs the global subscriber. The filter is `RUST_LOG` when set, else `level`; `colours`
/// only when stderr is a terminal (a log file gets plain lines). Returns the target chosen, so
/// `auto` can be reported.
pub fn init(target: LogTarget, level: &str, colours: bool) -> Result<LogTarget, LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(&env).map_err(|source| LoggingError::Filter { filter: env, source })
        }
        _ => EnvFilter::try_new(level).map_err(|source| LoggingError::Filter { filter: level.to_string(), source }),
    }?;
    let journald = match target {
        LogTarget::Stderr => None,
        LogTarget::Journald => Some(journald_layer().map_err(LoggingError::Journald)?),
        // Auto falls back to stderr when journald does not answer: stderr still reaches the
        // journal through the stream systemd gave us, only without the structured fields.
        LogTarget::Auto if stderr_is_journal() => journald_layer().ok(),
        LogTarget::Auto => None,
    };
    let chosen = if journald.is_some() { LogTarget::Journald } else { LogTarget::Stderr };
    let stderr =
        journald.is_none().then(|| tracing_subscriber::fmt::layer().with_ansi(colours).with_writer(std::io::stderr));
    tracing_subscriber::registry().with(filter).with(journald).with(stderr).init();
    Ok(chosen)
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    // No prefix: fields keep their own names (STORY_ID, not F_STORY_ID), as the README promises.
    Ok(tracing_journald::layer()?.with_field_prefix(None).with_syslog_identifier("sticlerd".into()))
}

/// True when stderr is the journal stream systemd set up for this service: `JOURNAL_STREAM`
/// holds `device:inode` of that stream, and it must match our stderr (a child that inherited
/// the variable but not the stream, e.g. with stderr redirected to a file, must not use it).
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<libc::dev_t>(), ino.parse::<libc::ino_t>()) else { return false };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}
