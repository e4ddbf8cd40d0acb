//! An index of each story's iteration events (started, ended), so that a story's iterations
//! (`story_detail`, the dashboard's story panel) are read from its own few events instead of a
//! walk through every event the daemon ever stored, which grows without end.
//!
//! The index is kept as events are appended. A mark says up to which event it is whole: at
//! open, the events after it are indexed (all of them in a store older than the index, the last
//! few whose index entries a crash lost).

use sticler_proto::{Event, EventKind};

use super::{decode, seq_of, Store, StoreError};

/// The sequence number up to which every event is indexed.
const META_INDEXED: &[u8] = b"iterations_indexed";

impl Store {
    /// Indexes `event` when it is a story's iteration starting or ending, and moves the mark.
    pub(super) fn index_event(&self, event: &Event) -> Result<(), StoreError> {
        if let Some(story) = iteration_story(&event.kind) {
            self.iterations.insert(index_key(&event.project, event.phase, story, Some(event.seq)), &[])?;
        }
        self.db.insert(META_INDEXED, &event.seq.to_be_bytes())?;
        Ok(())
    }

    /// Indexes the events stored after the mark. An event that cannot be read is left out, as
    /// it is from every reading of the events.
    pub(super) fn index_since_mark(&self) -> Result<(), StoreError> {
        let mark = self.db.get(META_INDEXED)?.map_or(0, |v| seq_of(&v));
        for item in self.events.range(mark.saturating_add(1).to_be_bytes()..) {
            let (key, value) = item?;
            match decode::<Event>(&value) {
                Ok(event) => self.index_event(&event)?,
                Err(e) => tracing::warn!(seq = seq_of(&key), "stored event left out of the iteration index: {e}"),
            }
        }
        Ok(())
    }

    /// The iteration events of `story` in phase `phase` of `project`, oldest first.
    pub fn story_iterations(&self, project: &str, phase: u32, story: &str) -> Result<Vec<Event>, StoreError> {
        let prefix = index_key(project, phase, story, None);
        let mut events = Vec::new();
        for item in self.iterations.scan_prefix(&prefix) {
            let (key, _) = item?;
            let seq = seq_of(&key[prefix.len()..]);
            if let Some(value) = self.events.get(seq.to_be_bytes())? {
                events.push(decode(&value)?);
            }
        }
        Ok(events)
    }
}

/// The story an event of a story's iteration is about.
fn iteration_story(kind: &EventKind) -> Option<&str> {
    match kind {
        EventKind::IterationStarted { story, .. } | EventKind::IterationEnded { story, .. } => Some(story),
        _ => None,
    }
}

/// `<project> NUL <phase> <story> NUL <seq>` (the numbers big-endian, so a story's keys sort by
/// sequence); without `seq`, the prefix of all of a story's keys. Neither paths nor story ids
/// hold a NUL.
fn index_key(project: &str, phase: u32, story: &str, seq: Option<u64>) -> Vec<u8> {
    let mut key = Vec::with_capacity(project.len() + story.len() + 14);
    key.extend_from_slice(project.as_bytes());
    key.push(0);
    key.extend_from_slice(&phase.to_be_bytes());
    key.extend_from_slice(story.as_bytes());
    key.push(0);
    if let Some(seq) = seq {
        key.extend_from_slice(&seq.to_be_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use sticler_proto::ExitReason;

    fn event(seq: u64, project: &str, kind: EventKind) -> Event {
        Event { seq, time_ms: seq * 10, project: project.into(), phase: 1, kind }
    }

    fn started(story: &str, iteration: u32) -> EventKind {
        EventKind::IterationStarted { story: story.into(), iteration, pid: 7 }
    }

    fn ended(story: &str, iteration: u32) -> EventKind {
        EventKind::IterationEnded {
            story: story.into(),
            iteration,
            exit: ExitReason::Exited(0),
            verdict: "done".into(),
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_storys_iterations_come_from_its_own_events_and_the_index_catches_up_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let events = [
                event(1, "/p", started("US-P1-001", 1)),
                event(2, "/p", started("US-P1-0010", 1)),
                event(3, "/q", started("US-P1-001", 1)),
                event(4, "/p", EventKind::StoryRetried { story: "US-P1-001".into() }),
                event(5, "/p", ended("US-P1-001", 1)),
                event(6, "/p", started("US-P1-001", 2)),
            ];
            for e in &events {
                store.append_event(e).unwrap();
            }
            assert_eq!(seqs(&store.story_iterations("/p", 1, "US-P1-001").unwrap()), [1, 5, 6]);
            assert_eq!(seqs(&store.story_iterations("/p", 2, "US-P1-001").unwrap()), Vec::<u64>::new());
            // A store from before the index (or whose last index entries a crash lost).
            store.iterations.clear().unwrap();
            store.db.remove(META_INDEXED).unwrap();
            store.events.insert(7u64.to_be_bytes(), b"\x01not an event".to_vec()).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(seqs(&store.story_iterations("/p", 1, "US-P1-001").unwrap()), [1, 5, 6]);
        assert_eq!(seqs(&store.story_iterations("/q", 1, "US-P1-001").unwrap()), [3]);
        store.append_event(&event(8, "/p", ended("US-P1-001", 2))).unwrap();
        assert_eq!(seqs(&store.story_iterations("/p", 1, "US-P1-001").unwrap()), [1, 5, 6, 8]);
    }
}
