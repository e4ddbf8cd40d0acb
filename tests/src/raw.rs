//! A raw protocol client for the adversarial and load tests: bytes on the socket, no
//! sticlerctl in between, so a test can send exactly what a hostile or buggy client would.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use sticler_proto::codec::{self, CodecError};
use sticler_proto::{ClientMessage, Request, ServerMessage, PROTOCOL_VERSION};

pub struct RawClient {
    pub stream: UnixStream,
}

impl RawClient {
    /// Connects with a 30 s read timeout, so a test never hangs on a silent daemon.
    pub fn connect(socket: &Path) -> io::Result<RawClient> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(RawClient { stream })
    }

    /// Connects and greets in binary mode.
    pub fn greeted(socket: &Path) -> Result<RawClient, String> {
        let mut client = RawClient::connect(socket).map_err(|e| format!("connect: {e}"))?;
        client.send(&ClientMessage::Hello { protocol_version: PROTOCOL_VERSION })?;
        match client.read().map_err(|e| format!("welcome: {e}"))? {
            ServerMessage::Welcome { .. } => Ok(client),
            other => Err(format!("expected Welcome, got {other:?}")),
        }
    }

    pub fn send(&mut self, msg: &ClientMessage) -> Result<(), String> {
        codec::write_frame(&mut self.stream, msg).map_err(|e| format!("send: {e}"))
    }

    pub fn read(&mut self) -> Result<ServerMessage, CodecError> {
        codec::read_frame(&mut self.stream)
    }

    /// One request, one reply.
    pub fn request(&mut self, request: Request) -> Result<ServerMessage, String> {
        self.send(&ClientMessage::Request(request))?;
        self.read().map_err(|e| format!("reply: {e}"))
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// True when the daemon has closed the connection: nothing more arrives, then end of
    /// stream (or a reset, when the daemon hung up on bytes it did not read).
    pub fn closed_by_daemon(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset && rest.is_empty(),
        }
    }
}

/// Reads one JSON line from `stream` and parses it.
pub fn read_json_line(stream: &UnixStream) -> serde_json::Value {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("a JSON line from the daemon");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
}

/// (VmRSS, VmHWM) of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The p-th percentile (0–100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}
