//! `validate`: the daemon checks a phase without running it; any problem exits 1.

use sticler_proto::{Request, ValidationReport};

use super::{print_json, Context};
use crate::{render, CmdResult, EXIT_FAILED};

pub fn run(ctx: &Context, phase: &str) -> CmdResult {
    let request = Request::Validate(ctx.phase_ref(phase)?);
    let report: ValidationReport = ctx.connect()?.call_expect(request)?;
    if ctx.json {
        print_json(&report);
    } else {
        print!("{}", render::validation(&report));
    }
    Ok(if report.problems.is_empty() { 0 } else { EXIT_FAILED })
}
