//! What `status` and `validate` return. These are also the stable `--json` output of
//! `sticlerctl`: add fields at the end, never rename or remove one without bumping
//! `PROTOCOL_VERSION` and saying so in the README.

use serde::{Deserialize, Serialize};

/// The daemon-side state of a story (the worker's own four statuses live in status.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoryState {
    Pending,
    Ready,
    Running,
    Verifying,
    Completed,
    Failed,
    Blocked,
    Invalid,
    /// Completed in its worktree; its merge into the integration branch waits (see `waiting`).
    Merging,
}

impl StoryState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoryState::Pending => "pending",
            StoryState::Ready => "ready",
            StoryState::Running => "running",
            StoryState::Verifying => "verifying",
            StoryState::Completed => "completed",
            StoryState::Failed => "failed",
            StoryState::Blocked => "blocked",
            StoryState::Invalid => "invalid",
            StoryState::Merging => "merging",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, StoryState::Completed | StoryState::Failed | StoryState::Blocked)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub project: String,
    pub phases: Vec<PhaseView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseView {
    pub project: String,
    pub phase: u32,
    pub title: String,
    /// `status` of phase_config.json (discussing … completed, failed, stopped).
    pub status: String,
    /// True while a run of this phase is active in the daemon.
    pub running: bool,
    pub counts: StoryCounts,
    pub stories: Vec<StoryView>,
    /// Set when the last run ended: stories, iterations, wall time.
    pub summary: Option<String>,
    /// Problems found while reading the phase (malformed files and the like).
    pub problems: Vec<Problem>,
    /// What the agents of this phase cost, summed over the stories (None: no backend reported it).
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub tokens: Option<TokenUsage>,
    /// `max_cost_usd_per_phase` of orchestrator.config.json, when set.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Unix seconds until which the project waits for an agent's usage limit to reset.
    #[serde(default)]
    pub paused_until: Option<i64>,
    /// Why the run starts no iteration now, for people: the usage-limit wait or the spent budget.
    #[serde(default)]
    pub waiting: Option<String>,
}

/// Tokens an agent reported, summed over iterations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub cache_creation: u64,
    pub cache_read: u64,
}

impl TokenUsage {
    pub fn add(&mut self, other: &TokenUsage) {
        self.input += other.input;
        self.output += other.output;
        self.cache_creation += other.cache_creation;
        self.cache_read += other.cache_read;
    }

    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_creation + self.cache_read
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryCounts {
    pub total: u32,
    pub pending: u32,
    pub running: u32,
    pub completed: u32,
    pub failed: u32,
    pub blocked: u32,
    pub invalid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryView {
    pub id: String,
    pub title: String,
    pub state: StoryState,
    /// `status` as written in status.json by the worker ("" when unreadable).
    pub disk_status: String,
    /// The worker's own `iteration` counter from status.json.
    pub iteration: u32,
    /// Iterations sticler ran for this story in the current (or last) run.
    pub runs: u32,
    pub criteria_done: u32,
    pub criteria_total: u32,
    pub dependencies: Vec<String>,
    pub focus: String,
    pub failed_reasons: Vec<String>,
    /// For a blocked story: the failed stories it waits on.
    pub blocked_by: Vec<String>,
    /// Seconds the current iteration has been running.
    pub running_secs: Option<u64>,
    pub commit_hash: String,
    /// What this story's agent iterations cost so far (None: no backend reported it).
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub tokens: Option<TokenUsage>,
    /// The number of the iteration running now (as in its log's name and `STICLER_ITERATION`);
    /// `iteration` above is the worker's own counter, which it updates as it goes.
    #[serde(default)]
    pub running_iteration: Option<u32>,
    /// How the story's last iteration in this run ended: `exited`, `after_result` (sticler
    /// ended it after the agent's final result), `stalled`, `timed_out`, ...
    #[serde(default)]
    pub last_exit: Option<crate::ExitReason>,
    /// Why the story waits (a merge held back by uncommitted edits in the project folder).
    #[serde(default)]
    pub waiting: Option<String>,
    /// The story's worktree, while it has one (`"workspace": "worktree"`).
    #[serde(default)]
    pub worktree: Option<String>,
    /// The Slurm job of the running iteration (`"runner": {"kind": "slurm"}`), as last seen.
    #[serde(default)]
    pub job: Option<JobView>,
}

/// A Slurm job as `squeue` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: u64,
    /// PENDING, RUNNING, COMPLETING, ...
    pub state: String,
    /// Why a pending job waits (Resources, Priority, ...).
    pub reason: Option<String>,
    /// The node a running job runs on.
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The file or story the problem is about.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub project: String,
    pub phase: u32,
    pub stories: u32,
    pub problems: Vec<Problem>,
}
