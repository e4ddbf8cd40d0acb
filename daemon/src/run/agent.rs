//! The agent-aware part of a run: what an iteration's output says (usage limit, cost, the
//! error the agent ended with) turned into verdicts, the project's usage-limit wait, and the
//! cost budgets. Kept apart from the loop itself so that `run` only calls in at a few places.

use std::time::Duration;

use sticler_proto::EventKind;

use super::iteration::Running;
use super::PhaseRun;
use crate::agent_output;
use crate::scheduler::{rules, Hold, Verdict};

/// What a run tracks of its agents between iterations.
#[derive(Debug, Default)]
pub struct AgentWatch {
    /// The end of the project's usage-limit wait, as this run last saw it.
    pub paused_until: Option<i64>,
    /// Why this run starts no new iteration for good (phase budget), for status and summary.
    pub spent: Option<String>,
    /// The worker's limit patterns, compiled when the run starts.
    patterns: Vec<regex::Regex>,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Sleeps until unix second `until` (at once if past); never when there is nothing to wait for.
pub async fn sleep_until_unix(until: Option<i64>) {
    match until {
        Some(until) => {
            let now_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let wait_ms = until.saturating_mul(1000).saturating_sub(now_ms).max(0);
            tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
        }
        None => std::future::pending().await,
    }
}

/// "HH:MM UTC" of a unix time.
pub fn clock(unix: i64) -> String {
    let text = sticler_proto::time::rfc3339(unix.max(0) as u64);
    format!("{} UTC", text.get(11..16).unwrap_or("??:??"))
}

impl PhaseRun {
    /// At the start of the run: a wait of the project still going on (also one kept by the
    /// last daemon) holds the run; a spent phase budget ends it.
    pub(super) fn agent_start(&mut self) {
        let worker = &self.config.worker;
        tracing::info!(preset = %worker.preset, "worker: {}", worker.command.argv().join(" "));
        // The config checked every pattern when it was read; this cannot fail in practice.
        self.agent.patterns = agent_output::compile(&worker.limit_patterns).unwrap_or_else(|e| {
            tracing::error!("usage-limit patterns not used: {e}");
            Vec::new()
        });
        self.pause_changed();
        self.check_phase_budget();
    }

    /// Turns the judged verdict of a worker's iteration into the agent-aware one, recording the
    /// iteration's cost on the way.
    pub(super) fn agent_verdict(&mut self, story: &str, run: &Running, verdict: Verdict) -> Verdict {
        let log = crate::logs::log_path(&self.logs_root, story, run.iteration);
        let report = agent_output::read_log(&log, self.config.worker.output, &self.agent.patterns);
        let usage =
            self.daemon.ledger.record(self.daemon.bus.store(), &self.project_name, story, run.iteration, report.usage);
        let finished = matches!(verdict, Verdict::Completed | Verdict::SelfFailed | Verdict::Stopped);
        let verdict = if finished {
            verdict
        } else if let Some(hit) = &report.limit {
            self.limit_hit(story, hit);
            Verdict::Limited
        } else if let Some(why) = self.story_over_budget(&usage, report.usage.cost_usd) {
            Verdict::Fail(why)
        } else if let Some(why) = self.state.update(|s| s.sched.agent_error(story, report.error.as_deref())) {
            Verdict::Fail(why)
        } else {
            verdict
        };
        if report.limit.is_none() {
            self.daemon.pauses.calm(self.daemon.bus.store(), &self.project_name);
        }
        if report.usage.cost_usd.is_some() {
            self.check_phase_budget();
        }
        verdict
    }

    fn limit_hit(&mut self, story: &str, hit: &agent_output::LimitHit) {
        let now = now_unix();
        let reason = match hit.reset_unix {
            Some(reset) => format!("{}; resets at {}", hit.evidence, clock(reset)),
            None => format!("{}; no reset time given, backing off", hit.evidence),
        };
        let until = self.daemon.pauses.hit(
            self.daemon.bus.store(),
            &self.project_name,
            hit.reset_unix,
            now,
            &self.config.usage_limit,
            &reason,
        );
        tracing::warn!(story_id = %story, "usage limit: {reason}; the project waits until {}", clock(until));
        self.emit(EventKind::UsageLimitWait { story: story.to_string(), until_unix: until, reason });
        // The registry tells every run of the project (this one too) through `pause_changed`;
        // holding now keeps this story's next iteration from starting meanwhile.
        self.agent.paused_until = Some(until);
        self.state.update(|s| s.sched.hold(Some(Hold::Paused)));
    }

    /// The project's wait changed or its time is up: hold or let go.
    pub(super) fn pause_changed(&mut self) {
        let store = self.daemon.bus.store();
        let now = now_unix();
        if self.daemon.pauses.expire(store, &self.project_name, now) {
            self.emit(EventKind::UsageLimitResumed { early: false });
        }
        match self.daemon.pauses.until(&self.project_name, now) {
            Some((until, _)) => {
                self.agent.paused_until = Some(until);
                self.state.update(|s| s.sched.hold(Some(Hold::Paused)));
            }
            None => {
                let was_paused = self.agent.paused_until.take().is_some();
                if was_paused && self.state.read().sched.held() == Some(Hold::Paused) {
                    self.state.update(|s| s.sched.hold(None));
                    self.schedule();
                }
            }
        }
    }

    /// A usage-limit wait holds every start. Checked before every start: a wait that another
    /// run of the project began may not have reached this run's loop yet.
    pub(super) fn pause_holds(&mut self, story: &str) -> bool {
        let Some((until, _)) = self.daemon.pauses.until(&self.project_name, now_unix()) else { return false };
        self.agent.paused_until = Some(until);
        self.state.update(|s| s.sched.hold(Some(Hold::Paused)));
        tracing::info!(story_id = %story, "not started: the project waits for a usage limit");
        true
    }

    /// The story's cost budget is spent, or the next iteration would exceed it.
    fn story_over_budget(&self, usage: &crate::ledger::StoryLedger, last: Option<f64>) -> Option<String> {
        rules::story_over_budget(usage.budget_spent_usd(), last, self.config.max_cost_usd_per_story?)
    }

    /// The phase's cost so far, over all its stories and runs.
    pub(super) fn phase_cost(&self) -> (Option<f64>, Option<sticler_proto::TokenUsage>) {
        self.daemon.ledger.total(&self.project_name, self.stories.keys().map(String::as_str))
    }

    /// Stops scheduling for good once `max_cost_usd_per_phase` is spent (running iterations end).
    fn check_phase_budget(&mut self) {
        let Some(budget) = self.config.max_cost_usd_per_phase else { return };
        if self.agent.spent.is_some() {
            return;
        }
        let cost = self.phase_cost().0.unwrap_or(0.0);
        let Some(why) = rules::phase_budget_spent(cost, budget) else { return };
        tracing::warn!("{why}");
        self.agent.spent = Some(why.clone());
        self.state.update(|s| {
            s.waiting = Some(why);
            s.sched.hold(Some(Hold::Spent));
        });
        self.emit(EventKind::BudgetSpent { cost_usd: cost, budget_usd: budget });
    }

    /// Cost and budget for the run's summary ("" when nothing was reported).
    pub(super) fn agent_summary(&self) -> String {
        let mut text = String::new();
        let (cost, tokens) = self.phase_cost();
        if let Some(cost) = cost {
            text.push_str(&format!("; cost ${cost:.2}"));
            if let Some(budget) = self.config.max_cost_usd_per_phase {
                text.push_str(&format!(" of ${budget:.2}"));
            }
        }
        if let Some(tokens) = tokens {
            text.push_str(&format!(
                " ({} input, {} output, {} cache tokens)",
                tokens.input,
                tokens.output,
                tokens.cache_creation + tokens.cache_read
            ));
        }
        if let Some(why) = &self.agent.spent {
            text.push_str(&format!("; {why}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_shows_hours_and_minutes() {
        assert_eq!(clock(1_769_594_400 + 5 * 60), "10:05 UTC");
    }
}
