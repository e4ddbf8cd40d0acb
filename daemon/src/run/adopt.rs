//! A worker the last daemon left running (see `crate::adopt`), or the `srun` of an iteration run
//! as a Slurm job, taken over by the resumed run: its story runs without a new start (no
//! `iteration_started` event: the last daemon sent it), it is supervised like any worker
//! (timeout counted from its start, stall watchdog, stop and kill, through Slurm for a job),
//! and its end is judged and counted once, like any other.

use std::time::Instant;

use super::iteration::{Process, Running};
use super::state::Current;
use super::PhaseRun;
use crate::adopt::Adoptee;

impl PhaseRun {
    /// Takes over `adoptee`; a worker whose story cannot run any more (completed, failed or
    /// gone from the phase) is killed as a leftover.
    pub(super) fn adopt(&mut self, adoptee: Adoptee) {
        let Adoptee { story, iteration, group, start_time, root, age, exit } = adoptee;
        let adopted = self.stories.contains_key(&story) && self.state.update(|s| s.sched.adopt(&story));
        if !adopted {
            tracing::warn!(story_id = %story, pid = group.pid, "killed the recorded worker: not adoptable (its story cannot run now)");
            crate::worker::kill_recorded(group.pid, start_time);
            group.sweep_strays();
            // Its srun killed, the job would run on: it goes too.
            if let Some(name) = self.job_name(&story, iteration) {
                let daemon = std::sync::Arc::clone(&self.daemon);
                tokio::spawn(async move { crate::slurm::cancel_job(&daemon, &name).await });
            }
            return;
        }
        self.daemon.slots.take_over();
        if self.workspaces.is_some() {
            let root = root.display().to_string();
            self.state.update(|s| s.worktrees.insert(story.clone(), root));
        }
        let log = crate::logs::log_path(&self.logs_root, &story, iteration);
        let liveness = self.work_paths(&story).map(|paths| self.liveness(&log, &paths.status));
        let pid = group.pid;
        // An srun goes on following its job: its end comes through Slurm, as a new one's would.
        let job = self.job_name(&story, iteration);
        let stop = self.supervise_since(&story, iteration, (group.clone(), exit), liveness, job, age);
        // status.json as the iteration found it, kept by the last daemon; without it, any
        // readable status.json the worker leaves counts as its progress.
        let before = std::fs::read(crate::logs::start_status_path(&self.logs_root, &story, iteration));
        let running = Running { iteration, group, before: before.unwrap_or_default(), process: Process::Worker, stop };
        self.running.insert(story.clone(), running);
        let since = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.state.update(|s| s.current.insert(story.clone(), Current { iteration, since }));
        self.record_story(&story, Some((pid, &log)), None);
        tracing::info!(story_id = %story, iteration, pid, "adopted the running worker of the last daemon ({} s old)", age.as_secs());
    }
}
