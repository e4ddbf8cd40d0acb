//! `status`: every phase of a project, one phase, or one story; with no project, every phase
//! this daemon runs or has run, of all projects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sticler_proto::{ErrorKind, ErrorReply, Response, StatusReport};

use crate::daemon::{error, Daemon};
use crate::phase::PhaseFiles;
use crate::project::Project;
use crate::views::phase_view;

pub fn status(daemon: &Daemon, project: &str, phase: Option<u32>, story: Option<&str>) -> Result<Response, ErrorReply> {
    if project.is_empty() {
        return Ok(Response::StatusAll(status_all(daemon)));
    }
    let project = Project::open(Path::new(project))?;
    let numbers = match phase {
        Some(n) => vec![n],
        None => project.phases()?,
    };
    let mut phases = Vec::with_capacity(numbers.len());
    for n in numbers {
        let files = PhaseFiles::load(&project, n, &daemon.listings)?;
        let mut view = phase_view(daemon, &project, &files);
        if let Some(story) = story {
            view.stories.retain(|s| s.id == story);
            if view.stories.is_empty() {
                return Err(error(
                    ErrorKind::NotFound,
                    format!("no story {story} in phase {n} of {}", project.root.display()),
                ));
            }
        }
        phases.push(view);
    }
    Ok(Response::Status(StatusReport { project: project.root.display().to_string(), phases }))
}

/// Every phase of every project this daemon runs or has run, by project path and phase.
/// A project or phase that is gone from disk since is left out.
fn status_all(daemon: &Daemon) -> Vec<StatusReport> {
    let mut known: BTreeMap<PathBuf, BTreeSet<u32>> = BTreeMap::new();
    for (root, phase) in daemon.known_runs() {
        known.entry(root).or_default().insert(phase);
    }
    known
        .into_iter()
        .filter_map(|(root, numbers)| {
            let project = Project::open(&root).ok()?;
            let phases = numbers
                .into_iter()
                .filter_map(|n| {
                    Some(phase_view(daemon, &project, &PhaseFiles::load(&project, n, &daemon.listings).ok()?))
                })
                .collect();
            Some(StatusReport { project: project.root.display().to_string(), phases })
        })
        .collect()
}
