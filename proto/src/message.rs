//! Requests, replies and events. These enums are the single source of truth of the protocol:
//! every `sticlerctl` subcommand maps to one `Request` variant.

use serde::{Deserialize, Serialize};

use crate::detail::StoryDetail;
use crate::event::Event;
use crate::view::{PhaseView, StatusReport, ValidationReport};

/// What a client sends. The first message of a connection must be `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMessage {
    Hello { protocol_version: u32 },
    Request(Request),
}

/// What the daemon sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        daemon_version: String,
        protocol_version: u32,
        pid: u32,
    },
    Response(Response),
    /// One event of a `Watch` stream (or of `Wait` / `Logs { follow }` progress).
    Event(Event),
    Error(ErrorReply),
}

/// A phase of a project. `project` is a path; the daemon canonicalises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRef {
    pub project: String,
    pub phase: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Ping,
    Version,
    /// `phase: None` lists every phase of the project; `story` narrows to one story. An empty
    /// (or absent) `project` asks for every phase this daemon has run or runs, of all projects:
    /// the answer is `StatusAll`.
    Status {
        #[serde(default)]
        project: String,
        #[serde(default)]
        phase: Option<u32>,
        #[serde(default)]
        story: Option<String>,
    },
    Validate(PhaseRef),
    Start {
        phase: PhaseRef,
        #[serde(default)]
        force: bool,
    },
    Stop {
        phase: PhaseRef,
        #[serde(default)]
        grace_secs: Option<u64>,
    },
    Kill(PhaseRef),
    /// `stories` empty and `all_failed` set: every failed or blocked story of the phase.
    Retry {
        phase: PhaseRef,
        #[serde(default)]
        stories: Vec<String>,
        #[serde(default)]
        all_failed: bool,
    },
    Logs {
        phase: PhaseRef,
        story: String,
        #[serde(default)]
        iteration: Option<u32>,
        #[serde(default)]
        follow: bool,
        /// Every iteration's log in order, not only the latest (or the one named).
        #[serde(default)]
        all: bool,
        /// Only the last this many lines of the first log sent; what follows is sent whole.
        #[serde(default)]
        tail: Option<u32>,
    },
    /// Stream events; `None` filters nothing. `since` replays stored events after that sequence.
    Watch {
        #[serde(default)]
        project: Option<String>,
        #[serde(default)]
        phase: Option<u32>,
        #[serde(default)]
        since: Option<u64>,
    },
    Wait(PhaseRef),
    Shutdown,
    /// End the project's usage-limit wait now (the phase names the project and the event).
    Resume(PhaseRef),
    /// Remove the story worktrees a phase that is not running kept (failed stories'), and the
    /// branches of its stories that completed or failed.
    Clean(PhaseRef),
    /// Completed stories of a phase that is not running back to `pending` (commit_hash
    /// cleared), so that the next start runs them again.
    RetryCompleted {
        phase: PhaseRef,
        stories: Vec<String>,
    },
    /// One story in full, for the dashboard's story panel: its spec, criteria, iterations and commit.
    StoryDetail {
        phase: PhaseRef,
        story: String,
    },
    /// Shut down leaving the workers running: the next daemon adopts them (a planned restart).
    ShutdownKeepWorkers,
    /// Flush the state and re-execute the daemon's binary from disk under the same pid; the
    /// workers stay its children. Answered by `Done` before the re-execution.
    Upgrade,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Pong,
    Version {
        daemon_version: String,
        protocol_version: u32,
        pid: u32,
        /// When this daemon image started serving (Unix ms): an upgrade in place keeps the pid
        /// and changes this.
        #[serde(default)]
        started_ms: u64,
    },
    Status(StatusReport),
    Validated(ValidationReport),
    /// Boxed: a phase view is much larger than the other replies (serde encodes a Box as its content).
    Started(Box<PhaseView>),
    /// A request that changes state was accepted; the text says what happened.
    Done {
        message: String,
    },
    /// A piece of a story log. `Logs` sends zero or more chunks, then `LogEnd`.
    LogChunk {
        iteration: u32,
        data: Vec<u8>,
    },
    LogEnd,
    /// Sent once by `Watch` after the replayed events, before live ones.
    WatchStarted {
        last_seq: u64,
    },
    Waited {
        outcome: RunOutcome,
    },
    ShuttingDown,
    /// Every phase this daemon runs or has run since it started, one report per project.
    StatusAll(Vec<StatusReport>),
    /// Boxed like `Started`: a spec and a patch are much larger than the other replies.
    StoryDetail(Box<StoryDetail>),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Completed,
    Failed,
    Stopped,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::Failed => "failed",
            RunOutcome::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The bytes could not be decoded, or the message was not expected here.
    BadRequest,
    VersionMismatch,
    PermissionDenied,
    NotFound,
    /// The phase failed validation.
    Invalid,
    /// The request is understood but not allowed now (e.g. phase already running).
    Refused,
    Internal,
}

/// Why a worker process ended. Never a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    Exited(i32),
    Signalled(i32),
    /// Ended by sticler at `iteration_timeout_secs`.
    TimedOut,
    /// Ended by `stop` or `kill`.
    Stopped,
    /// Ended by sticler after the agent printed its final result event and did not exit within
    /// `exit_grace_secs`: judged like a normal exit.
    AfterResult,
    /// Ended by sticler after `idle_timeout_secs` with no output and no change to status.json.
    Stalled,
    /// A process adopted from a daemon that died: no longer a child of the daemon, so its exit
    /// code cannot be known; it is judged on status.json alone.
    Unknown,
}

impl ExitReason {
    /// How an iteration ended, in the words of `watch` and `status`: `exited 0`, `killed by
    /// signal 9`, `ended after its result`, `stalled`, `timed out`, `stopped`.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::Exited(code) => format!("exited {code}"),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Exited(code) => write!(f, "exit code {code}"),
            ExitReason::Signalled(sig) => write!(f, "killed by signal {sig}"),
            ExitReason::TimedOut => f.write_str("timed out"),
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::AfterResult => f.write_str("ended after its result"),
            ExitReason::Stalled => f.write_str("stalled"),
            ExitReason::Unknown => f.write_str("exit code unknown (adopted)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;

    #[test]
    fn an_ended_iteration_says_how_it_ended() {
        let line = |exit: ExitReason| {
            EventKind::IterationEnded { story: "US-P1-001".into(), iteration: 2, exit, verdict: "completed".into() }
                .describe()
        };
        assert_eq!(line(ExitReason::Exited(0)), "US-P1-001 iteration 2 ended: exited 0, completed");
        assert_eq!(line(ExitReason::AfterResult), "US-P1-001 iteration 2 ended: ended after its result, completed");
        assert_eq!(line(ExitReason::Stalled), "US-P1-001 iteration 2 ended: stalled, completed");
        assert_eq!(line(ExitReason::TimedOut), "US-P1-001 iteration 2 ended: timed out, completed");
        assert_eq!(line(ExitReason::Signalled(9)), "US-P1-001 iteration 2 ended: killed by signal 9, completed");
        // Failure reasons keep their wording ("exit code 3 without any change to status.json").
        assert_eq!(ExitReason::Exited(3).to_string(), "exit code 3");
    }
}
