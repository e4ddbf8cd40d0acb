//! `retry`: failed (or blocked) stories back to `pending` on disk, their cost budget started
//! over, and into the running phase (or the next start). Which stories may be retried is the
//! scheduler's rule (`scheduler::retryable`). `retry --completed`: completed stories of a phase
//! that is not running back to `pending`, to be run again by the next start.

use std::path::Path;

use sticler_proto::{ErrorKind, ErrorReply, EventKind, PhaseRef, Response};
use tokio::sync::oneshot;

use crate::daemon::{error, Daemon};
use crate::phase::{PhaseFiles, StoryFiles};
use crate::project::{DiskStatus, JsonDoc, Project, StatusFields};
use crate::run::RunMsg;

pub async fn retry(
    daemon: &Daemon,
    phase: &PhaseRef,
    stories: Vec<String>,
    all_failed: bool,
) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    let targets = targets(daemon, &project, &files, &stories, all_failed)?;
    if targets.is_empty() {
        return Ok(Response::Done { message: "no failed or blocked story to retry".into() });
    }
    for story in &targets {
        let mut doc = JsonDoc::read(&story.status_path())?;
        if doc.disk_status() == DiskStatus::Failed {
            // failed_reasons stay as history; only the status goes back.
            doc.set_status(DiskStatus::Pending);
            doc.write()?;
        }
    }
    let names: Vec<String> = targets.iter().map(|s| s.id.to_string()).collect();
    let project_name = project.root.display().to_string();
    for name in &names {
        daemon.ledger.retried(daemon.bus.store(), &project_name, name);
        daemon.bus.emit(&project_name, phase.phase, EventKind::StoryRetried { story: name.clone() });
    }
    if let Some(run) = daemon.run(&project.root, phase.phase) {
        let (reply, answer) = oneshot::channel();
        let _ = run.tx.send(RunMsg::Retry { stories: names.clone(), reply });
        let _ = answer.await;
        return Ok(Response::Done { message: format!("retrying {} in the running phase", names.join(", ")) });
    }
    daemon.retried_after_end(&project.root, phase.phase, &names);
    Ok(Response::Done { message: pending_again(&names, &format!("{}", phase.phase)) })
}

/// "US-P1-002 is pending again; it runs at the next `sticlerctl start 1`", plural for several.
fn pending_again(names: &[String], start_args: &str) -> String {
    let (is, it, runs) = if names.len() == 1 { ("is", "it", "runs") } else { ("are", "they", "run") };
    format!("{} {is} pending again; {it} {runs} at the next `sticlerctl start {start_args}`", names.join(", "))
}

/// `retry --completed`: the named stories, each completed on disk, back to `pending` with an
/// empty commit_hash (their commits stay in the history, but the next run must make its own,
/// not take the recorded one), a fresh cost budget, and no branch of their earlier work left
/// for the next run to continue. Stories that depend on them and are completed stay so.
pub fn retry_completed(daemon: &Daemon, phase: &PhaseRef, names: &[String]) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    if daemon.run(&project.root, phase.phase).is_some() {
        return Err(error(
            ErrorKind::Refused,
            format!(
                "phase {} is running; `retry --completed` takes stories of a phase that is not running (stop it, or wait for it to end)",
                phase.phase
            ),
        ));
    }
    // Held while the files change, so that no start of the phase reads them half done.
    let _claim = daemon.reserve(&(project.root.clone(), phase.phase))?;
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    let mut docs = Vec::new();
    for name in names {
        let story = find(&files, name)?;
        let doc = JsonDoc::read(&story.status_path())?;
        if doc.disk_status() != DiskStatus::Completed {
            return Err(error(
                ErrorKind::Refused,
                format!(
                    "{name} is not completed (its status.json says {:?}); without --completed, retry takes failed and blocked stories",
                    doc.status()
                ),
            ));
        }
        docs.push(doc);
    }
    // Every story is checked before any file changes.
    for mut doc in docs {
        doc.set_status(DiskStatus::Pending);
        doc.map.insert("commit_hash".into(), serde_json::Value::String(String::new()));
        doc.write()?;
    }
    forget_branches(daemon, &project, phase.phase, names);
    let project_name = project.root.display().to_string();
    for name in names {
        daemon.ledger.retried(daemon.bus.store(), &project_name, name);
        daemon.bus.emit(&project_name, phase.phase, EventKind::StoryRetried { story: name.clone() });
    }
    let completed = files.config.as_ref().is_ok_and(|doc| doc.str_field("status") == "completed");
    let start_args = if completed { format!("{} --force", phase.phase) } else { format!("{}", phase.phase) };
    let mut message = pending_again(names, &start_args);
    let dependents = completed_dependents(&files, names);
    if !dependents.is_empty() {
        let on = if names.len() == 1 { "it" } else { "them" };
        let (depends, stays, it) =
            if dependents.len() == 1 { ("depends", "stays", "it") } else { ("depend", "stay", "them") };
        message.push_str(&format!(
            "; {}, which {depends} on {on}, {stays} completed (name {it} too to run {it} again)",
            dependents.join(", ")
        ));
    }
    Ok(Response::Done { message })
}

/// The completed stories of the phase that depend on one of `names` and are not among them.
fn completed_dependents(files: &PhaseFiles, names: &[String]) -> Vec<String> {
    files
        .stories
        .iter()
        .filter(|s| !names.iter().any(|n| n == s.id.as_str()))
        .filter(|s| {
            s.status.as_ref().is_ok_and(|d| {
                d.disk_status() == DiskStatus::Completed && d.dependencies().iter().any(|dep| names.contains(dep))
            })
        })
        .map(|s| s.id.to_string())
        .collect()
}

/// A story branch left from the stories' earlier run (worktree mode) goes: its work was
/// squashed into the integration branch, and continuing it would bring that work back twice.
fn forget_branches(daemon: &Daemon, project: &Project, phase: u32, names: &[String]) {
    let Ok(repo) = git2::Repository::open(&project.root) else { return };
    let lock = daemon.git_lock(&project.root);
    let _git = crate::lock::lock(&lock);
    for name in names {
        crate::workspace::worktree::delete_branch(&repo, &crate::workspace::branch_name(phase, name));
    }
}

fn find<'a>(files: &'a PhaseFiles, name: &str) -> Result<&'a StoryFiles, ErrorReply> {
    files
        .stories
        .iter()
        .find(|s| s.id.as_str() == name)
        .ok_or_else(|| error(ErrorKind::NotFound, format!("no story {name} in phase {}", files.number)))
}

/// The stories to retry: every retryable one (`--failed`), or the named ones, each of which
/// must be retryable.
fn targets<'a>(
    daemon: &Daemon,
    project: &Project,
    files: &'a PhaseFiles,
    names: &[String],
    all_failed: bool,
) -> Result<Vec<&'a StoryFiles>, ErrorReply> {
    let live = daemon.last_run(&project.root, files.number);
    let retryable = |story: &StoryFiles| {
        let disk_failed = story.status.as_ref().is_ok_and(|d| d.disk_status() == DiskStatus::Failed);
        let live_state = live.as_ref().and_then(|l| l.borrow().sched.state(story.id.as_str()));
        crate::scheduler::retryable(live_state, disk_failed)
    };
    if all_failed {
        return Ok(files.stories.iter().filter(|s| retryable(s)).collect());
    }
    let mut targets = Vec::new();
    for name in names {
        let story = find(files, name)?;
        if !retryable(story) {
            return Err(error(ErrorKind::Refused, format!("{name} is neither failed nor blocked")));
        }
        targets.push(story);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_retry_message_agrees_with_its_number() {
        let one = ["US-P1-002".to_string()];
        assert_eq!(
            super::pending_again(&one, "1"),
            "US-P1-002 is pending again; it runs at the next `sticlerctl start 1`"
        );
        let two = ["US-P1-001".to_string(), "US-P1-002".to_string()];
        assert_eq!(
            super::pending_again(&two, "3 --force"),
            "US-P1-001, US-P1-002 are pending again; they run at the next `sticlerctl start 3 --force`"
        );
    }
}
