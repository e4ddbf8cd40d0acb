//! Iteration logs: `<state>/logs/<project-key>/<story>/<iteration>.log`, where they are and how
//! a new one is made without delaying a dispatch.
//!
//! Making a file or a folder allocates an inode, and ext4 does that by stepping over every
//! recently deleted inode of the block group; git and atomic writes delete many, so on a busy
//! project a mkdir or a create can take most of a millisecond, and a new story needs both
//! between its dependency's exit and its own exec. So a background thread keeps a few unnamed
//! files ready (O_TMPFILE in the logs folder) and makes the folders of the stories likely to run
//! next; a dispatch only links a ready file under its name, which allocates nothing. Where that
//! is not possible (no O_TMPFILE, no /proc, another filesystem) the log is created the plain way.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::AtFlags;

use crate::lock::lock;

/// The project's name in the state dir (also in its Slurm jobs' names).
pub use sticlerd::project::project_key;

/// Unnamed files kept ready: enough for every worker of a wide layer to start at once.
const SPARES: usize = 16;

/// A project's log folder: `<state>/logs/<key>`.
pub fn project_logs(state_dir: &Path, project: &Path) -> PathBuf {
    state_dir.join("logs").join(project_key(project))
}

/// The per-iteration log file.
pub fn log_path(logs_root: &Path, story: &str, iteration: u32) -> PathBuf {
    logs_root.join(story).join(format!("{iteration}.log"))
}

/// status.json as it was when the iteration started, kept beside its log: a daemon that adopts
/// the iteration's worker after a crash judges its progress against it.
pub fn start_status_path(logs_root: &Path, story: &str, iteration: u32) -> PathBuf {
    logs_root.join(story).join(format!("{iteration}.start.json"))
}

/// Iteration numbers that have a log, ascending.
pub fn logged_iterations(logs_root: &Path, story: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(logs_root.join(story)) else { return Vec::new() };
    let mut numbers: Vec<u32> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse().ok()).collect();
    numbers.sort_unstable();
    numbers
}

enum Job {
    Refill,
    Folders(Vec<PathBuf>),
}

/// Makes the log files of new iterations; one per daemon.
pub struct LogFiles {
    spares: Arc<Mutex<Vec<File>>>,
    jobs: mpsc::Sender<Job>,
    /// False once a ready file could not be given a name (no /proc, another filesystem): the
    /// cause lasts, so no more are made or used.
    naming_works: AtomicBool,
}

impl LogFiles {
    /// Starts the thread that prepares files in `root` (the daemon's `logs` folder) and folders.
    pub fn start(root: PathBuf) -> io::Result<LogFiles> {
        let spares = Arc::new(Mutex::new(Vec::new()));
        let (jobs, rx) = mpsc::channel();
        let thread_spares = Arc::clone(&spares);
        std::thread::Builder::new().name("logprep".into()).spawn(move || prepare(&root, &thread_spares, &rx))?;
        let files = LogFiles { spares, jobs, naming_works: AtomicBool::new(true) };
        files.request(Job::Refill);
        Ok(files)
    }

    /// Opens the log at `path` for appending: an existing one as it is (a verify command writes
    /// into its iteration's log), else a new one, made from a ready file when there is one.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        let spare = self.naming_works.load(Ordering::Relaxed).then(|| lock(&self.spares).pop()).flatten();
        if let Some(file) = spare {
            match name(&file, path) {
                Ok(()) => return Ok(file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    lock(&self.spares).push(file);
                    return OpenOptions::new().append(true).open(path);
                }
                Err(e) => {
                    tracing::info!(path = %path.display(), "cannot name a ready log file ({e}); log files are made at each start");
                    self.naming_works.store(false, Ordering::Relaxed);
                    lock(&self.spares).clear();
                }
            }
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Makes up for the ready files used. Called once the worker that took one has started, so
    /// that making them never competes with a dispatch for the CPU.
    pub fn refill(&self) {
        if self.naming_works.load(Ordering::Relaxed) {
            self.request(Job::Refill);
        }
    }

    /// Makes the folders of stories that may run soon, in the background.
    pub fn prepare_folders(&self, folders: Vec<PathBuf>) {
        if !folders.is_empty() {
            self.request(Job::Folders(folders));
        }
    }

    fn request(&self, job: Job) {
        // A gone thread only costs speed: open() falls back to plain creation.
        let _ = self.jobs.send(job);
    }
}

/// Gives the unnamed `file` the name `path`, making the parent folder when it is missing.
fn name(file: &File, path: &Path) -> io::Result<()> {
    let source = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let link = || nix::unistd::linkat(None, source.as_path(), None, path, AtFlags::AT_SYMLINK_FOLLOW);
    match link() {
        Err(Errno::ENOENT) => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            link().map_err(io::Error::from)
        }
        other => other.map_err(io::Error::from),
    }
}

/// The preparing thread: keeps `SPARES` unnamed files and makes requested folders, until the
/// daemon drops its `LogFiles`. It stops making files at the first failure: the filesystem
/// cannot, and every open() then creates its file itself.
fn prepare(root: &Path, spares: &Mutex<Vec<File>>, jobs: &mpsc::Receiver<Job>) {
    let mut can_prepare = true;
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Refill if can_prepare => {
                if let Err(e) = fs::create_dir_all(root) {
                    tracing::info!(folder = %root.display(), "log files are made at each start: {e}");
                    can_prepare = false;
                    continue;
                }
                while lock(spares).len() < SPARES {
                    match unnamed(root) {
                        Ok(file) => lock(spares).push(file),
                        Err(e) => {
                            tracing::info!(folder = %root.display(), "log files are made at each start: {e}");
                            can_prepare = false;
                            break;
                        }
                    }
                }
            }
            Job::Refill => {}
            Job::Folders(folders) => {
                for folder in folders {
                    if let Err(e) = fs::create_dir_all(&folder) {
                        tracing::debug!(folder = %folder.display(), "cannot prepare a log folder: {e}");
                    }
                }
            }
        }
    }
}

fn unnamed(root: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(root)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn wait_for_spare(files: &LogFiles) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lock(&files.spares).is_empty() {
            assert!(std::time::Instant::now() < deadline, "no ready log file after 10 s");
            std::thread::yield_now();
        }
    }

    /// A new log is a ready file given its name; what is written lands in it; an existing log is
    /// appended to, never replaced.
    #[test]
    fn a_ready_file_becomes_the_log_and_an_existing_log_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::start(dir.path().to_path_buf()).expect("start");
        wait_for_spare(&files);
        let ready: Vec<u64> = lock(&files.spares).iter().map(|f| f.metadata().expect("fstat").ino()).collect();
        let path = log_path(&dir.path().join("project"), "US-1", 1);
        let mut log = files.open(&path).expect("open a new log");
        let made = fs::metadata(&path).expect("stat the log").ino();
        assert!(ready.contains(&made), "the log is one of the ready files");
        io::Write::write_all(&mut log, b"first\n").expect("write");
        drop(log);
        let mut again = files.open(&path).expect("open the same log");
        io::Write::write_all(&mut again, b"second\n").expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "first\nsecond\n");
        assert_eq!(logged_iterations(&dir.path().join("project"), "US-1"), vec![1]);
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).expect("stat").permissions());
        assert_eq!(mode & 0o777, 0o600, "logs are private to the daemon's user");
    }

    /// Ready files never show up as files of their own, and folders are prepared on request.
    #[test]
    fn ready_files_are_unnamed_and_folders_are_prepared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::start(dir.path().to_path_buf()).expect("start");
        wait_for_spare(&files);
        let folder = dir.path().join("project").join("US-2");
        files.prepare_folders(vec![folder.clone()]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !folder.is_dir() {
            assert!(std::time::Instant::now() < deadline, "folder not prepared after 10 s");
            std::thread::yield_now();
        }
        let names: Vec<_> =
            fs::read_dir(dir.path()).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("project")], "only the prepared folder is visible");
    }
}
