//! `completions` and `man`: generated from the same clap definitions as the parser, so they
//! never drift from the CLI. Neither needs the daemon.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::{CliError, CmdResult};

pub fn completions(shell: clap_complete::Shell) -> CmdResult {
    clap_complete::generate(shell, &mut Cli::command(), "sticlerctl", &mut std::io::stdout());
    Ok(0)
}

pub fn man() -> CmdResult {
    match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
        Ok(()) => Ok(0),
        Err(e) => Err(CliError::Usage(format!("cannot write the man page: {e}"))),
    }
}
