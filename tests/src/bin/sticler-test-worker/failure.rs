//! Why the worker gives up: the file concerned (if any), what went wrong and the exit code.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::ERROR_EXIT;

#[derive(Debug)]
pub struct Failure {
    pub path: Option<PathBuf>,
    pub reason: String,
    pub exit: u8,
}

impl Failure {
    pub fn at(path: &Path, reason: impl Into<String>) -> Self {
        Failure { path: Some(path.to_path_buf()), reason: reason.into(), exit: ERROR_EXIT }
    }

    pub fn io(path: &Path, action: &str, err: io::Error) -> Self {
        Failure::at(path, format!("cannot {action}: {err}"))
    }

    pub fn plain(reason: impl Into<String>) -> Self {
        Failure { path: None, reason: reason.into(), exit: ERROR_EXIT }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;
