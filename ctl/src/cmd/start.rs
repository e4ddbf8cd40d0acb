//! `start`: start (or resume) a phase; with `--wait`, stay attached and exit like `wait`.

use std::io::IsTerminal;

use sticler_proto::{PhaseRef, PhaseView, Request};

use super::{print_json, wait, watch, Context};
use crate::client::Client;
use crate::{progress, CmdResult};

pub fn run(ctx: &Context, phase: &str, force: bool, wait: bool) -> CmdResult {
    let phase = ctx.phase_ref(phase)?;
    let mut client = ctx.connect()?;
    if wait {
        return start_and_follow(ctx, client, phase, force);
    }
    let view: Box<PhaseView> = client.call_expect(Request::Start { phase, force })?;
    if ctx.json {
        print_json(&view);
    } else {
        println!(
            "started phase {} of {} ({}); follow with `sticlerctl watch {}`",
            view.phase,
            view.project,
            sticler_proto::counted(view.counts.total.into(), "story", "stories"),
            view.phase
        );
    }
    Ok(0)
}

/// `start --wait`: progress bars at a terminal, else the events as `watch` prints them.
fn start_and_follow(ctx: &Context, mut client: Client, phase: PhaseRef, force: bool) -> CmdResult {
    // Watch first, so no event of the new run is missed.
    let mut watcher =
        crate::reconnect::Watch::start(&ctx.socket, Some(phase.project.clone()), Some(phase.phase), None)?;
    watcher.next()?;
    let _: Box<PhaseView> = client.call_expect(Request::Start { phase: phase.clone(), force })?;
    if !ctx.json {
        println!("started phase {} of {}", phase.phase, phase.project);
    }
    if !ctx.json && std::io::stdout().is_terminal() {
        let outcome = progress::follow(watcher, &ctx.socket, Some((phase.project, phase.phase)), true)?;
        println!("phase {}", outcome.as_str());
        return Ok(wait::outcome_code(outcome));
    }
    watch::follow_until_end(&mut watcher, ctx.json)
}
