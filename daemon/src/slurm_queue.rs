//! Slurm's queue as `status` shows it: one `squeue` a second for all of the daemon's running
//! jobs, whatever their number, each job's change of place (pending and why, running and where)
//! handed to its follower. A poll per job would put one request per running job per second on
//! slurmctld, which a cluster's admins do not thank anyone for.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sticler_proto::JobView;
use tokio::sync::Notify;

use crate::daemon::Daemon;
use crate::lock::lock;

/// The jobs followed, and the task that asks Slurm about them.
pub struct QueueWatch {
    followers: Mutex<HashMap<String, Follower>>,
    /// A job followed anew: the next look comes after `first_look` instead of a whole round.
    wake: Notify,
    /// The asking task runs (it is started with the first job followed).
    asking: Mutex<bool>,
    first_look: Duration,
    every: Duration,
}

struct Follower {
    last: Option<JobView>,
    seen: Box<dyn Fn(JobView) + Send>,
}

/// A job followed until this is dropped.
pub struct Following {
    watch: Arc<QueueWatch>,
    name: String,
}

impl Drop for Following {
    fn drop(&mut self) {
        lock(&self.watch.followers).remove(&self.name);
    }
}

/// The most names one `squeue` is given (its command line stays short).
const NAMES_PER_ASK: usize = 200;

impl Default for QueueWatch {
    fn default() -> QueueWatch {
        // The first look soon (a pending job's reason matters most early), then every second.
        QueueWatch::paced(Duration::from_millis(200), Duration::from_secs(1))
    }
}

impl QueueWatch {
    fn paced(first_look: Duration, every: Duration) -> QueueWatch {
        QueueWatch {
            followers: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            asking: Mutex::new(false),
            first_look,
            every,
        }
    }

    /// Follows the job named `name`: `seen` gets its place in the queue each time it changes,
    /// until the returned `Following` is dropped.
    pub fn follow(daemon: &Arc<Daemon>, name: &str, seen: impl Fn(JobView) + Send + 'static) -> Following {
        let watch = Arc::clone(&daemon.slurm_queue);
        let weak = Arc::downgrade(daemon);
        let following = watch.add(name, Box::new(seen));
        watch.start(move |names| ask(weak.clone(), names));
        following
    }

    fn add(self: &Arc<Self>, name: &str, seen: Box<dyn Fn(JobView) + Send>) -> Following {
        lock(&self.followers).insert(name.to_string(), Follower { last: None, seen });
        self.wake.notify_one();
        Following { watch: Arc::clone(self), name: name.to_string() }
    }

    /// Starts the asking task unless it runs; `ask` runs one `squeue` for the names given.
    fn start<A, F>(self: &Arc<Self>, ask: A)
    where
        A: Fn(Vec<String>) -> F + Send + 'static,
        F: Future<Output = io::Result<String>> + Send + 'static,
    {
        let mut asking = lock(&self.asking);
        if !*asking {
            *asking = true;
            tokio::spawn(Arc::clone(self).run(ask));
        }
    }

    async fn run<A, F>(self: Arc<Self>, ask: A)
    where
        A: Fn(Vec<String>) -> F,
        F: Future<Output = io::Result<String>>,
    {
        loop {
            let names: Vec<String> = lock(&self.followers).keys().cloned().collect();
            if names.is_empty() {
                self.wake.notified().await;
                tokio::time::sleep(self.first_look).await;
                continue;
            }
            for chunk in names.chunks(NAMES_PER_ASK) {
                // A failed look is only a missed update: the next one comes in a round.
                match ask(chunk.to_vec()).await {
                    Ok(output) => self.hand_out(&output),
                    Err(e) => tracing::debug!("cannot read Slurm's queue: {e}"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                () = self.wake.notified() => tokio::time::sleep(self.first_look).await,
            }
        }
    }

    /// Gives each followed job its newest line of `output` (an earlier daemon's job of the same
    /// name cannot be newer), when it changed.
    fn hand_out(&self, output: &str) {
        let mut newest: BTreeMap<String, JobView> = BTreeMap::new();
        for job in crate::slurm::parse_queue(output) {
            if newest.get(&job.name).is_none_or(|known| known.id < job.view.id) {
                newest.insert(job.name, job.view);
            }
        }
        let mut followers = lock(&self.followers);
        for (name, view) in newest {
            let Some(follower) = followers.get_mut(&name) else { continue };
            if follower.last.as_ref() != Some(&view) {
                follower.last = Some(view.clone());
                (follower.seen)(view);
            }
        }
    }
}

/// One `squeue` for the jobs named `names` (ended ones too, just after their end).
async fn ask(daemon: Weak<Daemon>, names: Vec<String>) -> io::Result<String> {
    let daemon = daemon.upgrade().ok_or_else(|| io::Error::other("the daemon is gone"))?;
    crate::slurm::squeue_names(&daemon, &names).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A queue whose jobs move on at each look: `US-1` pending then running, `US-2` running
    /// (an older job of its name listed too), `US-3` not in the queue.
    fn queue(round: usize) -> String {
        let first = if round == 0 { "11|US-1|PENDING|Resources|" } else { "11|US-1|RUNNING|None|n1" };
        format!("{first}\n7|US-2|COMPLETED|None|n0\n12|US-2|RUNNING|None|n2\n")
    }

    #[tokio::test]
    async fn one_look_serves_every_job_followed_and_each_change_is_handed_out_once() {
        let watch = Arc::new(QueueWatch::paced(Duration::from_millis(1), Duration::from_millis(20)));
        let asked: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let follow = |name: &str| {
            let (seen, name_owned) = (Arc::clone(&seen), name.to_string());
            watch.add(name, Box::new(move |view: JobView| lock(&seen).push((name_owned.clone(), view.state))))
        };
        let (one, two, three) = (follow("US-1"), follow("US-2"), follow("US-3"));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (asked_in, rounds_in) = (Arc::clone(&asked), Arc::clone(&rounds));
        watch.start(move |mut names: Vec<String>| {
            names.sort();
            lock(&asked_in).push(names);
            let round = rounds_in.fetch_add(1, Ordering::SeqCst);
            async move { Ok(queue(round)) }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rounds.load(Ordering::SeqCst) < 4 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop((two, three));
        let before = rounds.load(Ordering::SeqCst);
        while rounds.load(Ordering::SeqCst) < before + 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = lock(&asked).clone();
        assert!(asked.len() >= 6, "{asked:?}");
        assert!(asked.iter().take(4).all(|names| names == &["US-1", "US-2", "US-3"]), "one squeue for all: {asked:?}");
        assert_eq!(asked.last().map(Vec::as_slice), Some(&["US-1".to_string()][..]), "a job let go is not asked for");
        let seen = lock(&seen).clone();
        assert_eq!(
            seen,
            [("US-1", "PENDING"), ("US-2", "RUNNING"), ("US-1", "RUNNING")]
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .to_vec(),
            "each change once, the newest job of a name"
        );
        drop(one);
    }
}
