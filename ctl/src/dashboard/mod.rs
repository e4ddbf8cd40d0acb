//! `sticlerctl dashboard`: a live web page of the project's phases, served on 127.0.0.1 by this
//! process, which is a client of sticlerd like any other (the socket's same-uid rule guards
//! the daemon; the token in `auth` guards the TCP port from other local users).
//!
//! `server` accepts and checks requests, `routes` dispatches them, `api` answers with JSON,
//! `stream` with the daemon's events (SSE) and followed logs, `layout` places the dependency
//! graph, `daemon_link` talks to sticlerd asynchronously. The page (`assets/`) is compiled in.

mod api;
mod auth;
mod daemon_link;
mod layout;
mod routes;
mod server;
mod stream;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use sticler_proto::Request;

use crate::client::Pong;
use crate::cmd::Context;
use crate::{CliError, CmdResult};

pub fn run(ctx: &Context, port: u16, no_open: bool) -> CmdResult {
    // A server outlives its peers: a browser or a daemon gone mid-write must be an error to
    // handle, not the default SIGPIPE that `main` restores for pipelines.
    // SAFETY: no thread exists yet (the runtime is built below).
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn);
    }
    let project = ctx.project()?;
    // A dashboard of a daemon that does not answer would show nothing: say so now.
    ctx.connect()?.call_expect::<Pong>(Request::Ping)?;
    let token = auth::Token::random().map_err(|e| CliError::Usage(format!("cannot make a random token: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the dashboard's runtime: {e}")))?;
    runtime.block_on(async {
        // Never another interface: the token is the only guard of this port.
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| CliError::Usage(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
        let port = listener.local_addr().map_err(|e| CliError::Usage(e.to_string()))?.port();
        let url = format!("http://127.0.0.1:{port}/?token={}", token.as_str());
        let announce = if ctx.json {
            json!({"url": url, "port": port, "token": token.as_str(), "project": project}).to_string()
        } else {
            format!("sticler dashboard of {project}:\n  {url}\nOn another machine: ssh -L {port}:127.0.0.1:{port} <this host>, then open the same address there.\nCtrl-C stops it.")
        };
        // Flushed at once: scripts read the address from a pipe. A reader already gone (`| head -1`)
        // is no reason to stop serving.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{announce}").and_then(|()| out.flush());
        drop(out);
        let opened = if no_open { None } else { open_browser(&url, port) };
        let app = Arc::new(server::App { socket: ctx.socket.clone(), project, gate: auth::Gate { token, port } });
        let served = server::serve(listener, app).await;
        if let Some(file) = opened {
            let _ = std::fs::remove_file(file);
        }
        served.map_err(|e| CliError::Usage(format!("the dashboard stopped: {e}")))
    })?;
    Ok(0)
}

/// Opens the page in the desktop's browser when there is a desktop; quietly does nothing on a
/// server (the printed address, through `ssh -L`, is the way there). Returns the file it made.
///
/// The browser is handed a file of this user's that redirects to the address, not the address
/// itself: a command line is readable by every user of the machine, the token must not be (as
/// Jupyter does).
fn open_browser(url: &str, port: u16) -> Option<PathBuf> {
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if !desktop {
        return None;
    }
    let dir =
        std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()).map_or_else(std::env::temp_dir, PathBuf::from);
    let path = dir.join(format!("sticler-dashboard-{}-{port}.html", std::process::id()));
    let page = format!(
        "<!doctype html><meta http-equiv=\"refresh\" content=\"0;url={url}\"><a href=\"{url}\">sticler dashboard</a>\n"
    );
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(page.as_bytes()));
    if let Err(e) = written {
        eprintln!("sticlerctl dashboard: cannot open a browser ({}: {e}); open the address above", path.display());
        return None;
    }
    let spawned = std::process::Command::new("xdg-open")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    // xdg-open hands the file to the browser and exits: reaped off the serving thread.
    if let Ok(mut child) = spawned {
        std::thread::spawn(move || child.wait());
    }
    Some(path)
}
