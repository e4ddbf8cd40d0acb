//! What each story's agent iterations cost, as the backends report it (Claude's final `result`
//! event): dollars and tokens per iteration, kept in the store and in memory, so that `status`
//! sums them without reading logs and the budgets hold across runs and daemon restarts.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sticler_proto::TokenUsage;

use crate::agent_output::IterationUsage;
use crate::store::{AgentTree, Store};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    pub iteration: u32,
    pub usage: IterationUsage,
}

/// One story's iterations that reported usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoryLedger {
    pub iterations: Vec<IterationRecord>,
    /// The cost when the story was last retried: its budget counts only what came after.
    pub retried_at_usd: f64,
}

impl StoryLedger {
    /// Total cost; None when no iteration reported one.
    pub fn cost_usd(&self) -> Option<f64> {
        let costs: Vec<f64> = self.iterations.iter().filter_map(|i| i.usage.cost_usd).collect();
        (!costs.is_empty()).then(|| costs.iter().sum())
    }

    pub fn tokens(&self) -> Option<TokenUsage> {
        let mut total: Option<TokenUsage> = None;
        for tokens in self.iterations.iter().filter_map(|i| i.usage.tokens) {
            total.get_or_insert_with(TokenUsage::default).add(&tokens);
        }
        total
    }

    /// What counts against `max_cost_usd_per_story`.
    pub fn budget_spent_usd(&self) -> f64 {
        (self.cost_usd().unwrap_or(0.0) - self.retried_at_usd).max(0.0)
    }
}

/// Per project, per story: looked up without allocating, as `status` does for every story.
type Projects = HashMap<String, HashMap<String, StoryLedger>>;

pub struct Ledger {
    projects: Mutex<Projects>,
}

fn key(project: &str, story: &str) -> String {
    format!("{project}\0{story}")
}

impl Ledger {
    pub fn load(store: &Store) -> Ledger {
        let mut projects = Projects::new();
        match store.agent_all::<StoryLedger>(AgentTree::Usage) {
            Ok(all) => {
                for (key, ledger) in all {
                    if let Some((project, story)) = key.split_once('\0') {
                        projects.entry(project.to_string()).or_default().insert(story.to_string(), ledger);
                    }
                }
            }
            Err(e) => tracing::error!("cannot read the agents' usage from the store: {e}"),
        }
        Ledger { projects: Mutex::new(projects) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Projects> {
        crate::lock::lock(&self.projects)
    }

    /// Records one iteration's usage (when it reported any) and returns the story's ledger.
    pub fn record(
        &self,
        store: &Store,
        project: &str,
        story: &str,
        iteration: u32,
        usage: IterationUsage,
    ) -> StoryLedger {
        let mut projects = self.lock();
        if usage == IterationUsage::default() {
            // Nothing reported (not an agent that says): nothing kept, not even an empty entry.
            return projects.get(project).and_then(|p| p.get(story)).cloned().unwrap_or_default();
        }
        let ledger = projects.entry(project.to_string()).or_default().entry(story.to_string()).or_default();
        ledger.iterations.retain(|i| i.iteration != iteration);
        ledger.iterations.push(IterationRecord { iteration, usage });
        if let Err(e) = store.agent_put(AgentTree::Usage, &key(project, story), &*ledger, false) {
            tracing::error!(story_id = story, "cannot store the iteration's usage: {e}");
        }
        ledger.clone()
    }

    pub fn story(&self, project: &str, story: &str) -> Option<StoryLedger> {
        self.lock().get(project)?.get(story).cloned()
    }

    /// Cost and tokens of these stories together (None: none reported any).
    pub fn total<'a>(
        &self,
        project: &str,
        stories: impl Iterator<Item = &'a str>,
    ) -> (Option<f64>, Option<TokenUsage>) {
        let projects = self.lock();
        let (mut cost, mut tokens): (Option<f64>, Option<TokenUsage>) = (None, None);
        let Some(map) = projects.get(project) else { return (cost, tokens) };
        for story in stories {
            let Some(ledger) = map.get(story) else { continue };
            if let Some(c) = ledger.cost_usd() {
                *cost.get_or_insert(0.0) += c;
            }
            if let Some(t) = ledger.tokens() {
                tokens.get_or_insert_with(TokenUsage::default).add(&t);
            }
        }
        (cost, tokens)
    }

    /// The story is retried: its budget starts again from what it cost so far.
    pub fn retried(&self, store: &Store, project: &str, story: &str) {
        let key = key(project, story);
        let mut projects = self.lock();
        let Some(ledger) = projects.get_mut(project).and_then(|p| p.get_mut(story)) else { return };
        ledger.retried_at_usd = ledger.cost_usd().unwrap_or(0.0);
        if let Err(e) = store.agent_put(AgentTree::Usage, &key, &*ledger, true) {
            tracing::error!(story_id = story, "cannot store the retried budget: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cost: f64) -> IterationUsage {
        IterationUsage {
            cost_usd: Some(cost),
            tokens: Some(TokenUsage { input: 1, output: 2, cache_creation: 3, cache_read: 4 }),
            duration_ms: Some(10),
        }
    }

    #[test]
    fn costs_add_up_per_story_and_phase_survive_reopening_and_reset_on_retry() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let ledger = Ledger::load(&store);
            ledger.record(&store, "/p", "US-P1-001", 1, usage(0.25));
            ledger.record(&store, "/p", "US-P1-001", 2, usage(0.5));
            ledger.record(&store, "/p", "US-P1-001", 3, IterationUsage::default());
            ledger.record(&store, "/p", "US-P1-002", 1, usage(1.0));
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let ledger = Ledger::load(&store);
        let one = ledger.story("/p", "US-P1-001").unwrap();
        assert_eq!((one.cost_usd(), one.iterations.len()), (Some(0.75), 2));
        assert_eq!(one.tokens().map(|t| t.total()), Some(20));
        let (cost, tokens) = ledger.total("/p", ["US-P1-001", "US-P1-002", "US-P1-003"].into_iter());
        assert_eq!((cost, tokens.map(|t| t.input)), (Some(1.75), Some(3)));
        assert_eq!(ledger.total("/q", ["US-P1-001"].into_iter()), (None, None));
        ledger.retried(&store, "/p", "US-P1-001");
        assert_eq!(ledger.story("/p", "US-P1-001").unwrap().budget_spent_usd(), 0.0);
        let after = ledger.record(&store, "/p", "US-P1-001", 4, usage(0.1));
        assert!((after.budget_spent_usd() - 0.1).abs() < 1e-9);
        assert!((after.cost_usd().unwrap_or(0.0) - 0.85).abs() < 1e-9);
    }
}
