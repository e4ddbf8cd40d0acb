//! The dashboard's connections to sticlerd: the same binary protocol as `client.rs`, read and
//! written on the dashboard's tokio runtime, so that a stream (events, a followed log) waits
//! without holding a thread and ends as soon as its browser tab goes away.

use std::path::Path;

use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use sticler_proto::codec;
use sticler_proto::{ClientMessage, Request, Response, ServerMessage, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::ClientError;

pub struct DaemonLink {
    stream: Stream,
}

impl DaemonLink {
    pub async fn connect(socket: &Path) -> Result<DaemonLink, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable { socket: socket.to_path_buf(), reason };
        let name = socket.to_fs_name::<GenericFilePath>().map_err(|e| unreachable(e.to_string()))?;
        let stream = Stream::connect(name).await.map_err(|e| unreachable(e.to_string()))?;
        let mut link = DaemonLink { stream };
        link.write(&ClientMessage::Hello { protocol_version: PROTOCOL_VERSION }).await?;
        match link.next().await? {
            ServerMessage::Welcome { .. } => Ok(link),
            other => Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
        }
    }

    async fn write(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        let frame = codec::encode_frame(msg)?;
        self.stream.write_all(&frame).await.map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn send(&mut self, request: Request) -> Result<(), ClientError> {
        self.write(&ClientMessage::Request(request)).await
    }

    /// The next message; an `Error` from the daemon becomes `ClientError::Refused`.
    pub async fn next(&mut self) -> Result<ServerMessage, ClientError> {
        let broken = |e: std::io::Error| ClientError::Protocol(e.to_string());
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix).await.map_err(broken)?;
        let mut payload = vec![0u8; codec::frame_len(prefix)?];
        self.stream.read_exact(&mut payload).await.map_err(broken)?;
        match codec::decode_payload(&payload)? {
            ServerMessage::Error(e) => Err(ClientError::Refused(e)),
            msg => Ok(msg),
        }
    }
}

/// One request on a connection of its own, and its single reply.
pub async fn call(socket: &Path, request: Request) -> Result<Response, ClientError> {
    let mut link = DaemonLink::connect(socket).await?;
    link.send(request).await?;
    match link.next().await? {
        ServerMessage::Response(r) => Ok(r),
        other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
    }
}
