//! `retry`: failed (or blocked) stories back to `pending` on disk, their cost budget started
//! over, and into the running phase (or the next start). Which stories may be retried is the
//! scheduler's rule (`scheduler::retryable`).

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
    Ok(Response::Done { message: pending_again(&names, phase.phase) })
}

/// "US-P1-002 is pending again; it runs at the next `sticlerctl start 1`", plural for several.
fn pending_again(names: &[String], phase: u32) -> String {
    let (is, it, runs) = if names.len() == 1 { ("is", "it", "runs") } else { ("are", "they", "run") };
    format!("{} {is} pending again; {it} {runs} at the next `sticlerctl start {phase}`", names.join(", "))
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
        let story = files
            .stories
            .iter()
            .find(|s| s.id.as_str() == name)
            .ok_or_else(|| error(ErrorKind::NotFound, format!("no story {name} in phase {}", files.number)))?;
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
            super::pending_again(&one, 1),
            "US-P1-002 is pending again; it runs at the next `sticlerctl start 1`"
        );
        let two = ["US-P1-001".to_string(), "US-P1-002".to_string()];
        assert_eq!(
            super::pending_again(&two, 3),
            "US-P1-001, US-P1-002 are pending again; they run at the next `sticlerctl start 3`"
        );
    }
}
