//! The daemon-wide cap on running workers (`--max-workers`), shared by all runs. A run takes a
//! slot when the scheduler dispatches a story and gives it back when the scheduler releases it:
//! the scheduler's running count is the one count; this only enforces the cap across runs.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{watch, Semaphore};

pub struct Slots {
    semaphore: Semaphore,
    /// Bumped whenever a slot is given back, so runs waiting for one look again.
    freed: watch::Sender<u64>,
    /// Slots taken over the cap (adopted workers, see `take_over`): the next releases pay them
    /// back instead of freeing a slot.
    owed: AtomicUsize,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots { semaphore: Semaphore::new(max.max(1)), freed: watch::channel(0).0, owed: AtomicUsize::new(0) }
    }

    /// Takes a slot for a worker that already runs (an adopted one): a free one, else one over
    /// the cap, paid back by the next release.
    pub fn take_over(&self) {
        if !self.try_take() {
            self.owed.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn free(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Takes a slot if one is free.
    pub fn try_take(&self) -> bool {
        // The permit is forgotten: the slot is held until `release`, by the run's count.
        self.semaphore.try_acquire().map(|permit| permit.forget()).is_ok()
    }

    /// Gives one slot back.
    pub fn release(&self) {
        let paid = self.owed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |owed| owed.checked_sub(1)).is_ok();
        if paid {
            return;
        }
        self.semaphore.add_permits(1);
        self.freed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_and_come_back() {
        let slots = Slots::new(2);
        assert!(slots.try_take() && slots.try_take());
        assert!(!slots.try_take(), "the cap holds");
        let freed = slots.subscribe();
        slots.release();
        assert_eq!(slots.free(), 1);
        assert!(freed.has_changed().unwrap_or(false), "waiting runs are told");
    }

    #[test]
    fn a_slot_taken_over_the_cap_is_paid_back_by_the_next_release() {
        let slots = Slots::new(1);
        slots.take_over();
        slots.take_over();
        assert_eq!(slots.free(), 0);
        slots.release();
        assert_eq!(slots.free(), 0, "the slot taken over the cap is paid back first");
        slots.release();
        assert_eq!(slots.free(), 1);
    }
}
