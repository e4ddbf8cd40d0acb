//! `ping`, `version`, `shutdown`, `upgrade`: commands about the daemon itself rather than a
//! project.

use std::time::Instant;

use sticler_proto::Request;

use super::{print_json, Context};
use crate::client::{DaemonVersion, Done, Pong, ShuttingDown};
use crate::CmdResult;

pub fn ping(ctx: &Context) -> CmdResult {
    let mut client = ctx.connect()?;
    let start = Instant::now();
    let Pong = client.call_expect(Request::Ping)?;
    let micros = start.elapsed().as_micros();
    if ctx.json {
        print_json(&serde_json::json!({"pong": true, "micros": micros as u64}));
    } else {
        println!("pong from sticlerd at {} ({micros} µs)", ctx.socket.display());
    }
    Ok(0)
}

pub fn version(ctx: &Context) -> CmdResult {
    let DaemonVersion { daemon_version, protocol_version, pid, started_ms } =
        ctx.connect()?.call_expect(Request::Version)?;
    let started = sticler_proto::time::rfc3339(started_ms / 1000);
    if ctx.json {
        print_json(&serde_json::json!({
            "client_version": sticler_proto::VERSION,
            "daemon_version": daemon_version,
            "protocol_version": protocol_version,
            "daemon_pid": pid,
            "daemon_started_ms": started_ms,
        }));
    } else {
        println!(
            "sticlerctl {}\nsticlerd {daemon_version} (pid {pid}, protocol {protocol_version}, started {started})",
            sticler_proto::VERSION
        );
    }
    Ok(0)
}

pub fn shutdown(ctx: &Context, keep_workers: bool) -> CmdResult {
    let request = if keep_workers { Request::ShutdownKeepWorkers } else { Request::Shutdown };
    let ShuttingDown = ctx.connect()?.call_expect(request)?;
    if !ctx.json {
        let workers = if keep_workers { "; workers keep running and the next sticlerd adopts them" } else { "" };
        println!("sticlerd is shutting down{workers}");
    }
    Ok(0)
}

/// `upgrade`: the daemon re-executes its binary from disk under the same pid.
pub fn upgrade(ctx: &Context) -> CmdResult {
    let Done(message) = ctx.connect()?.call_expect(Request::Upgrade)?;
    if ctx.json {
        print_json(&serde_json::json!({"upgrading": true, "message": message}));
    } else {
        println!("{message}");
    }
    Ok(0)
}
