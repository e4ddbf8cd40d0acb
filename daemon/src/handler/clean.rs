//! `clean`: what worktree mode kept for a phase that is not running goes: the worktrees of
//! failed stories (kept for inspection) and the branches of stories that completed or failed.
//! Branches holding the unmerged work of pending stories (a stopped run) stay.

use std::path::Path;

use sticler_proto::{ErrorKind, ErrorReply, PhaseRef, Response};

use crate::daemon::{error, Daemon};
use crate::phase::PhaseFiles;
use crate::project::{DiskStatus, Project, StatusFields};
use crate::workspace::Workspaces;

pub fn clean(daemon: &Daemon, phase: &PhaseRef) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    if daemon.run(&project.root, phase.phase).is_some() {
        return Err(error(
            ErrorKind::Refused,
            format!("phase {} of {} is running; stop it first", phase.phase, project.root.display()),
        ));
    }
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    let ended = |story: &str| {
        files.stories.iter().any(|s| {
            s.id.as_str() == story
                && s.status
                    .as_ref()
                    .is_ok_and(|d| matches!(d.disk_status(), DiskStatus::Completed | DiskStatus::Failed))
        })
    };
    let dir = daemon.state_dir.join("worktrees").join(crate::logs::project_key(&project.root));
    let lock = daemon.git_lock(&project.root);
    let _git = crate::lock::lock(&lock);
    let mut pool = Workspaces::open(dir, &project.root, phase.phase, &|_| false, &[]);
    let (worktrees, branches) = pool.clean(&ended);
    Ok(Response::Done {
        message: format!("phase {}: removed {worktrees} worktree(s) and {branches} story branch(es)", phase.phase),
    })
}
