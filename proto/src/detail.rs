//! What `StoryDetail` returns: one story as the dashboard's story panel shows it (its spec, its
//! criteria, its iterations with how each ended, its commit as `git show` prints it).

use serde::{Deserialize, Serialize};

use crate::message::ExitReason;
use crate::view::StoryView;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryDetail {
    /// The story as `status` shows it (state, cost, worktree, ...).
    pub story: StoryView,
    /// spec.md as written (cut at `DETAIL_TEXT_LIMIT` bytes).
    pub spec: String,
    pub criteria: Vec<Criterion>,
    /// `worker_notes` of status.json.
    pub worker_notes: String,
    /// The iterations sticler ran for this story, oldest first, from the daemon's events.
    pub iterations: Vec<IterationRecord>,
    /// The story's commit as `git show --patch` prints it (cut at `DETAIL_TEXT_LIMIT` bytes),
    /// when status.json names one the repository holds.
    pub commit_show: Option<String>,
}

/// The most of spec.md or of a commit's patch one `StoryDetail` carries: a reply stays far
/// below the frame limit, and a browser tab stays responsive.
pub const DETAIL_TEXT_LIMIT: usize = 512 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Criterion {
    pub text: String,
    pub done: bool,
}

/// One iteration: when it started and, once it ended, when and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IterationRecord {
    pub iteration: u32,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub exit: Option<ExitReason>,
    /// The daemon's verdict (`completed`, `progress`, `no change`, ...).
    pub verdict: Option<String>,
}
