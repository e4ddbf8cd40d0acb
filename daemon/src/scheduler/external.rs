//! Dependencies on earlier phases' stories. A story whose dependency in another phase is not
//! completed yet waits (its run stays alive, idle if nothing else can move); it is blocked only
//! when that dependency fails, until it is retried. The run tells the scheduler when one
//! settles (`external_settled`) or is retried (`external_retried`).

use sticler_proto::StoryState;

use super::Scheduler;

impl Scheduler {
    /// The earlier phases' stories a pending `story` waits for (empty when it waits for none).
    pub fn waits_for(&self, story: &str) -> &[String] {
        self.nodes.get(story).filter(|n| n.state == StoryState::Pending).map_or(&[], |n| &n.unmet_external)
    }

    /// Every earlier phase's story some pending story waits for, each once, in id order.
    pub fn external_waits(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.state == StoryState::Pending)
            .flat_map(|n| n.unmet_external.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Whether a pending story waits for another phase: the run goes on while one does.
    pub(super) fn waits_outside(&self) -> bool {
        self.nodes.values().any(|n| n.state == StoryState::Pending && !n.unmet_external.is_empty())
    }

    /// Whether a story waits for another phase's story, or is blocked by one that failed (a
    /// retry of it lets the story wait again): the run follows the other phases while so.
    pub fn follows_other_phases(&self) -> bool {
        self.nodes.values().any(|n| {
            (n.state == StoryState::Pending && !n.unmet_external.is_empty())
                || (n.state == StoryState::Blocked && !n.failed_external.is_empty())
        })
    }

    /// `dep`, a story of another phase, completed (`completed`) or failed: the stories waiting
    /// for it wait no more, or are blocked by it at the next `schedule`. Returns whether any
    /// story waited for it.
    pub fn external_settled(&mut self, dep: &str, completed: bool) -> bool {
        let mut changed = false;
        for node in self.nodes.values_mut() {
            let before = node.unmet_external.len();
            node.unmet_external.retain(|d| d != dep);
            if node.unmet_external.len() == before {
                continue;
            }
            changed = true;
            if !completed {
                node.failed_external.push(dep.to_string());
            }
        }
        changed
    }

    /// `dep`, a failed story of another phase, was retried: the stories it blocked (and only
    /// those) wait for it again, as in-phase dependents of a retried story do. Returns whether
    /// any did.
    pub fn external_retried(&mut self, dep: &str) -> bool {
        let mut changed = false;
        for node in self.nodes.values_mut() {
            if node.failed_external.iter().any(|d| d == dep) {
                node.failed_external.retain(|d| d != dep);
                node.unmet_external.push(dep.to_string());
                changed = true;
            }
        }
        if changed && self.ended.is_none() {
            self.unblock(dep);
        }
        changed
    }
}
