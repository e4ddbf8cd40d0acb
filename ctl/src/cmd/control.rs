//! `stop`, `kill`, `resume`, `clean`: requests that change a phase's run and are answered with one
//! sentence saying what happened.

use sticler_proto::Request;

use super::{print_json, Context};
use crate::client::{Client, Done};
use crate::CmdResult;

pub fn stop(ctx: &Context, phase: &str, grace_secs: u64) -> CmdResult {
    let request = Request::Stop { phase: ctx.phase_ref(phase)?, grace_secs: Some(grace_secs) };
    done(ctx, ctx.connect()?, request)
}

// `kill` and `resume` have always connected before reading their argument: an unreachable
// daemon is reported (exit 3) before a bad phase (exit 2).
pub fn kill(ctx: &Context, phase: &str) -> CmdResult {
    let client = ctx.connect()?;
    done(ctx, client, Request::Kill(ctx.phase_ref(phase)?))
}

pub fn resume(ctx: &Context, phase: &str) -> CmdResult {
    let client = ctx.connect()?;
    done(ctx, client, Request::Resume(ctx.phase_ref(phase)?))
}

pub fn clean(ctx: &Context, phase: &str) -> CmdResult {
    let request = Request::Clean(ctx.phase_ref(phase)?);
    done(ctx, ctx.connect()?, request)
}

/// Sends `request` and prints the daemon's sentence (shared by `retry`).
pub fn done(ctx: &Context, mut client: Client, request: Request) -> CmdResult {
    let Done(message) = client.call_expect(request)?;
    if ctx.json {
        print_json(&serde_json::json!({"message": message}));
    } else {
        println!("{message}");
    }
    Ok(0)
}
