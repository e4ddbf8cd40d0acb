//! Streams that go on across a restart of the daemon: when sticlerd re-executes itself
//! (`upgrade`) or comes back after a crash or `shutdown --keep-workers`, the connection of
//! `watch` and `logs -f` closes; they connect again and go on from the last event (or log
//! byte) they showed, without a gap or a repeat.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sticler_proto::{Request, Response, ServerMessage};

use crate::client::{Client, ClientError};

/// How long a stream waits for the daemon to answer again.
const WAIT: Duration = Duration::from_secs(30);
/// Between two attempts to connect.
const RETRY: Duration = Duration::from_millis(100);

/// Connects to `socket` again, trying until the daemon answers or `WAIT` has passed.
pub fn reconnect(socket: &Path) -> Result<Client, ClientError> {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(socket) {
            Err(ClientError::Unreachable { .. } | ClientError::Closed) if Instant::now() < deadline => {
                std::thread::sleep(RETRY);
            }
            other => return other,
        }
    }
}

/// A `watch` stream that connects again when the daemon goes away: each event comes once, in
/// order, across restarts.
pub struct Watch {
    client: Client,
    socket: PathBuf,
    project: Option<String>,
    phase: Option<u32>,
    /// The last sequence number the stream is known to have passed (shown or filtered out).
    last: Option<u64>,
}

impl Watch {
    pub fn start(
        socket: &Path,
        project: Option<String>,
        phase: Option<u32>,
        since: Option<u64>,
    ) -> Result<Watch, ClientError> {
        let mut watch =
            Watch { client: Client::connect(socket)?, socket: socket.to_path_buf(), project, phase, last: since };
        watch.request()?;
        Ok(watch)
    }

    fn request(&mut self) -> Result<(), ClientError> {
        self.client.send(Request::Watch { project: self.project.clone(), phase: self.phase, since: self.last })
    }

    /// The next message of the stream.
    pub fn next(&mut self) -> Result<ServerMessage, ClientError> {
        loop {
            match self.client.next() {
                Ok(ServerMessage::Event(event)) => {
                    self.last = Some(event.seq);
                    return Ok(ServerMessage::Event(event));
                }
                Ok(ServerMessage::Response(Response::WatchStarted { last_seq })) => {
                    self.last = Some(self.last.map_or(last_seq, |last| last.max(last_seq)));
                    return Ok(ServerMessage::Response(Response::WatchStarted { last_seq }));
                }
                Err(ClientError::Closed) => {
                    self.client = reconnect(&self.socket)?;
                    self.request()?;
                }
                other => return other,
            }
        }
    }
}
