//! A private single-node Slurm cluster for the Slurm runner's tests and bench: munged,
//! slurmctld and slurmd run as root from a generated slurm.conf in a temp folder (this host as
//! the only node, `proctrack/linuxproc`, `task/none`, free ports, a job completion log), see
//! ../shared/reference/slurm-single-node.md. One cluster serves a whole test binary; it is shut
//! down when the binary exits. Without Slurm installed (or without root) the tests say so and
//! skip; a cluster that is installed but does not start is a failure, never a skip.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::{have_tool, poll};

pub struct Cluster {
    dir: PathBuf,
    /// `SLURM_CONF` for every client (and for sticlerd, which runs them).
    pub conf: PathBuf,
    /// One line per finished job (`JobCompType=jobcomp/filetxt`).
    pub jobcomp: PathBuf,
}

/// One finished job, from the job completion log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedJob {
    pub id: u64,
    pub name: String,
    pub state: String,
    /// As the log writes it: minutes, or `UNLIMITED`.
    pub time_limit: String,
}

static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(Some(cluster)) = SHARED.get() {
        cluster.stop();
    }
}

impl Cluster {
    /// The cluster of this test binary, started on first use; `None` (with the reason printed)
    /// when Slurm is not installed here or the tests do not run as root.
    pub fn shared() -> Option<&'static Cluster> {
        SHARED
            .get_or_init(|| {
                let tools =
                    [("slurmctld", "slurm-wlm"), ("slurmd", "slurm-wlm"), ("srun", "slurm-wlm"), ("munged", "munge")];
                if !tools.iter().all(|(tool, package)| have_tool(tool, package)) {
                    return None;
                }
                if !nix::unistd::geteuid().is_root() {
                    println!("skipped: a private Slurm cluster needs root (slurmd runs jobs as their user)");
                    return None;
                }
                let cluster = Cluster::start();
                // SAFETY: registers a plain `extern "C" fn` once; it runs at the process's exit.
                unsafe { libc::atexit(stop_shared) };
                Some(cluster)
            })
            .as_ref()
    }

    fn start() -> Cluster {
        let dir = tempfile::Builder::new().prefix("sticler-slurm-").tempdir().expect("tempdir").keep();
        let cluster = Cluster { conf: dir.join("slurm.conf"), jobcomp: dir.join("jobcomp.txt"), dir };
        let key = cluster.dir.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("random key");
        fs::write(&key, bytes).expect("munge key");
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("key mode");
        let path = |name: &str| cluster.dir.join(name).display().to_string();
        run(Command::new("munged").args([
            "--force",
            &format!("--key-file={}", path("munge.key")),
            &format!("--socket={}", path("munge.sock")),
            &format!("--pid-file={}", path("munged.pid")),
            &format!("--log-file={}", path("munged.log")),
            &format!("--seed-file={}", path("munge.seed")),
        ]));
        fs::write(&cluster.conf, cluster.config()).expect("slurm.conf");
        for daemon in ["slurmctld", "slurmd"] {
            run(Command::new(daemon).arg("-f").arg(&cluster.conf));
        }
        poll(Duration::from_secs(30), "the Slurm node to be idle", || {
            let out = cluster.client("sinfo").args(["-h", "-o", "%T"]).output().ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "idle").then_some(())
        });
        cluster
    }

    fn config(&self) -> String {
        let host = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        let host = host.trim().split('.').next().unwrap_or("localhost").to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let path = |name: &str| self.dir.join(name).display().to_string();
        let [ctld, slurmd] = [free_port(), free_port()];
        format!(
            "ClusterName=sticlertest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctld}\n\
             SlurmdPort={slurmd}\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={sock}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             MpiDefault=none\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={slurmd_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={slurmd_log}\n\
             JobCompType=jobcomp/filetxt\n\
             JobCompLoc={jobcomp}\n\
             KillWait=5\n\
             ReturnToService=2\n\
             NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8\n",
            sock = path("munge.sock"),
            state = path("state"),
            spool = path("spool"),
            ctld_pid = path("slurmctld.pid"),
            slurmd_pid = path("slurmd.pid"),
            ctld_log = path("slurmctld.log"),
            slurmd_log = path("slurmd.log"),
            jobcomp = self.jobcomp.display(),
        )
    }

    /// A Slurm client command (`squeue`, `scancel`, ...) for this cluster.
    pub fn client(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf);
        command
    }

    /// Names of the jobs in the queue (pending, running, completing) that start with `prefix`.
    pub fn queued(&self, prefix: &str) -> Vec<String> {
        let out = self.client("squeue").args(["-h", "-o", "%j"]).output().expect("squeue");
        assert!(out.status.success(), "squeue: {}", crate::describe(&out));
        String::from_utf8_lossy(&out.stdout).lines().filter(|n| n.starts_with(prefix)).map(str::to_string).collect()
    }

    /// Polls until no job starting with `prefix` is left in the queue.
    pub fn wait_queue_empty(&self, prefix: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.queued(prefix);
            if left.is_empty() {
                return;
            }
            let out = self.client("squeue").args(["-h", "-o", "%i %j %T %r %N"]).output().expect("squeue");
            let queue = String::from_utf8_lossy(&out.stdout);
            assert!(std::time::Instant::now() < deadline, "jobs left in the queue after 20 s: {left:?}\n{queue}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The finished jobs starting with `prefix`, from the job completion log.
    pub fn finished(&self, prefix: &str) -> Vec<FinishedJob> {
        let text = fs::read_to_string(&self.jobcomp).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let field = |key: &str| line.split_whitespace().find_map(|f| f.strip_prefix(key)).map(str::to_string);
                Some(FinishedJob {
                    id: field("JobId=")?.parse().ok()?,
                    name: field("Name=")?,
                    state: field("JobState=")?,
                    time_limit: field("TimeLimit=")?,
                })
            })
            .filter(|job| job.name.starts_with(prefix))
            .collect()
    }

    fn stop(&self) {
        for pid_file in ["slurmd.pid", "slurmctld.pid", "munged.pid"] {
            let pid = fs::read_to_string(self.dir.join(pid_file)).ok().and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| *p > 1) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let gone = (0..100).any(|_| {
                    std::thread::sleep(Duration::from_millis(20));
                    nix::sys::signal::kill(pid, None).is_err()
                });
                if !gone {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The start of the names of the jobs of the project at `root` (as sticlerd names them).
pub fn job_prefix(root: &Path) -> String {
    format!("sticler-{}-", sticlerd::project::project_key(root))
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(out.status.success(), "{command:?} failed: {}", crate::describe(&out));
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}
