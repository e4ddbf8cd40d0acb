//! Crash recovery: the runs that were active when the last daemon ended (crash or shutdown)
//! start again. Their leftover processes are killed first (by recorded pid and start time, and
//! by their token, so a recycled pid is never touched) and their Slurm jobs cancelled (found
//! by name), then each run resumes from the files on disk, with its stories' counts continued
//! from their typed records in the store.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sticler_proto::PhaseRef;

use crate::daemon::{run_key, Daemon};
use crate::project::{JsonDoc, Project};
use crate::store::RunRecord;

/// How long the processes of a dead daemon's run may take to go.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub async fn recover(daemon: &Arc<Daemon>) {
    let records = match daemon.bus.store().runs() {
        Ok(records) => records,
        Err(e) => {
            tracing::error!("cannot read the runs to resume: {e}");
            return;
        }
    };
    tracing::info!("{} run(s) to resume", records.len());
    for record in records {
        kill_leftovers(daemon, &record).await;
        cancel_jobs(daemon, &record);
        let key = run_key(Path::new(&record.project), record.phase);
        // The daemon may have died after the run ended on disk but before the record went.
        let config = Project::open(Path::new(&record.project))
            .and_then(|p| JsonDoc::read(&p.phase_dir(record.phase).join(crate::phase::PHASE_CONFIG)));
        if config.as_ref().map_or(true, |doc| doc.str_field("status") != "in_progress") {
            tracing::info!(project = %record.project, phase = record.phase, "the run had ended; not resuming it");
            let _ = daemon.bus.store().remove_run(&key);
            continue;
        }
        let phase = PhaseRef { project: record.project.clone(), phase: record.phase };
        let resumed =
            tokio::task::block_in_place(|| crate::handler::start::launch(daemon, &phase, Some(record.started_unix)));
        match resumed {
            Ok(_) => tracing::info!(project = %record.project, phase = record.phase, "resumed the run"),
            Err(e) => {
                tracing::error!(project = %record.project, phase = record.phase, "cannot resume the run: {}", e.message);
                let _ = daemon.bus.store().remove_run(&key);
            }
        }
    }
}

/// Kills the run's last workers: by their recorded pid when it still is them, and every
/// process carrying the run's token prefix.
async fn kill_leftovers(daemon: &Daemon, record: &RunRecord) {
    let key = run_key(Path::new(&record.project), record.phase);
    for (story, worker) in daemon.bus.store().stories(&key).unwrap_or_default() {
        tracing::info!(story_id = %story, state = worker.state.as_str(), "recorded when the last daemon ended");
        if let (Some(pid), Some(start_time)) = (worker.pid, worker.start_time) {
            let ended = crate::missed::worker_ended(pid, start_time);
            if !crate::worker::kill_recorded(pid, start_time) {
                tracing::info!(story_id = %story, pid, "recorded worker is gone (or its pid was reused); not touched");
            }
            if ended {
                crate::missed::ended_while_down(daemon, record, &story, &worker);
            }
        }
    }
    let prefix = format!("{}/", record.nonce);
    let deadline = Instant::now() + KILL_WAIT;
    while crate::worker::signal_everywhere(std::slice::from_ref(&prefix), nix::sys::signal::Signal::SIGKILL) > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancels the run's Slurm jobs (`"runner": {"kind": "slurm"}`): their sruns died with the last
/// daemon, the jobs did not. Found by name in the queue, like the local workers by token; by
/// the phase's story folders, since the store may not have recorded a story yet.
fn cancel_jobs(daemon: &Daemon, record: &RunRecord) {
    let root = Path::new(&record.project);
    let Ok(project) = Project::open(root) else { return };
    let slurm = crate::project::OrchestratorConfig::load(&project.root)
        .is_ok_and(|config| matches!(config.runner, crate::project::RunnerConfig::Slurm(_)));
    if !slurm {
        return;
    }
    let folders = std::fs::read_dir(project.phase_dir(record.phase).join("stories"));
    let stories: Vec<String> =
        folders.into_iter().flatten().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    match tokio::task::block_in_place(|| crate::slurm::cancel_stories(&daemon.spawner, &project.root, &stories)) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(project = %record.project, phase = record.phase, "cancelled {n} Slurm job(s) of the last daemon")
        }
        Err(e) => {
            tracing::warn!(project = %record.project, phase = record.phase, "cannot cancel the Slurm jobs of the last daemon: {e}")
        }
    }
}
