//! Requests that answer with a stream: `watch` (events), `logs` (a story's iteration logs,
//! optionally followed) and `wait` (blocks until a run ends).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sticler_proto::{ErrorKind, ErrorReply, Event, EventKind, PhaseRef, Response, RunOutcome, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast::error::RecvError;

use crate::connection::Connection;
use crate::daemon::{error, Daemon};
use crate::project::{Project, StoryId};

/// How often `logs -f` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
const CHUNK: usize = 64 * 1024;

type StreamResult = Result<(), StreamError>;

pub enum StreamError {
    /// Tell the client, then close.
    Reply(ErrorReply),
    /// The client went away.
    Gone,
}

impl From<ErrorReply> for StreamError {
    fn from(e: ErrorReply) -> Self {
        StreamError::Reply(e)
    }
}

impl From<crate::project::ProjectError> for StreamError {
    fn from(e: crate::project::ProjectError) -> Self {
        StreamError::Reply(e.into())
    }
}

async fn send(conn: &mut Connection, msg: ServerMessage) -> StreamResult {
    conn.send(&msg).await.map_err(|_| StreamError::Gone)
}

fn matches(event: &Event, project: Option<&str>, phase: Option<u32>) -> bool {
    project.is_none_or(|p| event.project == p) && phase.is_none_or(|n| event.phase == n)
}

pub async fn watch(
    daemon: &Arc<Daemon>,
    conn: &mut Connection,
    project: Option<String>,
    phase: Option<u32>,
    since: Option<u64>,
) -> StreamResult {
    let project = match project {
        Some(p) => Some(Project::open(Path::new(&p))?.root.display().to_string()),
        None => None,
    };
    // Subscribe before reading the store, so no event falls between the two.
    let mut rx = daemon.bus.subscribe();
    let mut last = match since {
        Some(since) => replay(daemon, conn, since, project.as_deref(), phase).await?,
        None => daemon.bus.store().last_seq().map_err(|e| error(ErrorKind::Internal, e.to_string()))?,
    };
    let last_seq = last;
    send(conn, ServerMessage::Response(Response::WatchStarted { last_seq })).await?;
    loop {
        match rx.recv().await {
            Ok(event) => {
                if event.seq <= last {
                    continue;
                }
                last = event.seq;
                if matches(&event, project.as_deref(), phase) {
                    send(conn, ServerMessage::Event(event)).await?;
                }
            }
            // A slow watcher missed live events: fetch them from the store instead.
            Err(RecvError::Lagged(_)) => last = replay(daemon, conn, last, project.as_deref(), phase).await?,
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Sends stored events after `after`; returns the last sequence number seen.
async fn replay(
    daemon: &Daemon,
    conn: &mut Connection,
    mut after: u64,
    project: Option<&str>,
    phase: Option<u32>,
) -> Result<u64, StreamError> {
    loop {
        let batch =
            daemon.bus.store().events_after(after, 1024).map_err(|e| error(ErrorKind::Internal, e.to_string()))?;
        let Some(last) = batch.last().map(|e| e.seq) else { return Ok(after) };
        for event in batch {
            if matches(&event, project, phase) {
                send(conn, ServerMessage::Event(event)).await?;
            }
        }
        after = last;
    }
}

pub async fn wait(daemon: &Arc<Daemon>, conn: &mut Connection, phase: &PhaseRef) -> StreamResult {
    let project = Project::open(Path::new(&phase.project))?;
    let name = project.root.display().to_string();
    let mut rx = daemon.bus.subscribe();
    let active = daemon.run(&project.root, phase.phase);
    // A run that announced its end just before we subscribed is still listed for a moment.
    let ended = active.as_ref().and_then(|run| run.state.borrow().outcome);
    let outcome = if let Some(outcome) = ended {
        outcome
    } else if active.is_some() {
        loop {
            match rx.recv().await {
                Ok(Event { kind: EventKind::RunEnded { outcome, .. }, project: p, phase: n, .. })
                    if p == name && n == phase.phase =>
                {
                    break outcome;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if daemon.run(&project.root, phase.phase).is_none() {
                        outlive_shutdown(daemon).await;
                        break ended_outcome(daemon, &project, phase.phase)?;
                    }
                }
                Err(RecvError::Closed) => return Err(StreamError::Gone),
            }
        }
    } else {
        ended_outcome(daemon, &project, phase.phase)?
    };
    send(conn, ServerMessage::Response(Response::Waited { outcome })).await
}

/// The outcome of a phase that is not running: its last run, else phase_config.json.
fn ended_outcome(daemon: &Daemon, project: &Project, phase: u32) -> Result<RunOutcome, StreamError> {
    if let Some(outcome) = daemon.last_run(&project.root, phase).and_then(|state| state.borrow().outcome) {
        return Ok(outcome);
    }
    let doc = crate::phase::phase_config(project, phase)?;
    match doc.str_field("status") {
        "completed" => Ok(RunOutcome::Completed),
        "failed" => Ok(RunOutcome::Failed),
        "stopped" => Ok(RunOutcome::Stopped),
        other => Err(error(
            ErrorKind::NotFound,
            format!("phase {phase} is not running and has not ended (status {other:?}); start it first"),
        )
        .into()),
    }
}

/// What a `logs` request asks for besides the story.
pub struct LogOptions {
    pub iteration: Option<u32>,
    pub follow: bool,
    pub all: bool,
    pub tail: Option<u32>,
}

pub async fn logs(
    daemon: &Arc<Daemon>,
    conn: &mut Connection,
    phase: &PhaseRef,
    story: &str,
    options: LogOptions,
) -> StreamResult {
    let LogOptions { iteration, follow, all, tail } = options;
    let project = Project::open(Path::new(&phase.project))?;
    if StoryId::parse(story).is_none() {
        return Err(error(ErrorKind::BadRequest, format!("{story:?} is not a story id")).into());
    }
    if iteration == Some(0) {
        return Err(error(ErrorKind::BadRequest, "iterations are numbered from 1").into());
    }
    let root = daemon.logs_root(&project.root);
    // Subscribed before the logs are listed: no iteration starts unseen in between.
    let events = follow.then(|| daemon.bus.subscribe());
    let known = crate::logs::logged_iterations(&root, story);
    let current = match iteration.or_else(|| known.last().copied()) {
        Some(n) => n,
        None if follow => 0,
        None => {
            return Err(
                error(ErrorKind::NotFound, format!("no logs yet for {story} in {}", project.root.display())).into()
            )
        }
    };
    if current != 0 && !known.contains(&current) {
        return Err(
            error(ErrorKind::NotFound, format!("{story} has no iteration {current} (logged: {known:?})")).into()
        );
    }
    // `all`: from the first logged iteration on, each in turn, up to the latest.
    let first = if all { known.first().copied().unwrap_or(current) } else { current };
    let mut cursor = LogCursor { root: &root, story, iteration: first, offset: 0 };
    if let Some(lines) = tail.filter(|_| first != 0) {
        let path = crate::logs::log_path(&root, story, first);
        cursor.offset = tokio::task::spawn_blocking(move || tail_offset(&path, lines)).await.unwrap_or(0);
    }
    for &next in known.iter().filter(|n| all && **n > first) {
        cursor.move_to(conn, next).await?;
    }
    cursor.catch_up(conn).await?;
    if let Some(events) = events {
        follow_logs(daemon, conn, phase, &project, &mut cursor, events).await?;
    }
    send(conn, ServerMessage::Response(Response::LogEnd)).await
}

/// The log a `logs` request reads: its iteration (0: none yet) and how much of it was sent.
struct LogCursor<'a> {
    root: &'a Path,
    story: &'a str,
    iteration: u32,
    offset: u64,
}

impl LogCursor<'_> {
    /// Sends what the current log gained since the last call.
    async fn catch_up(&mut self, conn: &mut Connection) -> Result<(), StreamError> {
        if self.iteration != 0 {
            let path = crate::logs::log_path(self.root, self.story, self.iteration);
            self.offset = send_new(conn, &path, self.iteration, self.offset).await?;
        }
        Ok(())
    }

    /// Finishes the current log and moves on to iteration `next`.
    async fn move_to(&mut self, conn: &mut Connection, next: u32) -> Result<(), StreamError> {
        self.catch_up(conn).await?;
        self.iteration = next;
        self.offset = 0;
        Ok(())
    }
}

/// `logs -f`: follows the story's logs across iterations until the run ends. It may be started
/// before the phase: it follows until a run it saw has ended.
async fn follow_logs(
    daemon: &Arc<Daemon>,
    conn: &mut Connection,
    phase: &PhaseRef,
    project: &Project,
    cursor: &mut LogCursor<'_>,
    mut rx: tokio::sync::broadcast::Receiver<Event>,
) -> Result<(), StreamError> {
    let name = project.root.display().to_string();
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    let mut seen_running = daemon.run(&project.root, phase.phase).is_some();
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(Event { kind: EventKind::IterationStarted { story: s, iteration: next, .. }, project: p, .. })
                    if s == cursor.story && p == name && next > cursor.iteration =>
                {
                    cursor.move_to(conn, next).await?;
                }
                Ok(Event { kind: EventKind::RunEnded { .. }, project: p, phase: n, .. })
                    if p == name && n == phase.phase =>
                {
                    return cursor.catch_up(conn).await;
                }
                Err(RecvError::Closed) => return Err(StreamError::Gone),
                _ => {}
            },
            _ = tick.tick() => {
                cursor.catch_up(conn).await?;
                // Also covers events missed by a lagging subscriber: move on to the next log,
                // and end once the run that was seen has gone.
                let logged = crate::logs::logged_iterations(cursor.root, cursor.story);
                if let Some(next) = logged.into_iter().find(|n| *n > cursor.iteration) {
                    cursor.move_to(conn, next).await?;
                    cursor.catch_up(conn).await?;
                }
                let running = daemon.run(&project.root, phase.phase).is_some();
                seen_running |= running;
                if seen_running && !running {
                    outlive_shutdown(daemon).await;
                    return cursor.catch_up(conn).await;
                }
            }
        }
    }
}

/// A run that is gone because the daemon is shutting down has not ended: it goes on with the
/// next daemon (or image, after an upgrade), and the stream must not say it ended. Never
/// returns then: the connection closes with the daemon and the client connects again.
async fn outlive_shutdown(daemon: &Daemon) {
    if *daemon.shutdown.borrow() {
        std::future::pending::<()>().await;
    }
}

/// Where the last `lines` lines of the file at `path` begin (0 when it has fewer, or cannot be
/// read). Read backwards in blocks: a long log costs its tail, not its whole length.
fn tail_offset(path: &Path, lines: u32) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return 0 };
    let Ok(len) = file.metadata().map(|m| m.len()) else { return 0 };
    if lines == 0 {
        return len;
    }
    // Each newline before the end starts one more line of the tail (the file's last newline
    // only ends the last line).
    let mut started = 0;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let block = &mut buf[..(end - start) as usize];
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_exact(block).is_err() {
            return 0;
        }
        for (i, byte) in block.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte == b'\n' && at + 1 < len {
                started += 1;
                if started == lines {
                    return at + 1;
                }
            }
        }
        end = start;
    }
    0
}

/// Sends what `path` holds after `offset`; returns the new offset.
async fn send_new(conn: &mut Connection, path: &Path, iteration: u32, offset: u64) -> Result<u64, StreamError> {
    let Ok(mut file) = tokio::fs::File::open(path).await else { return Ok(offset) };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Ok(offset);
    }
    let mut offset = offset;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return Ok(offset);
        }
        offset += n as u64;
        send(conn, ServerMessage::Response(Response::LogChunk { iteration, data: buf[..n].to_vec() })).await?;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_offset_finds_the_start_of_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        for (text, lines, expected) in [
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb\nc", 2, "b\nc"),
            ("a\nb\nc\n", 5, "a\nb\nc\n"),
            ("a\nb\nc\n", 0, ""),
            ("", 3, ""),
        ] {
            std::fs::write(&path, text).unwrap();
            let at = super::tail_offset(&path, lines) as usize;
            assert_eq!(&text[at..], expected, "{text:?} tail {lines}");
        }
        let long: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &long).unwrap();
        let at = super::tail_offset(&path, 3) as usize;
        assert_eq!(&long[at..], "line 99997\nline 99998\nline 99999\n");
    }
}
