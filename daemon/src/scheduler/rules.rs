//! The rules that fail a story, in one place: how many iterations, failures, identical
//! status.json files or identical agent errors in a row a story may have, and its cost budget.
//! Each returns the reason the story fails with (written into status.json), or `None`.

/// Stories that make no visible progress for this many iterations in a row fail.
pub const NO_PROGRESS_LIMIT: u32 = 3;

/// An agent that ends this many iterations in a row with the same error is stuck.
pub const SAME_ERROR_LIMIT: u32 = 3;

/// `max_iterations_per_task` iterations judged without the story finishing.
pub fn too_many_iterations(iterations: u32, max: u32) -> Option<String> {
    (iterations >= max).then(|| format!("reached max_iterations_per_task ({max}) without completing"))
}

/// `retry_limit` consecutive infrastructure failures (non-zero exit without a status.json
/// change, a timeout, status.json left invalid).
pub fn too_many_infra_failures(streak: u32, retry_limit: u32, last: &str) -> Option<String> {
    (streak >= retry_limit)
        .then(|| format!("{streak} consecutive infrastructure failures (retry_limit {retry_limit}); last: {last}"))
}

/// `retry_limit` merges in a row that conflicted.
pub fn too_many_conflicts(streak: u32, retry_limit: u32, files: &str) -> Option<String> {
    (streak >= retry_limit).then(|| {
        format!("{streak} merges in a row conflicted with the integration branch (retry_limit {retry_limit}); last in {files}")
    })
}

/// `NO_PROGRESS_LIMIT` consecutive iterations that left status.json byte-identical.
pub fn no_progress(streak: u32) -> Option<String> {
    (streak >= NO_PROGRESS_LIMIT).then(|| {
        format!("no progress: status.json was left byte-identical by {NO_PROGRESS_LIMIT} consecutive iterations")
    })
}

/// `SAME_ERROR_LIMIT` iterations in a row that ended with the same agent error.
pub fn same_error(streak: u32, error: &str) -> Option<String> {
    (streak >= SAME_ERROR_LIMIT)
        .then(|| format!("stuck: the agent ended {SAME_ERROR_LIMIT} iterations in a row with the same error: {error}"))
}

/// The story's budget is spent, or the next iteration would exceed it if it cost what the last
/// one did (the best guess there is: iterations of one story tend to cost alike).
pub fn story_over_budget(spent: f64, last: Option<f64>, budget: f64) -> Option<String> {
    if spent >= budget {
        return Some(format!("cost ${spent:.2} reached max_cost_usd_per_story ${budget:.2}"));
    }
    let last = last.unwrap_or(0.0);
    (spent + last > budget).then(|| {
        format!(
            "cost ${spent:.2}; another iteration like the last (${last:.2}) would exceed max_cost_usd_per_story ${budget:.2}"
        )
    })
}

/// Whether the phase's cost budget is spent; the reason the run stops scheduling.
pub fn phase_budget_spent(cost: f64, budget: f64) -> Option<String> {
    (cost >= budget).then(|| {
        format!("phase budget spent: ${cost:.2} of max_cost_usd_per_phase ${budget:.2}; no new iterations start")
    })
}
