//! `wait`: block until a phase's run ends (across restarts of the daemon); the exit code says
//! how it ended.

use sticler_proto::{Request, RunOutcome};

use super::{print_json, Context};
use crate::client::ClientError;
use crate::CmdResult;

pub fn run(ctx: &Context, phase: &str) -> CmdResult {
    let request = Request::Wait(ctx.phase_ref(phase)?);
    let mut client = ctx.connect()?;
    // A restart or an upgrade in place of the daemon closes the connection: wait on with the
    // next daemon, which resumes the run.
    let outcome: RunOutcome = loop {
        match client.call_expect(request.clone()) {
            Err(ClientError::Closed) => client = crate::reconnect::reconnect(&ctx.socket)?,
            other => break other?,
        }
    };
    if ctx.json {
        print_json(&serde_json::json!({"outcome": outcome}));
    } else {
        println!("phase {}", outcome.as_str());
    }
    Ok(outcome_code(outcome))
}

/// The exit code of `wait` (and of `start --wait`): 0 completed, 4 failed, 5 stopped.
pub fn outcome_code(outcome: RunOutcome) -> u8 {
    match outcome {
        RunOutcome::Completed => 0,
        RunOutcome::Failed => 4,
        RunOutcome::Stopped => 5,
    }
}
