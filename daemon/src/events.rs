//! Numbered events: every transition gets the next sequence number, is kept in the store,
//! logged, and broadcast to `watch`, `wait` and `logs -f` clients.

use std::sync::{Arc, Mutex};

use sticler_proto::{Event, EventKind};
use tokio::sync::broadcast;

use crate::store::Store;

/// Sequence numbers reserved (and flushed) at a time. Events themselves are not flushed one by
/// one (that would cost an fsync each); after a crash the next daemon starts above the
/// reservation, so a number a watcher saw is never handed out twice. A clean shutdown gives the
/// unused rest back (`close`), so numbers then continue without a gap; a crash skips fewer than
/// this many.
const SEQ_BLOCK: u64 = 64;

pub struct EventBus {
    store: Arc<Store>,
    /// Held while numbering and storing, so sequence order is broadcast order: (last handed
    /// out, reserved up to).
    last_seq: Mutex<(u64, u64)>,
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(store: Arc<Store>) -> Result<EventBus, crate::store::StoreError> {
        let last = store.last_seq()?.max(store.seq_reserved()?);
        let (tx, _) = broadcast::channel(4096);
        Ok(EventBus { store, last_seq: Mutex::new((last, last)), tx })
    }

    pub fn emit(&self, project: &str, phase: u32, kind: EventKind) -> Event {
        let mut guard = crate::lock::lock(&self.last_seq);
        let (last, reserved) = &mut *guard;
        *last += 1;
        if *last > *reserved {
            *reserved = *last + SEQ_BLOCK;
            if let Err(e) = self.store.reserve_seq(*reserved) {
                tracing::error!(error = %e, "could not reserve event sequence numbers");
            }
        }
        let event = Event { seq: *last, time_ms: now_ms(), project: project.to_string(), phase, kind };
        if let Err(e) = self.store.append_event(&event) {
            tracing::error!(error = %e, "could not store event {}", event.seq);
        }
        log_event(&event);
        let _ = self.tx.send(event.clone());
        event
    }

    /// Gives back the numbers reserved but not handed out, at a clean shutdown once every run
    /// has ended: the next daemon continues at the next number. An event emitted after this
    /// reserves a new block, as usual.
    pub fn close(&self) -> Result<(), crate::store::StoreError> {
        let mut guard = crate::lock::lock(&self.last_seq);
        let (last, reserved) = &mut *guard;
        self.store.reserve_seq(*last)?;
        *reserved = *last;
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Logs an event with the fields journald indexes: PROJECT, PHASE, and STORY_ID and ITERATION
/// only when the event is about a story or an iteration (so `STORY_ID=` never matches "").
fn log_event(event: &Event) {
    let text = event.kind.describe();
    let (project, phase, seq) = (&event.project, event.phase, event.seq);
    let iteration = match &event.kind {
        EventKind::IterationStarted { iteration, .. } | EventKind::IterationEnded { iteration, .. } => Some(*iteration),
        _ => None,
    };
    match (event.kind.story(), iteration) {
        (Some(story), Some(iteration)) => {
            tracing::info!(seq, project = %project, phase, story_id = story, iteration, "{text}")
        }
        (Some(story), None) => tracing::info!(seq, project = %project, phase, story_id = story, "{text}"),
        _ => tracing::info!(seq, project = %project, phase, "{text}"),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(dir: &std::path::Path) -> EventBus {
        EventBus::new(Arc::new(Store::open(dir).unwrap())).unwrap()
    }

    fn emit_three(bus: &EventBus) -> u64 {
        (0..3).map(|_| bus.emit("/p", 1, EventKind::RunStarted { stories: 1 }).seq).last().unwrap()
    }

    #[test]
    fn numbers_continue_after_a_clean_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let first = bus(dir.path());
        assert_eq!(emit_three(&first), 3);
        first.close().unwrap();
        drop(first);
        assert_eq!(emit_three(&bus(dir.path())), 6);
    }

    #[test]
    fn after_a_crash_numbers_skip_the_reservation_and_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = bus(dir.path());
        let last = emit_three(&crashed);
        drop(crashed); // no close: as after a kill -9
        let next = bus(dir.path()).emit("/p", 1, EventKind::RunStarted { stories: 1 }).seq;
        assert!(next > last && next <= last + SEQ_BLOCK + 1, "{last} then {next}");
    }
}
