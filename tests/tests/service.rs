//! Running under systemd: the sd_notify protocol on a real datagram socket, and structured
//! logs read back from a real systemd-journald.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sticler_tests::{bin, describe, have_tool, poll, story, Daemon, ProjectBuilder};

/// Every datagram that arrives on a notify socket, in order, collected by a thread.
struct NotifyListener {
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifyListener {
    fn bind(socket: UnixDatagram) -> NotifyListener {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifyListener { messages }
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Every `KEY=value` line received so far, across datagrams.
    fn lines(&self) -> Vec<String> {
        self.all().iter().flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>()).collect()
    }

    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        poll(Duration::from_secs(20), what, || self.lines().into_iter().find(|l| pred(l)))
    }
}

#[test]
fn sd_notify_reports_ready_status_watchdog_and_stopping() {
    let mut daemon = Daemon::unstarted();
    let notify_path = daemon.tmp.path().join("notify.sock");
    let listener = NotifyListener::bind(UnixDatagram::bind(&notify_path).unwrap());
    let mut command = daemon.command(&[]);
    // No --foreground from us would matter: the harness passes it, so take it out to prove
    // that NOTIFY_SOCKET alone keeps sticlerd in the foreground (systemd tracks this pid).
    let args: Vec<_> = command.get_args().filter(|a| *a != "--foreground").map(|a| a.to_owned()).collect();
    let mut plain = Command::new(command.get_program());
    plain.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log_file(&daemon)));
    for (k, v) in command.get_envs() {
        if let Some(v) = v {
            plain.env(k, v);
        }
    }
    command = plain;
    command.env("NOTIFY_SOCKET", &notify_path).env("WATCHDOG_USEC", "400000");
    daemon.spawn(command);

    // READY=1 means the socket serves: a client connecting right then is answered.
    listener.wait_line("READY=1", |l| l == "READY=1");
    let out = daemon.ctl(&["ping"]);
    assert!(out.status.success(), "not serving at READY=1: {}\n{}", describe(&out), daemon.log_text());
    assert!(daemon.running(), "sticlerd forked or exited under NOTIFY_SOCKET:\n{}", daemon.log_text());
    listener.wait_line("an idle STATUS", |l| l == "STATUS=idle, no run active");

    // WATCHDOG=1 every half WATCHDOG_USEC: several arrive within a few intervals.
    poll(Duration::from_secs(10), "3 watchdog pings", || {
        (listener.lines().iter().filter(|l| *l == "WATCHDOG=1").count() >= 3).then_some(())
    });

    // STATUS follows the runs: two hanging stories in one run.
    let p = ProjectBuilder::new();
    let hang = json!({"mode": "hang"});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(hang.clone()), story("US-P1-002", &[]).script(hang)]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    listener.wait_line("STATUS with 2 running stories", |l| l == "STATUS=1 run, 2 stories running");

    // Workers never inherit the notify socket: they must not speak to systemd as the daemon.
    let workers = daemon.marked_processes();
    assert!(!workers.is_empty(), "no worker process found");
    for pid in workers {
        let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(
            !env.split(|b| *b == 0).any(|v| v.starts_with(b"NOTIFY_SOCKET=") || v.starts_with(b"WATCHDOG_")),
            "worker {pid} inherited NOTIFY_SOCKET or WATCHDOG_*"
        );
    }

    // The run ends: the status goes back to idle, though no event follows the run's end.
    let out = daemon.ctl(&["-C", &p.path_str(), "kill", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    poll(Duration::from_secs(20), "STATUS idle again after the run", || {
        let lines = listener.lines();
        let running = lines.iter().position(|l| l == "STATUS=1 run, 2 stories running")?;
        lines[running..].iter().any(|l| l == "STATUS=idle, no run active").then_some(())
    });

    // Shutdown: STOPPING=1 before the daemon exits (successfully).
    let status = daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "sticlerd exit {status}:\n{}", daemon.log_text());
    let lines = listener.lines();
    let stopping = lines.iter().position(|l| l == "STOPPING=1").expect("STOPPING=1 sent");
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    assert!(ready < stopping, "READY after STOPPING: {lines:?}");
    // STATUS never floods systemd: updates are at most about one a second.
    let statuses = lines.iter().filter(|l| l.starts_with("STATUS=")).count();
    assert!(statuses <= 8, "too many STATUS updates: {lines:?}");
}

#[test]
fn sd_notify_reaches_an_abstract_socket_and_an_idle_daemon_says_stopping() {
    let mut daemon = Daemon::unstarted();
    let name = format!("sticler-test-notify-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = NotifyListener::bind(UnixDatagram::bind_addr(&addr).unwrap());
    let mut command = daemon.command(&[]);
    command.env("NOTIFY_SOCKET", format!("@{name}"));
    daemon.spawn(command);
    listener.wait_line("READY=1 on @name", |l| l == "READY=1");
    assert!(!listener.lines().iter().any(|l| l == "WATCHDOG=1"), "WATCHDOG=1 sent though systemd set no WATCHDOG_USEC");
    // With nothing to stop the daemon exits at once; STOPPING=1 must still be out first.
    let status = daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "sticlerd exit {status}:\n{}", daemon.log_text());
    listener.wait_line("STOPPING=1", |l| l == "STOPPING=1");
}

fn log_file(daemon: &Daemon) -> fs::File {
    fs::OpenOptions::new().create(true).append(true).open(&daemon.log).unwrap()
}

const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// Runs the real systemd-journald in a private mount namespace (a tmpfs over /run, so the
/// machine's own /run/systemd/journal is never touched) with its volatile journal bind-mounted
/// from `journal_dir`, then execs the daemon in the same namespace so that
/// /run/systemd/journal/socket is that journald.
fn in_private_journal(daemon_command: &Command, journal_dir: &Path, log: fs::File) -> Command {
    let script = r#"set -e
journal=$1; shift
mount -t tmpfs tmpfs /run
mkdir -p /run/log/journal /run/systemd/journal
mount --bind "$journal" /run/log/journal
/lib/systemd/systemd-journald &
i=0
while [ ! -S /run/systemd/journal/socket ]; do
  i=$((i + 1)); [ "$i" -lt 2000 ] || { echo "journald did not create its socket" >&2; exit 1; }
  sleep 0.01
done
exec "$@""#;
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"])
        .arg(journal_dir)
        .arg(daemon_command.get_program())
        .args(daemon_command.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    for (k, v) in daemon_command.get_envs() {
        if let Some(v) = v {
            command.env(k, v);
        }
    }
    command
}

/// `journalctl -o json` entries of `journal_dir` matching `filters` (`FIELD=value`).
fn journal_entries(journal_dir: &Path, filters: &[&str]) -> Vec<Value> {
    let out = Command::new("journalctl")
        .arg("--directory")
        .arg(journal_dir)
        .args(["-o", "json", "--no-pager"])
        .args(filters)
        .output()
        .expect("run journalctl");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn logs_go_to_a_real_journald_with_story_fields() {
    if !have_tool(JOURNALD, "systemd") || !have_tool("journalctl", "systemd") {
        return;
    }
    let mut daemon = Daemon::unstarted();
    let journal_dir: PathBuf = daemon.tmp.path().join("journal");
    fs::create_dir_all(&journal_dir).unwrap();
    // JOURNAL_STREAM names the daemon's stderr (device:inode), as systemd sets it for a
    // service whose output goes to the journal: `auto` must then pick journald.
    let log = log_file(&daemon);
    let meta = log.metadata().unwrap();
    let mut command = daemon.command(&["--log-level", "info"]);
    command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())).env_remove("RUST_LOG");
    daemon.spawn(in_private_journal(&command, &journal_dir, log));
    daemon.wait_ready();

    let p = ProjectBuilder::new();
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).criteria(2), story("US-P1-003", &["US-P1-001"]).criteria(2)]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.log_text());

    // `journalctl STORY_ID=US-P1-003` finds that story's events, with the run's fields.
    let entries = poll(Duration::from_secs(20), "US-P1-003 completed in the journal", || {
        let entries = journal_entries(&journal_dir, &["STORY_ID=US-P1-003"]);
        entries
            .iter()
            .any(|e| e["MESSAGE"].as_str().is_some_and(|m| m.ends_with("US-P1-003 completed")))
            .then_some(entries)
    });
    let project = p.path().canonicalize().unwrap().display().to_string();
    for e in &entries {
        assert_eq!(e["SYSLOG_IDENTIFIER"], "sticlerd", "{e}");
        assert_eq!(e["PHASE"], "1", "{e}");
        assert!(
            e["PROJECT"] == project.as_str()
                || e["PROJECT"].as_array().is_some_and(|v| v.iter().any(|p| p == project.as_str())),
            "{e}"
        );
    }
    // Iterations carry ITERATION: the story ran 2 (one per criterion).
    let started: Vec<&str> = entries
        .iter()
        .filter(|e| e["MESSAGE"].as_str().is_some_and(|m| m.contains(" started (pid")))
        .filter_map(|e| e["ITERATION"].as_str())
        .collect();
    assert_eq!(started, ["1", "2"], "{entries:#?}");
    // Other stories' entries are not mixed in, and the field is not prefixed (F_STORY_ID).
    assert!(entries.iter().all(|e| e["STORY_ID"] == "US-P1-003"), "{entries:#?}");
    let first = journal_entries(&journal_dir, &["STORY_ID=US-P1-001"]);
    assert!(!first.is_empty(), "no entry for US-P1-001");
    // Under journald nothing is written to stderr as text lines (no double logging).
    assert!(!daemon.log_text().contains("US-P1-003 completed"), "logged to stderr too:\n{}", daemon.log_text());
}

#[test]
fn a_journal_stream_that_is_not_our_stderr_keeps_logs_on_stderr() {
    // A process started by a service inherits JOURNAL_STREAM even when its stderr goes
    // elsewhere (here: the harness's log file); such a daemon must keep writing lines there,
    // even though a journald is listening.
    if !have_tool(JOURNALD, "systemd") || !have_tool("journalctl", "systemd") {
        return;
    }
    let mut daemon = Daemon::unstarted();
    let journal_dir = daemon.tmp.path().join("journal");
    fs::create_dir_all(&journal_dir).unwrap();
    let mut command = daemon.command(&["--log-level", "info"]);
    command.env("JOURNAL_STREAM", "8:12345").env_remove("RUST_LOG");
    daemon.spawn(in_private_journal(&command, &journal_dir, log_file(&daemon)));
    daemon.wait_ready();
    poll(Duration::from_secs(10), "the ready line on stderr", || daemon.log_text().contains(" ready").then_some(()));
}

#[test]
fn forcing_journald_without_one_fails_and_says_what_to_do() {
    // A private, empty /run: certainly no /run/systemd/journal/socket.
    let daemon = Daemon::unstarted();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /run && exec \"$@\"",
            "sh",
        ])
        .arg(bin("sticlerd"))
        .args(["--foreground", "--log-target", "journald", "--socket"])
        .arg(&daemon.socket)
        .arg("--state-dir")
        .arg(&daemon.state_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach journald") && stderr.contains("--log-target stderr"), "{stderr}");
    assert!(!daemon.socket.exists(), "it served anyway");
}

#[test]
fn a_bad_notify_socket_is_logged_and_the_daemon_serves_anyway() {
    let mut daemon = Daemon::unstarted();
    let mut command = daemon.command(&[]);
    command.env("NOTIFY_SOCKET", "not/absolute");
    daemon.spawn(command);
    daemon.wait_ready();
    assert!(daemon.running(), "sticlerd exited:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains("neither an absolute path nor an abstract name") && log.contains("not notifying systemd"),
        "{log}"
    );
}
