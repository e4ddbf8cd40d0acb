//! Locking a std `Mutex` the daemon's way.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`. A poisoned lock still holds usable data (a panic elsewhere left it): a status
/// request or a run must not fail because of it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
