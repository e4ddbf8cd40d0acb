//! Blocking: which pending stories can never run because a dependency failed (directly or
//! through another blocked story, or in another phase), and who blocks each; and the undoing
//! of it when a failed story is retried.

use std::collections::BTreeMap;

use sticler_proto::StoryState;

use super::{Action, Node, Scheduler};

impl Scheduler {
    /// Marks pending stories whose dependencies failed (directly or through another blocked
    /// story, or in another phase) as blocked. Linear in
    /// the size of the graph: a failure at the head of a 10,000-long chain blocks it in one walk.
    pub(super) fn propagate_blocks(&mut self, actions: &mut Vec<Action>) {
        let blocking = |n: &Node| matches!(n.state, StoryState::Failed | StoryState::Blocked);
        let pending_behind = |n: &Node| n.state == StoryState::Pending && !n.failed_external.is_empty();
        // 1. The pending stories downstream of a failed or blocked one (or blocked themselves
        //    by a failure in another phase), found by walking the reverse edges once.
        let mut affected: BTreeMap<&str, usize> = BTreeMap::new();
        let mut stack: Vec<&str> =
            self.nodes.iter().filter(|(_, n)| blocking(n) || pending_behind(n)).map(|(id, _)| id.as_str()).collect();
        for (id, n) in &self.nodes {
            if pending_behind(n) {
                affected.insert(id, 0);
            }
        }
        while let Some(id) = stack.pop() {
            for dependent in self.dependents.get(id).into_iter().flatten() {
                let pending = self.nodes.get(dependent).is_some_and(|n| n.state == StoryState::Pending);
                if pending && !affected.contains_key(dependent.as_str()) {
                    affected.insert(dependent, 0);
                    stack.push(dependent);
                }
            }
        }
        if affected.is_empty() {
            return;
        }
        // 2. Who blocks each of them, dependencies first (the graph is acyclic once validated).
        let waits: Vec<(&str, usize)> = affected
            .keys()
            .map(|id| (*id, self.nodes[*id].deps.iter().filter(|d| affected.contains_key(d.as_str())).count()))
            .collect();
        affected.extend(waits);
        let mut ready: Vec<&str> = affected.iter().filter(|(_, w)| **w == 0).map(|(id, _)| *id).collect();
        let mut by_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut order = Vec::with_capacity(affected.len());
        while let Some(id) = ready.pop() {
            let node = &self.nodes[id];
            let mut by = node.failed_external.clone();
            for dep in &node.deps {
                match (by_of.get(dep.as_str()), self.nodes.get(dep)) {
                    (Some(inherited), _) => by.extend(inherited.iter().cloned()),
                    (None, Some(d)) if d.state == StoryState::Failed => by.push(dep.clone()),
                    (None, Some(d)) if d.state == StoryState::Blocked => by.extend(d.blocked_by.iter().cloned()),
                    _ => {}
                }
            }
            by.sort();
            by.dedup();
            for dependent in self.dependents.get(id).into_iter().flatten() {
                if let Some(waiting) = affected.get_mut(dependent.as_str()) {
                    *waiting -= 1;
                    if *waiting == 0 {
                        ready.push(dependent);
                    }
                }
            }
            by_of.insert(id, by);
            order.push(id);
        }
        let blocked: Vec<(String, Vec<String>)> =
            order.into_iter().map(|id| (id.to_string(), by_of.remove(id).unwrap_or_default())).collect();
        for (id, by) in blocked {
            actions.push(Action::Blocked { story: id.clone(), by: by.join(", ") });
            if let Some(node) = self.nodes.get_mut(&id) {
                node.state = StoryState::Blocked;
                node.blocked_by = by;
            }
        }
    }

    /// `retried` runs again: the stories it blocked no longer wait for it, and those that
    /// waited for nothing else are pending again. Stories blocked by other failures stay so.
    pub(super) fn unblock(&mut self, retried: &str) {
        for node in self.nodes.values_mut().filter(|n| n.state == StoryState::Blocked) {
            if !node.blocked_by.iter().any(|by| by == retried) {
                continue;
            }
            node.blocked_by.retain(|by| by != retried);
            if node.blocked_by.is_empty() && node.failed_external.is_empty() {
                node.state = StoryState::Pending;
            }
        }
    }
}
