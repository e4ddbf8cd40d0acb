//! The daemon's own state in sled. Files on disk are the truth for what the worker owns; the
//! store keeps what only the daemon knows: the event history (with its sequence numbers), which
//! runs were active, and each running story's counters and processes.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sticler_proto::{Event, StoryState};

/// Version of the encoding of every stored value. A store written by another version is
/// refused with a clear message instead of being misread.
pub const FORMAT_VERSION: u8 = 1;
const META_FORMAT: &[u8] = b"format_version";
/// Sequence numbers up to this value may have been handed out (see `EventBus`).
const META_SEQ_RESERVED: &[u8] = b"seq_reserved";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {}: {source}; if it is damaged, move it aside (the phases on disk are the truth and a new `start` resumes from them)", path.display())]
    Open { path: PathBuf, source: sled::Error },
    #[error("the store at {} has format version {found}, this sticlerd understands {FORMAT_VERSION}; move it aside or run the matching sticlerd", path.display())]
    Version { path: PathBuf, found: u8 },
    #[error("store: {0}")]
    Db(#[from] sled::Error),
    #[error("store: undecodable value: {0}")]
    Decode(String),
}

/// A run that was active, so a restarted daemon knows what to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub project: String,
    pub phase: u32,
    /// When the run first started; commits since then are the stories' commits, also after a
    /// restart (so a commit made just before a crash is found, not made twice).
    pub started_unix: i64,
    /// Prefix of the worker tokens of the current daemon's processes for this run.
    pub nonce: String,
    /// When the run first started, in unix milliseconds: the summary's wall time counts from
    /// here, across restarts. Added after the first format: see `decode_run`.
    pub started_ms: u64,
}

/// A run record as daemons before `started_ms` stored it.
#[derive(Deserialize)]
struct RunRecordV1 {
    project: String,
    phase: u32,
    started_unix: i64,
    nonce: String,
}

/// A run record of either layout: the fields are positional, so an older record is one field
/// short and reads as `RunRecordV1` (its start known to the second). An older daemon reads a
/// newer record's leading fields and ignores the rest.
fn decode_run(bytes: &[u8]) -> Result<RunRecord, StoreError> {
    decode(bytes).or_else(|_| {
        decode::<RunRecordV1>(bytes).map(|old| RunRecord {
            started_ms: u64::try_from(old.started_unix).unwrap_or(0).saturating_mul(1000),
            project: old.project,
            phase: old.phase,
            started_unix: old.started_unix,
            nonce: old.nonce,
        })
    })
}

/// What the daemon knows of one story of an active run: a restarted daemon continues its
/// counts (the interrupted iteration is not counted) and kills its last worker's group, after
/// checking that the pid still is that worker (same start time) and was not recycled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryRecord {
    /// The scheduler's state of the story when it was recorded.
    pub state: StoryState,
    /// Iterations judged so far in this run.
    pub iterations: u32,
    /// Consecutive infrastructure failures.
    pub infra_streak: u32,
    /// The last worker: pid (also its process group: workers lead their own session) and its
    /// start time in clock ticks since boot (/proc/<pid>/stat field 22).
    pub pid: Option<i32>,
    pub start_time: Option<u64>,
    pub last_exit: Option<String>,
    pub log: Option<String>,
}

/// A story's merge into the integration branch, recorded (and flushed) before the branch
/// moves: a restarted daemon finishes it or knows it never happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// The integration branch's reference.
    pub branch_ref: String,
    /// Its head before the merge, and the story's commit made on top of it.
    pub base: String,
    pub commit: String,
}

pub struct Store {
    db: sled::Db,
    merges: sled::Tree,
    events: sled::Tree,
    runs: sled::Tree,
    stories: sled::Tree,
    pauses: sled::Tree,
    usage: sled::Tree,
    /// Every (project, phase) a run was ever started for, so `status --all` still lists them
    /// after a restart. Kept after the run ends; a project gone from disk is skipped on reading.
    known: sled::Tree,
    /// Each story's iteration events, by sequence number (see `store_iterations.rs`).
    iterations: sled::Tree,
}

/// The trees of what sticler learned from the agents' output.
#[derive(Debug, Clone, Copy)]
pub enum AgentTree {
    /// Per project: the usage-limit wait (see `pause`).
    Pauses,
    /// Per story: cost and tokens of each iteration (see `ledger`).
    Usage,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("store");
        // The daemon's pid lock is held already; a store lock still taken is a dead daemon's,
        // lingering in a child that has not exec'd yet (or sled's own closing threads).
        let deadline = std::time::Instant::now() + crate::paths::LINGER;
        let db = loop {
            match sled::Config::new().path(&path).cache_capacity(8 * 1024 * 1024).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => return Err(StoreError::Open { path: path.clone(), source }),
            }
        };
        match db.get(META_FORMAT)? {
            None => {
                db.insert(META_FORMAT, &[FORMAT_VERSION])?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => return Err(StoreError::Version { path, found: v.first().copied().unwrap_or(0) }),
        }
        let events = db.open_tree("events")?;
        let runs = db.open_tree("runs")?;
        // Trees added later need no new format version: an older store simply lacks them.
        // Story records with a typed state; "stories" held them with the state as text, and
        // only for runs in flight, so an older daemon's records are dropped (counts start over).
        let stories = db.open_tree("story_records")?;
        db.drop_tree("stories")?;
        let pauses = db.open_tree("pauses")?;
        let usage = db.open_tree("usage")?;
        let merges = db.open_tree("merges")?;
        let known = db.open_tree("known_phases")?;
        let iterations = db.open_tree("story_iterations")?;
        let store = Store { db, merges, events, runs, stories, pauses, usage, known, iterations };
        store.index_since_mark()?;
        Ok(store)
    }

    /// The highest event sequence number stored (0 when none).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(match self.events.last()? {
            Some((key, _)) => seq_of(&key),
            None => 0,
        })
    }

    /// The highest sequence number reserved so far (0 when none).
    pub fn seq_reserved(&self) -> Result<u64, StoreError> {
        Ok(self.db.get(META_SEQ_RESERVED)?.map_or(0, |v| seq_of(&v)))
    }

    /// Durably reserves sequence numbers up to `upto`, before any of them is handed out.
    pub fn reserve_seq(&self, upto: u64) -> Result<(), StoreError> {
        self.db.insert(META_SEQ_RESERVED, &upto.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn append_event(&self, event: &Event) -> Result<(), StoreError> {
        self.events.insert(event.seq.to_be_bytes(), encode(event)?)?;
        self.index_event(event)
    }

    /// Events with a sequence number above `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.events.range(start..).take(limit).map(|item| decode(&item?.1)).collect()
    }

    pub fn put_run(&self, key: &str, run: &RunRecord) -> Result<(), StoreError> {
        self.runs.insert(key, encode(run)?)?;
        self.known.insert(key, encode(&(run.project.as_str(), run.phase))?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Every (project, phase) a run was started for, by this daemon or an earlier one.
    pub fn known_phases(&self) -> Result<Vec<(PathBuf, u32)>, StoreError> {
        self.known
            .iter()
            .map(|item| decode::<(String, u32)>(&item?.1).map(|(project, phase)| (PathBuf::from(project), phase)))
            .collect()
    }

    /// Every run that was active when the store was last written.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.runs.iter().map(|item| decode_run(&item?.1)).collect()
    }

    /// The record of run `key`, while it is active.
    pub fn run(&self, key: &str) -> Result<Option<RunRecord>, StoreError> {
        self.runs.get(key)?.map(|bytes| decode_run(&bytes)).transpose()
    }

    pub fn remove_run(&self, key: &str) -> Result<(), StoreError> {
        for item in self.stories.scan_prefix(story_prefix(key)).keys() {
            self.stories.remove(item?)?;
        }
        self.runs.remove(key)?;
        self.db.flush()?;
        Ok(())
    }

    /// Records a story's transition, flushed at once when `flush`. Otherwise sled writes it out
    /// within half a second: what a lost record would leave behind (a worker) is still found by
    /// its token, whose run record is flushed before any worker starts.
    pub fn put_story(&self, run: &str, story: &str, record: &StoryRecord, flush: bool) -> Result<(), StoreError> {
        self.stories.insert(format!("{}{story}", story_prefix(run)), encode(record)?)?;
        if flush {
            self.stories.flush()?;
        }
        Ok(())
    }

    /// The story records of run `run`, by story id.
    pub fn stories(&self, run: &str) -> Result<Vec<(String, StoryRecord)>, StoreError> {
        by_story(&self.stories, run)
    }

    /// Records a merge about to land, flushed before the caller acts on it.
    pub fn put_merge(&self, run: &str, story: &str, record: &MergeRecord) -> Result<(), StoreError> {
        self.merges.insert(format!("{}{story}", story_prefix(run)), encode(record)?)?;
        self.merges.flush()?;
        Ok(())
    }

    /// The merges of run `run` that were recorded and not yet done, by story id.
    pub fn merges(&self, run: &str) -> Result<Vec<(String, MergeRecord)>, StoreError> {
        by_story(&self.merges, run)
    }

    /// The merge of `story` is done (landed, or known never to have happened).
    pub fn remove_merge(&self, run: &str, story: &str) -> Result<(), StoreError> {
        self.merges.remove(format!("{}{story}", story_prefix(run)))?;
        Ok(())
    }

    fn agent_tree(&self, tree: AgentTree) -> &sled::Tree {
        match tree {
            AgentTree::Pauses => &self.pauses,
            AgentTree::Usage => &self.usage,
        }
    }

    /// Stores `value` under `key`; `durable` flushes before returning (a pause must survive a
    /// crash right after it began; usage is flushed with the next flush).
    pub fn agent_put<T: Serialize>(
        &self,
        tree: AgentTree,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), StoreError> {
        let tree = self.agent_tree(tree);
        tree.insert(key, encode(value)?)?;
        if durable {
            tree.flush()?;
        }
        Ok(())
    }

    pub fn agent_remove(&self, tree: AgentTree, key: &str) -> Result<(), StoreError> {
        let tree = self.agent_tree(tree);
        tree.remove(key)?;
        tree.flush()?;
        Ok(())
    }

    /// Every entry of the tree, keys as text.
    pub fn agent_all<T: DeserializeOwned>(&self, tree: AgentTree) -> Result<Vec<(String, T)>, StoreError> {
        self.agent_tree(tree)
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key).into_owned(), decode(&value)?))
            })
            .collect()
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Run keys hold no NUL after the phase number, so this prefix never matches another run.
/// The values a tree keeps per story of run `run`, by story id.
fn by_story<T: DeserializeOwned>(tree: &sled::Tree, run: &str) -> Result<Vec<(String, T)>, StoreError> {
    let prefix = story_prefix(run);
    tree.scan_prefix(&prefix)
        .map(|item| {
            let (key, value) = item?;
            Ok((String::from_utf8_lossy(&key[prefix.len()..]).into_owned(), decode(&value)?))
        })
        .collect()
}

fn story_prefix(run: &str) -> String {
    format!("{run}\0")
}

fn seq_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[8 - n..].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| StoreError::Decode(e.to_string()))?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| StoreError::Decode(e.to_string())),
        Some((v, _)) => Err(StoreError::Decode(format!("value of format version {v}"))),
        None => Err(StoreError::Decode("empty value".into())),
    }
}

#[path = "store_iterations.rs"]
mod iterations;

#[cfg(test)]
mod tests {
    use super::*;
    use sticler_proto::EventKind;

    #[test]
    fn events_keep_their_sequence_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for seq in 1..=3 {
                let kind = EventKind::StoryRetried { story: format!("US-P1-00{seq}") };
                let event = Event { seq, time_ms: 0, project: "/p".into(), phase: 1, kind };
                store.append_event(&event).unwrap();
            }
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_seq().unwrap(), 3);
        let after: Vec<u64> = store.events_after(1, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(after, [2, 3]);
    }

    #[test]
    fn story_records_belong_to_their_run_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = |n| StoryRecord {
            state: StoryState::Running,
            iterations: n,
            infra_streak: 0,
            pid: Some(100 + n as i32),
            start_time: None,
            last_exit: None,
            log: None,
        };
        store.put_story("/p\u{0}1", "US-P1-001", &record(1), false).unwrap();
        store.put_story("/p\u{0}1", "US-P1-002", &record(2), false).unwrap();
        store.put_story("/p\u{0}12", "US-P12-001", &record(3), true).unwrap();
        store.put_story("/p\u{0}1", "US-P1-001", &record(4), false).unwrap();
        let ids = |run| store.stories(run).unwrap().into_iter().map(|(id, r)| (id, r.iterations)).collect::<Vec<_>>();
        assert_eq!(ids("/p\u{0}1"), [("US-P1-001".to_string(), 4), ("US-P1-002".to_string(), 2)]);
        store.remove_run("/p\u{0}1").unwrap();
        assert!(ids("/p\u{0}1").is_empty());
        assert_eq!(ids("/p\u{0}12"), [("US-P12-001".to_string(), 3)]);
        let (_, read_back) = &store.stories("/p\u{0}12").unwrap()[0];
        assert_eq!(read_back, &record(3), "the typed state and every field read back");
    }

    #[test]
    fn a_run_record_of_the_older_layout_reads_with_its_start_in_milliseconds() {
        #[derive(Serialize)]
        struct Old<'a> {
            project: &'a str,
            phase: u32,
            started_unix: i64,
            nonce: &'a str,
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = Old { project: "/p", phase: 2, started_unix: 1_700_000_000, nonce: "n" };
        store.runs.insert("/p\u{0}2", encode(&old).unwrap()).unwrap();
        let new = RunRecord {
            project: "/q".into(),
            phase: 1,
            started_unix: 1_700_000_001,
            nonce: "m".into(),
            started_ms: 1_700_000_001_234,
        };
        store.put_run("/q\u{0}1", &new).unwrap();
        let read = store.run("/p\u{0}2").unwrap().unwrap();
        assert_eq!((read.project.as_str(), read.phase, read.started_ms), ("/p", 2, 1_700_000_000_000));
        assert_eq!(store.run("/q\u{0}1").unwrap(), Some(new.clone()));
        assert_eq!(store.runs().unwrap().len(), 2);
        assert_eq!(store.run("/r\u{0}1").unwrap(), None);
        // An older daemon reading the newer layout gets its leading fields.
        let bytes = store.runs.get("/q\u{0}1").unwrap().unwrap();
        let as_old: RunRecordV1 = decode(&bytes).unwrap();
        assert_eq!((as_old.project, as_old.started_unix), ("/q".to_string(), 1_700_000_001));
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("store")).unwrap();
            db.insert(META_FORMAT, &[99u8]).unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("format version 99"), "{err}");
    }
}
