//! What `status` shows of a phase: each story's files on disk joined with the state its run's
//! scheduler gives it (while a run is active, or blocked by the last one), its cost, and the
//! phase's counts, cost, budget and usage-limit wait. These views are the stable `--json`.

use std::collections::HashMap;

use sticler_proto::{PhaseView, StoryCounts, StoryState, StoryView};

use crate::daemon::Daemon;
use crate::phase::{PhaseFiles, StoryFiles};
use crate::project::{DiskStatus, Project, StatusFields};
use crate::run::RunState;

/// What the run knows of one story, taken from its state in one short read.
struct LiveStory {
    state: StoryState,
    runs: u32,
    blocked_by: Vec<String>,
    note: Option<String>,
    running_secs: Option<u64>,
    running_iteration: Option<u32>,
    last_exit: Option<sticler_proto::ExitReason>,
    waiting: Option<String>,
    worktree: Option<String>,
    job: Option<sticler_proto::JobView>,
    /// Earlier phases' stories it waits for.
    waits_for: Vec<String>,
}

/// What the phase's run (active, or the last one) adds to the files.
#[derive(Default)]
struct LivePhase {
    stories: HashMap<String, LiveStory>,
    summary: Option<String>,
    waiting: Option<String>,
    budget_usd: Option<f64>,
}

impl LivePhase {
    fn of(state: &RunState) -> LivePhase {
        let sched = &state.sched;
        let stories = sched
            .stories()
            .map(|id| {
                let live = LiveStory {
                    state: sched.shown_state(id).unwrap_or(StoryState::Pending),
                    runs: sched.runs(id),
                    blocked_by: sched.blocked_by(id).to_vec(),
                    note: sched.note(id).map(str::to_string),
                    running_secs: state.current.get(id).map(|c| c.since.elapsed().as_secs()),
                    running_iteration: state.current.get(id).map(|c| c.iteration),
                    last_exit: state.last_exit.get(id).copied(),
                    waiting: sched.waiting(id).map(str::to_string),
                    worktree: state.worktrees.get(id).cloned(),
                    job: state.jobs.get(id).cloned(),
                    waits_for: sched.waits_for(id).to_vec(),
                };
                (id.to_string(), live)
            })
            .collect();
        LivePhase {
            stories,
            summary: state.summary.clone(),
            waiting: state.waiting.clone(),
            budget_usd: state.budget_usd,
        }
    }
}

pub fn phase_view(daemon: &Daemon, project: &Project, files: &PhaseFiles) -> PhaseView {
    let live = daemon.last_run(&project.root, files.number).map(|state| LivePhase::of(&state.borrow()));
    let running = daemon.run(&project.root, files.number).is_some();
    // The same problems `validate` finds, each once (a malformed file included).
    let problems = files.report_problems(project);
    let (title, status) = match &files.config {
        Ok(doc) => (doc.str_field("title").to_string(), doc.str_field("status").to_string()),
        Err(_) => (String::new(), String::new()),
    };
    // A story the last run blocked stays shown blocked until what blocks it is retried: then
    // it shows pending at once, not only at the next start.
    let retried = daemon.retried_since_end(&project.root, files.number);
    let still_blocks = |by: &str| !retried.contains(by);
    let project_name = project.root.display().to_string();
    let stories: Vec<StoryView> = files
        .stories
        .iter()
        .map(|story| {
            let live_story = live.as_ref().and_then(|l| l.stories.get(story.id.as_str()));
            let mut view = story_view(story, live_story, running, &still_blocks);
            if let Some(waits) = live_story.map(|l| &l.waits_for).filter(|w| running && !w.is_empty()) {
                view.waiting = Some(crate::run::waiting_text(daemon, project, waits));
            }
            if let Some(ledger) = daemon.ledger.story(&project_name, story.id.as_str()) {
                view.cost_usd = ledger.cost_usd();
                view.tokens = ledger.tokens();
            }
            view
        })
        .collect();
    let (cost_usd, tokens) = daemon.ledger.total(&project_name, files.stories.iter().map(|s| s.id.as_str()));
    // The wait is the project's; a phase shows it while a run of it is there to wait.
    let paused = running.then(|| daemon.pauses.until(&project_name, crate::run::now_unix())).flatten();
    let waiting = match &paused {
        Some((until, _)) => Some(format!("waiting for usage limit until {}", crate::run::clock(*until))),
        None => live.as_ref().filter(|_| running).and_then(|l| l.waiting.clone()),
    };
    let counts = counts(&stories);
    // A run with nothing running that waits for another phase says so on the phase's line.
    let waiting = waiting.or_else(|| {
        let idle = running && counts.running == 0;
        let waits = |s: &StoryView| Some(format!("{} is {}", s.id, s.waiting.as_ref()?));
        idle.then(|| stories.iter().filter(|s| s.state == StoryState::Pending).find_map(waits)).flatten()
    });
    PhaseView {
        project: project_name,
        phase: files.number,
        title,
        status,
        running,
        counts,
        stories,
        summary: live.as_ref().and_then(|l| l.summary.clone()),
        problems,
        cost_usd,
        tokens,
        budget_usd: live.and_then(|l| l.budget_usd),
        paused_until: paused.map(|(until, _)| until),
        waiting,
    }
}

fn counts(stories: &[StoryView]) -> StoryCounts {
    let mut counts = StoryCounts { total: stories.len() as u32, ..Default::default() };
    for s in stories {
        match s.state {
            StoryState::Pending | StoryState::Ready => counts.pending += 1,
            StoryState::Running | StoryState::Verifying | StoryState::Merging => counts.running += 1,
            StoryState::Completed => counts.completed += 1,
            StoryState::Failed => counts.failed += 1,
            StoryState::Blocked => counts.blocked += 1,
            StoryState::Invalid => counts.invalid += 1,
        }
    }
    counts
}

/// One story: its status.json, and the run's state while the run is active (a story the last
/// run blocked stays shown blocked while one of its blockers `still_blocks`: nothing on disk
/// says so).
fn story_view(
    story: &StoryFiles,
    live: Option<&LiveStory>,
    run_active: bool,
    still_blocks: &dyn Fn(&str) -> bool,
) -> StoryView {
    let (doc, disk_state) = match &story.status {
        Ok(doc) => {
            let state = match doc.disk_status() {
                DiskStatus::Completed => StoryState::Completed,
                DiskStatus::Failed => StoryState::Failed,
                DiskStatus::Pending | DiskStatus::InProgress | DiskStatus::Other => StoryState::Pending,
            };
            (Some(doc), state)
        }
        // Its problem is in the phase's problems (`PhaseFiles::validate`).
        Err(_) => (None, StoryState::Invalid),
    };
    let state = match live {
        Some(l) if run_active => l.state,
        Some(l) if l.state == StoryState::Blocked && l.blocked_by.iter().any(|by| still_blocks(by)) => l.state,
        _ => disk_state,
    };
    let (criteria_done, criteria_total) = doc.map_or((0, 0), |d| d.criteria());
    let mut failed_reasons = doc.map_or_else(Vec::new, |d| d.failed_reasons().to_vec());
    if let Some(note) = live.and_then(|l| l.note.clone()) {
        failed_reasons.push(note);
    }
    StoryView {
        id: story.id.to_string(),
        title: doc.map_or_else(String::new, |d| d.title().to_string()),
        state,
        disk_status: doc.map_or_else(String::new, |d| d.status().to_string()),
        iteration: doc.map_or(0, |d| d.iteration()),
        runs: live.map_or(0, |l| l.runs),
        criteria_done,
        criteria_total,
        dependencies: doc.map_or_else(Vec::new, |d| d.dependencies().to_vec()),
        focus: doc.map_or_else(String::new, |d| d.focus().to_string()),
        failed_reasons,
        blocked_by: live.filter(|_| state == StoryState::Blocked).map_or_else(Vec::new, |l| l.blocked_by.clone()),
        running_secs: live.and_then(|l| l.running_secs),
        commit_hash: doc.map_or_else(String::new, |d| d.commit_hash().to_string()),
        cost_usd: None,
        tokens: None,
        running_iteration: live.and_then(|l| l.running_iteration),
        last_exit: live.and_then(|l| l.last_exit),
        waiting: live.and_then(|l| l.waiting.clone()),
        worktree: live.and_then(|l| l.worktree.clone()),
        job: live.and_then(|l| l.job.clone()),
    }
}
