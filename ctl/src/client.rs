//! A blocking connection to sticlerd: binary frames, greeting first.

use std::path::{Path, PathBuf};

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};
use sticler_proto::codec::{self, CodecError};
use sticler_proto::{ClientMessage, ErrorReply, Request, ServerMessage, PROTOCOL_VERSION};

/// What went wrong talking to the daemon; each maps to an exit code.
#[derive(Debug)]
pub enum ClientError {
    /// Nobody listens: exit 3.
    Unreachable { socket: PathBuf, reason: String },
    /// The daemon answered with an error: exit 1.
    Refused(ErrorReply),
    /// The connection broke or the daemon sent nonsense: exit 1.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable { socket, reason } => write!(
                f,
                "sticlerd is not running at {} ({reason}).\nStart it with `sticlerd` (or `systemctl --user start sticlerd`), or point to it with --socket / STICLER_SOCKET\n(the system unit listens on /run/sticler/sticlerd.sock; `journalctl -u sticlerd` tells why it stopped).",
                socket.display()
            ),
            ClientError::Refused(e) => f.write_str(&e.message),
            ClientError::Protocol(why) => write!(
                f,
                "talking to sticlerd failed: {why}.\nCheck that it still runs (`sticlerctl ping`) and that both are the same version (`sticlerctl version`); its log says more."
            ),
        }
    }
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

pub struct Client {
    stream: Stream,
}

/// The same rule as the daemon: flag, `$STICLER_SOCKET`, `$XDG_RUNTIME_DIR/sticler/sticlerd.sock`,
/// `/run/sticler/sticlerd.sock` for root.
pub fn socket_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    if flag.is_some() {
        return flag;
    }
    if let Some(path) = std::env::var_os("STICLER_SOCKET").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("sticler").join("sticlerd.sock"));
    }
    nix::unistd::geteuid().is_root().then(|| PathBuf::from("/run/sticler/sticlerd.sock"))
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable { socket: socket.to_path_buf(), reason };
        let name = socket.to_fs_name::<GenericFilePath>().map_err(|e| unreachable(e.to_string()))?;
        let stream = Stream::connect(name).map_err(|e| unreachable(e.to_string()))?;
        let mut client = Client { stream };
        codec::write_frame(&mut client.stream, &ClientMessage::Hello { protocol_version: PROTOCOL_VERSION })?;
        match client.next()? {
            ServerMessage::Welcome { .. } => Ok(client),
            ServerMessage::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
        }
    }

    pub fn send(&mut self, request: Request) -> Result<(), ClientError> {
        codec::write_frame(&mut self.stream, &ClientMessage::Request(request))?;
        Ok(())
    }

    /// The next message; an `Error` from the daemon becomes `ClientError::Refused`.
    pub fn next(&mut self) -> Result<ServerMessage, ClientError> {
        match codec::read_frame(&mut self.stream)? {
            ServerMessage::Error(e) => Err(ClientError::Refused(e)),
            msg => Ok(msg),
        }
    }

    /// Sends one request and returns its single reply.
    pub fn call(&mut self, request: Request) -> Result<sticler_proto::Response, ClientError> {
        self.send(request)?;
        match self.next()? {
            ServerMessage::Response(r) => Ok(r),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}
