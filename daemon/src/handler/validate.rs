//! `validate`: the phase's problems (ids, dependencies, cycles, spec.md, JSON syntax) and the
//! project's orchestrator.config.json, without running anything (`phase::validation_report`,
//! which sticlerctl also calls when it validates without a daemon).

use std::path::Path;

use sticler_proto::{ErrorReply, PhaseRef, Response};

use crate::daemon::Daemon;
use crate::phase::validation_report;

pub fn validate(daemon: &Daemon, phase: &PhaseRef) -> Result<Response, ErrorReply> {
    Ok(Response::Validated(validation_report(Path::new(&phase.project), phase.phase, &daemon.listings)?))
}
