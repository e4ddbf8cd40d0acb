//! The Slurm runner on a real single-node cluster (`sticler_tests::slurm::Cluster`, one for the
//! whole file): iterations are jobs with sticler's names, they end through Slurm, a job Slurm
//! ends is an infrastructure failure with Slurm's reason, and no job outlives its run, not even
//! after a `kill -9` of the daemon. Skipped, saying why, where Slurm is not installed.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sticler_tests::slurm::{job_prefix, Cluster};
use sticler_tests::{describe, poll, process_alive, story, story_of, Daemon, ProjectBuilder, StorySpec};

/// A daemon whose Slurm clients talk to `cluster`.
fn daemon_on(cluster: &Cluster) -> Daemon {
    let mut daemon = Daemon::unstarted();
    launch_on(&mut daemon, cluster);
    daemon
}

fn launch_on(daemon: &mut Daemon, cluster: &Cluster) {
    let mut command = daemon.command(&[]);
    command.env("SLURM_CONF", &cluster.conf);
    daemon.spawn(command);
    daemon.wait_ready();
}

/// A daemon on `cluster` whose `squeue` writes each of its command lines to the returned file
/// (a script found first on the daemon's PATH, which runs the real one).
fn daemon_logging_squeue(cluster: &Cluster) -> (Daemon, tempfile::TempDir, std::path::PathBuf) {
    let real = Command::new("sh").args(["-c", "command -v squeue"]).output().expect("sh");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let shims = tempfile::tempdir().expect("tempdir");
    let log = shims.path().join("squeue.log");
    let script = format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{real}' \"$@\"\n", log.display());
    let shim = shims.path().join("squeue");
    std::fs::write(&shim, script).expect("write the squeue shim");
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut daemon = Daemon::unstarted();
    let mut command = daemon.command(&[]);
    let path = format!("{}:{}", shims.path().display(), std::env::var("PATH").unwrap_or_default());
    command.env("SLURM_CONF", &cluster.conf).env("PATH", path);
    daemon.spawn(command);
    daemon.wait_ready();
    (daemon, shims, log)
}

/// A project whose iterations run as Slurm jobs (or locally), with `extra` config.
fn project(slurm: bool, extra: serde_json::Value) -> ProjectBuilder {
    let p = ProjectBuilder::new();
    let mut config = json!({"max_parallel_workers": 3});
    if slurm {
        sticler_tests::merge(&mut config, json!({"runner": {"kind": "slurm"}}));
    }
    sticler_tests::merge(&mut config, extra);
    p.config(config);
    p
}

/// Six stories in three layers, some taking two iterations.
fn six_stories() -> Vec<StorySpec> {
    let files = |id: &str| json!({"files": [format!("src/{id}.txt")]});
    vec![
        story("US-P1-001", &[]).criteria(2).script(files("US-P1-001")),
        story("US-P1-002", &[]).script(files("US-P1-002")),
        story("US-P1-003", &["US-P1-001"]).script(files("US-P1-003")),
        story("US-P1-004", &["US-P1-001", "US-P1-002"]).criteria(2).script(files("US-P1-004")),
        story("US-P1-005", &["US-P1-003"]).script(files("US-P1-005")),
        story("US-P1-006", &["US-P1-004", "US-P1-005"]).script(files("US-P1-006")),
    ]
}

/// Each story commit's subject with the files it changed, in subject order.
fn story_commits(p: &ProjectBuilder) -> BTreeMap<String, Vec<String>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(p.path())
        .args(["log", "--first-parent", "--format=@%s", "--name-only"])
        .output()
        .expect("git log");
    let mut commits = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
        match line.strip_prefix('@') {
            Some(subject) => current = Some(subject.to_string()),
            None => commits.entry(current.clone().unwrap_or_default()).or_insert_with(Vec::new).push(line.to_string()),
        }
    }
    commits.retain(|subject: &String, _| subject.starts_with("[US-"));
    commits
}

#[test]
fn a_phase_of_six_stories_runs_as_one_job_per_iteration_with_the_commits_of_a_local_run() {
    let Some(cluster) = Cluster::shared() else { return };
    let daemon = daemon_on(cluster);
    let (local, slurm) = (project(false, json!({})), project(true, json!({})));
    for p in [&local, &slurm] {
        p.phase(1, "decomposed", &six_stories());
        let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
        assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    }
    let commits = story_commits(&slurm);
    assert_eq!(commits.len(), 6, "{commits:?}");
    assert_eq!(commits, story_commits(&local), "the same story commits, with the same files, as a local run");
    // Slurm's own record: one job per iteration, named after it, each completed.
    let prefix = job_prefix(slurm.path());
    let phase = daemon.phase_status(slurm.path(), 1);
    let mut expected: Vec<String> = phase
        .stories
        .iter()
        .flat_map(|s| (1..=s.runs).map(|i| format!("{prefix}{}-{i}", s.id)).collect::<Vec<_>>())
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 8, "two stories take two iterations: {expected:?}");
    let finished = poll(Duration::from_secs(20), "every job in the completion log", || {
        let finished = cluster.finished(&prefix);
        (finished.len() >= expected.len()).then_some(finished)
    });
    let mut names: Vec<String> = finished.iter().map(|j| j.name.clone()).collect();
    names.sort();
    assert_eq!(names, expected, "{finished:?}");
    assert!(finished.iter().all(|j| j.state == "COMPLETED"), "{finished:?}");
    assert!(cluster.finished(&job_prefix(local.path())).is_empty(), "the local run made no job");
    cluster.wait_queue_empty(&prefix);
}

#[test]
fn stop_leaves_no_job_in_the_queue_and_status_shows_each_running_job() {
    let Some(cluster) = Cluster::shared() else { return };
    let (daemon, _shims, squeue_log) = daemon_logging_squeue(cluster);
    let p = project(true, json!({}));
    let hang = json!({"mode": "hang"});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(hang.clone()), story("US-P1-002", &[]).script(hang)]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let prefix = job_prefix(p.path());
    poll(Duration::from_secs(20), "both jobs shown running on this host in status", || {
        let phase = daemon.phase_status(p.path(), 1);
        let jobs: Vec<_> =
            ["US-P1-001", "US-P1-002"].iter().filter_map(|id| story_of(&phase, id).job.clone()).collect();
        (jobs.len() == 2 && jobs.iter().all(|j| j.state == "RUNNING" && j.node.is_some())).then_some(())
    });
    assert_eq!(cluster.queued(&prefix).len(), 2);
    // One squeue a round for all the running jobs, not one per job.
    let asked = std::fs::read_to_string(&squeue_log).unwrap_or_default();
    let both =
        |line: &&str| line.contains(&format!("{prefix}US-P1-001-1")) && line.contains(&format!("{prefix}US-P1-002-1"));
    assert!(asked.lines().any(|line| both(&line)), "no squeue asked for both jobs at once:\n{asked}");
    let out = daemon.ctl(&["-C", &p.path_str(), "stop", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    cluster.wait_queue_empty(&prefix);
    let phase = daemon.phase_status(p.path(), 1);
    assert!(phase.stories.iter().all(|s| s.job.is_none()), "no job shown once stopped: {:?}", phase.stories);
}

/// The project's jobs once none is queued, as the completion log has them (waited for: Slurm
/// writes a job's record a moment after it leaves the queue).
fn ended_jobs(cluster: &Cluster, p: &ProjectBuilder) -> Vec<sticler_tests::slurm::FinishedJob> {
    let prefix = job_prefix(p.path());
    cluster.wait_queue_empty(&prefix);
    poll(Duration::from_secs(10), "the job in the completion log", || {
        let finished = cluster.finished(&prefix);
        (!finished.is_empty()).then_some(finished)
    })
}

#[test]
fn a_job_that_ignores_sigterm_is_cancelled_after_the_grace() {
    let Some(cluster) = Cluster::shared() else { return };
    let daemon = daemon_on(cluster);
    let p = project(true, json!({}));
    let pids_file = p.path().join("pids.txt");
    let script = json!({"mode": "ignore_term_fork", "pids_file": pids_file.display().to_string()});
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(script)]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let pids: Vec<i32> = poll(Duration::from_secs(20), "the job's 3 processes", || {
        let text = std::fs::read_to_string(&pids_file).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (pids.len() == 3).then_some(pids)
    });
    let out = daemon.ctl(&["-C", &p.path_str(), "stop", "1", "--grace", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    poll(Duration::from_secs(10), "the job's processes to be gone", || {
        pids.iter().all(|pid| !process_alive(*pid)).then_some(())
    });
    let finished = ended_jobs(cluster, &p);
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0].state, "CANCELLED", "SIGTERM did not end it: Slurm cancelled it");
}

#[test]
fn a_job_cancelled_from_outside_is_an_infrastructure_failure_with_slurms_reason() {
    let Some(cluster) = Cluster::shared() else { return };
    let daemon = daemon_on(cluster);
    let p = project(true, json!({"retry_limit": 1}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "hang"}))]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let name = format!("{}US-P1-001-1", job_prefix(p.path()));
    poll(Duration::from_secs(20), "the job in the queue", || (cluster.queued(&name) == [name.clone()]).then_some(()));
    let out = cluster.client("scancel").arg(format!("--name={name}")).output().expect("scancel");
    assert!(out.status.success(), "{}", describe(&out));
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    let reasons = story_of(&phase, "US-P1-001").failed_reasons.join("\n");
    assert!(reasons.contains("infrastructure failure") || reasons.contains("infrastructure failures"), "{reasons}");
    assert!(reasons.contains("Slurm job") && reasons.contains("CANCELLED"), "Slurm's reason: {reasons}");
}

#[test]
fn kill_9_of_the_daemon_mid_run_then_restart_takes_the_jobs_over_completes_and_leaves_no_job() {
    let Some(cluster) = Cluster::shared() else { return };
    let mut daemon = daemon_on(cluster);
    let p = project(true, json!({}));
    let slow = |id: &str, deps: &[&str], ms: u64| {
        story(id, deps).script(json!({"sleep_ms": ms, "files": [format!("src/{id}.txt")]}))
    };
    // US-P1-002's job runs long enough to be seen running under the second daemon.
    let stories = [slow("US-P1-001", &[], 2000), slow("US-P1-002", &[], 6000), slow("US-P1-003", &["US-P1-001"], 2000)];
    p.phase(1, "decomposed", &stories);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let prefix = job_prefix(p.path());
    poll(Duration::from_secs(20), "two jobs running", || (cluster.queued(&prefix).len() == 2).then_some(()));
    daemon.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    assert!(!cluster.queued(&prefix).is_empty(), "the jobs outlive the daemon that started them");
    launch_on(&mut daemon, cluster);
    // The adopted srun's job is followed as a new one's is.
    poll(Duration::from_secs(5), "US-P1-002's job shown running by the second daemon", || {
        let job = story_of(&daemon.phase_status(p.path(), 1), "US-P1-002").job.clone();
        job.filter(|j| j.state == "RUNNING" && j.node.is_some()).map(|_| ())
    });
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let commits = story_commits(&p);
    assert_eq!(commits.len(), 3, "one commit per story: {commits:?}");
    cluster.wait_queue_empty(&prefix);
    // The second daemon took the first one's jobs over: they ran to their end, none was
    // cancelled, and no story needed a second iteration.
    // Slurm logs each job a moment after it leaves the queue.
    let finished = poll(Duration::from_secs(10), "three jobs in the completion log", || {
        let finished = cluster.finished(&prefix);
        (finished.len() >= 3).then_some(finished)
    });
    assert!(finished.iter().all(|j| j.state == "COMPLETED"), "{finished:?}");
    let mut names: Vec<&str> = finished.iter().map(|j| j.name.as_str()).collect();
    names.sort_unstable();
    let expected: Vec<String> =
        ["US-P1-001", "US-P1-002", "US-P1-003"].iter().map(|id| format!("{prefix}{id}-1")).collect();
    assert_eq!(names, expected, "one job per story: {finished:?}");
}

#[test]
fn a_pending_job_shows_its_reason_and_the_phase_limit_counts_it() {
    let Some(cluster) = Cluster::shared() else { return };
    let daemon = daemon_on(cluster);
    // Jobs that may not begin for an hour stay pending, with Slurm's reason.
    let p = project(true, json!({"max_parallel_workers": 1, "runner": {"extra_args": ["--begin=now+3600"]}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]), story("US-P1-002", &[])]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let job = poll(Duration::from_secs(20), "the job shown pending in status", || {
        story_of(&daemon.phase_status(p.path(), 1), "US-P1-001").job.clone().filter(|j| j.state == "PENDING")
    });
    assert_eq!(job.reason.as_deref(), Some("BeginTime"), "{job:?}");
    let prefix = job_prefix(p.path());
    assert_eq!(cluster.queued(&prefix), [format!("{prefix}US-P1-001-1")], "one queued job: the phase's limit");
    let human = daemon.ctl(&["-C", &p.path_str(), "status", "1", "US-P1-001"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(&format!("slurm job:    {} PENDING (BeginTime)", job.id)), "{text}");
    let out = daemon.ctl(&["-C", &p.path_str(), "kill", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = daemon.ctl(&["-C", &p.path_str(), "wait", "1"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    cluster.wait_queue_empty(&prefix);
}

#[test]
fn an_iteration_timeout_ends_the_job_through_slurm_within_its_time_limit() {
    let Some(cluster) = Cluster::shared() else { return };
    let daemon = daemon_on(cluster);
    let p = project(true, json!({"retry_limit": 1, "worker": {"iteration_timeout_secs": 1}}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[]).script(json!({"mode": "hang"}))]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(4), "{}\n{}", describe(&out), daemon.dump(p.path()));
    let phase = daemon.phase_status(p.path(), 1);
    let reasons = story_of(&phase, "US-P1-001").failed_reasons.join("\n");
    assert!(reasons.contains("iteration timed out after 1 s"), "sticler's own timeout, not Slurm's: {reasons}");
    let finished = ended_jobs(cluster, &p);
    assert_eq!(finished.len(), 1, "{finished:?}");
    // The job asked for the timeout plus the stop grace, rounded up (one minute), and sticler's
    // SIGTERM ended it long before Slurm's limit.
    assert_eq!(finished[0].time_limit, "1", "{finished:?}");
    assert_eq!(finished[0].state, "FAILED", "ended by SIGTERM, not by Slurm's limit: {finished:?}");
}

#[test]
fn a_start_on_a_cluster_that_cannot_be_asked_is_refused_before_any_iteration() {
    // No cluster here: with an empty slurm.conf (or without Slurm at all) sinfo cannot answer. (A
    // missing file would do too, but Slurm's clients wait a minute for it to appear.)
    let mut daemon = Daemon::unstarted();
    let conf = daemon.tmp.path().join("empty-slurm.conf");
    std::fs::write(&conf, "").expect("empty slurm.conf");
    let mut command = daemon.command(&[]);
    command.env("SLURM_CONF", &conf);
    daemon.spawn(command);
    daemon.wait_ready();
    let p = project(true, json!({}));
    p.phase(1, "decomposed", &[story("US-P1-001", &[])]);
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runner slurm: cannot ask the cluster"), "{stderr}");
    let phase = daemon.phase_status(p.path(), 1);
    assert_eq!((phase.status.as_str(), phase.running), ("decomposed", false), "nothing was started");
    assert_eq!(story_of(&phase, "US-P1-001").runs, 0);
}
