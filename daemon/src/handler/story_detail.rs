//! `story_detail`: one story in full for the dashboard's story panel: the view `status` gives,
//! spec.md, the criteria, the worker's notes, the iterations from the stored events and the
//! story's commit as `git show` prints it.

use std::io::Read;
use std::path::Path;

use serde_json::Value;
use sticler_proto::{
    Criterion, ErrorKind, ErrorReply, EventKind, IterationRecord, PhaseRef, Response, StoryDetail, DETAIL_TEXT_LIMIT,
};

use crate::daemon::{error, Daemon};
use crate::phase::PhaseFiles;
use crate::project::Project;
use crate::views::phase_view;

pub fn story_detail(daemon: &Daemon, phase: &PhaseRef, story: &str) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    let not_found = || {
        let message = format!("no story {story} in phase {} of {}", phase.phase, project.root.display());
        error(ErrorKind::NotFound, message)
    };
    let on_disk = files.stories.iter().find(|s| s.id.as_str() == story).ok_or_else(not_found)?;
    let view =
        phase_view(daemon, &project, &files).stories.into_iter().find(|s| s.id == story).ok_or_else(not_found)?;
    let map = on_disk.status.as_ref().map(|doc| &doc.map).ok();
    let criteria = map.and_then(|m| m.get("criteria")).and_then(Value::as_array).map_or_else(Vec::new, |items| {
        items
            .iter()
            .map(|c| Criterion {
                text: c.get("text").and_then(Value::as_str).unwrap_or("").to_string(),
                done: c.get("done").and_then(Value::as_bool) == Some(true),
            })
            .collect()
    });
    let worker_notes = map.and_then(|m| m.get("worker_notes")).and_then(Value::as_str).unwrap_or("").to_string();
    let root = project.root.display().to_string();
    let iterations = iterations(daemon, &root, phase.phase, story)?;
    let commit_show = match view.commit_hash.as_str() {
        "" => None,
        hash => crate::git_show::show_commit(&project.root, hash, DETAIL_TEXT_LIMIT).ok(),
    };
    Ok(Response::StoryDetail(Box::new(StoryDetail {
        spec: read_text(&on_disk.spec_path()),
        story: view,
        criteria,
        worker_notes,
        iterations,
        commit_show,
    })))
}

/// spec.md as text, cut at the limit; a missing or unreadable spec reads as empty (`status`
/// already reports it as a problem).
fn read_text(path: &Path) -> String {
    let mut raw = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(DETAIL_TEXT_LIMIT as u64).read_to_end(&mut raw);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The story's iterations, from its `iteration_started` and `iteration_ended` events.
fn iterations(daemon: &Daemon, project: &str, phase: u32, story: &str) -> Result<Vec<IterationRecord>, ErrorReply> {
    let events = daemon.bus.store().story_iterations(project, phase, story);
    let events = events.map_err(|e| error(ErrorKind::Internal, e.to_string()))?;
    let mut records: Vec<IterationRecord> = Vec::new();
    for event in events {
        match event.kind {
            EventKind::IterationStarted { iteration, .. } => records.push(IterationRecord {
                iteration,
                started_ms: event.time_ms,
                ended_ms: None,
                exit: None,
                verdict: None,
            }),
            EventKind::IterationEnded { iteration, exit, verdict, .. } => {
                if let Some(record) = records.iter_mut().rev().find(|r| r.iteration == iteration) {
                    record.ended_ms = Some(event.time_ms);
                    record.exit = Some(exit);
                    record.verdict = Some(verdict);
                }
            }
            _ => {}
        }
    }
    Ok(records)
}
