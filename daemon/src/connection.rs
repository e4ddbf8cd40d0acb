//! One client connection in either protocol mode: binary frames or JSON lines. The mode is
//! chosen by the first byte the client sends (`{` means JSON).

use std::io;
use std::time::Duration;

use interprocess::local_socket::tokio::Stream;
use sticler_proto::codec::{self, CodecError};
use sticler_proto::{ClientMessage, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request the daemon accepts, in either mode. The protocol allows frames of 16 MiB
/// (replies such as a 10,000-story status can be large) but no request needs more than a few
/// KiB: this keeps the memory held by 1,024 connections under about 1 GiB even when every one
/// of them sends a huge message slowly.
pub const MAX_REQUEST_LEN: usize = 1024 * 1024;

/// Once a message has started, the rest must arrive within this time. A client that sends
/// half a frame and stalls is dropped instead of holding its task forever.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(10);

pub struct Connection {
    stream: Stream,
    /// Bytes received and not yet consumed.
    buf: Vec<u8>,
    pub json: bool,
}

fn timed_out(what: &str) -> CodecError {
    CodecError::Io(io::Error::new(io::ErrorKind::TimedOut, format!("{what} within {} s", MESSAGE_DEADLINE.as_secs())))
}

impl Connection {
    /// Waits (up to `MESSAGE_DEADLINE`) for the first byte to learn the mode.
    pub async fn open(stream: Stream) -> Result<Connection, CodecError> {
        let mut conn = Connection { stream, buf: Vec::with_capacity(512), json: false };
        tokio::time::timeout(MESSAGE_DEADLINE, conn.fill()).await.map_err(|_| timed_out("no request"))??;
        conn.json = conn.buf.first() == Some(&b'{');
        Ok(conn)
    }

    /// Reads more bytes into the buffer; `Closed` at end of stream.
    async fn fill(&mut self) -> Result<(), CodecError> {
        let mut chunk = [0u8; 8192];
        let n = (&self.stream).read(&mut chunk).await?;
        if n == 0 {
            return Err(CodecError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads the next message. Idle time before a message is unlimited (watchers never talk);
    /// once its first byte arrived, the message must complete within `MESSAGE_DEADLINE`.
    pub async fn read(&mut self) -> Result<ClientMessage, CodecError> {
        if self.buf.is_empty() {
            self.fill().await?;
        }
        tokio::time::timeout(MESSAGE_DEADLINE, self.read_started())
            .await
            .map_err(|_| timed_out("message not completed"))?
    }

    async fn read_started(&mut self) -> Result<ClientMessage, CodecError> {
        if self.json {
            loop {
                if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                    if end >= MAX_REQUEST_LEN {
                        return Err(CodecError::TooLarge { len: end + 1, max: MAX_REQUEST_LEN });
                    }
                    let line: Vec<u8> = self.buf.drain(..=end).collect();
                    return codec::decode_json_line(&line);
                }
                if self.buf.len() > MAX_REQUEST_LEN {
                    return Err(CodecError::TooLarge { len: self.buf.len(), max: MAX_REQUEST_LEN });
                }
                self.fill_or_truncated().await?;
            }
        }
        while self.buf.len() < 4 {
            self.fill_or_truncated().await?;
        }
        let len = codec::frame_len([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])?;
        if len > MAX_REQUEST_LEN {
            return Err(CodecError::TooLarge { len, max: MAX_REQUEST_LEN });
        }
        while self.buf.len() < 4 + len {
            self.fill_or_truncated().await?;
        }
        let frame: Vec<u8> = self.buf.drain(..4 + len).collect();
        codec::decode_payload(&frame[4..])
    }

    async fn fill_or_truncated(&mut self) -> Result<(), CodecError> {
        let got = self.buf.len();
        match self.fill().await {
            Err(CodecError::Closed) => Err(CodecError::Truncated { expected: got + 1, got }),
            other => other,
        }
    }

    pub async fn send(&mut self, msg: &ServerMessage) -> Result<(), CodecError> {
        let bytes = if self.json { codec::encode_json_line(msg)? } else { codec::encode_frame(msg)? };
        (&self.stream).write_all(&bytes).await?;
        (&self.stream).flush().await?;
        Ok(())
    }
}
