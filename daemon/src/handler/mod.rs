//! Requests that answer with one reply, one handler file each (as pueue's message handlers):
//! this `match` only routes. Streaming requests (watch, logs, wait) live in `stream`.

use std::sync::Arc;
use std::time::Duration;

use sticler_proto::{ErrorKind, ErrorReply, Request, Response, PROTOCOL_VERSION, VERSION};

use crate::daemon::{error, Daemon, Ending, DEFAULT_GRACE};

mod clean;
mod resume;
mod retry;
pub mod start;
mod status;
mod stop;
mod story_detail;
mod validate;

pub async fn handle(daemon: &Arc<Daemon>, request: Request) -> Result<Response, ErrorReply> {
    match request {
        Request::Ping => Ok(Response::Pong),
        Request::Version => Ok(Response::Version {
            daemon_version: VERSION.into(),
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            started_ms: daemon.started_ms,
        }),
        Request::Status { project, phase, story } => status::status(daemon, &project, phase, story.as_deref()),
        Request::Validate(phase) => validate::validate(daemon, &phase),
        // Validation, git and the sweep for leftover workers may take a while: the runtime
        // moves its other tasks off this thread meanwhile.
        Request::Start { phase, force } => tokio::task::block_in_place(|| start::start(daemon, &phase, force)),
        Request::Stop { phase, grace_secs } => {
            let grace = grace_secs.map_or(DEFAULT_GRACE, Duration::from_secs);
            stop::stop(daemon, &phase, grace, false)
        }
        Request::Kill(phase) => stop::stop(daemon, &phase, Duration::ZERO, true),
        Request::Retry { phase, stories, all_failed } => retry::retry(daemon, &phase, stories, all_failed).await,
        Request::Shutdown => {
            daemon.end(Ending::StopWorkers);
            Ok(Response::ShuttingDown)
        }
        Request::ShutdownKeepWorkers => {
            daemon.end(Ending::KeepWorkers);
            Ok(Response::ShuttingDown)
        }
        Request::Upgrade => crate::upgrade::request(daemon),
        Request::Resume(phase) => resume::resume(daemon, &phase),
        Request::Clean(phase) => tokio::task::block_in_place(|| clean::clean(daemon, &phase)),
        Request::RetryCompleted { phase, stories } => {
            tokio::task::block_in_place(|| retry::retry_completed(daemon, &phase, &stories))
        }
        Request::StoryDetail { phase, story } => {
            tokio::task::block_in_place(|| story_detail::story_detail(daemon, &phase, &story))
        }
        Request::Logs { .. } | Request::Watch { .. } | Request::Wait(_) => {
            Err(error(ErrorKind::BadRequest, "streaming request reached the single-reply handler"))
        }
    }
}
