//! What the bench reads about processes: CPU time and peak RSS from /proc, and small statistics.

use std::collections::HashMap;
use std::fs;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitid, Id, WaitPidFlag};

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`), 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// User + system CPU time of the process itself (all its threads, not its children), in ms.
/// Still readable while the process is a zombie, which is how a child's final figure is taken.
pub fn cpu_ms(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0.0 };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / hz
}

/// A short-lived orchestrator (make, sh) run to its end: wall time, its own CPU time (read from
/// the zombie before it is reaped, so its children's time is not included, unlike rusage) and its
/// peak RSS (VmHWM, sampled while it runs: a zombie has no memory map left to report).
pub struct Finished {
    pub status: ExitStatus,
    pub wall: Duration,
    pub cpu_ms: f64,
    pub peak_rss_kib: u64,
}

pub fn run_watched(command: &mut Command) -> Finished {
    let start = Instant::now();
    let mut child: Child = command.spawn().unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "VmHWM"));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    // Wait for the exit without reaping, so /proc/<pid>/stat still holds the final CPU time.
    let _ = waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
    let wall = start.elapsed();
    let cpu_ms = cpu_ms(pid);
    done.store(true, Ordering::Relaxed);
    let peak_rss_kib = sampler.join().unwrap_or(0);
    let status = child.wait().expect("reap");
    Finished { status, wall, cpu_ms, peak_rss_kib }
}

/// For each story with dependencies, in ms: its first worker's start minus the last end among
/// its dependencies' workers. The scripted worker's `events.log` lines are `start|end <id> <unix
/// ns> <pid>`; with `kernel` times those pids' exec and exit are used instead (the worker's own
/// records add its start-up and exit), and the worker's times only where a pid is missing.
pub fn dispatch_latencies(
    log: &std::path::Path,
    graph: &[(String, Vec<String>)],
    kernel: Option<&crate::exectrace::ExecTimes>,
) -> Vec<f64> {
    let text = fs::read_to_string(log).unwrap_or_default();
    // (time, pid) of each story's first start and last end.
    let mut start: HashMap<String, (u128, Option<u32>)> = HashMap::new();
    let mut end: HashMap<String, (u128, Option<u32>)> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (Some(kind), Some(id), Some(t)) =
            (parts.first(), parts.get(1), parts.get(2).and_then(|t| t.parse::<u128>().ok()))
        else {
            continue;
        };
        let pid = parts.get(3).and_then(|p| p.parse::<u32>().ok());
        if *kind == "start" {
            start.entry(id.to_string()).or_insert((t, pid));
        } else {
            end.insert(id.to_string(), (t, pid));
        }
    }
    let on_kernel_clock = |(_, pid): (u128, Option<u32>), times: &HashMap<u32, u64>| {
        pid.and_then(|p| times.get(&p)).map(|ns| u128::from(*ns))
    };
    graph
        .iter()
        .filter(|(_, deps)| !deps.is_empty())
        .filter_map(|(id, deps)| {
            let first = *start.get(id)?;
            let ends: Vec<(u128, Option<u32>)> = deps.iter().filter_map(|d| end.get(d).copied()).collect();
            if let Some(k) = kernel {
                let exec = on_kernel_clock(first, &k.exec);
                let exits: Option<Vec<u128>> = ends.iter().map(|e| on_kernel_clock(*e, &k.exit)).collect();
                if let (Some(exec), Some(exits)) = (exec, exits) {
                    return Some((exec as f64 - *exits.iter().max()? as f64) / 1e6);
                }
            }
            let ready = ends.iter().map(|(t, _)| *t).max()?;
            Some((first.0 as f64 - ready as f64) / 1e6)
        })
        .collect()
}

/// Nanoseconds since the Unix epoch of an RFC 3339 UTC time (`2026-11-26T16:28:16.620796330Z`).
pub fn rfc3339_unix_ns(text: &str) -> Option<i128> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let frac: String = frac.chars().take_while(char::is_ascii_digit).take(9).collect();
    let nanos = format!("{frac:0<9}").parse::<i64>().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) as i128) * 1_000_000_000 + nanos as i128)
}

pub fn unix_ns_now() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_parses_to_unix_time() {
        assert_eq!(super::rfc3339_unix_ns("1970-01-02T00:00:01.5Z"), Some(86_401_500_000_000));
        assert_eq!(super::rfc3339_unix_ns("2026-11-26T16:28:16Z"), Some(1_795_710_496_000_000_000));
    }
}
