//! Crash recovery: the runs that were active when the last daemon ended (crash or shutdown)
//! start again. The workers still running a resumed run's stories are adopted (see `adopt`);
//! every other leftover process is killed first (by recorded pid and start time, and by its
//! token, so a recycled pid is never touched) and the run's Slurm jobs cancelled (found by
//! name), then each run resumes from the files on disk, with its stories' counts continued
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
        let key = run_key(Path::new(&record.project), record.phase);
        // The daemon may have died after the run ended on disk but before the record went.
        let config = Project::open(Path::new(&record.project))
            .and_then(|p| JsonDoc::read(&p.phase_dir(record.phase).join(crate::phase::PHASE_CONFIG)));
        let resumable = config.as_ref().is_ok_and(|doc| doc.str_field("status") == "in_progress");
        // A Slurm job's srun is adopted like a local worker (its job goes on); the run's other
        // jobs are cancelled.
        let adopt = if resumable { crate::adopt::find(daemon, &record) } else { Vec::new() };
        kill_leftovers(daemon, &record, &adopt).await;
        if uses_slurm(&record) {
            cancel_jobs(daemon, &record, &adopt);
        }
        if !resumable {
            tracing::info!(project = %record.project, phase = record.phase, "the run had ended; not resuming it");
            let _ = daemon.bus.store().remove_run(&key);
            continue;
        }
        let adopted: Vec<(i32, u64, crate::worker::Group)> =
            adopt.iter().map(|a| (a.group.pid, a.start_time, a.group.clone())).collect();
        let phase = PhaseRef { project: record.project.clone(), phase: record.phase };
        let resumed = tokio::task::block_in_place(|| {
            crate::handler::start::launch(daemon, &phase, Some(record.started_unix), adopt)
        });
        match resumed {
            Ok(_) => {
                tracing::info!(project = %record.project, phase = record.phase, adopted = adopted.len(), "resumed the run")
            }
            Err(e) => {
                tracing::error!(project = %record.project, phase = record.phase, "cannot resume the run: {}", e.message);
                // Nobody supervises them now: the workers it would have adopted go too, and the
                // Slurm jobs whose sruns they were.
                for (pid, start_time, group) in adopted {
                    crate::worker::kill_recorded(pid, start_time);
                    group.sweep_strays();
                }
                if uses_slurm(&record) {
                    cancel_jobs(daemon, &record, &[]);
                }
                let _ = daemon.bus.store().remove_run(&key);
            }
        }
    }
}

/// Kills the run's last workers but the `adopted`: by their recorded pid when it still is
/// them, and every process carrying the run's token prefix.
async fn kill_leftovers(daemon: &Daemon, record: &RunRecord, adopted: &[crate::adopt::Adoptee]) {
    let key = run_key(Path::new(&record.project), record.phase);
    for (story, worker) in daemon.bus.store().stories(&key).unwrap_or_default() {
        tracing::info!(story_id = %story, state = worker.state.as_str(), "recorded when the last daemon ended");
        if let (Some(pid), Some(start_time)) = (worker.pid, worker.start_time) {
            if adopted.iter().any(|a| a.group.pid == pid) {
                continue;
            }
            if crate::missed::worker_ended(pid, start_time) {
                tracing::info!(story_id = %story, pid, "recorded worker is gone (or its pid was reused); not touched");
                crate::missed::ended_while_down(daemon, record, &story, &worker);
            } else if crate::worker::kill_recorded(pid, start_time) {
                // Alive and provably ours, yet not adoptable (a verify command, a story that
                // cannot run): its iteration starts again.
                tracing::warn!(story_id = %story, pid, "killed the recorded worker: not adoptable");
            }
        }
    }
    let prefix = format!("{}/", record.nonce);
    let spared: Vec<String> = adopted.iter().map(|a| a.group.token.clone()).collect();
    let deadline = Instant::now() + KILL_WAIT;
    let kill = nix::sys::signal::Signal::SIGKILL;
    let mut left = crate::worker::signal_everywhere(std::slice::from_ref(&prefix), &spared, kill);
    if left > 0 {
        // Descendants of the workers killed above, or a worker whose record was lost.
        tracing::warn!("killed {left} leftover process(es) of the run carrying its token");
    }
    while left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = crate::worker::signal_everywhere(std::slice::from_ref(&prefix), &spared, kill);
    }
}

/// Whether the run's project runs its iterations as Slurm jobs.
fn uses_slurm(record: &RunRecord) -> bool {
    crate::project::OrchestratorConfig::load(Path::new(&record.project))
        .is_ok_and(|config| matches!(config.runner, crate::project::RunnerConfig::Slurm(_)))
}

/// Cancels the run's Slurm jobs (`"runner": {"kind": "slurm"}`) but those of the `adopted`
/// sruns: a job whose srun is gone (killed with the last daemon, or not provably its own) has
/// nobody to follow it. Found by name in the queue, like the local workers by token; by the
/// phase's story folders, since the store may not have recorded a story yet.
fn cancel_jobs(daemon: &Daemon, record: &RunRecord, adopted: &[crate::adopt::Adoptee]) {
    let Ok(project) = Project::open(Path::new(&record.project)) else { return };
    let folders = std::fs::read_dir(project.phase_dir(record.phase).join("stories"));
    let stories: Vec<String> =
        folders.into_iter().flatten().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let key = crate::logs::project_key(&project.root);
    let spared: Vec<String> = adopted.iter().map(|a| crate::slurm::job_name(&key, &a.story, a.iteration)).collect();
    let cancel = || crate::slurm::cancel_stories(&daemon.spawner, &project.root, &stories, &spared);
    match tokio::task::block_in_place(cancel) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(project = %record.project, phase = record.phase, "cancelled {n} Slurm job(s) of the last daemon")
        }
        Err(e) => {
            tracing::warn!(project = %record.project, phase = record.phase, "cannot cancel the Slurm jobs of the last daemon: {e}")
        }
    }
}
