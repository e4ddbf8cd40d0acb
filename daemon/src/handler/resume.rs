//! `resume`: ends the project's usage-limit wait now; its runs start iterations again at once.

use std::path::Path;

use sticler_proto::{ErrorKind, ErrorReply, EventKind, PhaseRef, Response};

use crate::daemon::{error, Daemon};
use crate::project::Project;

pub fn resume(daemon: &Daemon, phase: &PhaseRef) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    let name = project.root.display().to_string();
    if !daemon.pauses.resume(daemon.bus.store(), &name, crate::run::now_unix()) {
        return Err(error(ErrorKind::Refused, format!("{name} is not waiting for a usage limit")));
    }
    daemon.bus.emit(&name, phase.phase, EventKind::UsageLimitResumed { early: true });
    Ok(Response::Done { message: format!("{name} resumes: the usage-limit wait is over") })
}
