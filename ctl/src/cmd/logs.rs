//! `logs`: a story's worker output, one log per iteration, each under a header line naming the
//! story and the iteration; `--all` every iteration, `--tail N` the last lines, `-f` follows
//! across iterations until the run ends.

use std::io::Write;

use sticler_proto::{PhaseRef, Request, Response, ServerMessage};

use super::{story_phase, Context};
use crate::client::ClientError;
use crate::CmdResult;

/// The options of `logs` besides the story.
pub struct Options {
    pub iteration: Option<u32>,
    pub follow: bool,
    pub all: bool,
    pub tail: Option<u32>,
}

pub fn run(ctx: &Context, story: &str, options: Options) -> CmdResult {
    let phase = PhaseRef { project: ctx.project()?, phase: story_phase(story)? };
    let mut client = ctx.connect()?;
    let Options { iteration, follow, all, tail } = options;
    let request = Request::Logs { phase: phase.clone(), story: story.to_string(), iteration, follow, all, tail };
    client.send(request)?;
    let mut out = std::io::stdout().lock();
    let mut shown = None;
    let mut at_line_start = true;
    // After a reconnection: the bytes of the iteration shown that were printed already.
    let mut skip = 0u64;
    let mut printed = 0u64;
    // Write errors are ignored: SIGPIPE already ends `logs | head`; nothing else is worth a
    // failure exit for output that is only shown.
    loop {
        let message = match client.next() {
            // The daemon restarted (an upgrade): follow again from the iteration shown, without
            // printing again what was printed.
            Err(ClientError::Closed) if follow => {
                client = crate::reconnect::reconnect(&ctx.socket)?;
                let iteration = shown.or(iteration);
                let (all, tail) = if shown.is_some() { (false, None) } else { (all, tail) };
                client.send(Request::Logs {
                    phase: phase.clone(),
                    story: story.to_string(),
                    iteration,
                    follow,
                    all,
                    tail,
                })?;
                skip = printed;
                continue;
            }
            other => other?,
        };
        match message {
            ServerMessage::Response(Response::LogChunk { iteration, mut data }) => {
                if shown == Some(iteration) && skip > 0 {
                    let already = skip.min(data.len() as u64);
                    data.drain(..already as usize);
                    skip -= already;
                    if data.is_empty() {
                        continue;
                    }
                }
                printed = if shown == Some(iteration) { printed + data.len() as u64 } else { data.len() as u64 };
                if ctx.json {
                    let text = String::from_utf8_lossy(&data);
                    let _ = writeln!(out, "{}", serde_json::json!({"iteration": iteration, "data": text}));
                } else {
                    if shown != Some(iteration) {
                        // A log that did not end its last line must not run into the header.
                        let newline = if at_line_start { "" } else { "\n" };
                        let _ = writeln!(out, "{newline}--- {story} iteration {iteration} ---");
                    }
                    let _ = out.write_all(&data);
                    if let Some(last) = data.last() {
                        at_line_start = *last == b'\n';
                    }
                }
                shown = Some(iteration);
                let _ = out.flush();
            }
            ServerMessage::Response(Response::LogEnd) => return Ok(0),
            other => return Err(ClientError::Protocol(format!("unexpected {other:?}")).into()),
        }
    }
}
