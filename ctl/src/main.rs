//! `sticlerctl`: the client of sticlerd. Every subcommand maps to one protocol request; each
//! has its own file under `cmd/`.

mod cli;
mod client;
mod cmd;
mod dashboard;
mod progress;
mod reconnect;
mod render;
mod table;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::client::ClientError;

/// Exit codes (also in the README): 0 ok, 1 request failed, 2 usage, 3 daemon unreachable;
/// `wait`: 0 completed, 4 failed, 5 stopped.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

/// Outcome of a command: an exit code, or an error to print.
type CmdResult = Result<u8, CliError>;

enum CliError {
    Client(ClientError),
    Usage(String),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

fn main() -> ExitCode {
    // `sticlerctl watch | head` must end quietly when the reader goes away, like other tools.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    let cli = Cli::parse();
    let json = cli.json;
    render::init_colours(std::io::stdout().is_terminal());
    match cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(CliError::Usage(why)) => {
            eprintln!("sticlerctl: {why}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(CliError::Client(e)) => {
            report(&e, json);
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
        ClientError::Refused(_) | ClientError::Protocol(_) | ClientError::Closed => EXIT_FAILED,
    }
}

/// A failed request on stderr, or as a JSON object on stdout for scripts that asked for JSON.
fn report(e: &ClientError, json: bool) {
    if !json {
        eprintln!("sticlerctl: {e}");
        return;
    }
    // The daemon's kinds as the protocol spells them; two more of the client's own.
    let (kind, message) = match e {
        ClientError::Refused(r) => (serde_json::json!(r.kind), r.message.clone()),
        ClientError::Unreachable { .. } => (serde_json::json!("unreachable"), e.to_string()),
        ClientError::Protocol(_) => (serde_json::json!("protocol"), e.to_string()),
        ClientError::Closed => (serde_json::json!("closed"), e.to_string()),
    };
    println!("{}", serde_json::json!({"error": {"kind": kind, "message": message}}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_of_the_wrong_kind_exits_1() {
        let Err(e) = client::expect_reply::<client::Done>(sticler_proto::Response::Pong) else {
            panic!("Pong accepted as Done")
        };
        assert_eq!(exit_code(&e), EXIT_FAILED);
    }
}
