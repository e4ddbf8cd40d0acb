//! `validate`: a phase checked without running it; any problem exits 1. It only reads files, so
//! sticlerctl does it itself with the daemon's library (`sticlerd::phase::validation_report`):
//! it works with no daemon running, and the report is the one the daemon would give.

use std::path::Path;

use sticlerd::listing::Listings;
use sticlerd::phase::validation_report;

use super::{phase_number, print_json, project_dir};
use crate::client::ClientError;
use crate::{render, CmdResult, EXIT_FAILED};

pub fn run(json: bool, dir: Option<&Path>, phase: &str) -> CmdResult {
    let project = project_dir(dir)?;
    let number = phase_number(phase)?;
    let report = validation_report(Path::new(&project), number, &Listings::unwatched())
        .map_err(|e| ClientError::Refused(e.into()))?;
    if json {
        print_json(&report);
    } else {
        print!("{}", render::validation(&report));
    }
    Ok(if report.problems.is_empty() { 0 } else { EXIT_FAILED })
}
