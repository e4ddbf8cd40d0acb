//! Load: 50 clients issue status, watch and logs requests in a loop while a 200-story phase
//! runs. No request may fail, a watcher from before the start must see every story complete,
//! and the run should take about as long as the same run without the load. Latencies and the
//! run times are printed (never asserted: the machine may be shared).
//!
//! `STICLER_LOAD_SECS` sets how long the clients hammer (default 5; the README's figures use
//! 30): the workers sleep so that the run lasts about that long.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use sticler_proto::{EventKind, PhaseRef, Request, Response, RunOutcome, ServerMessage};
use sticler_tests::raw::{memory_kib, percentile, RawClient};
use sticler_tests::{describe, poll, story, Daemon, ProjectBuilder, StorySpec};

const STORIES: usize = 200;
const WIDTH: usize = 8;
const CLIENTS: usize = 50;

fn load_secs() -> u64 {
    std::env::var("STICLER_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

/// 200 stories, each depending on the one `WIDTH` before it: 25 waves of 8.
fn dag_phase(sleep_ms: u64) -> ProjectBuilder {
    let p = ProjectBuilder::new();
    p.config(json!({"max_parallel_workers": WIDTH}));
    let stories: Vec<StorySpec> = (1..=STORIES)
        .map(|i| {
            let dep = (i > WIDTH).then(|| format!("US-P1-{:03}", i - WIDTH));
            let deps: Vec<&str> = dep.iter().map(String::as_str).collect();
            story(&format!("US-P1-{i:03}"), &deps).script(json!({"sleep_ms": sleep_ms}))
        })
        .collect();
    p.phase(1, "decomposed", &stories);
    p
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Status,
    Watch,
    Logs,
}

#[derive(Default)]
struct Tally {
    requests: usize,
    failures: Vec<String>,
    latencies: Vec<(usize, Duration)>,
}

/// One client: `kind` requests in a loop until `stop`, each timed.
fn client(socket: std::path::PathBuf, project: String, kind: Kind, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let phase = PhaseRef { project: project.clone(), phase: 1 };
    let mut conn: Option<RawClient> = None;
    let mut last_seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let result = (|| -> Result<(), String> {
            // A watch takes a connection of its own; status and logs keep theirs.
            let c = match conn.as_mut() {
                Some(c) if !matches!(kind, Kind::Watch) => c,
                _ => conn.insert(RawClient::greeted(&socket)?),
            };
            match kind {
                Kind::Status => {
                    let request = Request::Status { project: project.clone(), phase: Some(1), story: None };
                    match c.request(request)? {
                        ServerMessage::Response(Response::Status(report))
                            if report.phases[0].stories.len() == STORIES =>
                        {
                            Ok(())
                        }
                        other => Err(format!("status: {other:?}")),
                    }
                }
                Kind::Watch => {
                    // Replays the last 100 events, then the stream is live: read up to there.
                    let request = Request::Watch {
                        project: Some(project.clone()),
                        phase: Some(1),
                        since: Some(last_seq.saturating_sub(100)),
                    };
                    c.send(&sticler_proto::ClientMessage::Request(request))?;
                    loop {
                        match c.read().map_err(|e| format!("watch: {e}"))? {
                            ServerMessage::Event(_) => {}
                            ServerMessage::Response(Response::WatchStarted { last_seq: seq }) => {
                                last_seq = seq;
                                return Ok(());
                            }
                            other => return Err(format!("watch: {other:?}")),
                        }
                    }
                }
                Kind::Logs => {
                    let request = Request::Logs {
                        phase: phase.clone(),
                        story: "US-P1-001".into(),
                        iteration: None,
                        follow: false,
                        all: false,
                        tail: None,
                    };
                    c.send(&sticler_proto::ClientMessage::Request(request))?;
                    let mut bytes = 0;
                    loop {
                        match c.read().map_err(|e| format!("logs: {e}"))? {
                            ServerMessage::Response(Response::LogChunk { data, .. }) => bytes += data.len(),
                            ServerMessage::Response(Response::LogEnd) if bytes > 0 => return Ok(()),
                            other => return Err(format!("logs ({bytes} bytes): {other:?}")),
                        }
                    }
                }
            }
        })();
        tally.requests += 1;
        tally.latencies.push((kind as usize, t.elapsed()));
        if let Err(e) = result {
            tally.failures.push(e);
            conn = None;
        }
    }
    tally
}

/// Starts phase 1 of `p` and waits for its end; returns the wall time.
fn run_phase(daemon: &Daemon, p: &ProjectBuilder) -> Duration {
    let t = Instant::now();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    t.elapsed()
}

#[test]
fn fifty_clients_during_a_200_story_run_fail_nothing_and_lose_nothing() {
    let secs = load_secs();
    // 25 waves of stories: sleeping this long each makes the run last about `secs`.
    let sleep_ms = secs * 1000 / 25;
    let daemon = Daemon::start();
    let quiet = dag_phase(sleep_ms);
    let quiet_time = run_phase(&daemon, &quiet);

    let p = dag_phase(sleep_ms);
    let dir = p.path_str();
    let mut watcher = RawClient::greeted(&daemon.socket).unwrap();
    let watch = Request::Watch { project: Some(dir.clone()), phase: Some(1), since: None };
    assert!(matches!(watcher.request(watch).unwrap(), ServerMessage::Response(Response::WatchStarted { .. })));
    let events = thread::spawn(move || {
        let mut completed = std::collections::BTreeSet::new();
        let mut last = 0;
        loop {
            match watcher.read() {
                Ok(ServerMessage::Event(e)) => {
                    assert!(e.seq > last, "events in order");
                    last = e.seq;
                    match e.kind {
                        EventKind::StoryCompleted { story } => assert!(completed.insert(story), "completed twice"),
                        EventKind::RunEnded { outcome, .. } => return (completed, outcome),
                        _ => {}
                    }
                }
                other => panic!("watcher got {other:?} after {} completions", completed.len()),
            }
        }
    });

    let start = Instant::now();
    let out = daemon.ctl(&["-C", &dir, "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    // Logs clients need a story with logs: the first one's first iteration.
    poll(Duration::from_secs(60), "US-P1-001 has a log", || {
        let phase = daemon.phase_status(p.path(), 1);
        (phase.stories[0].runs >= 1).then_some(())
    });
    let (rss_before, _) = memory_kib(daemon.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let kind = [Kind::Status, Kind::Watch, Kind::Logs][i % 3];
            let (socket, dir, stop) = (daemon.socket.clone(), dir.clone(), Arc::clone(&stop));
            thread::spawn(move || client(socket, dir, kind, stop))
        })
        .collect();
    let load_start = Instant::now();
    let mut peak = 0;
    while load_start.elapsed() < Duration::from_secs(secs) {
        peak = peak.max(memory_kib(daemon.pid()).0);
        thread::sleep(Duration::from_millis(100)); // sampling memory, not synchronising
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for c in clients {
        let t = c.join().unwrap();
        total.requests += t.requests;
        total.failures.extend(t.failures);
        total.latencies.extend(t.latencies);
    }
    let load_time = load_start.elapsed();
    let (completed, outcome) = events.join().unwrap();
    let loaded_time = start.elapsed();
    let out = daemon.ctl(&["-C", &dir, "wait", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let mut report = format!(
        "load: {CLIENTS} clients for {:.1} s, {} requests, {} failed; run {:.2} s under load vs {:.2} s quiet ({:.2}x); \
         daemon RSS {} KiB before the load, peak {} KiB during it",
        load_time.as_secs_f64(),
        total.requests,
        total.failures.len(),
        loaded_time.as_secs_f64(),
        quiet_time.as_secs_f64(),
        loaded_time.as_secs_f64() / quiet_time.as_secs_f64(),
        rss_before,
        peak
    );
    for (i, name) in ["status", "watch", "logs"].iter().enumerate() {
        let mut lat: Vec<Duration> = total.latencies.iter().filter(|(k, _)| *k == i).map(|(_, d)| *d).collect();
        let n = lat.len();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (p50, p99, max) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0), percentile(&mut lat, 100.0));
        report +=
            &format!("\n  {name}: {n} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", ms(p50), ms(p99), ms(max));
    }
    eprintln!("{report}");
    assert!(total.failures.is_empty(), "{} failed requests, first: {:?}", total.failures.len(), total.failures.first());
    assert_eq!(outcome, RunOutcome::Completed);
    assert_eq!(completed.len(), STORIES, "the watcher saw every story complete");
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!(phase.counts.completed as usize, STORIES);
}
