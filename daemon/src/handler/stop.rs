//! `stop` and `kill`: the run ends its processes (SIGTERM, the grace, SIGKILL; no grace for
//! `kill`) and ends `stopped`, resumable by the next `start`.

use std::path::Path;
use std::time::Duration;

use sticler_proto::{ErrorKind, ErrorReply, PhaseRef, Response};

use crate::daemon::{error, Daemon};
use crate::project::Project;
use crate::run::RunMsg;

pub fn stop(daemon: &Daemon, phase: &PhaseRef, grace: Duration, kill: bool) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    let run = daemon.run(&project.root, phase.phase).ok_or_else(|| {
        error(ErrorKind::NotFound, format!("phase {} of {} is not running", phase.phase, project.root.display()))
    })?;
    run.stop(RunMsg::Stop { grace, kill });
    let what = if kill { "killing" } else { "stopping" };
    Ok(Response::Done { message: format!("{what} phase {} of {}", phase.phase, project.root.display()) })
}
