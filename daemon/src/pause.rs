//! The usage-limit wait of each project. When one iteration shows that the agent hit its usage
//! or rate limit, every run of the project starts no new iteration until the reported reset
//! time plus a margin (or an escalating backoff when no time was given). Agents of one project
//! share an account, so the wait is per project, not per story or phase.
//!
//! The wait is kept in the store (flushed) so that a restarted daemon keeps waiting; runs learn
//! of every change through a watch channel.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::project::UsageLimitConfig;
use crate::store::{AgentTree, Store};

/// One project's wait. `until_unix == 0`: not waiting, but `strikes` hits in a row so far
/// (the backoff goes on from there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    pub until_unix: i64,
    pub reason: String,
    pub strikes: u32,
}

pub struct Pauses {
    projects: Mutex<HashMap<String, PauseRecord>>,
    changed: watch::Sender<u64>,
}

/// When a wait that begins at `now` ends: the reset plus the margin, or the backoff for this
/// many hits in a row (min, doubled per hit, capped at max).
pub fn wait_until(reset_unix: Option<i64>, now: i64, strikes: u32, config: &UsageLimitConfig) -> i64 {
    let margin = i64::try_from(config.margin_secs).unwrap_or(i64::MAX / 4);
    match reset_unix {
        // A reset time in the past (a slow clock, an old message) still waits the margin.
        Some(reset) => reset.max(now).saturating_add(margin),
        None => {
            let min = config.backoff_min_secs.max(1);
            let max = config.backoff_max_secs.max(min);
            let backoff = min.saturating_mul(1u64 << strikes.min(20)).min(max);
            now.saturating_add(i64::try_from(backoff).unwrap_or(i64::MAX / 4))
        }
    }
}

impl Pauses {
    /// The waits kept in the store by the last daemon.
    pub fn load(store: &Store) -> Pauses {
        let projects = match store.agent_all::<PauseRecord>(AgentTree::Pauses) {
            Ok(all) => all.into_iter().collect(),
            Err(e) => {
                tracing::error!("cannot read the usage-limit waits from the store: {e}");
                HashMap::new()
            }
        };
        Pauses { projects: Mutex::new(projects), changed: watch::channel(0).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PauseRecord>> {
        crate::lock::lock(&self.projects)
    }

    /// Bumped at every change of any project's wait.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn changed(&self, store: &Store, project: &str, record: &PauseRecord) {
        let result = if *record == PauseRecord::default() {
            store.agent_remove(AgentTree::Pauses, project)
        } else {
            store.agent_put(AgentTree::Pauses, project, record, true)
        };
        if let Err(e) = result {
            tracing::error!(project, "cannot store the usage-limit wait: {e}");
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The project's wait, if it is waiting at `now`: (until, reason).
    pub fn until(&self, project: &str, now: i64) -> Option<(i64, String)> {
        self.lock().get(project).filter(|p| p.until_unix > now).map(|p| (p.until_unix, p.reason.clone()))
    }

    /// An agent of `project` hit its limit: the project waits (a longer wait already going on
    /// is kept). Returns the end of the wait.
    pub fn hit(
        &self,
        store: &Store,
        project: &str,
        reset_unix: Option<i64>,
        now: i64,
        config: &UsageLimitConfig,
        reason: &str,
    ) -> i64 {
        let record = {
            let mut projects = self.lock();
            let record = projects.entry(project.to_string()).or_default();
            let until = wait_until(reset_unix, now, record.strikes, config);
            if until > record.until_unix {
                record.until_unix = until;
                record.reason = reason.to_string();
            }
            record.strikes = record.strikes.saturating_add(1);
            record.clone()
        };
        self.changed(store, project, &record);
        record.until_unix
    }

    /// Ends the wait now (`resume`). Returns whether the project was waiting.
    pub fn resume(&self, store: &Store, project: &str, now: i64) -> bool {
        self.end_wait(store, project, |until| until > now)
    }

    /// The wait's time is over: ends it. Returns true for the one caller that ended it.
    pub fn expire(&self, store: &Store, project: &str, now: i64) -> bool {
        self.end_wait(store, project, |until| until != 0 && until <= now)
    }

    /// Ends the project's wait when `applies` to its end time. Returns whether it did.
    fn end_wait(&self, store: &Store, project: &str, applies: impl Fn(i64) -> bool) -> bool {
        let record = {
            let mut projects = self.lock();
            match projects.get_mut(project) {
                Some(record) if applies(record.until_unix) => {
                    record.until_unix = 0;
                    record.reason.clear();
                    record.clone()
                }
                _ => return false,
            }
        };
        self.changed(store, project, &record);
        true
    }

    /// An iteration of the project ran without hitting a limit: the next backoff starts over.
    pub fn calm(&self, store: &Store, project: &str) {
        let record = {
            let mut projects = self.lock();
            match projects.get(project) {
                Some(record) if record.until_unix == 0 && record.strikes > 0 => {}
                _ => return,
            }
            projects.remove(project);
            PauseRecord::default()
        };
        self.changed(store, project, &record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: UsageLimitConfig = UsageLimitConfig { margin_secs: 60, backoff_min_secs: 60, backoff_max_secs: 1800 };

    #[test]
    fn the_wait_is_the_reset_plus_the_margin_or_an_escalating_backoff() {
        assert_eq!(wait_until(Some(2_000), 1_000, 0, &CONFIG), 2_060);
        assert_eq!(wait_until(Some(500), 1_000, 0, &CONFIG), 1_060, "a past reset still waits the margin");
        let backoffs: Vec<i64> = (0..8).map(|s| wait_until(None, 0, s, &CONFIG)).collect();
        assert_eq!(backoffs, [60, 120, 240, 480, 960, 1800, 1800, 1800]);
        assert_eq!(wait_until(None, 0, u32::MAX, &CONFIG), 1800);
    }

    #[test]
    fn a_wait_survives_reopening_the_store_and_ends_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let pauses = Pauses::load(&store);
            assert_eq!(pauses.hit(&store, "/p", Some(5_000), 1_000, &CONFIG, "limit"), 5_060);
            assert_eq!(
                pauses.hit(&store, "/p", Some(2_000), 1_000, &CONFIG, "shorter"),
                5_060,
                "the longer wait stays"
            );
        }
        let store = Store::open(dir.path()).unwrap();
        let pauses = Pauses::load(&store);
        assert_eq!(pauses.until("/p", 1_000), Some((5_060, "limit".to_string())));
        assert_eq!(pauses.until("/other", 1_000), None);
        assert!(!pauses.expire(&store, "/p", 5_000), "not over yet");
        assert!(pauses.expire(&store, "/p", 5_060));
        assert!(!pauses.expire(&store, "/p", 5_060), "only one caller ends it");
        assert_eq!(pauses.until("/p", 5_060), None);
        // Two hits so far: the next wait without a time is the third backoff step.
        assert_eq!(pauses.hit(&store, "/p", None, 10_000, &CONFIG, "again"), 10_240);
        assert!(pauses.resume(&store, "/p", 10_001));
        assert!(!pauses.resume(&store, "/p", 10_001));
        pauses.calm(&store, "/p");
        assert_eq!(pauses.hit(&store, "/p", None, 20_000, &CONFIG, "fresh"), 20_060, "calm resets the backoff");
    }
}
