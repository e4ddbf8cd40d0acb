//! A project: the folder holding `phases/`, and where its phases and stories live. The on-disk
//! formats owned by the user and the worker each have a file of their own: `status.json`
//! (`story`), `orchestrator.config.json` (`config`, its `runner` in `runner_config`), the JSON document every project file is
//! read and written as (`json_doc`, cached by `doc_cache`) and the errors of all of them
//! (`error`). `phase_config.json` and `spec.md` are read by `crate::phase`.

use std::fs;
use std::path::{Path, PathBuf};

pub use sticler_proto::StoryId;

mod config;
mod config_keys;
mod config_types;
mod doc_cache;
mod error;
mod json_doc;
mod runner_config;
mod story;

pub use config::{
    CommandSpec, OrchestratorConfig, StdinMode, UsageLimitConfig, WorkerConfig, WorkspaceMode, CONFIG_FILE,
};
pub use doc_cache::DocCache;
pub use error::ProjectError;
pub use json_doc::{parse_object, read_limited, write_atomic, write_replacing, JsonDoc, MAX_JSON_FILE};
pub use runner_config::{RunnerConfig, SlurmConfig};
pub use story::{DiskStatus, StatusFields, StatusSummary};

/// A project's name in the state dir: `<folder name>-<hash of the path>`, readable and unique.
pub fn project_key(project: &Path) -> String {
    let name = project.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let hash = project
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{name}-{hash:016x}")
}

/// A project: the folder holding `phases/`, by its canonical path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Project {
    pub root: PathBuf,
}

impl Project {
    /// Opens the project at `dir` (which must hold `phases/`).
    pub fn open(dir: &Path) -> Result<Project, ProjectError> {
        if std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).contains(&0) {
            let message = "contains a NUL byte, so it cannot be a folder".into();
            return Err(ProjectError::Invalid { path: dir.to_path_buf(), message });
        }
        let root = fs::canonicalize(dir).map_err(|e| ProjectError::io(dir, e))?;
        if !root.join("phases").is_dir() {
            return Err(ProjectError::NoProject(root));
        }
        Ok(Project { root })
    }

    pub fn phase_dir(&self, phase: u32) -> PathBuf {
        self.root.join("phases").join(format!("phase_{phase}"))
    }

    /// Phase numbers found under `phases/`, ascending.
    pub fn phases(&self) -> Result<Vec<u32>, ProjectError> {
        let dir = self.root.join("phases");
        let entries = fs::read_dir(&dir).map_err(|e| ProjectError::io(&dir, e))?;
        let mut numbers: Vec<u32> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("phase_")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The folder of a story, from its id (`US-P3-007` lives in phase 3).
    pub fn story_dir(&self, id: &StoryId) -> PathBuf {
        self.phase_dir(id.phase).join("stories").join(id.as_str())
    }
}
