//! `watch`: the stream of events (story started, iteration ended, phase ended...), as progress
//! bars at a terminal, else one line (or JSON object) per event. `start --wait` and `demo`
//! follow a run with the same printing.

use std::io::IsTerminal;

use sticler_proto::{Event, EventKind, Request, Response, ServerMessage, StatusReport};

use super::{phase_number, wait, Context};
use crate::client::ClientError;
use crate::reconnect::Watch;
use crate::{progress, render, CmdResult};

pub fn run(ctx: &Context, phase: Option<&str>, since: Option<u64>) -> CmdResult {
    let (project, phase) = match phase {
        Some(p) => (Some(ctx.project()?), Some(phase_number(p)?)),
        // Without a phase, all projects' events unless -C names one.
        None => (ctx.dir.map(|_| ctx.project()).transpose()?, None),
    };
    if let (Some(project), Some(phase)) = (&project, phase) {
        idle_line(ctx, project, phase)?;
    }
    // Goes on across a restart of the daemon, from the last event shown.
    let mut stream = Watch::start(&ctx.socket, project.clone(), phase, since)?;
    if !ctx.json && std::io::stdout().is_terminal() {
        progress::follow(stream, &ctx.socket, project.zip(phase), false)?;
        return Ok(0);
    }
    loop {
        match stream.next()? {
            ServerMessage::Event(event) => print_event(&event, ctx.json),
            ServerMessage::Response(Response::WatchStarted { .. }) => {}
            other => return Err(ClientError::Protocol(format!("unexpected {other:?}")).into()),
        }
    }
}

/// A phase that does not run shows no event until it starts: say so in one line, and how to
/// start it, instead of a silent wait. A phase that does not exist is an error, not a wait.
fn idle_line(ctx: &Context, project: &str, phase: u32) -> Result<(), crate::CliError> {
    let request = Request::Status { project: project.to_string(), phase: Some(phase), story: None };
    let report: StatusReport = ctx.connect()?.call_expect(request)?;
    let running = report.phases.first().is_some_and(|p| p.running);
    if !running && !ctx.json {
        println!(
            "phase {phase} of {} is not running; waiting for its events (start it with `sticlerctl start {phase}`)",
            report.project
        );
    }
    Ok(())
}

/// One event: a JSON object per line with `--json`, else a line of text.
fn print_event(event: &Event, json: bool) {
    if json {
        println!("{}", serde_json::to_string(event).unwrap_or_default());
    } else {
        println!("{}", render::event(event));
    }
}

/// Prints events of a watch until the run ends; returns the `wait` exit code.
pub fn follow_until_end(watcher: &mut Watch, json: bool) -> CmdResult {
    loop {
        match watcher.next()? {
            ServerMessage::Event(event) => {
                print_event(&event, json);
                if let EventKind::RunEnded { outcome, .. } = event.kind {
                    return Ok(wait::outcome_code(outcome));
                }
            }
            ServerMessage::Response(_) => {}
            other => return Err(ClientError::Protocol(format!("unexpected {other:?}")).into()),
        }
    }
}
