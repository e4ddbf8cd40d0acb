//! Dispatch latency on the kernel's clock: `perf record` of the scheduler's process-exit and
//! exec tracepoints, system-wide, around one tool's run. The gap from a dependency's last worker
//! exiting to the dependent's first worker's exec is what the budget speaks of; the worker's
//! own records (the fallback) add its start-up and its exit to that.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kernel times (ns on perf's clock) of the exits and execs of processes, by pid.
#[derive(Default)]
pub struct ExecTimes {
    pub exit: HashMap<u32, u64>,
    pub exec: HashMap<u32, u64>,
}

/// Whether `perf record` of the two tracepoints works here (perf installed, permission given).
pub fn available() -> bool {
    Command::new("perf")
        .args(["record", "-q", "-a", "-e", "sched:sched_process_exec", "-o", "/dev/null", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `perf record`, recording from the moment `start` returns.
pub struct Tracer {
    perf: Child,
    data: PathBuf,
}

impl Tracer {
    pub fn start(dir: &Path) -> Tracer {
        let (ctl, ack) = (dir.join("perf-ctl"), dir.join("perf-ack"));
        for fifo in [&ctl, &ack] {
            nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        }
        let data = dir.join("perf.data");
        let perf = Command::new("perf")
            .args(["record", "-q", "-a", "-D", "-1", "-e", "sched:sched_process_exit,sched:sched_process_exec"])
            .arg(format!("--control=fifo:{},{}", ctl.display(), ack.display()))
            .arg("-o")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn perf record");
        // Events start disabled; `enable` is acknowledged once they are on.
        let mut control = std::fs::OpenOptions::new().write(true).open(&ctl).expect("open perf control fifo");
        control.write_all(b"enable\n").expect("enable perf events");
        let mut reply = String::new();
        BufReader::new(std::fs::File::open(&ack).expect("open perf ack fifo")).read_line(&mut reply).expect("perf ack");
        assert_eq!(reply.trim(), "ack", "perf control answered {reply:?}");
        Tracer { perf, data }
    }

    /// Stops recording and reads the exits and execs back.
    pub fn finish(mut self) -> ExecTimes {
        let _ = kill(Pid::from_raw(self.perf.id() as i32), Signal::SIGINT);
        let _ = self.perf.wait();
        let out = Command::new("perf").arg("script").arg("-i").arg(&self.data).output().expect("perf script");
        parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Lines of `perf script`: `comm pid [cpu] secs.micros: sched:sched_process_exec: filename=... pid=N old_pid=N`
/// and `... sched:sched_process_exit: comm=... pid=N prio=P group_dead=true` (only the last
/// thread's exit ends the process).
fn parse(text: &str) -> ExecTimes {
    let mut times = ExecTimes::default();
    for line in text.lines() {
        let Some((head, rest)) = line.split_once(": sched:") else { continue };
        let Some(secs) = head.rsplit(' ').next().and_then(|t| t.parse::<f64>().ok()) else { continue };
        let ns = (secs * 1e9).round() as u64;
        let field =
            |name: &str| rest.split_whitespace().find_map(|f| f.strip_prefix(name)).and_then(|v| v.parse::<u32>().ok());
        if rest.starts_with("sched_process_exec:") {
            if let Some(pid) = field("pid=") {
                times.exec.insert(pid, ns);
            }
        } else if rest.starts_with("sched_process_exit:") && rest.contains("group_dead=true") {
            if let Some(pid) = field("pid=") {
                times.exit.insert(pid, ns);
            }
        }
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_script_lines_are_read() {
        let text = " sticler-test-wo 13409 [000] 46413.090405: sched:sched_process_exec: filename=/x/sticler-test-worker pid=13409 old_pid=13409\n\
                    \x20           git 13410 [000] 46413.095350: sched:sched_process_exit: comm=git pid=13410 prio=120 group_dead=true\n\
                    \x20           git 13411 [000] 46413.095351: sched:sched_process_exit: comm=git pid=13411 prio=120 group_dead=false\n";
        let t = parse(text);
        assert_eq!(t.exec.get(&13409), Some(&46_413_090_405_000));
        assert_eq!(t.exit.get(&13410), Some(&46_413_095_350_000));
        assert_eq!(t.exit.get(&13411), None, "a thread's exit is not the process's");
    }
}
