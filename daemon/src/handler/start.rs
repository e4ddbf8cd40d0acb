//! `start`: a phase validated, its git repository prepared, phase_config.json `in_progress`,
//! the run recorded in the store before any worker exists, then launched. `recover` launches
//! the runs of a dead daemon the same way.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use sticler_proto::{ErrorKind, ErrorReply, PhaseRef, Response};

use crate::daemon::{error, run_key, Daemon};
use crate::lock::lock;
use crate::phase::PhaseFiles;
use crate::project::{OrchestratorConfig, Project, RunnerConfig};
use crate::run::{PhaseRun, RunStart};
use crate::store::RunRecord;

/// Makes every run's token prefix unique, even for runs started in the same millisecond.
static RUN_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Phase statuses a `start` without `--force` accepts.
const STARTABLE: [&str; 4] = ["decomposed", "in_progress", "failed", "stopped"];

pub fn start(daemon: &Arc<Daemon>, phase: &PhaseRef, force: bool) -> Result<Response, ErrorReply> {
    if *daemon.shutdown.borrow() {
        return Err(error(ErrorKind::Refused, "sticlerd is shutting down"));
    }
    let project = Project::open(Path::new(&phase.project))?;
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    // A malformed phase_config.json is reported by the validation in `launch`.
    if let Ok(doc) = &files.config {
        let current = doc.str_field("status");
        if !force && !STARTABLE.contains(&current) {
            return Err(error(
                ErrorKind::Refused,
                format!(
                    "phase {} is {current:?}; only a decomposed phase or one that is in_progress, failed or stopped can start (use --force to run it anyway)",
                    phase.phase
                ),
            ));
        }
    }
    launch(daemon, phase, None, Vec::new())
}

/// Starts a validated phase: git prepared, phase_config `in_progress`, run recorded and
/// launched. `resume_since` is set when a restarted daemon recovers a run, `adopt` holds the
/// workers of the last daemon it takes over.
pub fn launch(
    daemon: &Arc<Daemon>,
    phase: &PhaseRef,
    resume_since: Option<i64>,
    adopt: Vec<crate::adopt::Adoptee>,
) -> Result<Response, ErrorReply> {
    let project = Project::open(Path::new(&phase.project))?;
    let key = (project.root.clone(), phase.phase);
    let _starting = daemon.reserve(&key)?;
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    let problems = files.validate(&project);
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        return Err(error(
            ErrorKind::Invalid,
            format!("phase {} is not valid; nothing was started:\n{}", phase.phase, lines.join("\n")),
        ));
    }
    let config = OrchestratorConfig::load(&project.root)?;
    if let RunnerConfig::Slurm(slurm) = &config.runner {
        crate::slurm::check_shared(&daemon.spawner, slurm, &[&project.root, &daemon.state_dir])
            .map_err(|why| error(ErrorKind::Invalid, why))?;
    }
    let mut doc = files.config.as_ref().map_err(|e| error(ErrorKind::Invalid, e.to_string()))?.clone();
    prepare_git(daemon, &project, phase.phase, resume_since.is_some())?;
    doc.map.insert("status".into(), Value::String("in_progress".into()));
    if resume_since.is_none() {
        doc.map.insert("started_at".into(), Value::String(sticler_proto::time::now_rfc3339()));
    }
    doc.write()?;
    let files = PhaseFiles::load(&project, phase.phase, &daemon.listings)?;
    let start = RunStart { adopt, ..record_run(daemon, &project, phase.phase, resume_since)? };
    let handle = PhaseRun::launch(Arc::clone(daemon), project.clone(), &files, config, start);
    daemon.run_started(key, handle);
    Ok(Response::Started(Box::new(crate::views::phase_view(daemon, &project, &files))))
}

/// Before the first story: a repository with at least one commit, and no stale lock of a
/// process that died (after a crash) or of a leftover worker killed now.
fn prepare_git(daemon: &Daemon, project: &Project, phase: u32, recovered: bool) -> Result<(), ErrorReply> {
    {
        let git = daemon.git_lock(&project.root);
        let _git = lock(&git);
        // A lock no process holds is a dead process's (a daemon killed mid-commit, whose store
        // may be gone too): removed, whether this start resumes a run or begins one.
        crate::git::clear_stale_locks(&project.root);
        crate::git::ensure_repo(&project.root).map_err(|e| {
            error(ErrorKind::Internal, format!("{}: cannot prepare the git repository: {e}", project.root.display()))
        })?;
    }
    if !recovered {
        // Workers of this phase while this daemon runs none: left by a daemon whose store
        // was lost (moved aside, or another state dir). They would race the new run.
        let killed = crate::worker::kill_phase_workers(&project.root, phase);
        if killed > 0 {
            tracing::warn!(project = %project.root.display(), phase, "killed {killed} leftover worker process(es) of an earlier daemon");
            let git = daemon.git_lock(&project.root);
            let _git = lock(&git);
            crate::git::clear_stale_locks(&project.root);
        }
    }
    Ok(())
}

/// The run's record, stored (and flushed) before any worker exists, so a crash never loses
/// track of one.
fn record_run(
    daemon: &Daemon,
    project: &Project,
    phase: u32,
    resume_since: Option<i64>,
) -> Result<RunStart, ErrorReply> {
    let now_ms = crate::events::now_ms();
    let counter = RUN_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = run_key(&project.root, phase);
    // A resumed run keeps its first start, so that its summary counts the whole run.
    let started_ms = match resume_since {
        Some(since) => match daemon.bus.store().run(&key) {
            Ok(Some(record)) => record.started_ms,
            _ => u64::try_from(since).unwrap_or(0).saturating_mul(1000),
        },
        None => now_ms,
    };
    let start = RunStart {
        nonce: format!("{}.{now_ms}.{counter}", std::process::id()),
        started_unix: resume_since.unwrap_or((now_ms / 1000) as i64),
        started_ms,
        // A recovered run's HEAD at its start is not kept: its time bound alone applies.
        head: if resume_since.is_none() { crate::git::head(&project.root) } else { None },
        recovered: resume_since.is_some(),
        adopt: Vec::new(),
    };
    let record = RunRecord {
        project: project.root.display().to_string(),
        phase,
        started_unix: start.started_unix,
        nonce: start.nonce.clone(),
        started_ms,
    };
    daemon.bus.store().put_run(&key, &record).map_err(|e| error(ErrorKind::Internal, e.to_string()))?;
    Ok(start)
}
