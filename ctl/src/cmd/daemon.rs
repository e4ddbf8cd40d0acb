//! `ping`, `version`, `shutdown`: commands about the daemon itself rather than a project.

use std::time::Instant;

use sticler_proto::Request;

use super::{print_json, Context};
use crate::client::{DaemonVersion, Pong, ShuttingDown};
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
    let DaemonVersion { daemon_version, protocol_version, pid } = ctx.connect()?.call_expect(Request::Version)?;
    if ctx.json {
        print_json(&serde_json::json!({
            "client_version": sticler_proto::VERSION,
            "daemon_version": daemon_version,
            "protocol_version": protocol_version,
            "daemon_pid": pid,
        }));
    } else {
        println!(
            "sticlerctl {}\nsticlerd {daemon_version} (pid {pid}, protocol {protocol_version})",
            sticler_proto::VERSION
        );
    }
    Ok(0)
}

pub fn shutdown(ctx: &Context) -> CmdResult {
    let ShuttingDown = ctx.connect()?.call_expect(Request::Shutdown)?;
    if !ctx.json {
        println!("sticlerd is shutting down");
    }
    Ok(0)
}
