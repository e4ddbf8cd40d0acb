//! The Unix socket: binding it safely, accepting connections, checking who is calling, and
//! dispatching each request to its handler.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use sticler_proto::codec::CodecError;
use sticler_proto::{ClientMessage, ErrorKind, Request, ServerMessage, PROTOCOL_VERSION, VERSION};
use tokio::sync::{watch, Semaphore};

use crate::connection::Connection;
use crate::daemon::{error, Daemon};
use crate::stream::{self, StreamError};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{}: a daemon is already listening on this socket; stop it first (sticlerctl shutdown)", .0.display())]
    InUse(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Binds the socket with mode 0600. An existing socket file is removed only after a connect
/// attempt proves that nobody listens on it.
pub fn bind(path: &Path) -> Result<Listener, BindError> {
    let io_err = |source| BindError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing stale socket (nobody listens)");
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let name = path.to_fs_name::<GenericFilePath>().map_err(io_err)?;
    // The daemon runs with umask 077 (see main), so the socket is never created open.
    let listener = ListenerOptions::new().name(name).mode(0o600).reclaim_name(false).create_tokio().map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// The listening socket an upgraded image inherited (see `upgrade`), bound already.
pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Listener> {
    let inner = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(fd)?;
    Ok(Listener::from(inner))
}

/// A duplicate of the listener's descriptor (close-on-exec until an upgrade clears it).
pub fn listener_fd(listener: &Listener) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    match listener {
        Listener::UdSocket(inner) => inner.as_fd().try_clone_to_owned(),
    }
}

pub async fn serve(listener: Listener, daemon: Arc<Daemon>, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            serve_connection(stream, daemon).await;
            drop(permit);
        });
    }
}

/// Same uid as the daemon, or root.
fn allowed(stream: &Stream) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_creds().map(|c| (c.euid(), c.pid())) {
        Ok((Some(uid), _)) if uid == me || uid == 0 => Ok(()),
        Ok((uid, pid)) => Err(format!(
            "refused connection from uid {} (pid {}): only uid {me} and root may use this daemon",
            uid.map_or("?".into(), |u| u.to_string()),
            pid.map_or("?".into(), |p| p.to_string())
        )),
        Err(e) => Err(format!("refused connection: cannot read peer credentials: {e}")),
    }
}

async fn serve_connection(stream: Stream, daemon: Arc<Daemon>) {
    let auth = allowed(&stream);
    let mut conn = match Connection::open(stream).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!("connection dropped before its first message: {e}");
            return;
        }
    };
    if let Err(why) = auth {
        tracing::warn!("{why}");
        let _ = conn.send(&ServerMessage::Error(error(ErrorKind::PermissionDenied, why))).await;
        return;
    }
    let mut greeted = false;
    loop {
        let msg = match conn.read().await {
            Ok(msg) => msg,
            Err(CodecError::Closed) => return,
            Err(e) => {
                tracing::debug!("bad message from client: {e}");
                let _ = conn.send(&ServerMessage::Error(error(ErrorKind::BadRequest, e.to_string()))).await;
                return;
            }
        };
        let request = match msg {
            ClientMessage::Hello { protocol_version } if !greeted => {
                if protocol_version != PROTOCOL_VERSION {
                    let why = format!(
                        "protocol version mismatch: client speaks {protocol_version}, sticlerd {VERSION} speaks {PROTOCOL_VERSION}; use a sticlerctl of the same version as the daemon"
                    );
                    let _ = conn.send(&ServerMessage::Error(error(ErrorKind::VersionMismatch, why))).await;
                    return;
                }
                greeted = true;
                let welcome = ServerMessage::Welcome {
                    daemon_version: VERSION.into(),
                    protocol_version: PROTOCOL_VERSION,
                    pid: std::process::id(),
                };
                if conn.send(&welcome).await.is_err() {
                    return;
                }
                continue;
            }
            ClientMessage::Hello { .. } => {
                let _ = conn.send(&ServerMessage::Error(error(ErrorKind::BadRequest, "Hello sent twice"))).await;
                return;
            }
            // JSON clients (scripts, socat) may skip the greeting; binary clients may not.
            ClientMessage::Request(request) if greeted || conn.json => request,
            ClientMessage::Request(_) => {
                let why = "the first message must be Hello { protocol_version }";
                let _ = conn.send(&ServerMessage::Error(error(ErrorKind::BadRequest, why))).await;
                return;
            }
        };
        if !dispatch(&daemon, &mut conn, request).await {
            return;
        }
    }
}

/// Handles one request; returns false when the connection should close.
async fn dispatch(daemon: &Arc<Daemon>, conn: &mut Connection, request: Request) -> bool {
    let streamed = match request {
        Request::Watch { project, phase, since } => stream::watch(daemon, conn, project, phase, since).await,
        Request::Logs { phase, story, iteration, follow, all, tail } => {
            let options = stream::LogOptions { iteration, follow, all, tail };
            stream::logs(daemon, conn, &phase, &story, options).await
        }
        Request::Wait(phase) => stream::wait(daemon, conn, &phase).await,
        other => {
            let reply = match crate::handler::handle(daemon, other).await {
                Ok(response) => ServerMessage::Response(response),
                Err(e) => ServerMessage::Error(e),
            };
            return conn.send(&reply).await.is_ok();
        }
    };
    match streamed {
        Ok(()) => true,
        Err(StreamError::Gone) => false,
        Err(StreamError::Reply(e)) => conn.send(&ServerMessage::Error(e)).await.is_ok(),
    }
}
