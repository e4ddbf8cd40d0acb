//! Numbered events: every transition gets the next sequence number, is kept in the store,
//! logged, and broadcast to `watch`, `wait` and `logs -f` clients.

use std::sync::{Arc, Mutex};

use sticler_proto::{Event, EventKind};
use tokio::sync::broadcast;

use crate::store::Store;

pub struct EventBus {
    store: Arc<Store>,
    /// Held while numbering and storing, so sequence order is broadcast order.
    last_seq: Mutex<u64>,
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(store: Arc<Store>) -> Result<EventBus, crate::store::StoreError> {
        let last = store.last_seq()?;
        let (tx, _) = broadcast::channel(4096);
        Ok(EventBus { store, last_seq: Mutex::new(last), tx })
    }

    pub fn emit(&self, project: &str, phase: u32, kind: EventKind) -> Event {
        let mut last = self.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        *last += 1;
        let event = Event { seq: *last, time_ms: now_ms(), project: project.to_string(), phase, kind };
        if let Err(e) = self.store.append_event(&event) {
            tracing::error!(error = %e, "could not store event {}", event.seq);
        }
        log_event(&event);
        let _ = self.tx.send(event.clone());
        event
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn log_event(event: &Event) {
    let story = event.kind.story().unwrap_or("");
    tracing::info!(
        seq = event.seq,
        project = %event.project,
        phase = event.phase,
        story_id = story,
        "{}",
        event.kind.describe()
    );
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
