//! What happened to a run while no daemon watched it (a crash, then a restart): an iteration
//! whose worker ended on its own meanwhile is counted, and its cost read from its log, so that
//! the run's summary and the phase's cost cover the whole run; the stories that completed
//! meanwhile, or whose commit the resumed run made, are announced as completed.

use std::path::Path;

use crate::daemon::{run_key, Daemon};
use crate::project::OrchestratorConfig;
use crate::store::{RunRecord, StoryRecord};

/// What the story record says of an iteration that ended with no daemon to see it.
const ENDED_WHILE_DOWN: &str = "ended while sticlerd was down";

/// Whether the recorded worker (`pid` that started at `start_time`) has ended: gone, its pid
/// given to another process, or a zombie nobody reaped yet (the dead daemon was its parent).
pub fn worker_ended(pid: i32, start_time: u64) -> bool {
    crate::worker::start_time(pid) != Some(start_time) || !crate::paths::alive(pid)
}

/// The recorded worker of `story` ended before the restart: its iteration counts (flushed, so
/// that a second crash does not count it again) and its cost, when its log reports one, goes
/// to the ledger. How it ended is judged from status.json by the resumed run, as ever.
pub fn ended_while_down(daemon: &Daemon, run: &RunRecord, story: &str, worker: &StoryRecord) {
    let key = run_key(Path::new(&run.project), run.phase);
    let record = StoryRecord {
        iterations: worker.iterations + 1,
        pid: None,
        start_time: None,
        last_exit: Some(ENDED_WHILE_DOWN.into()),
        ..worker.clone()
    };
    if let Err(e) = daemon.bus.store().put_story(&key, story, &record, true) {
        tracing::warn!(story_id = %story, "cannot count the iteration that ended while sticlerd was down: {e}");
    }
    let Some(log) = worker.log.as_deref().map(Path::new) else { return };
    let Some(iteration) = log.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u32>().ok()) else {
        return;
    };
    match OrchestratorConfig::load(Path::new(&run.project)) {
        Ok(config) => {
            let report = crate::agent_output::read_log(log, config.worker.output, &[]);
            daemon.ledger.record(daemon.bus.store(), &run.project, story, iteration, report.usage);
        }
        Err(e) => tracing::warn!(story_id = %story, "the cost of iteration {iteration} is not read: {e}"),
    }
}

/// Of the stories a resumed run found completed, those the last daemon had not seen complete
/// (their record says otherwise): their `story_completed` was never sent.
pub fn completed_unseen<'a>(
    records: &[(String, StoryRecord)],
    completed: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let seen = |story: &str| {
        records.iter().find(|(id, _)| id == story).map(|(_, r)| r.state == sticler_proto::StoryState::Completed)
    };
    completed.filter(|story| seen(story) == Some(false)).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use sticler_proto::StoryState;

    use super::*;

    #[test]
    fn only_stories_recorded_as_not_completed_are_announced() {
        let record = |state| StoryRecord {
            state,
            iterations: 1,
            infra_streak: 0,
            pid: None,
            start_time: None,
            last_exit: None,
            log: None,
        };
        let records = vec![
            ("US-P1-001".to_string(), record(StoryState::Completed)),
            ("US-P1-002".to_string(), record(StoryState::Running)),
            ("US-P1-003".to_string(), record(StoryState::Merging)),
        ];
        let completed = ["US-P1-001", "US-P1-002", "US-P1-003", "US-P1-004"];
        assert_eq!(completed_unseen(&records, completed.into_iter()), ["US-P1-002", "US-P1-003"]);
    }
}
