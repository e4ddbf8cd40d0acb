//! `stop` and `kill`: the run ends its processes (SIGTERM, the grace, SIGKILL; no grace for
//! `kill`) and ends `stopped`, resumable by the next `start`. A phase that is not running is
//! told so, and that is no error.

use std::path::Path;
use std::time::Duration;

use sticler_proto::{ErrorReply, PhaseRef, Response};

use crate::daemon::Daemon;
use crate::project::{Project, ProjectError};
use crate::run::RunMsg;

pub fn stop(daemon: &Daemon, phase: &PhaseRef, grace: Duration, kill: bool) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    let Some(run) = daemon.run(&project.root, phase.phase) else {
        // Like `systemctl stop` of a stopped unit: what was asked for holds already, so it is
        // no failure; a phase that does not exist at all still is one.
        if !project.phase_dir(phase.phase).is_dir() {
            return Err(ProjectError::NoPhase { project: project.root.clone(), phase: phase.phase }.into());
        }
        let message =
            format!("phase {} of {} is not running; nothing to {}", phase.phase, project.root.display(), verb(kill));
        return Ok(Response::Done { message });
    };
    run.stop(RunMsg::Stop { grace, kill });
    let what = if kill { "killing" } else { "stopping" };
    Ok(Response::Done { message: format!("{what} phase {} of {}", phase.phase, project.root.display()) })
}

fn verb(kill: bool) -> &'static str {
    if kill {
        "kill"
    } else {
        "stop"
    }
}
