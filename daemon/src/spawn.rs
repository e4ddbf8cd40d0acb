//! Starting a worker's process: in a session of its own, with the user's umask, and without
//! copying the daemon.
//!
//! fork() copies the daemon's page tables and the child's exec throws them away again: most of
//! a millisecond per iteration, between one story's end and the next one's start. posix_spawn
//! (a vfork underneath) copies nothing. It cannot set a umask, so every spawn happens on one
//! thread that has its own filesystem attributes (`unshare(CLONE_FS)`) and the user's umask,
//! while the rest of the daemon keeps 077; a new process starts with the umask of the thread
//! that made it. Where unshare is refused (a seccomp filter, as in Docker's default profile),
//! the thread falls back to fork with setsid and umask between fork and exec.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};

use nix::sys::stat::Mode;
use sticler_proto::ExitReason;
use tokio::sync::oneshot;

use crate::reaper::Reaper;

/// One process to start.
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Added to (or replacing in) the daemon's own environment.
    pub env: Vec<(String, String)>,
    /// Taken out of the daemon's own environment (`env` may still set them).
    pub env_remove: Vec<String>,
    /// `None` gives /dev/null.
    pub stdin: Option<File>,
    /// Both stdout and stderr.
    pub output: File,
}

type Reply = io::Result<(i32, oneshot::Receiver<ExitReason>)>;

/// The spawning thread's handle.
pub struct Spawner {
    requests: mpsc::Sender<(Launch, mpsc::SyncSender<Reply>)>,
    reaper: Arc<Reaper>,
}

/// How the spawning thread starts processes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    /// posix_spawn; the thread's own umask is the user's.
    PosixSpawn,
    /// fork, then this umask and setsid in the child.
    Fork(Mode),
}

/// Gives the calling thread filesystem attributes of its own with `umask`, so that it can use
/// posix_spawn; else says to fork.
fn own_umask(umask: Mode) -> Method {
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS) {
        Ok(()) => {
            nix::sys::stat::umask(umask);
            Method::PosixSpawn
        }
        Err(e) => {
            tracing::warn!("cannot unshare(CLONE_FS) ({e}): workers are started by fork, which is slower");
            Method::Fork(umask)
        }
    }
}

impl Spawner {
    /// Starts the spawning thread; processes it starts get `umask`.
    pub fn start(reaper: Arc<Reaper>, umask: Mode) -> io::Result<Spawner> {
        let (requests, rx) = mpsc::channel::<(Launch, mpsc::SyncSender<Reply>)>();
        let thread_reaper = Arc::clone(&reaper);
        std::thread::Builder::new().name("spawner".into()).spawn(move || {
            let method = own_umask(umask);
            for (launch, reply) in rx {
                let _ = reply.send(thread_reaper.spawn_with(|| start(&launch, method)));
            }
        })?;
        Ok(Spawner { requests, reaper })
    }

    /// The reaper that reaps what this spawner starts.
    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Starts `launch` and returns its pid (also its session and process group id) and its
    /// exit. Returns once the program runs, or with the reason it could not.
    pub fn spawn(&self, launch: Launch) -> Reply {
        let gone = || io::Error::other("the spawning thread is gone");
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.requests.send((launch, reply_tx)).map_err(|_| gone())?;
        reply_rx.recv().map_err(|_| gone())?
    }
}

fn start(launch: &Launch, method: Method) -> io::Result<i32> {
    match method {
        Method::PosixSpawn => posix_spawn(launch),
        Method::Fork(umask) => fork_exec(launch, umask),
    }
}

/// The fallback: std's fork and exec, with the umask and setsid in between.
fn fork_exec(launch: &Launch, umask: Mode) -> io::Result<i32> {
    let mut command = Command::new(&launch.program);
    for name in &launch.env_remove {
        command.env_remove(name);
    }
    command
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(match &launch.stdin {
            Some(file) => Stdio::from(file.try_clone()?),
            None => Stdio::null(),
        })
        .stdout(Stdio::from(launch.output.try_clone()?))
        .stderr(Stdio::from(launch.output.try_clone()?));
    // SAFETY: setsid and umask are async-signal-safe and allocate nothing; they are the only
    // calls made between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::stat::umask(umask);
            nix::unistd::setsid().map(drop).map_err(io::Error::from)
        });
    }
    let child = command.spawn()?;
    // Dropping `Child` neither waits nor kills: the reaper owns the wait.
    i32::try_from(child.id()).map_err(io::Error::other)
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a command or variable"))
}

/// The daemon's environment without `removed` and with `overrides` applied.
fn environment(overrides: &[(String, String)], removed: &[String]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !overrides.iter().any(|(o, _)| OsStr::new(o) == k))
        .filter(|(k, _)| !removed.iter().any(|r| OsStr::new(r) == k))
        .collect();
    env.extend(overrides.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    env
}

/// Where `program` is, the way execvp finds it: as given when it holds a '/', else the first
/// executable file of that name in the worker's PATH (relative entries from `cwd`).
fn resolve(program: &str, path_var: Option<&OsStr>, cwd: &Path) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty worker command"));
    }
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let search = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(search) {
        let candidate = cwd.join(dir).join(program);
        let executable = nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok();
        if executable && candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// posix_spawn with: stdin, stdout and stderr set; the working folder changed; a new session;
/// no signal blocked and every signal's handling back to its default (the daemon ignores
/// SIGPIPE, and an ignored signal would stay ignored across exec).
fn posix_spawn(launch: &Launch) -> io::Result<i32> {
    let env = environment(&launch.env, &launch.env_remove);
    let path_var = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_os_str());
    let program = cstring(resolve(&launch.program, path_var, &launch.cwd)?.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::iter::once(launch.program.as_bytes())
        .chain(launch.args.iter().map(|a| a.as_bytes()))
        .map(cstring)
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = env
        .into_iter()
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            cstring(&entry)
        })
        .collect::<io::Result<_>>()?;
    let cwd = cstring(launch.cwd.as_os_str().as_bytes())?;
    let null = c"/dev/null";
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> = envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) };

    // SAFETY: every pointer handed to libc points into a CString, a Vec or a local that lives
    // until after posix_spawn returns; the attribute and action objects are initialised before
    // use and destroyed on every path.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let mut pid: libc::pid_t = 0;
        let result = (|| {
            match &launch.stdin {
                Some(file) => check(libc::posix_spawn_file_actions_adddup2(&mut actions, file.as_raw_fd(), 0))?,
                None => {
                    check(libc::posix_spawn_file_actions_addopen(&mut actions, 0, null.as_ptr(), libc::O_RDONLY, 0))?
                }
            }
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, launch.output.as_raw_fd(), 1))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, launch.output.as_raw_fd(), 2))?;
            check(libc::posix_spawn_file_actions_addchdir_np(&mut actions, cwd.as_ptr()))?;
            let mut no_signals: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut no_signals);
            let mut all_signals: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all_signals);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &no_signals))?;
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &all_signals))?;
            let flags =
                i32::from(libc::POSIX_SPAWN_SETSID) | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(&mut attr, flags as libc::c_short))?;
            check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            ))
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result.map(|()| pid)
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::wait::{waitpid, WaitStatus};

    use super::*;

    /// Both ways start the program found in PATH, in the given folder, with stdin, output,
    /// environment and umask as asked, as the leader of a new session.
    #[test]
    fn both_ways_start_a_session_leader_as_asked() {
        let process_umask = || {
            let current = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
            nix::sys::stat::umask(current);
            current
        };
        let before = process_umask();
        let umask = Mode::from_bits_truncate(0o027);
        let on_own_thread = std::thread::spawn(move || own_umask(umask)).join().expect("thread");
        for method in [Method::Fork(umask), Method::PosixSpawn] {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("input"), "from stdin\n").expect("write");
            let output = File::create(dir.path().join("out")).expect("create");
            let script = "echo \"$SEEN\"; umask; pwd; cat; echo error >&2; cut -d' ' -f1,5,6 /proc/$$/stat";
            let launch = Launch {
                program: "sh".into(),
                args: vec!["-c".into(), script.into()],
                cwd: dir.path().to_path_buf(),
                env: vec![("SEEN".into(), "env".into())],
                env_remove: vec![],
                stdin: Some(File::open(dir.path().join("input")).expect("open")),
                output,
            };
            // posix_spawn takes the umask of the calling thread: call it from one set up as the
            // spawning thread is.
            let pid = if method == Method::PosixSpawn {
                assert_eq!(on_own_thread, Method::PosixSpawn, "unshare(CLONE_FS) works here");
                std::thread::scope(|s| {
                    s.spawn(|| {
                        own_umask(umask);
                        start(&launch, method)
                    })
                    .join()
                    .expect("thread")
                })
            } else {
                start(&launch, method)
            }
            .expect("started");
            let status = waitpid(nix::unistd::Pid::from_raw(pid), None).expect("wait");
            assert!(matches!(status, WaitStatus::Exited(_, 0)), "{method:?}: {status:?}");
            let out = std::fs::read_to_string(dir.path().join("out")).expect("read");
            let cwd = std::fs::canonicalize(dir.path()).expect("canonicalize");
            let expected = format!("env\n0027\n{}\nfrom stdin\nerror\n{pid} {pid} {pid}\n", cwd.display());
            assert_eq!(out, expected, "{method:?}");
        }
        assert_eq!(process_umask(), before, "the spawning thread's umask is its own");
    }

    #[test]
    fn a_missing_program_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let launch = Launch {
            program: "no-such-program-anywhere".into(),
            args: vec![],
            cwd: dir.path().to_path_buf(),
            env: vec![],
            env_remove: vec![],
            stdin: None,
            output: File::create(dir.path().join("out")).expect("create"),
        };
        let error = std::thread::spawn(move || {
            let method = own_umask(Mode::from_bits_truncate(0o022));
            start(&launch, method).expect_err("nothing to start")
        })
        .join()
        .expect("thread");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_program_is_found_like_execvp_finds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        let plain = bin.join("plain");
        std::fs::write(&plain, "data").expect("write");
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let path = OsString::from(format!("/nonexistent:{}", bin.display()));
        assert_eq!(resolve("tool", Some(&path), dir.path()).expect("found"), tool);
        // Relative PATH entries count from the worker's folder.
        assert_eq!(resolve("tool", Some(OsStr::new("bin")), dir.path()).expect("found"), dir.path().join("bin/tool"));
        assert_eq!(
            resolve("plain", Some(&path), dir.path()).expect_err("not executable").kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(resolve("missing", Some(&path), dir.path()).expect_err("absent").kind(), io::ErrorKind::NotFound);
        assert_eq!(resolve("./x/y", None, dir.path()).expect("as given"), PathBuf::from("./x/y"));
    }

    #[test]
    fn overrides_replace_the_daemons_variables_and_removed_ones_are_gone() {
        let overrides = [("PATH".into(), "/only/here".into()), ("STICLER_X".into(), "1".into())];
        let env = environment(&overrides, &[]);
        let paths: Vec<_> = env.iter().filter(|(k, _)| k == "PATH").collect();
        assert_eq!(paths, vec![&(OsString::from("PATH"), OsString::from("/only/here"))]);
        assert!(env.contains(&(OsString::from("STICLER_X"), OsString::from("1"))));
        let env = environment(&overrides, &["HOME".into(), "PATH".into()]);
        assert!(!env.iter().any(|(k, _)| k == "HOME"), "removed");
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1, "an override is kept");
    }
}
