//! `retry`: failed (or blocked) stories back to pending, named one by one or all of a phase;
//! with `--completed`, completed stories named one by one.

use sticler_proto::{PhaseRef, Request};

use super::{control, story_phase, Context};
use crate::{CliError, CmdResult};

pub fn run(ctx: &Context, stories: &[String], failed: Option<&str>, completed: bool) -> CmdResult {
    let request = match failed {
        Some(phase) => Request::Retry { phase: ctx.phase_ref(phase)?, stories: vec![], all_failed: true },
        None => {
            // clap requires stories when --failed is absent; the check keeps indexing out.
            let first = stories.first().ok_or_else(|| CliError::Usage("name the stories to retry".into()))?;
            let phase = story_phase(first)?;
            for s in stories {
                if story_phase(s)? != phase {
                    return Err(CliError::Usage("retry stories of one phase at a time".into()));
                }
            }
            let phase = PhaseRef { project: ctx.project()?, phase };
            if completed {
                Request::RetryCompleted { phase, stories: stories.to_vec() }
            } else {
                Request::Retry { phase, stories: stories.to_vec(), all_failed: false }
            }
        }
    };
    control::done(ctx, ctx.connect()?, request)
}
