//! The Slurm runner (`"runner": {"kind": "slurm"}`): each iteration is one Slurm job. sticlerd
//! starts `srun` in the worker's place, in a session of its own like any worker, with the same
//! command, folder, environment and stdin; srun's output (the job's, as it runs) goes to the
//! iteration's log. The job is named `sticler-<project key>-<story>-<iteration>` and carries the
//! worker token as its comment, so that a restarted daemon finds it again with `squeue`.
//!
//! Ends go through Slurm, not signals to srun (srun cannot pass on a SIGKILL, and a killed srun
//! leaves its job running): `scancel --signal=TERM`, the grace, then `scancel --signal=KILL` and
//! `scancel`. A job that Slurm ended (cancelled from outside, node failure, out of memory, its
//! time limit) is told apart from a worker's own exit with `scontrol`, and named in the verdict.
//!
//! Slurm's clients are run through the daemon's spawner like every other process (the reaper
//! owns `waitpid`); their output comes back through a pipe.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use sticler_proto::{ExitReason, JobView};
use tokio::sync::oneshot;

use crate::daemon::{Daemon, DEFAULT_GRACE};
use crate::project::SlurmConfig;
use crate::spawn::{Launch, Spawner};
use crate::worker::{self, Group, SpawnSpec};

/// How long srun may take to exit once its job is cancelled before it is killed like a local
/// worker (Slurm's own wait for a step's end is `KillWait`, 30 s by default: not ours to wait).
const SRUN_EXIT: Duration = Duration::from_secs(5);

/// How long an ended job may stay in `squeue` (completing) before sticler stops waiting for it.
const JOB_GONE: Duration = Duration::from_secs(10);

/// Job states in which Slurm, not the worker, ended the job: an infrastructure failure.
const FAILED_BY_SLURM: &[&str] =
    &["CANCELLED", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "TIMEOUT"];

/// The start of the names of a project's jobs.
pub fn job_prefix(project_key: &str) -> String {
    format!("sticler-{project_key}-")
}

/// The name of one iteration's job.
pub fn job_name(project_key: &str, story: &str, iteration: u32) -> String {
    format!("{}{story}-{iteration}", job_prefix(project_key))
}

/// Turns a local spawn into an `srun` of the same command: the job named `name`, the token as
/// its comment, the same folder; srun passes its own environment and stdin on to the job.
/// Without a time limit of its own, the job may run the iteration timeout plus the stop grace:
/// sticler's own timeout comes first, Slurm's is the backstop.
pub fn wrap(config: &SlurmConfig, spec: &mut SpawnSpec, name: &str, timeout_secs: u64) {
    let minutes = config.time_limit_mins.unwrap_or_else(|| (timeout_secs + DEFAULT_GRACE.as_secs()).div_ceil(60));
    let mut argv = vec![
        "srun".to_string(),
        format!("--job-name={name}"),
        format!("--comment={}", spec.token),
        format!("--chdir={}", spec.cwd.display()),
        "--nodes=1".into(),
        "--ntasks=1".into(),
        format!("--time={minutes}"),
    ];
    argv.extend(config.partition.iter().map(|p| format!("--partition={p}")));
    argv.extend(config.cpus.iter().map(|c| format!("--cpus-per-task={c}")));
    argv.extend(config.mem_mb.iter().map(|m| format!("--mem={m}")));
    argv.extend(config.extra_args.iter().cloned());
    argv.push("--".into());
    argv.append(&mut spec.argv);
    spec.argv = argv;
}

/// Filesystems that are never shared between machines, by their statfs magic.
const LOCAL_FILESYSTEMS: &[(i64, &str)] = &[
    (0xEF53, "ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0x794C_7630, "overlayfs"),
    (0x2FC1_2FC1, "zfs"),
    (0xF2F5_2010, "f2fs"),
];

/// Refuses a start whose story folders the cluster's nodes cannot reach: when the partition
/// has nodes other than this host and one of `paths` (the project, the state dir with the
/// worktrees and logs) is on a filesystem that is local for certain. A cluster that cannot be
/// asked is refused too, before any iteration is spent on it. Blocking.
pub fn check_shared(spawner: &Spawner, config: &SlurmConfig, paths: &[&std::path::Path]) -> Result<(), String> {
    let mut args: Vec<String> = ["-h", "-N", "-o", "%N"].map(String::from).to_vec();
    args.extend(config.partition.iter().map(|p| format!("--partition={p}")));
    let nodes = client(spawner, "sinfo", &args).map_err(|e| format!("runner slurm: cannot ask the cluster: {e}"))?;
    let nodes: Vec<&str> = nodes.split_whitespace().collect();
    if nodes.is_empty() {
        let partition = config.partition.as_ref().map_or_else(String::new, |p| format!(" in partition {p:?}"));
        return Err(format!("runner slurm: the cluster has no node{partition} (sinfo shows none)"));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim().split('.').next().unwrap_or_default();
    let filesystems: Vec<(String, i64)> = paths
        .iter()
        .filter_map(|path| {
            let kind = nix::sys::statfs::statfs(*path).ok()?.filesystem_type().0 as i64;
            Some((path.display().to_string(), kind))
        })
        .collect();
    match unshared(&nodes, host, &filesystems) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Why jobs on `nodes` could not reach the folders of `filesystems` (path, statfs magic).
fn unshared(nodes: &[&str], host: &str, filesystems: &[(String, i64)]) -> Option<String> {
    if nodes.iter().all(|node| *node == host) {
        return None;
    }
    filesystems.iter().find_map(|(path, kind)| {
        let (_, name) = LOCAL_FILESYSTEMS.iter().find(|(magic, _)| magic == kind)?;
        Some(format!(
            "runner slurm: {path} is on a local filesystem ({name}) but the jobs may run on {}; put the project and sticlerd's --state-dir on a filesystem the nodes share (NFS, Lustre, CephFS, ...)",
            nodes.join(", ")
        ))
    })
}

/// Runs a Slurm client (`squeue`, `scancel`, `scontrol`) and returns what it printed; an exit
/// other than 0 is an error holding that output. Blocking.
fn client(spawner: &Spawner, program: &str, args: &[String]) -> io::Result<String> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let launch = Launch {
        program: program.to_string(),
        args: args.to_vec(),
        cwd: "/".into(),
        env: Vec::new(),
        env_remove: Vec::new(),
        stdin: None,
        output: write.into(),
    };
    let (_, exit) = spawner.spawn(launch)?;
    let mut output = String::new();
    // EOF once the client exited and the spawner dropped its end of the pipe.
    std::fs::File::from(read).read_to_string(&mut output)?;
    match exit.blocking_recv() {
        Ok(ExitReason::Exited(0)) => Ok(output),
        Ok(other) => Err(io::Error::other(format!("{program} {}: {other}: {}", args.join(" "), output.trim()))),
        Err(_) => Err(io::Error::other(format!("{program}: the reaper is gone"))),
    }
}

/// `client` from async code.
async fn client_async(daemon: &Arc<Daemon>, program: &str, args: Vec<String>) -> io::Result<String> {
    let daemon = Arc::clone(daemon);
    let program = program.to_string();
    tokio::task::spawn_blocking(move || client(&daemon.spawner, &program, &args)).await.map_err(io::Error::other)?
}

/// Cancels the job named `name` at once (`scancel --signal=KILL`, then `scancel`): a job whose
/// srun was killed has nobody to follow it.
pub async fn cancel_job(daemon: &Arc<Daemon>, name: &str) {
    scancel(daemon, name, Some("KILL")).await;
    scancel(daemon, name, None).await;
}

/// `scancel` of the job named `name` (with `signal`: only that signal to its processes).
async fn scancel(daemon: &Arc<Daemon>, name: &str, signal: Option<&str>) {
    let mut args: Vec<String> = signal.iter().map(|s| format!("--signal={s}")).collect();
    args.push(format!("--name={name}"));
    if let Err(e) = client_async(daemon, "scancel", args).await {
        tracing::warn!("cannot cancel Slurm job {name}: {e}");
    }
}

/// One line of `squeue`, as `QUEUE_FORMAT` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub name: String,
    pub view: JobView,
}

/// Job id, name, state, reason, nodes.
const QUEUE_FORMAT: &str = "%i|%j|%T|%r|%N";

/// Reads `squeue -h -o QUEUE_FORMAT`: lines that do not fit are skipped (a warning srun's
/// client printed on the same pipe).
pub(crate) fn parse_queue(output: &str) -> Vec<QueuedJob> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('|');
            let id = fields.next()?.trim().parse().ok()?;
            let name = fields.next()?.to_string();
            let state = fields.next()?.to_string();
            let reason = fields.next()?;
            let nodes = fields.next()?;
            let given = |s: &str| (!s.is_empty() && s != "None" && s != "(null)").then(|| s.to_string());
            Some(QueuedJob { name, view: JobView { id, state, reason: given(reason), node: given(nodes) } })
        })
        .collect()
}

/// The jobs in the queue (pending, running, completing) whose name starts with `prefix`.
fn queued(spawner: &Spawner, prefix: &str) -> io::Result<Vec<QueuedJob>> {
    let args = ["-h", "-o", QUEUE_FORMAT].map(String::from);
    let mut jobs = parse_queue(&client(spawner, "squeue", &args)?);
    jobs.retain(|job| job.name.starts_with(prefix));
    Ok(jobs)
}

/// The job named `name` as the queue shows it now (also just after its end).
async fn job(daemon: &Arc<Daemon>, name: &str) -> io::Result<Option<JobView>> {
    let output = squeue_names(daemon, &[name.to_string()]).await?;
    // The newest job of that name: an earlier daemon's job of the same name cannot be newer.
    Ok(parse_queue(&output).into_iter().map(|job| job.view).max_by_key(|view| view.id))
}

/// `squeue`'s lines (`QUEUE_FORMAT`) of the jobs named `names`, ended ones included (just after
/// their end).
pub(crate) async fn squeue_names(daemon: &Arc<Daemon>, names: &[String]) -> io::Result<String> {
    let args = ["-h", "-t", "all", "-o", QUEUE_FORMAT].map(String::from).to_vec();
    let args = args.into_iter().chain([format!("--name={}", names.join(","))]).collect();
    client_async(daemon, "squeue", args).await
}

/// Cancels every queued job of the project at `root` whose story is one of `stories` (a dead
/// daemon's run, or a run that ends: no job of sticler's outlives its run), but the jobs named
/// in `spared` (those whose srun a resumed run took over). Blocking.
pub fn cancel_stories(
    spawner: &Spawner,
    root: &std::path::Path,
    stories: &[String],
    spared: &[String],
) -> io::Result<usize> {
    let prefix = job_prefix(&crate::logs::project_key(root));
    cancel_all(spawner, &prefix, |name| {
        // <prefix><story>-<iteration>
        let story = name.strip_prefix(&prefix).and_then(|rest| rest.rsplit_once('-')).map(|(story, _)| story);
        story.is_some_and(|story| stories.iter().any(|s| s == story)) && !spared.iter().any(|s| s == name)
    })
}

/// Cancels the jobs of `prefix` for which `whose` holds, at once (`scancel --signal=KILL`,
/// then `scancel`), and waits up to `JOB_GONE` for them to leave the queue. Returns how many
/// there were. Blocking.
fn cancel_all(spawner: &Spawner, prefix: &str, whose: impl Fn(&str) -> bool) -> io::Result<usize> {
    let ids = || -> io::Result<Vec<String>> {
        let jobs = queued(spawner, prefix)?.into_iter().filter(|job| whose(&job.name));
        Ok(jobs.map(|job| job.view.id.to_string()).collect())
    };
    // By id: scancel takes one name only.
    let found = ids()?;
    if found.is_empty() {
        return Ok(0);
    }
    for signal in [Some("KILL"), None] {
        let mut args: Vec<String> = signal.iter().map(|s| format!("--signal={s}")).collect();
        args.extend(found.iter().cloned());
        client(spawner, "scancel", &args)?;
    }
    let deadline = std::time::Instant::now() + JOB_GONE;
    while !ids()?.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(found.len())
}

/// Ends a job the way `worker::terminate` ends a local process: SIGTERM to the job's
/// processes, `grace` to exit (cut short when `kill_now` completes), then the job cancelled at
/// once. srun exits when its job is gone; one that does not is killed as a local worker is.
pub async fn terminate(
    daemon: &Arc<Daemon>,
    name: &str,
    group: &Group,
    grace: Duration,
    exit: &mut oneshot::Receiver<ExitReason>,
    kill_now: impl std::future::Future<Output = ()>,
) -> ExitReason {
    let killed = ExitReason::Signalled(nix::sys::signal::Signal::SIGKILL as i32);
    if !grace.is_zero() {
        scancel(daemon, name, Some("TERM")).await;
        tokio::select! {
            reason = &mut *exit => return reason.unwrap_or(killed),
            () = tokio::time::sleep(grace) => {}
            () = kill_now => {}
        }
    }
    scancel(daemon, name, Some("KILL")).await;
    scancel(daemon, name, None).await;
    tokio::select! {
        reason = &mut *exit => reason.unwrap_or(killed),
        () = tokio::time::sleep(SRUN_EXIT) => worker::terminate(group, Duration::ZERO, exit, std::future::pending()).await,
    }
}

/// Why Slurm ended the job named `name`, when it was Slurm and not the worker: its state and
/// reason, for the story's failed reasons. Asked after srun exited with a failure; a state that
/// is not final yet (slurmctld may learn of the end after srun, and a cancelled job may show
/// COMPLETING for a while) is asked again, for up to 3 s.
pub async fn failure(daemon: &Arc<Daemon>, name: &str) -> Option<String> {
    for _ in 0..END_TRIES {
        match end_state(daemon, name).await {
            Ok(Some((id, state, reason))) if FAILED_BY_SLURM.contains(&state.as_str()) => {
                return Some(match reason {
                    Some(reason) => format!("Slurm job {id} ended {state} ({reason})"),
                    None => format!("Slurm job {id} ended {state}"),
                });
            }
            Ok(Some((id, state, _))) if !matches!(state.as_str(), "COMPLETED" | "FAILED") => {
                tracing::debug!("Slurm job {id} ({name}) still shows {state} after srun's exit");
            }
            Ok(other) => {
                tracing::debug!("Slurm job {name} ended as {other:?}: not Slurm's failure");
                return None;
            }
            Err(e) => tracing::warn!("cannot ask Slurm how job {name} ended: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// How often `failure` asks, 300 ms apart.
const END_TRIES: usize = 10;

/// The id, `JobState` and `Reason` of the newest job named `name`; `None` when Slurm has no
/// such job (any more).
async fn end_state(daemon: &Arc<Daemon>, name: &str) -> io::Result<Option<(u64, String, Option<String>)>> {
    let Some(id) = job(daemon, name).await?.map(|view| view.id) else { return Ok(None) };
    // squeue shows a job that is completing as COMPLETING; scontrol shows its end state.
    let shown =
        client_async(daemon, "scontrol", vec!["show".into(), "job".into(), "-o".into(), id.to_string()]).await?;
    Ok(parse_end(&shown).map(|(state, reason)| (id, state, reason)))
}

/// `JobState` and `Reason` (when there is one) of `scontrol show job -o`.
fn parse_end(shown: &str) -> Option<(String, Option<String>)> {
    let field = |key: &str| shown.split_whitespace().find_map(|f| f.strip_prefix(key)).map(str::to_string);
    let state = field("JobState=")?;
    let reason = field("Reason=").filter(|r| r != "None");
    Some((state, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iteration_becomes_an_srun_of_the_same_command() {
        let mut spec = SpawnSpec {
            argv: vec!["worker".into(), "--story".into(), "US-P1-001".into()],
            cwd: "/shared/wt".into(),
            env: Vec::new(),
            env_remove: Vec::new(),
            stdin: None,
            log: "/state/1.log".into(),
            token: "n/US-P1-001/3/".into(),
        };
        let config = SlurmConfig {
            partition: Some("gpu".into()),
            cpus: Some(4),
            mem_mb: Some(8000),
            extra_args: vec!["--qos=low".into()],
            ..SlurmConfig::default()
        };
        let name = job_name("proj-00ff", "US-P1-001", 3);
        assert_eq!(name, "sticler-proj-00ff-US-P1-001-3");
        wrap(&config, &mut spec, &name, 1800);
        let expected = [
            "srun",
            "--job-name=sticler-proj-00ff-US-P1-001-3",
            "--comment=n/US-P1-001/3/",
            "--chdir=/shared/wt",
            "--nodes=1",
            "--ntasks=1",
            "--time=31",
            "--partition=gpu",
            "--cpus-per-task=4",
            "--mem=8000",
            "--qos=low",
            "--",
            "worker",
            "--story",
            "US-P1-001",
        ];
        assert_eq!(spec.argv, expected);
        let mut short = spec.clone();
        short.argv = vec!["w".into()];
        wrap(&SlurmConfig { time_limit_mins: Some(5), ..SlurmConfig::default() }, &mut short, &name, 1800);
        assert!(short.argv.contains(&"--time=5".to_string()), "{:?}", short.argv);
    }

    #[test]
    fn the_queue_is_read_line_by_line_and_noise_skipped() {
        let output = "12|sticler-p-US-P1-001-1|PENDING|Resources|\n\
                      13|sticler-p-US-P1-002-1|RUNNING|None|node7\n\
                      squeue: warning: something\n";
        let jobs = parse_queue(output);
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            jobs[0].view,
            JobView { id: 12, state: "PENDING".into(), reason: Some("Resources".into()), node: None }
        );
        assert_eq!(jobs[1].view, JobView { id: 13, state: "RUNNING".into(), reason: None, node: Some("node7".into()) });
    }

    #[test]
    fn local_folders_are_refused_only_when_other_nodes_run_the_jobs() {
        let local = [("/srv/state".to_string(), 0xEF53), ("/nfs/project".to_string(), 0x6969)];
        assert_eq!(unshared(&["vm"], "vm", &local), None, "a single-node cluster on this host shares everything");
        let why = unshared(&["vm", "n2"], "vm", &local).unwrap_or_default();
        assert!(why.contains("/srv/state is on a local filesystem (ext4)") && why.contains("vm, n2"), "{why}");
        let shared = [("/nfs/state".to_string(), 0x6969), ("/fuse/p".to_string(), 0x6573_5546)];
        assert_eq!(unshared(&["n1", "n2"], "vm", &shared), None, "NFS (and what cannot be told) is taken as shared");
    }

    #[test]
    fn the_end_state_and_reason_are_read_from_scontrol() {
        let shown = "JobId=8 JobName=x UserId=root(0) JobState=CANCELLED Reason=None Dependency=(null)";
        assert_eq!(parse_end(shown), Some(("CANCELLED".into(), None)));
        let oom = "JobId=9 JobState=OUT_OF_MEMORY Reason=OutOfMemory ExitCode=0:125";
        assert_eq!(parse_end(oom), Some(("OUT_OF_MEMORY".into(), Some("OutOfMemory".into()))));
        assert_eq!(parse_end("slurm_load_jobs error: Invalid job id specified"), None);
    }
}
