//! A blocking connection to sticlerd: binary frames, greeting first.

use std::path::{Path, PathBuf};

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};
use sticler_proto::codec::{self, CodecError};
use sticler_proto::{
    ClientMessage, ErrorReply, PhaseView, Request, Response, RunOutcome, ServerMessage, StatusReport, ValidationReport,
    PROTOCOL_VERSION,
};

/// What went wrong talking to the daemon; each maps to an exit code.
#[derive(Debug)]
pub enum ClientError {
    /// Nobody listens: exit 3.
    Unreachable { socket: PathBuf, reason: String },
    /// The daemon answered with an error: exit 1.
    Refused(ErrorReply),
    /// The connection broke or the daemon sent nonsense: exit 1.
    Protocol(String),
    /// The daemon closed the connection (it stopped, restarted or re-executed itself): exit 1,
    /// unless the command connects again (`watch`, `logs -f`).
    Closed,
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
            ClientError::Closed => f.write_str(
                "sticlerd closed the connection: it stopped or restarted (`sticlerctl ping` says whether it is back)",
            ),
            ClientError::Protocol(why) => write!(
                f,
                "talking to sticlerd failed: {why}.\nCheck that it still runs (`sticlerctl ping`) and that both are the same version (`sticlerctl version`); its log says more."
            ),
        }
    }
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Closed => ClientError::Closed,
            CodecError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => ClientError::Closed,
            e => ClientError::Protocol(e.to_string()),
        }
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
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        self.send(request)?;
        match self.next()? {
            ServerMessage::Response(r) => Ok(r),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sends one request and returns its reply as the payload `T` it must carry. Any other reply
    /// is an error (exit 1): a daemon answering something else (another version, a bug) must
    /// not pass for success with nothing printed.
    pub fn call_expect<T: Reply>(&mut self, request: Request) -> Result<T, ClientError> {
        expect_reply(self.call(request)?)
    }
}

/// `response` as the payload `T`, or an error naming the reply expected and the one that came.
pub fn expect_reply<T: Reply>(response: Response) -> Result<T, ClientError> {
    T::take(response).map_err(|other| {
        // The variant's name only: the Debug text of a whole status report would bury the point.
        let debug = format!("{other:?}");
        let got = debug.split(['(', ' ', '{']).next().unwrap_or(&debug);
        ClientError::Protocol(format!("expected a {} reply, got {got}", T::VARIANT))
    })
}

/// The payload of one kind of `Response`, for `call_expect`.
pub trait Reply: Sized {
    /// The `Response` variant that carries it, for the error when another one came.
    const VARIANT: &'static str;
    /// The payload, or the response back when it is of another kind.
    fn take(response: Response) -> Result<Self, Response>;
}

macro_rules! reply {
    ($payload:ty, $variant:literal, $pattern:pat => $value:expr) => {
        impl Reply for $payload {
            const VARIANT: &'static str = $variant;
            fn take(response: Response) -> Result<Self, Response> {
                match response {
                    $pattern => Ok($value),
                    other => Err(other),
                }
            }
        }
    };
}

/// `Pong`: the daemon answers.
pub struct Pong;
/// `ShuttingDown`: the daemon accepted to stop.
pub struct ShuttingDown;
/// `Done`: a request that changes state was accepted; the text says what happened.
pub struct Done(pub String);
/// `Version`: who answers.
pub struct DaemonVersion {
    pub daemon_version: String,
    pub protocol_version: u32,
    pub pid: u32,
    /// When the daemon image started serving (Unix ms).
    pub started_ms: u64,
}

reply!(Pong, "Pong", Response::Pong => Pong);
reply!(ShuttingDown, "ShuttingDown", Response::ShuttingDown => ShuttingDown);
reply!(Done, "Done", Response::Done { message } => Done(message));
reply!(
    DaemonVersion,
    "Version",
    Response::Version { daemon_version, protocol_version, pid, started_ms } => DaemonVersion { daemon_version, protocol_version, pid, started_ms }
);
reply!(StatusReport, "Status", Response::Status(report) => report);
reply!(Vec<StatusReport>, "StatusAll", Response::StatusAll(reports) => reports);
reply!(ValidationReport, "Validated", Response::Validated(report) => report);
reply!(Box<PhaseView>, "Started", Response::Started(view) => view);
reply!(RunOutcome, "Waited", Response::Waited { outcome } => outcome);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_reply_yields_its_payload() {
        let done: Done = expect_reply(Response::Done { message: "stopped".into() }).map_err(|e| e.to_string()).unwrap();
        assert_eq!(done.0, "stopped");
        let outcome: RunOutcome =
            expect_reply(Response::Waited { outcome: RunOutcome::Failed }).map_err(|e| e.to_string()).unwrap();
        assert_eq!(outcome, RunOutcome::Failed);
    }

    #[test]
    fn another_reply_is_a_protocol_error_naming_both() {
        let Err(e) = expect_reply::<StatusReport>(Response::Pong) else { panic!("Pong accepted as a status report") };
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
        assert!(e.to_string().contains("expected a Status reply, got Pong"), "{e}");

        let Err(e) = expect_reply::<Done>(Response::Waited { outcome: RunOutcome::Completed }) else {
            panic!("Waited accepted as Done")
        };
        assert!(e.to_string().contains("expected a Done reply, got Waited"), "{e}");
        let Err(e) = expect_reply::<RunOutcome>(Response::StatusAll(vec![])) else { panic!("StatusAll accepted") };
        assert!(e.to_string().contains("expected a Waited reply, got StatusAll"), "{e}");
    }
}
