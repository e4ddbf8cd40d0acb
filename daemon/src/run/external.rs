//! Dependencies on earlier phases' stories, as a run sees them: where each one stands (the
//! active run of its phase in this daemon, else what its last run left blocked, else its
//! status.json), the reason `status` shows while a story waits for one, and the run told when
//! one completes, fails or is retried: at every story event of the project's other phases, and
//! by a slow look at the files for what happens elsewhere (a phase run by hand, or by another
//! daemon).

use std::time::Duration;

use sticler_proto::{Event, EventKind, StoryState};
use tokio::sync::broadcast::error::RecvError;

use super::PhaseRun;
use crate::daemon::Daemon;
use crate::project::{DiskStatus, JsonDoc, Project, StatusFields, StoryId};

/// How often the files of the stories waited for are read again (events bring the changes made
/// by this daemon's runs at once).
pub const RECHECK: Duration = Duration::from_secs(1);

/// Where another phase's story stands for the stories that depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Completed,
    /// Failed, or blocked by a failure: it will not complete without a `retry`.
    Failed,
    /// Not completed yet; the text says where it is ("phase 1, running").
    Waiting(String),
}

/// Where story `dep` (of another phase of `project`) stands now.
pub fn standing(daemon: &Daemon, project: &Project, dep: &str) -> Standing {
    let Some(id) = StoryId::parse(dep) else { return Standing::Failed };
    if let Some(run) = daemon.run(&project.root, id.phase) {
        // While its phase runs, the run's state is the truth: status.json may already say
        // `completed` while the verify command or the merge still decides.
        let state = run.state.borrow().sched.shown_state(dep);
        match state {
            Some(StoryState::Completed) => return Standing::Completed,
            Some(StoryState::Failed | StoryState::Blocked) => return Standing::Failed,
            Some(state) => return Standing::Waiting(format!("phase {}, {}", id.phase, state.as_str())),
            None => {}
        }
    } else if let Some(last) = daemon.last_run(&project.root, id.phase) {
        // A story its ended run blocked never ran, and nothing on disk says so.
        let retried = daemon.retried_since_end(&project.root, id.phase);
        let state = last.borrow();
        let blocked = state.sched.state(dep) == Some(StoryState::Blocked)
            && state.sched.blocked_by(dep).iter().any(|by| !retried.contains(by));
        if blocked {
            return Standing::Failed;
        }
    }
    let path = project.story_dir(&id).join(crate::phase::STATUS_FILE);
    match JsonDoc::read(&path) {
        Ok(doc) => match doc.disk_status() {
            DiskStatus::Completed => Standing::Completed,
            DiskStatus::Failed => Standing::Failed,
            _ => Standing::Waiting(format!("phase {}, {}; phase {} is not running", id.phase, doc.status(), id.phase)),
        },
        Err(e) => Standing::Waiting(format!("phase {}, unreadable: {e}", id.phase)),
    }
}

/// "waiting for US-P1-002 (phase 1, running)", one entry per story waited for.
pub fn waiting_text(daemon: &Daemon, project: &Project, deps: &[String]) -> String {
    let each: Vec<String> = deps
        .iter()
        .map(|dep| match standing(daemon, project, dep) {
            Standing::Waiting(how) => format!("{dep} ({how})"),
            Standing::Completed => format!("{dep} (completed)"),
            Standing::Failed => format!("{dep} (failed)"),
        })
        .collect();
    format!("waiting for {}", each.join(", "))
}

impl PhaseRun {
    /// An event of the daemon: a story of another phase of this project that ended, or was
    /// retried, may be one this run waits for or is blocked by.
    pub(super) fn other_phase_event(&mut self, event: Result<Event, RecvError>) {
        let event = match event {
            Ok(e) if e.project == self.project_name && e.phase != self.phase => e,
            Ok(_) | Err(RecvError::Closed) => return,
            // Events were missed: look at everything waited for.
            Err(RecvError::Lagged(_)) => return self.recheck_external(),
        };
        match event.kind {
            EventKind::StoryRetried { story } => self.external_retried(&story),
            EventKind::StoryCompleted { .. }
            | EventKind::StoryFailed { .. }
            | EventKind::StoryBlocked { .. }
            | EventKind::RunEnded { .. } => self.recheck_external(),
            _ => {}
        }
    }

    /// A failed story of another phase was retried: what it blocked here waits for it again.
    fn external_retried(&mut self, story: &str) {
        if self.state.update(|s| s.sched.external_retried(story)) {
            self.schedule();
        }
    }

    /// Tells the scheduler which of the stories waited for completed or failed since the last
    /// look, and starts what may start now.
    pub(super) fn recheck_external(&mut self) {
        let waits = self.state.read().sched.external_waits();
        let mut settled = Vec::new();
        for dep in &waits {
            match standing(&self.daemon, &self.project, dep) {
                Standing::Completed => settled.push((dep.clone(), true)),
                Standing::Failed => settled.push((dep.clone(), false)),
                Standing::Waiting(_) => {}
            }
        }
        if settled.is_empty() {
            return;
        }
        for (dep, completed) in &settled {
            tracing::info!(dependency = %dep, completed, "a story of another phase this run waits for settled");
        }
        self.state.update(|s| {
            for (dep, completed) in &settled {
                s.sched.external_settled(dep, *completed);
            }
        });
        self.schedule();
        self.follows_others = self.state.read().sched.follows_other_phases();
    }
}
