//! `validate`: the phase's problems (ids, dependencies, cycles, spec.md, JSON syntax) and the
//! project's orchestrator.config.json, without running anything.

use std::path::Path;

use sticler_proto::{ErrorReply, PhaseRef, Problem, Response, ValidationReport};

use crate::daemon::Daemon;
use crate::phase::PhaseFiles;
use crate::project::{OrchestratorConfig, Project};

pub fn validate(daemon: &Daemon, phase: &PhaseRef) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    let mut problems = files.validate(&project);
    if let Err(e) = OrchestratorConfig::load(&project.root) {
        problems.push(Problem {
            path: project.root.join(crate::project::CONFIG_FILE).display().to_string(),
            message: e.detail(),
        });
    }
    Ok(Response::Validated(ValidationReport {
        project: project.root.display().to_string(),
        phase: phase.phase,
        stories: files.stories.len() as u32,
        problems,
    }))
}
