//! systemd's readiness protocol (sd_notify): `KEY=VALUE` lines in one datagram to the socket
//! named by `NOTIFY_SOCKET`. Small enough to speak directly over a `UnixDatagram` instead of
//! linking libsystemd.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::daemon::Daemon;

/// The notification socket and the watchdog interval systemd asked for.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` as systemd gave them, handed to the next image of an
    /// upgrade in place.
    path: String,
    watchdog_usec: Option<u64>,
    /// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends; None when no watchdog.
    pub watchdog: Option<Duration>,
    /// Set once STOPPING=1 is sent; held while sending STATUS so that no update of the
    /// running counts can overwrite the stopping status.
    stopping: Mutex<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract name (@...)")]
    BadAddress(String),
    #[error("cannot reach NOTIFY_SOCKET {path:?}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from the
    /// environment so that workers (which inherit it) never talk to systemd as if they were
    /// the daemon. Must run before any thread exists, since it changes the environment.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        let path = std::env::var("NOTIFY_SOCKET").ok().filter(|p| !p.is_empty());
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok().and_then(|u| u.parse::<u64>().ok());
        // A watchdog meant for another process (WATCHDOG_PID) is not ours to feed.
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok());
        let for_us = !matches!(watchdog_pid, Some(pid) if pid != std::process::id());
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        let Some(path) = path else { return Ok(None) };
        let addr = address(&path)?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Io { path: path.clone(), source })?;
        let watchdog_usec = watchdog_usec.filter(|u| *u > 0 && for_us);
        let watchdog = watchdog_usec.map(|u| Duration::from_micros(u / 2));
        Ok(Some(Notifier { socket, addr, path, watchdog_usec, watchdog, stopping: Mutex::new(false) }))
    }

    /// `RELOADING=1` (with the monotonic time systemd wants along) before an upgrade in place;
    /// the new image's `READY=1` ends the reload. Later `status` calls are ignored.
    pub fn reloading(&self) {
        let mut stopping = crate::lock::lock(&self.stopping);
        *stopping = true;
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the time into the timespec it is given, nothing else.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let now = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS=upgrading in place: workers keep running"));
    }

    /// The variables that let the next image of an upgrade in place notify systemd as this one.
    pub fn handover_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("NOTIFY_SOCKET".to_string(), self.path.clone())];
        if let Some(usec) = self.watchdog_usec {
            env.push(("WATCHDOG_USEC".into(), usec.to_string()));
            env.push(("WATCHDOG_PID".into(), std::process::id().to_string()));
        }
        env
    }

    /// `STATUS=text`, unless the daemon is stopping.
    pub fn status(&self, text: &str) {
        let stopping = crate::lock::lock(&self.stopping);
        if !*stopping {
            self.send(&format!("STATUS={text}"));
        }
    }

    /// `STOPPING=1` with a status saying so; later `status` calls are ignored. Sent from the
    /// shutdown path itself (not a task) so it is out before the daemon exits.
    pub fn stopping(&self) {
        let mut stopping = crate::lock::lock(&self.stopping);
        *stopping = true;
        self.send("STOPPING=1\nSTATUS=stopping: workers get SIGTERM, then SIGKILL after the grace period");
    }

    /// Sends one message (`READY=1`, `WATCHDOG=1`). Failures are logged, never fatal: a
    /// daemon that cannot talk to systemd still serves its clients.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::warn!("sd_notify {message:?} failed: {e}");
        }
    }
}

/// `@name` is an abstract socket (the `@` stands for the leading NUL byte), else a path.
fn address(text: &str) -> Result<SocketAddr, NotifyError> {
    let io = |source| NotifyError::Io { path: text.to_string(), source };
    if let Some(name) = text.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)
    } else if text.starts_with('/') {
        SocketAddr::from_pathname(text).map_err(io)
    } else {
        Err(NotifyError::BadAddress(text.to_string()))
    }
}

/// `STATUS=` text: how many runs are active and how many stories are running in them.
pub fn status_line(daemon: &Daemon) -> String {
    let runs = daemon.active_runs();
    let running: usize = runs.iter().map(|run| run.running_stories()).sum();
    if runs.is_empty() {
        return "idle, no run active".to_string();
    }
    let runs = sticler_proto::counted(runs.len() as u64, "run", "runs");
    format!("{runs}, {} running", sticler_proto::counted(running as u64, "story", "stories"))
}

/// Keeps systemd informed for the daemon's whole life: `WATCHDOG=1` every half watchdog
/// interval (from the runtime, so a wedged runtime stops feeding it and systemd restarts us;
/// it goes on while workers are being stopped) and, until shutdown begins, `STATUS=` when the
/// text changes, at most once a second.
///
/// The status is read a moment after each event and every few seconds anyway: an event may be
/// emitted just before the run's live state that the status reads is updated (a run ending is
/// removed from the active runs after its last event), and the recheck makes such a status
/// right shortly after, without any event.
pub async fn keep_informed(notifier: Arc<Notifier>, daemon: Arc<Daemon>) {
    const MIN_GAP: Duration = Duration::from_secs(1);
    const SETTLE: Duration = Duration::from_millis(50);
    const RECHECK: Duration = Duration::from_secs(2);
    let mut events = daemon.bus.subscribe();
    let mut shutdown = daemon.shutdown.subscribe();
    let mut stopping = false;
    // READY=1 went out with this status.
    let mut last_status = status_line(&daemon);
    let mut last_sent = Instant::now();
    let mut next_check = Instant::now() + RECHECK;
    let far = Duration::from_secs(3600);
    let mut next_watchdog = Instant::now() + notifier.watchdog.unwrap_or(far);
    loop {
        if stopping && notifier.watchdog.is_none() {
            return;
        }
        tokio::select! {
            event = events.recv(), if !stopping => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let soon = (last_sent + MIN_GAP).max(Instant::now() + SETTLE);
                    next_check = next_check.min(soon);
                }
                Err(RecvError::Closed) => stopping = true,
            },
            _ = tokio::time::sleep_until(next_check), if !stopping => {
                let status = status_line(&daemon);
                if status != last_status {
                    notifier.status(&status);
                    last_status = status;
                    last_sent = Instant::now();
                }
                next_check = Instant::now() + RECHECK;
            }
            _ = tokio::time::sleep_until(next_watchdog), if notifier.watchdog.is_some() => {
                notifier.send("WATCHDOG=1");
                next_watchdog = Instant::now() + notifier.watchdog.unwrap_or(far);
            }
            _ = shutdown.wait_for(|down| *down), if !stopping => stopping = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(address("/run/systemd/notify").unwrap().as_pathname().is_some());
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(address("@sticler/notify").unwrap().as_abstract_name(), Some(&b"sticler/notify"[..]));
        assert!(matches!(address("relative/path"), Err(NotifyError::BadAddress(_))));
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sticler-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: address(&format!("@{name}")).unwrap(),
            path: format!("@{name}"),
            watchdog_usec: None,
            watchdog: None,
            stopping: Mutex::new(false),
        };
        notifier.send("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    /// An upgrade in place says RELOADING=1 with the monotonic time systemd asks for, silences
    /// later status lines, and hands the next image the same socket.
    #[test]
    fn an_upgrade_says_reloading_and_hands_over_the_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sticler-notify-reload-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: address(&format!("@{name}")).unwrap(),
            path: format!("@{name}"),
            watchdog_usec: Some(30_000_000),
            watchdog: Some(Duration::from_secs(15)),
            stopping: Mutex::new(false),
        };
        notifier.reloading();
        notifier.status("2 runs");
        listener.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines.next().and_then(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap().parse().unwrap();
        assert!(usec > 0);
        assert!(listener.recv(&mut buf).is_err(), "no status after RELOADING=1");
        let env = notifier.handover_env();
        assert!(env.contains(&("NOTIFY_SOCKET".into(), format!("@{name}"))));
        assert!(env.contains(&("WATCHDOG_USEC".into(), "30000000".into())));
        assert!(env.contains(&("WATCHDOG_PID".into(), std::process::id().to_string())));
    }
}
