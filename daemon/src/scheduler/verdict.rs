//! The scheduler's vocabulary: what goes in (how a story enters, the limits, what one iteration
//! meant) and what comes out (the actions the run carries out).

use sticler_proto::RunOutcome;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_parallel: usize,
    pub max_iterations: u32,
    pub retry_limit: u32,
}

/// What one iteration meant, judged by the run from the exit and status.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// status.json says completed.
    Completed,
    /// The worker marked the story failed itself.
    SelfFailed,
    /// status.json changed and the story is not finished.
    Progress,
    /// Exit 0 and status.json byte-identical.
    NoChange,
    /// Non-zero exit without a status.json change, a timeout, or status.json left invalid.
    Infra(String),
    /// Ended by stop/kill; does not count.
    Stopped,
    /// The claim of completion cannot be accepted (no commit, bogus commit_hash): the story fails.
    Rejected(String),
    /// The agent hit its usage or rate limit: the iteration does not count and the story waits.
    Limited,
    /// sticler fails the story for a reason of its own: its cost budget is spent, or the agent
    /// keeps ending with the same error.
    Fail(String),
    /// The story's merge into the integration branch conflicted: it goes back to its agent with
    /// the conflicting files (the text names them).
    Conflict(String),
    /// The story is done but its merge waits (the text says why); it holds no slot meanwhile.
    MergeWaits(String),
}

impl Verdict {
    pub fn label(&self) -> String {
        match self {
            Verdict::Completed => "completed".into(),
            Verdict::SelfFailed => "failed by worker".into(),
            Verdict::Progress => "progress".into(),
            Verdict::NoChange => "no change".into(),
            Verdict::Infra(why) => format!("infrastructure failure: {why}"),
            Verdict::Stopped => "stopped".into(),
            Verdict::Rejected(why) => format!("rejected: {why}"),
            Verdict::Limited => "usage limit hit (not counted)".into(),
            Verdict::Fail(why) => format!("failed: {why}"),
            Verdict::Conflict(files) => format!("merge conflict in {files}: back to the agent"),
            Verdict::MergeWaits(why) => format!("merging: {why}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take a daemon-wide slot and spawn the story's first iteration of this dispatch.
    Start(String),
    /// Spawn the story's next iteration in the slot it holds.
    Next(String),
    /// The story stopped running: give its daemon-wide slot back.
    Release(String),
    Completed(String),
    /// `record`: sticler decided this, so the reason goes into status.json.
    Failed {
        story: String,
        reason: String,
        record: bool,
    },
    Blocked {
        story: String,
        by: String,
    },
    Ended(RunOutcome),
}

/// How a story enters a run.
#[derive(Debug, Clone)]
pub struct StoryInit {
    pub id: String,
    /// Dependencies inside this phase.
    pub deps: Vec<String>,
    /// Dependencies on earlier phases' stories not completed yet: the story waits for them.
    pub unmet_external: Vec<String>,
    /// Dependencies on other phases' stories that failed (or never can complete): they block it.
    pub failed_external: Vec<String>,
    pub completed: bool,
    pub failed: bool,
}

/// Why no new iteration may start for now, although stories are ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The project waits for an agent's usage limit: the run waits too, however long.
    Paused,
    /// The phase's cost budget is spent: the run ends once its running iterations end.
    Spent,
}
