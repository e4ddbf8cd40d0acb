//! The socket and the daemon's life: modes, ownership, locking, stale sockets, other uids,
//! both protocol modes, bad frames, and shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use sticler_proto::codec;
use sticler_proto::{ClientMessage, ErrorKind, Request, Response, ServerMessage, PROTOCOL_VERSION};
use sticler_tests::{bin, describe, have_tool, poll, Daemon};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn socket_is_0600_in_a_0700_folder_even_under_a_permissive_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/sticlerd.sock");
    let state = tmp.path().join("state");
    // `sh -c umask 000` makes the daemon inherit the most permissive umask there is.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} --foreground --socket {} --state-dir {}",
            bin("sticlerd").display(),
            socket.display(),
            state.display()
        ))
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    poll(Duration::from_secs(20), "socket", || socket.exists().then_some(()));
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&state), 0o700);
    for entry in walk(&state) {
        assert_eq!(mode(&entry) & 0o007, 0, "{} is world-accessible", entry.display());
    }
}

#[test]
fn a_run_under_a_permissive_umask_leaves_nothing_readable_by_others_and_workers_get_the_umask_back() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/sticlerd.sock");
    let state = tmp.path().join("state");
    // A state folder that already exists wide open is closed again.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} --foreground --socket {} --state-dir {}",
            bin("sticlerd").display(),
            socket.display(),
            state.display()
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let ctl = |args: &[&str]| Command::new(bin("sticlerctl")).arg("--socket").arg(&socket).args(args).output().unwrap();
    poll(Duration::from_secs(20), "daemon ready", || ctl(&["ping"]).status.success().then_some(()));
    let p = sticler_tests::ProjectBuilder::new();
    let script = serde_json::json!({"files": ["made-by-the-worker.txt"]});
    p.phase(1, "decomposed", &[sticler_tests::story("US-P1-001", &[]).script(script)]);
    let out = ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(walk(&state).iter().any(|e| e.extension().is_some_and(|x| x == "log")), "the run wrote iteration logs");
    assert_eq!(mode(&state), 0o700);
    for entry in walk(&state) {
        assert_eq!(mode(&entry) & 0o077, 0, "{} is open to group or others", entry.display());
    }
    assert_eq!(mode(&socket) & 0o077, 0);
    // The daemon's umask 077 is its own: the worker created its file with the user's umask 000.
    assert_eq!(mode(&p.path().join("made-by-the-worker.txt")), 0o666);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn second_daemon_on_the_same_socket_or_state_dir_is_refused_naming_the_pid() {
    let daemon = Daemon::start();
    let pid = daemon.pid().to_string();
    let other = tempfile::tempdir().unwrap();
    // Same state dir, other socket.
    let out = Command::new(bin("sticlerd"))
        .args(["--foreground", "--socket"])
        .arg(other.path().join("s.sock"))
        .arg("--state-dir")
        .arg(&daemon.state_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("another sticlerd (pid {pid})")), "{err}");
    // Said once, as one plain line: not also as a log line on the same stderr.
    assert_eq!(err.matches("another sticlerd").count(), 1, "{err}");
    assert!(err.starts_with("sticlerd: another sticlerd"), "{err}");
    // Same socket, other state dir.
    let out = Command::new(bin("sticlerd"))
        .args(["--foreground", "--socket"])
        .arg(&daemon.socket)
        .arg("--state-dir")
        .arg(other.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(daemon.ctl(&["ping"]).status.success(), "the first daemon is unharmed");
}

#[test]
fn stale_socket_is_replaced_after_sigkill() {
    let mut daemon = Daemon::start();
    daemon.signal_and_wait(Signal::SIGKILL);
    assert!(daemon.socket.exists(), "SIGKILL leaves the socket file behind");
    assert_eq!(daemon.ctl(&["ping"]).status.code(), Some(3));
    daemon.launch(&[]);
    assert!(daemon.ctl(&["ping"]).status.success());
}

#[test]
fn a_live_socket_that_is_not_ours_is_never_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("busy.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let out = Command::new(bin("sticlerd"))
        .args(["--foreground", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"), "{}", describe(&out));
    assert!(socket.exists());
}

#[test]
fn sigterm_shuts_down_cleanly_and_removes_the_socket() {
    let mut daemon = Daemon::start();
    let status = daemon.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert!(!daemon.socket.exists());
    daemon.launch(&[]);
    let out = daemon.ctl(&["shutdown"]);
    assert!(out.status.success(), "{}", describe(&out));
    let status = daemon.signal_and_wait(Signal::SIGCONT);
    assert_eq!(status.code(), Some(0));
    assert!(!daemon.socket.exists());
}

fn setpriv_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    c
}

#[test]
fn another_uid_is_refused_by_file_mode_and_by_peer_credentials_in_both_modes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    if !have_tool("setpriv", "util-linux") || !have_tool("/usr/bin/python3", "python3") {
        return;
    }
    let daemon = Daemon::start();
    // The test binaries live under the repo; make them reachable for uid 65534.
    let ctl = tempfile::Builder::new().prefix("ctl").tempdir_in("/tmp").unwrap();
    let ctl_bin = ctl.path().join("sticlerctl");
    std::fs::copy(bin("sticlerctl"), &ctl_bin).unwrap();
    std::fs::set_permissions(ctl.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // 1. The 0600 socket in a 0700 folder keeps the other uid out before the daemon sees it.
    let out = setpriv_nobody().arg(&ctl_bin).arg("--socket").arg(&daemon.socket).arg("ping").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    // 2. Even with the file modes opened up, SO_PEERCRED refuses it, in both protocol modes.
    std::fs::set_permissions(daemon.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = setpriv_nobody().arg(&ctl_bin).arg("--socket").arg(&daemon.socket).arg("ping").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused connection from uid 65534"), "{}", describe(&out));
    let json = setpriv_nobody()
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{\"request\":\"ping\"}\\n'); print(s.makefile().readline())")
        .arg(&daemon.socket)
        .output()
        .expect("/usr/bin/python3 (installed by .ci/run)");
    assert!(out_ok(&json), "{}", describe(&json));
    let line = String::from_utf8_lossy(&json.stdout);
    assert!(line.contains("permission_denied"), "{line}");
    assert!(daemon.log_text().contains("refused connection from uid 65534"), "the refusal is logged");
    assert!(daemon.ctl(&["ping"]).status.success());
}

fn out_ok(out: &std::process::Output) -> bool {
    out.status.success()
}

fn connect(daemon: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn hello(stream: &mut UnixStream) {
    codec::write_frame(stream, &ClientMessage::Hello { protocol_version: PROTOCOL_VERSION }).unwrap();
    let welcome: ServerMessage = codec::read_frame(stream).unwrap();
    assert!(matches!(welcome, ServerMessage::Welcome { protocol_version: PROTOCOL_VERSION, .. }), "{welcome:?}");
}

#[test]
fn json_mode_over_a_raw_socket() {
    let daemon = Daemon::start();
    let mut s = connect(&daemon);
    let hello = format!("{{\"hello\":{{\"protocol_version\":{PROTOCOL_VERSION}}}}}\n");
    s.write_all(format!("{hello}{{\"request\":\"ping\"}}\n{{\"request\":\"version\"}}\n").as_bytes()).unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
    let welcome: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(welcome["welcome"]["protocol_version"], PROTOCOL_VERSION);
    assert_eq!(lines.next().unwrap().unwrap(), r#"{"response":"pong"}"#);
    let version: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(version["response"]["version"]["pid"], daemon.pid());
    // Without the greeting, a script can ask directly; bad JSON gets an error naming the column.
    let mut s = connect(&daemon);
    s.write_all(b"{\"request\":\"ping\"}\n{\"request\": 7}\n").unwrap();
    let mut lines = BufReader::new(s).lines();
    assert_eq!(lines.next().unwrap().unwrap(), r#"{"response":"pong"}"#);
    let err: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(err["error"]["kind"], "bad_request");
    assert!(err["error"]["message"].as_str().unwrap().contains("column"), "{err}");
}

#[test]
fn wrong_protocol_version_gets_a_clear_error() {
    let daemon = Daemon::start();
    let mut s = connect(&daemon);
    codec::write_frame(&mut s, &ClientMessage::Hello { protocol_version: 999 }).unwrap();
    match codec::read_frame::<_, ServerMessage>(&mut s).unwrap() {
        ServerMessage::Error(e) => {
            assert_eq!(e.kind, ErrorKind::VersionMismatch);
            assert!(e.message.contains("client speaks 999"), "{}", e.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn bad_frames_get_an_error_and_do_not_disturb_another_client() {
    let daemon = Daemon::start();
    // A well-behaved client connected before, and still talking after.
    let mut good = connect(&daemon);
    hello(&mut good);
    let cases: Vec<Vec<u8>> = vec![
        (u32::MAX).to_be_bytes().to_vec(),       // oversize length prefix
        [0, 0, 0, 3, 0xff, 0xff, 0xff].to_vec(), // garbage payload
        [0, 0, 0, 0].to_vec(),                   // empty frame
    ];
    for bytes in cases {
        let mut bad = connect(&daemon);
        bad.write_all(&bytes).unwrap();
        match codec::read_frame::<_, ServerMessage>(&mut bad).unwrap() {
            ServerMessage::Error(e) => assert_eq!(e.kind, ErrorKind::BadRequest, "{bytes:?}: {}", e.message),
            other => panic!("{bytes:?}: expected an error, got {other:?}"),
        }
        let mut rest = Vec::new();
        let _ = bad.read_to_end(&mut rest);
        assert!(rest.is_empty(), "the connection is closed after the error");
        codec::write_frame(&mut good, &ClientMessage::Request(Request::Ping)).unwrap();
        assert_eq!(codec::read_frame::<_, ServerMessage>(&mut good).unwrap(), ServerMessage::Response(Response::Pong));
    }
    // A binary request before Hello is refused.
    let mut rude = connect(&daemon);
    codec::write_frame(&mut rude, &ClientMessage::Request(Request::Ping)).unwrap();
    assert!(matches!(codec::read_frame::<_, ServerMessage>(&mut rude).unwrap(), ServerMessage::Error(_)));
}

#[test]
fn a_half_sent_frame_does_not_block_other_clients() {
    let daemon = Daemon::start();
    let mut slow = connect(&daemon);
    slow.write_all(&[0, 0, 1, 0, 1, 2]).unwrap(); // promises 256 bytes, sends 2, stalls
    let out = daemon.ctl(&["ping"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn without_foreground_the_daemon_forks_once_it_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/sticlerd.sock");
    let state = tmp.path().join("state");
    let start = |expect: i32| {
        let out = Command::new(bin("sticlerd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(expect), "{}", describe(&out));
        out
    };
    let out = start(0);
    let _guard = ShutdownOnDrop(socket.clone());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("sticlerd started: pid"), "{text}");
    // The parent returned only once the socket serves: no waiting needed.
    let ctl = |args: &[&str]| Command::new(bin("sticlerctl")).arg("--socket").arg(&socket).args(args).output().unwrap();
    assert!(ctl(&["ping"]).status.success());
    // A second one reports the first one's pid through the same pipe, and fails.
    let out = start(1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("another sticlerd"), "{}", describe(&out));
    assert!(ctl(&["shutdown"]).status.success());
    poll(Duration::from_secs(20), "socket removed", || (!socket.exists()).then_some(()));
    let log =
        std::fs::read_to_string(state.join("sticlerd.log")).expect("the background daemon logs to its state folder");
    assert!(log.contains("ready") && !log.contains('\x1b'), "plain lines, no colour codes:\n{log:?}");
}

/// Asks a background daemon to stop even when the test fails half-way.
struct ShutdownOnDrop(std::path::PathBuf);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(bin("sticlerctl")).arg("--socket").arg(&self.0).arg("shutdown").output();
    }
}
