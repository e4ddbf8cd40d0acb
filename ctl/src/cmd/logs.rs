//! `logs`: a story's worker output, one log per iteration; `-f` follows across iterations
//! until the run ends.

use std::io::Write;

use sticler_proto::{PhaseRef, Request, Response, ServerMessage};

use super::{story_phase, Context};
use crate::client::ClientError;
use crate::CmdResult;

pub fn run(ctx: &Context, story: &str, iteration: Option<u32>, follow: bool) -> CmdResult {
    let phase = PhaseRef { project: ctx.project()?, phase: story_phase(story)? };
    let mut client = ctx.connect()?;
    client.send(Request::Logs { phase, story: story.to_string(), iteration, follow })?;
    let mut out = std::io::stdout().lock();
    let mut shown = None;
    // Write errors are ignored: SIGPIPE already ends `logs | head`; nothing else is worth a
    // failure exit for output that is only shown.
    loop {
        match client.next()? {
            ServerMessage::Response(Response::LogChunk { iteration, data }) => {
                if ctx.json {
                    let text = String::from_utf8_lossy(&data);
                    let _ = writeln!(out, "{}", serde_json::json!({"iteration": iteration, "data": text}));
                } else {
                    if follow && shown != Some(iteration) {
                        let _ = writeln!(out, "--- {story} iteration {iteration} ---");
                    }
                    let _ = out.write_all(&data);
                }
                shown = Some(iteration);
                let _ = out.flush();
            }
            ServerMessage::Response(Response::LogEnd) => return Ok(0),
            other => return Err(ClientError::Protocol(format!("unexpected {other:?}")).into()),
        }
    }
}
