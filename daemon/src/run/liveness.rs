//! What a running worker shows of itself while it runs: its log growing, its story's
//! status.json changing, and its agent's final result event. The supervisor looks every
//! `POLL` and ends the worker when the agent said its last word and did not exit, or when it
//! shows nothing for too long (a stall).
//!
//! The worker writes its log itself (its stdout and stderr are the file), so following means
//! reading the file from where the last look stopped: a stat and a read four times a second,
//! simpler than inotify and cheap next to what an agent costs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::agent_output::is_final_result;
use sticler_proto::preset::OutputFormat;

/// How often the supervisor looks at the files.
pub const POLL: Duration = Duration::from_millis(250);

/// Lines longer than this are not parsed whole (a tool result can be megabytes); their head
/// still tells a result event.
const MAX_LINE: usize = 256 * 1024;
/// What is kept of an overlong line.
const HEAD: usize = 64;
/// Read at most this much per look, so one look never holds a runtime thread for long.
const MAX_READ: u64 = 4 * 1024 * 1024;

/// Why the supervisor should end a worker now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// The agent printed its final result `exit_grace` ago and is still running.
    AfterResult,
    /// Nothing printed and status.json unchanged for the idle timeout.
    Stalled,
}

/// One worker's signs of life.
pub struct Liveness {
    log: PathBuf,
    status: PathBuf,
    format: OutputFormat,
    exit_grace: Duration,
    idle_timeout: Option<Duration>,
    file: Option<File>,
    /// How far the log has been read.
    offset: u64,
    line: LineScan,
    /// status.json's identity at the last look (inode, size, mtime).
    status_seen: Option<(u64, u64, i64, i64)>,
    /// The last time the log grew or status.json changed (or the start).
    active_at: Instant,
    result_at: Option<Instant>,
}

impl Liveness {
    pub fn new(
        log: PathBuf,
        status: PathBuf,
        format: OutputFormat,
        exit_grace: Duration,
        idle_timeout: Option<Duration>,
    ) -> Liveness {
        let status_seen = status_identity(&status);
        Liveness {
            log,
            status,
            format,
            exit_grace,
            idle_timeout,
            file: None,
            offset: 0,
            line: LineScan::default(),
            status_seen,
            active_at: Instant::now(),
            result_at: None,
        }
    }

    /// Looks at the files once; says whether the worker is overdue at `now`.
    pub fn look(&mut self, now: Instant) -> Option<Overdue> {
        let status = status_identity(&self.status);
        if status != self.status_seen {
            self.status_seen = status;
            self.active_at = now;
        }
        if self.read_log() {
            self.active_at = now;
        }
        if self.line.result_seen && self.result_at.is_none() {
            self.result_at = Some(now);
        }
        // Once the agent said its last word, only the exit grace counts: an agent that is done
        // is never called stalled.
        if let Some(at) = self.result_at {
            return (now.duration_since(at) >= self.exit_grace).then_some(Overdue::AfterResult);
        }
        let idle = self.idle_timeout?;
        (now.duration_since(self.active_at) >= idle).then_some(Overdue::Stalled)
    }

    /// Reads what the log gained since the last look; true when it grew.
    fn read_log(&mut self) -> bool {
        if self.file.is_none() {
            self.file = File::open(&self.log).ok();
        }
        let Some(file) = self.file.as_mut() else { return false };
        let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
        if len <= self.offset {
            return false;
        }
        if self.format == OutputFormat::Text {
            // No result event to look for: the size is all that matters.
            self.offset = len;
            return true;
        }
        let want = (len - self.offset).min(MAX_READ);
        let mut chunk = Vec::with_capacity(want as usize);
        let read = file.seek(SeekFrom::Start(self.offset)).and_then(|_| file.take(want).read_to_end(&mut chunk));
        match read {
            Ok(n) if n > 0 => {
                self.offset += n as u64;
                self.line.feed(&chunk, self.format);
                true
            }
            _ => false,
        }
    }
}

fn status_identity(path: &std::path::Path) -> Option<(u64, u64, i64, i64)> {
    // Writes are atomic renames: a new inode each time, whatever the size and the clock say.
    std::fs::metadata(path).ok().map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Splits output into lines across reads and tells when one is a final result event.
#[derive(Debug, Default)]
struct LineScan {
    /// The unfinished line so far (its head only once it is overlong).
    partial: Vec<u8>,
    overlong: bool,
    result_seen: bool,
}

impl LineScan {
    fn feed(&mut self, mut bytes: &[u8], format: OutputFormat) {
        while !bytes.is_empty() {
            let (part, rest, ended) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &bytes[bytes.len()..], false),
            };
            if !self.overlong {
                self.partial.extend_from_slice(part);
                if self.partial.len() > MAX_LINE {
                    self.partial.truncate(HEAD);
                    self.overlong = true;
                }
            }
            if ended {
                self.end_line(format);
            }
            bytes = rest;
        }
    }

    fn end_line(&mut self, format: OutputFormat) {
        let line = std::mem::take(&mut self.partial);
        let is_result = if self.overlong {
            // Claude Code writes `type` first; a result this long is rare, and a miss only
            // leaves the end to the stall watchdog or the timeout.
            format == OutputFormat::ClaudeStreamJson && line.trim_ascii_start().starts_with(br#"{"type":"result""#)
        } else {
            is_final_result(&line, format)
        };
        self.result_seen |= is_result;
        self.overlong = false;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const RESULT: &str = r#"{"type":"result","subtype":"success","is_error":false,"result":"done"}"#;

    #[test]
    fn a_result_split_across_reads_and_after_an_overlong_line_is_seen() {
        let mut scan = LineScan::default();
        let (head, tail) = RESULT.split_at(20);
        let long = format!("{{\"type\":\"assistant\",\"text\":\"{}\"}}\n", "x".repeat(MAX_LINE + 10));
        scan.feed(long.as_bytes(), OutputFormat::ClaudeStreamJson);
        scan.feed(head.as_bytes(), OutputFormat::ClaudeStreamJson);
        assert!(!scan.result_seen && !scan.overlong);
        scan.feed(format!("{tail}\n").as_bytes(), OutputFormat::ClaudeStreamJson);
        assert!(scan.result_seen);
        let mut unfinished = LineScan::default();
        unfinished.feed(RESULT.as_bytes(), OutputFormat::ClaudeStreamJson);
        assert!(!unfinished.result_seen, "a line counts once it is complete");
        let mut overlong = LineScan::default();
        let big = format!("{{\"type\":\"result\",\"result\":\"{}\"}}\n", "y".repeat(MAX_LINE));
        overlong.feed(big.as_bytes(), OutputFormat::ClaudeStreamJson);
        assert!(overlong.result_seen, "an overlong result is told by its head");
    }

    #[test]
    fn output_or_a_status_change_resets_the_stall_clock_and_a_result_starts_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (log, status) = (dir.path().join("1.log"), dir.path().join("status.json"));
        std::fs::write(&status, "{}").unwrap();
        let mut file = std::fs::File::create(&log).unwrap();
        let second = Duration::from_secs(1);
        let mut live = Liveness::new(log, status.clone(), OutputFormat::ClaudeStreamJson, 3 * second, Some(2 * second));
        let t0 = live.active_at;
        assert_eq!(live.look(t0 + second), None);
        assert_eq!(live.look(t0 + 2 * second), Some(Overdue::Stalled), "nothing for the idle timeout");
        writeln!(file, r#"{{"type":"assistant"}}"#).unwrap();
        assert_eq!(live.look(t0 + 3 * second), None, "output resets the clock");
        std::fs::write(dir.path().join("tmp"), r#"{"status":"in_progress"}"#).unwrap();
        std::fs::rename(dir.path().join("tmp"), &status).unwrap();
        assert_eq!(live.look(t0 + 4 * second), None, "an atomic rewrite of status.json resets it too");
        assert_eq!(live.look(t0 + 6 * second), Some(Overdue::Stalled));
        writeln!(file, "{RESULT}").unwrap();
        assert_eq!(live.look(t0 + 7 * second), None, "the exit grace starts");
        assert_eq!(live.look(t0 + 9 * second + second / 2), None, "never stalled once the agent is done");
        assert_eq!(live.look(t0 + 10 * second), Some(Overdue::AfterResult));
    }

    #[test]
    fn plain_text_has_no_result_and_a_watchdog_can_be_off() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("1.log");
        std::fs::write(&log, format!("{RESULT}\n")).unwrap();
        let hour = Duration::from_secs(3600);
        let mut text = Liveness::new(log.clone(), dir.path().join("none"), OutputFormat::Text, hour, Some(hour));
        let t0 = text.active_at;
        assert_eq!(text.look(t0 + hour / 2), None);
        assert_eq!(text.look(t0 + 2 * hour), Some(Overdue::Stalled), "a result line is only text here");
        let mut off = Liveness::new(log, dir.path().join("none"), OutputFormat::Text, hour, None);
        assert_eq!(off.look(t0 + 100 * hour), None);
    }
}
