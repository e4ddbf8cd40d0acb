//! How a run begins: the phase's stories read from disk into the scheduler (a story completed
//! without a recorded commit gets its commit step now), the counts of a recovered run continued
//! from the store, and the run's task started.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::command::StoryPaths;
use super::external::Standing;
use super::gate::{commit_step, ClaimError};
use super::state::{RunState, SharedState};
use super::{status_edits, PhaseRun, RunHandle};
use crate::daemon::Daemon;
use crate::git;
use crate::phase::{PhaseFiles, StoryFiles};
use crate::project::{DiskStatus, JsonDoc, OrchestratorConfig, Project, StatusFields, WorkspaceMode};
use crate::scheduler::{Limits, Scheduler, StoryInit};

/// How a run begins: fresh from `start`, or recovered by a restarted daemon.
pub struct RunStart {
    pub nonce: String,
    pub started_unix: i64,
    /// When the run first started, in unix milliseconds (also for a recovered run).
    pub started_ms: u64,
    /// HEAD when a fresh run started (unknown for a recovered one).
    pub head: Option<git2::Oid>,
    pub recovered: bool,
    /// Workers of the last daemon still running this run's stories: adopted, not started again.
    pub adopt: Vec<crate::adopt::Adoptee>,
}

impl PhaseRun {
    /// Builds the run from a validated phase and starts its task.
    pub fn launch(
        daemon: Arc<Daemon>,
        project: Project,
        files: &PhaseFiles,
        config: OrchestratorConfig,
        start: RunStart,
    ) -> RunHandle {
        let run_key = crate::daemon::run_key(&project.root, files.number);
        super::merging::recover_merges(&daemon, &run_key, &project.root);
        let mut inits = Vec::new();
        let mut stories = BTreeMap::new();
        // The last daemon's records of this run, read once: its verify commands cut short, and
        // the counts a recovered run continues.
        let records = if start.recovered { last_records(&daemon, &run_key) } else { Vec::new() };
        let unverified = unverified_claims(&records);
        for story in &files.stories {
            let Ok(doc) = &story.status else { continue };
            let paths = StoryPaths { dir: story.dir.clone(), status: story.status_path(), spec: story.spec_path() };
            let (deps, unmet_external, failed_external) =
                split_dependencies(&daemon, &project, files.number, doc.dependencies());
            let disk = if unverified.contains(&story.id.as_str()) {
                turn_back_unverified(story, doc, &paths)
            } else {
                settle_completed(&daemon, &project, story, doc, &paths, &config, &start)
            };
            inits.push(StoryInit {
                id: story.id.to_string(),
                deps,
                unmet_external,
                failed_external,
                completed: disk == DiskStatus::Completed,
                failed: disk == DiskStatus::Failed,
            });
            stories.insert(story.id.to_string(), paths);
        }
        let limits = Limits {
            max_parallel: config.max_parallel_workers.max(1),
            max_iterations: config.max_iterations_per_task.max(1),
            retry_limit: config.retry_limit.max(1),
        };
        let mut sched = Scheduler::new(inits, limits);
        let completed_unseen = if start.recovered { restore_counts(&records, &mut sched) } else { Vec::new() };
        let follows_others = sched.follows_other_phases();
        let (state, view) = SharedState::new(RunState::new(sched, config.max_cost_usd_per_phase));
        let (tx, rx) = mpsc::unbounded_channel();
        let (stopping, stop_requested) = watch::channel(false);
        let handle = RunHandle { tx: tx.clone(), state: view, stopping: Arc::new(stopping) };
        let workspaces = (config.workspace == WorkspaceMode::Worktree).then(|| {
            let dir = daemon.state_dir.join("worktrees").join(crate::logs::project_key(&project.root));
            let state = state.read();
            let done = |story: &str| state.sched.state(story) == Some(sticler_proto::StoryState::Completed);
            let busy: Vec<_> = start.adopt.iter().map(|a| (a.story.clone(), a.root.clone())).collect();
            crate::workspace::Workspaces::open(dir, &project.root, files.number, &done, &busy)
        });
        let run = PhaseRun {
            run_key,
            project_name: project.root.display().to_string(),
            logs_root: daemon.logs_root(&project.root),
            daemon,
            project,
            phase: files.number,
            config,
            state,
            stories,
            running: HashMap::new(),
            tx,
            stop_requested,
            nonce: start.nonce,
            started_ms: start.started_ms,
            since: git::Since { unix: start.started_unix, head: start.head },
            interrupted: false,
            later: Vec::new(),
            background: Vec::new(),
            finished: false,
            agent: super::agent::AgentWatch::default(),
            workspaces,
            conflicts: HashMap::new(),
            follows_others,
            completed_unseen,
        };
        let span = tracing::info_span!("run", project = %run.project_name, phase = run.phase);
        tokio::spawn(tracing::Instrument::instrument(run.drive(rx, start.adopt), span));
        handle
    }
}

/// The story's status on disk as the run starts. Completed without a recorded commit: the
/// daemon died (or the run was stopped) between the worker's claim and the commit step, or the
/// story was completed outside sticler. Its commit step happens now. A resumed run counts
/// commits since its first start, so it happens exactly once; a new run accepts any `[story]`
/// commit of the history. A story whose worker is adopted is in progress until that worker ends.
fn settle_completed(
    daemon: &Daemon,
    project: &Project,
    story: &StoryFiles,
    doc: &JsonDoc,
    paths: &StoryPaths,
    config: &OrchestratorConfig,
    start: &RunStart,
) -> DiskStatus {
    // An adopted worker owns its status.json until it exits: it is judged then.
    if start.adopt.iter().any(|a| a.story == story.id.as_str()) {
        return DiskStatus::InProgress;
    }
    let disk = doc.disk_status();
    if disk != DiskStatus::Completed || !doc.commit_hash().is_empty() {
        return disk;
    }
    if config.workspace == WorkspaceMode::Worktree
        && !merged(daemon, project, story, start)
        && has_branch(project, story)
    {
        // Completed in its worktree, not merged yet (the run was stopped, or the daemon died,
        // before its merge): it runs again and its claim goes through the gate and the merge.
        return DiskStatus::InProgress;
    }
    let since = git::Since { unix: if start.recovered { start.started_unix } else { 0 }, head: None };
    let checked =
        commit_step(daemon, &project.root, story.id.as_str(), paths, config.auto_commit, since).and_then(|oid| {
            let Some(oid) = oid else { return Ok(()) };
            status_edits::record_hash(&paths.status, oid).map_err(|source| ClaimError::RecordHash { oid, source })
        });
    match checked {
        Ok(()) => disk,
        // The user says it is done and sticler may not commit: leave it so.
        Err(why) if !start.recovered && !config.auto_commit => {
            tracing::warn!(story_id = %story.id, "completed without a commit, left as it is: {why}");
            disk
        }
        Err(why) => {
            tracing::warn!(story_id = %story.id, "{why}");
            if let Err(e) = status_edits::mark_failed(&paths.status, &why.to_string()) {
                tracing::warn!(story_id = %story.id, "cannot record the failure in status.json: {e}");
            }
            DiskStatus::Failed
        }
    }
}

/// Whether the integration branch has the story's commit already (a merge whose commit_hash
/// record was lost with a daemon); the commit step then finds and records it.
fn merged(daemon: &Daemon, project: &Project, story: &StoryFiles, start: &RunStart) -> bool {
    let since = git::Since { unix: if start.recovered { start.started_unix } else { 0 }, head: None };
    let lock = daemon.git_lock(&project.root);
    let mut known = crate::lock::lock(&lock);
    matches!(git::find_story_commit(&project.root, story.id.as_str(), "", since, &mut known), Ok(Some(_)))
}

/// Whether the story has a branch of its own work (worktree mode).
fn has_branch(project: &Project, story: &StoryFiles) -> bool {
    let Ok(repo) = git2::Repository::open(&project.root) else { return false };
    let branch = crate::workspace::branch_name(story.id.phase, story.id.as_str());
    let found = repo.find_branch(&branch, git2::BranchType::Local).is_ok();
    found
}

/// The story records the last daemon left for this run (none when they cannot be read: the
/// counts then start over).
fn last_records(daemon: &Daemon, run_key: &str) -> Vec<(String, crate::store::StoryRecord)> {
    daemon.bus.store().stories(run_key).unwrap_or_else(|e| {
        tracing::warn!("cannot read the story records; counts start over: {e}");
        Vec::new()
    })
}

/// The stories whose claim of completion was under verification when the last daemon died:
/// their verify command never told, so the claim is not accepted as it stands.
fn unverified_claims(records: &[(String, crate::store::StoryRecord)]) -> Vec<&str> {
    records.iter().filter(|(_, r)| r.state == sticler_proto::StoryState::Verifying).map(|(s, _)| s.as_str()).collect()
}

/// A claim whose verify command a dead daemon never saw end goes back to `in_progress`, with
/// the reason: its next iteration claims again and the verify command runs in full. Nothing
/// unverified is committed or counted completed.
fn turn_back_unverified(story: &StoryFiles, doc: &JsonDoc, paths: &StoryPaths) -> DiskStatus {
    let disk = doc.disk_status();
    if disk != DiskStatus::Completed {
        return disk;
    }
    let reason = "the verify command was cut short when sticlerd stopped; claim completed again to run it";
    tracing::warn!(story_id = %story.id, "{reason}");
    if let Err(e) = status_edits::reopen(&paths.status, reason) {
        tracing::warn!(story_id = %story.id, "cannot reopen the story in status.json: {e}");
    }
    DiskStatus::InProgress
}

/// A recovered run continues each story's counts from the last daemon's records. Returns the
/// stories completed now that the last daemon had not seen complete (see `missed`).
fn restore_counts(records: &[(String, crate::store::StoryRecord)], sched: &mut Scheduler) -> Vec<String> {
    for (story, record) in records {
        tracing::info!(story_id = %story, state = record.state.as_str(), iterations = record.iterations, infra_streak = record.infra_streak, "counts continued from the last daemon");
        sched.restore_counts(story, record.iterations, record.infra_streak);
    }
    let completed: Vec<&str> =
        sched.stories().filter(|s| sched.state(s) == Some(sticler_proto::StoryState::Completed)).collect();
    crate::missed::completed_unseen(records, completed.into_iter())
}

/// Splits dependencies into those inside this phase, those in other phases not completed yet
/// (the story waits for them) and those in other phases that failed (they block it).
fn split_dependencies(
    daemon: &Daemon,
    project: &Project,
    phase: u32,
    deps: &[String],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut inside, mut waiting, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for dep in deps {
        if crate::project::StoryId::parse(dep).is_some_and(|id| id.phase == phase) {
            inside.push(dep.clone());
            continue;
        }
        match super::external::standing(daemon, project, dep) {
            Standing::Completed => {}
            Standing::Failed => failed.push(dep.clone()),
            Standing::Waiting(_) => waiting.push(dep.clone()),
        }
    }
    (inside, waiting, failed)
}
