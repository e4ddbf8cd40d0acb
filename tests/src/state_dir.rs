//! What a daemon keeps in its state folder, looked at from outside.

use std::time::Duration;

use crate::{poll, Daemon};

/// Waits until the start of `story`'s iteration `iteration` is durable: the daemon writes
/// `<iteration>.start.json` beside the iteration's log right after flushing the worker's record
/// and start event, so a daemon killed from now on finds (and adopts) the worker.
pub fn wait_start_recorded(daemon: &Daemon, story: &str, iteration: u32) {
    let logs = daemon.state_dir.join("logs");
    poll(Duration::from_secs(30), &format!("{story} iteration {iteration} recorded"), || {
        let projects = std::fs::read_dir(&logs).ok()?;
        projects
            .filter_map(Result::ok)
            .any(|project| project.path().join(story).join(format!("{iteration}.start.json")).is_file())
            .then_some(())
    });
}
