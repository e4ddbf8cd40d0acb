//! Where the daemon keeps its socket and state, and the locks that make it the only daemon
//! using them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot choose a socket path: set STICLER_SOCKET or XDG_RUNTIME_DIR, or pass --socket")]
    NoSocketPath,
    #[error("cannot choose a state folder: set XDG_STATE_HOME or HOME, or pass --state-dir")]
    NoStateDir,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("another sticlerd (pid {pid}) is already using {}; stop it first (sticlerctl shutdown) or pick another --socket/--state-dir", path.display())]
    Busy { path: PathBuf, pid: String },
    #[error("{} is owned by uid {owner}, not by this daemon's uid {me}; refusing to use it", path.display())]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PathError + '_ {
    move |source| PathError::Io { path: path.to_path_buf(), source }
}

/// `--socket`, else `$STICLER_SOCKET`, else `$XDG_RUNTIME_DIR/sticler/sticlerd.sock`, else
/// `/run/sticler/sticlerd.sock` for root. The same rule is used by `sticlerctl`.
pub fn socket_path(flag: Option<PathBuf>) -> Result<PathBuf, PathError> {
    if let Some(path) = flag {
        return Ok(path);
    }
    if let Some(path) = std::env::var_os("STICLER_SOCKET").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("sticler").join("sticlerd.sock"));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/run/sticler/sticlerd.sock"));
    }
    Err(PathError::NoSocketPath)
}

/// `--state-dir`, else `$XDG_STATE_HOME/sticler`, else `~/.local/state/sticler`; root without
/// either uses `/var/lib/sticler`.
pub fn state_dir(flag: Option<PathBuf>) -> Result<PathBuf, PathError> {
    if let Some(path) = flag {
        return Ok(path);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("sticler"));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/sticler"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join(".local/state/sticler"));
    }
    Err(PathError::NoStateDir)
}

/// Creates `dir` (and parents) and makes sure it is ours and mode 0700, whatever the umask.
pub fn private_dir(dir: &Path) -> Result<(), PathError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    let me = nix::unistd::geteuid().as_raw();
    let owner = std::os::unix::fs::MetadataExt::uid(&meta);
    if owner != me {
        return Err(PathError::NotOwned { path: dir.to_path_buf(), owner, me });
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// How long a lock whose recorded owner is dead may linger (held by that owner's children).
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(3);

/// True when `pid` is a live, non-zombie process.
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)).map(|s| s != "Z" && s != "X"))
        .unwrap_or(false)
}

/// An exclusive `flock` held for the daemon's lifetime. The kernel drops it when the process
/// dies, even by SIGKILL, so a crashed daemon never leaves a lock behind.
#[derive(Debug)]
pub struct PidLock {
    _file: Flock<File>,
}

impl PidLock {
    pub fn acquire(path: &Path) -> Result<PidLock, PathError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path))?;
        // A daemon killed while it was starting a worker leaves the lock to that child for the
        // moment until its exec closes the file: wait that out while the recorded pid is dead.
        let deadline = std::time::Instant::now() + LINGER;
        let mut file = file;
        let mut file = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => break locked,
                Err((mut unlocked, _)) => {
                    let mut pid = String::new();
                    let _ = unlocked.read_to_string(&mut pid);
                    let _ = unlocked.rewind();
                    let pid = pid.trim().to_string();
                    let holder_alive = pid.parse::<i32>().is_ok_and(alive);
                    if holder_alive || std::time::Instant::now() >= deadline {
                        let pid = if pid.is_empty() { "unknown".into() } else { pid };
                        return Err(PathError::Busy { path: path.to_path_buf(), pid });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    file = unlocked;
                }
            }
        };
        file.set_len(0).map_err(io_err(path))?;
        file.rewind().map_err(io_err(path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        Ok(PidLock { _file: file })
    }
}
