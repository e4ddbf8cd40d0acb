//! The Slurm runner against the local one, on a private single-node cluster
//! (`sticler_tests::slurm::Cluster`): sticler with `"runner": {"kind": "slurm"}`, and the floor
//! of Slurm itself, a shell loop of one `srun` per story back to back. What Slurm's scheduling
//! adds is the srun loop minus the shell loop; what sticler adds on top of it is sticler on
//! Slurm minus the srun loop.

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;
use sticler_tests::slurm::Cluster;
use sticler_tests::{Daemon, ProjectBuilder};

use crate::measure::{cpu_ms, run_watched, status_kib};
use crate::runners::Sample;
use crate::workload::Workload;

/// sticler with the Slurm runner on `cluster`, as `runners::sticler` runs it locally.
pub fn sticler(cluster: &Cluster, w: &Workload, p: &ProjectBuilder) -> Sample {
    let mut config = w.config(false);
    sticler_tests::merge(&mut config, json!({"runner": {"kind": "slurm"}}));
    p.config(config);
    let mut daemon = Daemon::unstarted();
    let mut command = daemon.command(&["--max-workers", &w.width.to_string()]);
    command.env("SLURM_CONF", &cluster.conf);
    daemon.spawn(command);
    daemon.wait_ready();
    let before = cpu_ms(daemon.pid());
    let start = Instant::now();
    let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
    let wall_s = start.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "sticler on Slurm failed: {}", String::from_utf8_lossy(&out.stderr));
    Sample {
        wall_s,
        cpu_ms: cpu_ms(daemon.pid()) - before,
        peak_rss_kib: status_kib(daemon.pid(), "VmHWM"),
        latencies: vec![],
    }
}

/// Slurm's floor: every story's work as one `srun` job, back to back in dependency order.
pub fn srun_loop(cluster: &Cluster, w: &Workload, p: &ProjectBuilder) -> Sample {
    let mut script = String::from("set -e\n");
    for (id, _) in w.graph() {
        let work = w.story_command(p, &id).replace('\'', "'\\''");
        script.push_str(&format!("srun -Q -N1 -n1 --job-name=bench-{id} sh -c '{work}'\n"));
    }
    p.write("srun-loop.sh", &script);
    let mut command = Command::new("sh");
    command.arg("srun-loop.sh").current_dir(p.path()).env("SLURM_CONF", &cluster.conf).stdout(Stdio::null());
    let run = run_watched(&mut command);
    assert!(run.status.success(), "the srun loop failed");
    Sample { wall_s: run.wall.as_secs_f64(), cpu_ms: run.cpu_ms, peak_rss_kib: run.peak_rss_kib, latencies: vec![] }
}
