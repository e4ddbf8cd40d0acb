//! Framing. Binary mode: `u32` big-endian payload length, then a bincode 2 (serde) payload.
//! JSON mode: one JSON document per line. Both carry the same message types.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest payload accepted in either mode. A peer announcing more is dropped before any
/// allocation happens, so a hostile length prefix cannot make the daemon reserve memory.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("connection closed")]
    Closed,
    #[error("truncated frame: expected {expected} bytes, connection ended after {got}")]
    Truncated { expected: usize, got: usize },
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("undecodable message: {0}")]
    Malformed(String),
    #[error("message has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("invalid JSON at line 1, column {column}: {message}")]
    Json { column: usize, message: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `msg` as one length-prefixed frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let payload = bincode::serde::encode_to_vec(msg, config()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN });
    }
    let len =
        u32::try_from(payload.len()).map_err(|_| CodecError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN })?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Checks a length prefix before anything is allocated for the payload.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    Ok(len)
}

/// Decodes one payload (without its prefix); every byte must belong to the message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (msg, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes the first frame of `buf`. `Ok(None)` means more bytes are needed; on success the
/// number of bytes consumed is returned with the message.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, CodecError> {
    let Some(prefix) = buf.get(..4) else { return Ok(None) };
    let len = frame_len([prefix[0], prefix[1], prefix[2], prefix[3]])?;
    let Some(payload) = buf.get(4..4 + len) else { return Ok(None) };
    Ok(Some((decode_payload(payload)?, 4 + len)))
}

/// Encodes `msg` as one JSON line (with its `\n`).
pub fn encode_json_line<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut line = serde_json::to_vec(msg).map_err(|e| CodecError::Malformed(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Decodes one JSON line (a trailing `\n` or `\r\n` is allowed).
pub fn decode_json_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, CodecError> {
    if line.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge { len: line.len(), max: MAX_FRAME_LEN });
    }
    serde_json::from_slice(line).map_err(|e| CodecError::Json { column: e.column(), message: e.to_string() })
}

/// Blocking read of one binary frame, for simple clients.
pub fn read_frame<R: Read, T: DeserializeOwned>(reader: &mut R) -> Result<T, CodecError> {
    let mut prefix = [0u8; 4];
    let got = read_full(reader, &mut prefix)?;
    if got == 0 {
        return Err(CodecError::Closed);
    }
    if got < 4 {
        return Err(CodecError::Truncated { expected: 4, got });
    }
    let len = frame_len(prefix)?;
    let mut payload = vec![0u8; len];
    let got = read_full(reader, &mut payload)?;
    if got < len {
        return Err(CodecError::Truncated { expected: len, got });
    }
    decode_payload(&payload)
}

/// Blocking write of one binary frame.
pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, msg: &T) -> Result<(), CodecError> {
    writer.write_all(&encode_frame(msg)?)?;
    writer.flush()?;
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns how many bytes arrived.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn phase() -> PhaseRef {
        PhaseRef { project: "/tmp/p".into(), phase: 2 }
    }

    fn story_view() -> StoryView {
        StoryView {
            id: "US-P2-001".into(),
            title: "Título ✓".into(),
            state: StoryState::Running,
            disk_status: "in_progress".into(),
            iteration: 3,
            runs: 2,
            criteria_done: 1,
            criteria_total: 4,
            dependencies: vec!["US-P1-009".into()],
            focus: "typecheck".into(),
            failed_reasons: vec![],
            blocked_by: vec![],
            running_secs: Some(12),
            commit_hash: String::new(),
            cost_usd: Some(0.25),
            tokens: Some(TokenUsage { input: 10, output: 20, cache_creation: 3, cache_read: 400 }),
            running_iteration: Some(4),
            last_exit: Some(ExitReason::AfterResult),
            waiting: Some("the merge waits".into()),
            worktree: None,
            job: Some(JobView { id: 42, state: "PENDING".into(), reason: Some("Resources".into()), node: None }),
        }
    }

    fn every_client_message() -> Vec<ClientMessage> {
        let requests = vec![
            Request::Ping,
            Request::Version,
            Request::Status { project: "/p".into(), phase: Some(1), story: None },
            Request::Validate(phase()),
            Request::Start { phase: phase(), force: true },
            Request::Stop { phase: phase(), grace_secs: Some(3) },
            Request::Kill(phase()),
            Request::Retry { phase: phase(), stories: vec!["US-P2-001".into()], all_failed: false },
            Request::Logs {
                phase: phase(),
                story: "US-P2-001".into(),
                iteration: None,
                follow: true,
                all: false,
                tail: Some(5),
            },
            Request::Watch { project: None, phase: Some(2), since: Some(7) },
            Request::Wait(phase()),
            Request::Shutdown,
            Request::Resume(phase()),
            Request::StoryDetail { phase: phase(), story: "US-P2-001".into() },
        ];
        let mut all = vec![ClientMessage::Hello { protocol_version: PROTOCOL_VERSION }];
        all.extend(requests.into_iter().map(ClientMessage::Request));
        all
    }

    fn every_server_message() -> Vec<ServerMessage> {
        let view = PhaseView {
            project: "/p".into(),
            phase: 1,
            title: "Foundation".into(),
            status: "in_progress".into(),
            running: true,
            counts: StoryCounts { total: 1, running: 1, ..Default::default() },
            stories: vec![story_view()],
            summary: None,
            problems: vec![Problem { path: "/p/x".into(), message: "bad".into() }],
            cost_usd: Some(1.5),
            tokens: None,
            budget_usd: Some(10.0),
            paused_until: Some(1_769_594_400),
            waiting: Some("waiting for usage limit until 10:00 UTC".into()),
            run_started_ms: Some(1_769_594_000_000),
        };
        let kinds = vec![
            EventKind::RunStarted { stories: 3 },
            EventKind::IterationStarted { story: "US-P1-001".into(), iteration: 1, pid: 42 },
            EventKind::IterationEnded {
                story: "US-P1-001".into(),
                iteration: 1,
                exit: ExitReason::Signalled(9),
                verdict: "progress".into(),
            },
            EventKind::IterationEnded {
                story: "US-P1-001".into(),
                iteration: 2,
                exit: ExitReason::Stalled,
                verdict: "infrastructure failure: no output for 600 s".into(),
            },
            EventKind::StoryCompleted { story: "US-P1-001".into() },
            EventKind::StoryFailed { story: "US-P1-001".into(), reason: "r".into() },
            EventKind::StoryBlocked { story: "US-P1-002".into(), by: "US-P1-001".into() },
            EventKind::StoryRetried { story: "US-P1-001".into() },
            EventKind::RunStopping { kill: false },
            EventKind::RunEnded { outcome: RunOutcome::Stopped, summary: "s".into() },
            EventKind::UsageLimitWait { story: "US-P1-001".into(), until_unix: 1_769_594_400, reason: "r".into() },
            EventKind::UsageLimitResumed { early: true },
            EventKind::BudgetSpent { cost_usd: 2.5, budget_usd: 2.0 },
        ];
        let mut all = vec![
            ServerMessage::Welcome { daemon_version: VERSION.into(), protocol_version: 1, pid: 9 },
            ServerMessage::Error(ErrorReply { kind: ErrorKind::Invalid, message: "x".into() }),
        ];
        let responses = vec![
            Response::Pong,
            Response::Version { daemon_version: "1".into(), protocol_version: 1, pid: 1, started_ms: 1 },
            Response::Status(StatusReport { project: "/p".into(), phases: vec![view.clone()] }),
            Response::Validated(ValidationReport { project: "/p".into(), phase: 1, stories: 2, problems: vec![] }),
            Response::Started(Box::new(view.clone())),
            Response::Done { message: "ok".into() },
            Response::LogChunk { iteration: 2, data: vec![0, 159, 255] },
            Response::LogEnd,
            Response::WatchStarted { last_seq: 5 },
            Response::Waited { outcome: RunOutcome::Failed },
            Response::ShuttingDown,
            Response::StoryDetail(Box::new(StoryDetail {
                story: story_view(),
                spec: "# US-P1-001\n".into(),
                criteria: vec![Criterion { text: "it works".into(), done: true }],
                worker_notes: "notes".into(),
                iterations: vec![IterationRecord {
                    iteration: 1,
                    started_ms: 1,
                    ended_ms: Some(2),
                    exit: Some(ExitReason::Exited(0)),
                    verdict: Some("completed".into()),
                }],
                commit_show: Some("commit abc".into()),
            })),
        ];
        all.extend(responses.into_iter().map(ServerMessage::Response));
        all.extend(kinds.into_iter().enumerate().map(|(i, kind)| {
            ServerMessage::Event(Event { seq: i as u64, time_ms: 1, project: "/p".into(), phase: 1, kind })
        }));
        all
    }

    #[test]
    fn every_message_round_trips_in_both_modes() {
        for msg in every_client_message() {
            let frame = encode_frame(&msg).unwrap();
            let (back, used) = decode_frame::<ClientMessage>(&frame).unwrap().unwrap();
            assert_eq!((back, used), (msg.clone(), frame.len()));
            let line = encode_json_line(&msg).unwrap();
            assert_eq!(decode_json_line::<ClientMessage>(&line).unwrap(), msg);
        }
        for msg in every_server_message() {
            let frame = encode_frame(&msg).unwrap();
            assert_eq!(read_frame::<_, ServerMessage>(&mut frame.as_slice()).unwrap(), msg);
            let line = encode_json_line(&msg).unwrap();
            assert_eq!(decode_json_line::<ServerMessage>(&line).unwrap(), msg);
        }
    }

    #[test]
    fn views_without_the_agent_fields_still_parse() {
        let mut json = serde_json::to_value(story_view()).unwrap();
        let map = json.as_object_mut().unwrap();
        map.remove("cost_usd");
        map.remove("tokens");
        let back: StoryView = serde_json::from_value(json).unwrap();
        assert_eq!((back.cost_usd, back.tokens), (None, None));
    }

    #[test]
    fn truncated_frame_waits_then_reports() {
        let frame = encode_frame(&ClientMessage::Request(Request::Ping)).unwrap();
        for cut in 0..frame.len() {
            assert!(decode_frame::<ClientMessage>(&frame[..cut]).unwrap().is_none());
        }
        let err = read_frame::<_, ClientMessage>(&mut &frame[..frame.len() - 1]).unwrap_err();
        assert!(matches!(err, CodecError::Truncated { .. }), "{err}");
        let err = read_frame::<_, ClientMessage>(&mut &frame[..2]).unwrap_err();
        assert!(matches!(err, CodecError::Truncated { expected: 4, got: 2 }), "{err}");
        assert!(matches!(read_frame::<_, ClientMessage>(&mut &[][..]), Err(CodecError::Closed)));
    }

    #[test]
    fn oversize_length_prefix_is_refused_before_reading() {
        let mut bytes = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"xx");
        let err = decode_frame::<ClientMessage>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
        assert!(matches!(frame_len([0xff; 4]), Err(CodecError::TooLarge { .. })));
        assert!(matches!(frame_len([0; 4]), Err(CodecError::Empty)));
    }

    #[test]
    fn garbage_payload_is_malformed_not_a_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 1..200usize {
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            // Any outcome but a panic is fine; most are errors.
            let _ = decode_payload::<ClientMessage>(&payload);
        }
        let err = decode_payload::<ClientMessage>(&[0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
        let mut frame = encode_frame(&ClientMessage::Request(Request::Ping)).unwrap();
        frame.push(0);
        let fixed = (frame.len() as u32 - 4).to_be_bytes();
        frame[..4].copy_from_slice(&fixed);
        assert!(matches!(decode_frame::<ClientMessage>(&frame), Err(CodecError::TrailingBytes(1))));
        let err = decode_json_line::<ClientMessage>(b"{\"hello\": 3").unwrap_err();
        assert!(matches!(err, CodecError::Json { .. }), "{err}");
    }

    #[test]
    fn hello_carries_the_version_for_the_mismatch_check() {
        let frame = encode_frame(&ClientMessage::Hello { protocol_version: 999 }).unwrap();
        let (msg, _) = decode_frame::<ClientMessage>(&frame).unwrap().unwrap();
        assert_eq!(msg, ClientMessage::Hello { protocol_version: 999 });
        assert_ne!(999, PROTOCOL_VERSION);
    }

    #[test]
    fn json_mode_uses_snake_case_names_scripts_can_type() {
        let msg: ClientMessage = decode_json_line(br#"{"request":"ping"}"#).unwrap();
        assert_eq!(msg, ClientMessage::Request(Request::Ping));
        let msg: ClientMessage = decode_json_line(br#"{"request":{"status":{"project":"/p"}}}"#).unwrap();
        assert_eq!(msg, ClientMessage::Request(Request::Status { project: "/p".into(), phase: None, story: None }));
    }
}
