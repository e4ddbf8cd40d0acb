//! `ProjectError`: what can go wrong reading a project's files, and the protocol error a
//! client sees for it.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: malformed JSON at line {line}, column {column}: {message}", path.display())]
    Malformed { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("no folder holding phases/ found at or above {}; pass -C <project dir>", .0.display())]
    NoProject(PathBuf),
    #[error("{}: phase {phase} not found (expected folder {})", project.display(), project.join("phases").join(format!("phase_{phase}")).display())]
    NoPhase { project: PathBuf, phase: u32 },
}

impl ProjectError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        ProjectError::Io { path: path.to_path_buf(), source }
    }

    /// A JSON syntax error at `path`. serde's own text ends with the position, which this
    /// error names already: it is cut off.
    pub(super) fn malformed(path: &Path, e: &serde_json::Error) -> Self {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        ProjectError::Malformed {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: text.strip_suffix(&suffix).unwrap_or(&text).to_string(),
        }
    }

    /// The error without its leading path, for a problem that carries the path already.
    pub fn detail(&self) -> String {
        match self {
            ProjectError::Io { source, .. } => source.to_string(),
            ProjectError::Malformed { line, column, message, .. } => {
                format!("malformed JSON at line {line}, column {column}: {message}")
            }
            ProjectError::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// The protocol error a client sees (the daemon's server edge sends it as is).
impl From<ProjectError> for sticler_proto::ErrorReply {
    fn from(e: ProjectError) -> Self {
        use sticler_proto::ErrorKind;
        let kind = match e {
            ProjectError::NoProject(_) | ProjectError::NoPhase { .. } => ErrorKind::NotFound,
            ProjectError::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound => ErrorKind::NotFound,
            ProjectError::Io { .. } => ErrorKind::Internal,
            ProjectError::Malformed { .. } | ProjectError::Invalid { .. } => ErrorKind::Invalid,
        };
        sticler_proto::ErrorReply { kind, message: e.to_string() }
    }
}
