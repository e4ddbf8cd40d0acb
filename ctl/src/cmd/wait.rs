//! `wait`: block until a phase's run ends; the exit code says how it ended.

use sticler_proto::{Request, RunOutcome};

use super::{print_json, Context};
use crate::CmdResult;

pub fn run(ctx: &Context, phase: &str) -> CmdResult {
    let outcome: RunOutcome = ctx.connect()?.call_expect(Request::Wait(ctx.phase_ref(phase)?))?;
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
