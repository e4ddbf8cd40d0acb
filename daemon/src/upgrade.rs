//! The upgrade in place (`sticlerctl upgrade`): sticlerd leaves its workers running, flushes its
//! state and re-executes its binary from disk under the same pid, so the workers stay its
//! children (their exit codes stay known) and systemd sees the same main process reload.
//!
//! The old image hands the new one, in environment variables read (and taken out, so workers
//! never inherit them) before any thread exists: the listening socket (its descriptor kept open
//! across the exec, so a client connecting meanwhile waits in the backlog instead of being
//! refused), the user's umask (the daemon runs with 077) and systemd's notification socket.
//! The new image finds the workers again from the store, as after a crash (`adopt`), and reaps
//! them as their parent.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::stat::Mode;
use sticler_proto::{ErrorKind, ErrorReply, Response};

use crate::daemon::{error, Daemon, Ending};

const LISTEN_FD_VAR: &str = "STICLER_UPGRADE_LISTEN_FD";
const UMASK_VAR: &str = "STICLER_UPGRADE_UMASK";

/// What an upgraded image inherits from the one before it.
#[derive(Debug)]
pub struct Inherited {
    /// The bound, listening socket.
    pub listener: OwnedFd,
    pub user_umask: Mode,
}

impl Inherited {
    /// What the image before this one handed over, if this image is an upgrade. Must run before
    /// any thread exists: it changes the environment.
    pub fn from_env() -> Option<Inherited> {
        let fd = std::env::var(LISTEN_FD_VAR).ok().and_then(|v| v.parse::<RawFd>().ok());
        let umask = std::env::var(UMASK_VAR).ok().and_then(|v| u32::from_str_radix(&v, 8).ok());
        std::env::remove_var(LISTEN_FD_VAR);
        std::env::remove_var(UMASK_VAR);
        let fd = fd.filter(|fd| *fd > 2 && is_socket(*fd))?;
        // SAFETY: the descriptor was left open by the image before this one for this image to
        // own, and nothing else in this process knows of it.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // Never inherited by a worker.
        let _ = fcntl(listener.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        Some(Inherited { listener, user_umask: Mode::from_bits_truncate(umask.unwrap_or(0o022)) })
    }
}

fn is_socket(fd: RawFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// The binary to re-execute: the file at the path this one was started from (a new binary
/// installed there replaces the running one, which then reads as "<path> (deleted)").
pub fn binary() -> io::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let text = exe.as_os_str().as_bytes();
    let path = text.strip_suffix(b" (deleted)").unwrap_or(text);
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(path)))
}

/// `upgrade`: refused when there is no binary to execute; else the daemon shuts down leaving
/// its workers, and `main` re-executes it.
pub fn request(daemon: &Daemon) -> Result<Response, ErrorReply> {
    let exe = binary().map_err(|e| error(ErrorKind::Internal, format!("cannot find sticlerd's binary: {e}")))?;
    if nix::unistd::access(&exe, nix::unistd::AccessFlags::X_OK).is_err() || !exe.is_file() {
        return Err(error(
            ErrorKind::Refused,
            format!("{} is not an executable file: install the new sticlerd there first", exe.display()),
        ));
    }
    daemon.end(Ending::Upgrade);
    Ok(Response::Done {
        message: format!(
            "sticlerd (pid {}) re-executes {} in place; its workers keep running",
            std::process::id(),
            exe.display()
        ),
    })
}

/// Re-executes the daemon's binary with the same arguments, handing over `listener`, the
/// user's umask and `extra` variables (systemd's). Returns only when the exec failed.
pub fn reexec(listener: &OwnedFd, user_umask: Mode, extra: &[(String, String)]) -> io::Error {
    let result = (|| -> io::Result<std::convert::Infallible> {
        let exe = binary()?;
        // Kept open across the exec, and only across it: nothing is spawned from here on.
        fcntl(listener.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        env.push((LISTEN_FD_VAR.into(), listener.as_raw_fd().to_string().into()));
        env.push((UMASK_VAR.into(), format!("{:o}", user_umask.bits()).into()));
        env.extend(extra.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
        let c = |bytes: &[u8]| CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        let args: Vec<CString> = std::env::args_os().map(|a| c(a.as_bytes())).collect::<io::Result<_>>()?;
        let env: Vec<CString> =
            env.iter().map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat())).collect::<io::Result<_>>()?;
        tracing::info!(binary = %exe.display(), "re-executing in place");
        Ok(nix::unistd::execve(&c(exe.as_os_str().as_bytes())?, &args, &env)?)
    })();
    match result {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
