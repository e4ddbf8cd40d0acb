//! Adversarial clients against a daemon with a run in progress: oversize and truncated
//! frames, messages that never finish (slow clients must not block anyone), 1,000
//! connections opened and dropped, requests for paths outside any project, JSON of the wrong
//! shape. Each gets a clear error or is dropped, and the run finishes exactly as it would
//! have: every story completed in its scripted number of iterations, every event delivered.

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use sticler_proto::codec::MAX_FRAME_LEN;
use sticler_proto::{
    ClientMessage, ErrorKind, EventKind, PhaseRef, Request, Response, RunOutcome, ServerMessage, StoryState,
};
use sticler_tests::raw::{memory_kib, open_fds, read_json_line, RawClient};
use sticler_tests::{describe, poll, story, Daemon, ProjectBuilder, StorySpec};

const STORIES: usize = 15;
const ITERATIONS: u64 = 4;

/// A phase that runs for several seconds: three chains of five stories, four iterations each.
fn slow_phase() -> ProjectBuilder {
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": 3}));
    let stories: Vec<StorySpec> = (1..=STORIES)
        .map(|i| {
            let id = format!("US-P1-{i:03}");
            let dep = (i > 3).then(|| format!("US-P1-{:03}", i - 3));
            let deps: Vec<&str> = dep.iter().map(String::as_str).collect();
            story(&id, &deps).criteria(ITERATIONS as usize).script(json!({"sleep_ms": 350}))
        })
        .collect();
    p.phase(1, "decomposed", &stories);
    p
}

/// The error a binary client gets, or a description of what came instead.
fn binary_error(client: &mut RawClient) -> Result<(ErrorKind, String), String> {
    match client.read() {
        Ok(ServerMessage::Error(e)) => Ok((e.kind, e.message)),
        Ok(other) => Err(format!("expected an error, got {other:?}")),
        Err(e) => Err(format!("expected an error reply, the read failed: {e}")),
    }
}

fn json_error(client: &RawClient) -> (String, String) {
    let reply = read_json_line(&client.stream);
    let kind = reply["error"]["kind"].as_str().unwrap_or_else(|| panic!("not an error: {reply}")).to_string();
    (kind, reply["error"]["message"].as_str().unwrap_or_default().to_string())
}

/// A slow client: the error it got (if any), how long that took, and whether the daemon
/// closed the connection afterwards.
struct SlowOutcome {
    name: &'static str,
    reply: Option<String>,
    after: Duration,
    closed: bool,
}

fn slow_clients(daemon: &Daemon) -> Vec<thread::JoinHandle<SlowOutcome>> {
    let socket = daemon.socket.clone();
    let mut handles = Vec::new();
    // Half a frame, then silence.
    let s = socket.clone();
    handles.push(thread::spawn(move || {
        let mut c = RawClient::connect(&s).unwrap();
        let t = Instant::now();
        c.write_raw(&[0, 0, 1, 0, 1, 2]).unwrap();
        let reply = binary_error(&mut c).ok().map(|(_, m)| m);
        SlowOutcome { name: "half frame, then silence", reply, after: t.elapsed(), closed: c.closed_by_daemon() }
    }));
    // One byte every 300 ms: each read is quick, the message never completes in time. A
    // per-read timeout would let this client hold its connection for 30 s; the per-message
    // deadline drops it after 10 s.
    let s = socket.clone();
    handles.push(thread::spawn(move || {
        let mut c = RawClient::connect(&s).unwrap();
        let mut writer = c.stream.try_clone().unwrap();
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let t = Instant::now();
        let dribble = thread::spawn(move || {
            let mut frame = 96u32.to_be_bytes().to_vec();
            frame.extend(std::iter::repeat_n(7u8, 96));
            for byte in frame {
                if writer.write_all(&[byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
            }
            done.store(true, Ordering::SeqCst);
        });
        let reply = binary_error(&mut c).ok().map(|(_, m)| m);
        let after = t.elapsed();
        let closed = c.closed_by_daemon() && !finished.load(Ordering::SeqCst);
        drop(c);
        let _ = dribble.join();
        SlowOutcome { name: "one byte every 300 ms", reply, after, closed }
    }));
    // JSON mode: a line that never ends.
    let s = socket.clone();
    handles.push(thread::spawn(move || {
        let mut c = RawClient::connect(&s).unwrap();
        let t = Instant::now();
        c.write_raw(b"{\"request\": ").unwrap();
        let (_, message) = json_error(&c);
        SlowOutcome {
            name: "JSON line never ended",
            reply: Some(message),
            after: t.elapsed(),
            closed: c.closed_by_daemon(),
        }
    }));
    // Connects and says nothing: dropped without a word.
    handles.push(thread::spawn(move || {
        let mut c = RawClient::connect(&socket).unwrap();
        let t = Instant::now();
        let closed = c.closed_by_daemon();
        SlowOutcome { name: "silent connection", reply: None, after: t.elapsed(), closed }
    }));
    handles
}

/// Oversize, truncated and malformed messages, each on its own connection.
fn bad_messages(daemon: &Daemon) -> usize {
    let mut cases = 0;
    let binary: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        ("length u32::MAX", u32::MAX.to_be_bytes().to_vec(), false, "exceeds"),
        ("length 16 MiB + 1", (MAX_FRAME_LEN as u32 + 1).to_be_bytes().to_vec(), false, "exceeds"),
        // Under the protocol's 16 MiB, over what any request needs: refused before it is read.
        ("length 2 MiB", (2u32 << 20).to_be_bytes().to_vec(), false, "1048576 byte limit"),
        ("empty frame", vec![0, 0, 0, 0], false, "empty"),
        ("truncated prefix", vec![0, 0], true, "truncated"),
        ("truncated payload", [&100u32.to_be_bytes()[..], &[1; 10]].concat(), true, "truncated"),
        ("garbage payload", vec![0, 0, 0, 3, 0xff, 0xff, 0xff], false, "undecodable"),
        ("variant out of range", vec![0, 0, 0, 2, 1, 250], false, "undecodable"),
        ("trailing bytes", vec![0, 0, 0, 3, 1, 0, 0], false, "trailing"),
    ];
    for (name, bytes, end_input, expect) in binary {
        let mut c = RawClient::connect(&daemon.socket).unwrap();
        c.write_raw(&bytes).unwrap();
        if end_input {
            c.stream.shutdown(Shutdown::Write).unwrap();
        }
        let (kind, message) = binary_error(&mut c).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kind, ErrorKind::BadRequest, "{name}: {message}");
        assert!(message.contains(expect), "{name}: {message:?} should say {expect:?}");
        assert!(c.closed_by_daemon(), "{name}: the connection is closed after the error");
        cases += 1;
    }
    let nested = format!("{{\"request\": {}\n", "[".repeat(100_000));
    let json_lines: Vec<(&str, Vec<u8>, &str)> = vec![
        ("project is a number", br#"{"request": {"status": {"project": 7}}}"#.to_vec(), "invalid type"),
        (
            "phase is a string",
            br#"{"request": {"start": {"phase": {"project": "/p", "phase": "one"}}}}"#.to_vec(),
            "invalid type",
        ),
        ("negative phase", br#"{"request": {"validate": {"project": "/p", "phase": -1}}}"#.to_vec(), "invalid value"),
        (
            "story is a number",
            br#"{"request": {"logs": {"phase": {"project": "/p", "phase": 1}, "story": 5}}}"#.to_vec(),
            "invalid type",
        ),
        ("version is a string", br#"{"hello": {"protocol_version": "1"}}"#.to_vec(), "invalid type"),
        ("unknown request", br#"{"request": "format_disk"}"#.to_vec(), "unknown variant"),
        ("unknown top level", br#"{"exec": "rm -rf /"}"#.to_vec(), "unknown variant"),
        ("a list of requests", br#"{"request": ["ping", "ping"]}"#.to_vec(), "column"),
        ("not UTF-8", b"{\"request\": \"\xff\xfe\"}".to_vec(), "column"),
        // The message types are not recursive: deep nesting is refused at its first level.
        ("nested 100,000 deep", nested.into_bytes(), "column"),
    ];
    for (name, mut line, expect) in json_lines {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let mut c = RawClient::connect(&daemon.socket).unwrap();
        c.write_raw(&line).unwrap();
        let (kind, message) = json_error(&c);
        assert_eq!(kind, "bad_request", "{name}: {message}");
        assert!(message.contains(expect), "{name}: {message:?} should say {expect:?}");
        assert!(c.closed_by_daemon(), "{name}: the connection is closed after the error");
        cases += 1;
    }
    // A JSON line longer than any request, sent in one go: the daemon stops reading at 1 MiB.
    let mut c = RawClient::connect(&daemon.socket).unwrap();
    let mut writer = c.stream.try_clone().unwrap();
    let flood = thread::spawn(move || {
        let mut line = b"{\"request\": \"".to_vec();
        line.resize(3 << 20, b'a');
        let _ = writer.write_all(&line); // the daemon hangs up half-way: a broken pipe is expected
    });
    let (kind, message) = json_error(&c);
    assert_eq!(kind, "bad_request");
    assert!(message.contains("1048576 byte limit"), "{message}");
    assert!(c.closed_by_daemon());
    flood.join().unwrap();
    cases + 1
}

/// Requests naming paths outside any project, or story ids that try to climb out of one.
fn outside_paths(daemon: &Daemon, project: &str) -> usize {
    let mut c = RawClient::greeted(&daemon.socket).unwrap();
    let phase = |path: &str| PhaseRef { project: path.into(), phase: 1 };
    let ours = || phase(project);
    let cases: Vec<(&str, Request)> = vec![
        ("/", Request::Status { project: "/".into(), phase: None, story: None }),
        ("/etc", Request::Validate(phase("/etc"))),
        ("/etc/passwd", Request::Status { project: "/etc/passwd".into(), phase: Some(1), story: None }),
        ("/nonexistent", Request::Start { phase: phase("/nonexistent/x"), force: true }),
        ("../../..", Request::Stop { phase: phase("../../.."), grace_secs: None }),
        ("/proc/self", Request::Kill(phase("/proc/self"))),
        ("/root", Request::Watch { project: Some("/".into()), phase: None, since: None }),
        ("NUL", Request::Status { project: format!("{project}\0/etc"), phase: None, story: None }),
        (
            "../x",
            Request::Logs {
                phase: ours(),
                story: "../../../../etc/passwd".into(),
                iteration: None,
                follow: false,
                all: false,
                tail: None,
            },
        ),
        (
            "US-P1-001/..",
            Request::Logs {
                phase: ours(),
                story: "US-P1-001/../..".into(),
                iteration: Some(1),
                follow: false,
                all: false,
                tail: None,
            },
        ),
        (
            "NUL id",
            Request::Logs {
                phase: ours(),
                story: "US-P1-001\0".into(),
                iteration: None,
                follow: false,
                all: false,
                tail: None,
            },
        ),
        ("retry ../", Request::Retry { phase: ours(), stories: vec!["../US-P1-001".into()], all_failed: false }),
        ("retry --completed ../", Request::RetryCompleted { phase: ours(), stories: vec!["../US-P1-001".into()] }),
        ("retry --completed /", Request::RetryCompleted { phase: phase("/"), stories: vec!["US-P1-001".into()] }),
        (
            "story filter /",
            Request::Status { project: project.into(), phase: Some(1), story: Some("/etc/passwd".into()) },
        ),
        ("phase 2^32-1", Request::Validate(PhaseRef { project: project.into(), phase: u32::MAX })),
        ("wait /", Request::Wait(phase("/"))),
    ];
    let total = cases.len();
    for (name, request) in cases {
        match c.request(request).unwrap_or_else(|e| panic!("{name}: {e}")) {
            ServerMessage::Error(e) => {
                assert!(
                    matches!(
                        e.kind,
                        ErrorKind::NotFound | ErrorKind::BadRequest | ErrorKind::Invalid | ErrorKind::Refused
                    ),
                    "{name}: {e:?}"
                );
                assert!(!e.message.is_empty(), "{name}: an error says what is wrong");
            }
            other => panic!("{name}: expected an error, got {other:?}"),
        }
        // An error about a request is not an error about the connection: it keeps serving.
        assert_eq!(c.request(Request::Ping).unwrap(), ServerMessage::Response(Response::Pong), "{name}");
    }
    total
}

/// 1,000 connections opened and dropped in every state a client can be in.
fn connection_churn(daemon: &Daemon) -> usize {
    for i in 0..1000 {
        let mut c = RawClient::connect(&daemon.socket).unwrap();
        match i % 5 {
            0 => {}
            1 => {
                c.send(&ClientMessage::Hello { protocol_version: sticler_proto::PROTOCOL_VERSION }).unwrap();
            }
            2 => c.write_raw(&[0, 0, 0, 40, 1, 2, 3]).unwrap(),
            3 => c.write_raw(b"{\"request\":\"ping\"}\n").unwrap(), // gone before the reply
            _ => c.write_raw(b"{\"request\": {\"status\"").unwrap(),
        }
    }
    1000
}

#[test]
fn hostile_clients_get_errors_or_are_dropped_and_the_run_is_undisturbed() {
    let daemon = Daemon::start();
    let p = slow_phase();
    let dir = p.path_str();
    // A watcher from before the start: it must see every event of the run, in order.
    let mut watcher = RawClient::greeted(&daemon.socket).unwrap();
    let watch = Request::Watch { project: None, phase: Some(1), since: None };
    assert!(matches!(watcher.request(watch).unwrap(), ServerMessage::Response(Response::WatchStarted { .. })));
    let events = thread::spawn(move || {
        let mut events = Vec::new();
        loop {
            match watcher.read() {
                Ok(ServerMessage::Event(e)) => {
                    let end = matches!(e.kind, EventKind::RunEnded { .. });
                    events.push(e);
                    if end {
                        return events;
                    }
                }
                other => panic!("watcher got {other:?} after {} events", events.len()),
            }
        }
    });
    let fds_before = open_fds(daemon.pid());
    let out = daemon.ctl(&["-C", &dir, "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let (rss_before, _) = memory_kib(daemon.pid());

    let slow = slow_clients(&daemon);
    let t = Instant::now();
    let out = daemon.ctl(&["ping"]);
    assert!(out.status.success(), "ping while slow clients stall: {}", describe(&out));
    let ping_during_stall = t.elapsed();
    let mut cases = slow.len();
    cases += bad_messages(&daemon);
    cases += outside_paths(&daemon, &dir);
    cases += connection_churn(&daemon);
    assert!(daemon.ctl(&["ping"]).status.success(), "the daemon serves after the churn");
    let running = daemon.phase_status(p.path(), 1);
    assert!(running.running, "the adversarial cases ran while the phase was running");

    for handle in slow {
        let outcome = handle.join().unwrap();
        assert!(outcome.closed, "{}: the daemon dropped it", outcome.name);
        assert!(outcome.after < Duration::from_secs(25), "{}: dropped only after {:?}", outcome.name, outcome.after);
        if outcome.name != "silent connection" {
            let reply = outcome.reply.unwrap_or_default();
            assert!(reply.contains("not completed within 10 s"), "{}: {reply:?}", outcome.name);
        }
        eprintln!("slow client {:?}: dropped after {:.1} s", outcome.name, outcome.after.as_secs_f64());
    }

    let out = daemon.ctl(&["-C", &dir, "wait", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    for s in &phase.stories {
        assert_eq!(s.state, StoryState::Completed, "{s:?}");
        assert_eq!(u64::from(s.runs), ITERATIONS, "{}: exactly its scripted iterations, none lost or repeated", s.id);
    }
    let events = events.join().unwrap();
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "events in order");
    let count = |f: fn(&EventKind) -> bool| events.iter().filter(|e| f(&e.kind)).count();
    assert_eq!(count(|k| matches!(k, EventKind::StoryCompleted { .. })), STORIES);
    assert_eq!(count(|k| matches!(k, EventKind::IterationStarted { .. })), STORIES * ITERATIONS as usize);
    assert!(matches!(events.last().unwrap().kind, EventKind::RunEnded { outcome: RunOutcome::Completed, .. }));

    // Nothing leaks: every dropped connection's descriptor is closed again.
    let fds = poll(Duration::from_secs(20), "descriptors back to the idle count", || {
        let now = open_fds(daemon.pid());
        (now <= fds_before).then_some(now)
    });
    let (rss_after, hwm) = memory_kib(daemon.pid());
    eprintln!(
        "hostile clients: {cases} cases, 0 failures; ping during the stall {:.1} ms; daemon fds {fds_before} -> {fds}; \
         RSS {} -> {} KiB, peak {} KiB",
        ping_during_stall.as_secs_f64() * 1000.0,
        rss_before,
        rss_after,
        hwm
    );
}
