//! The live terminal view of `watch` and `start --wait`: events scroll by as lines, and below
//! them each phase being followed has an overall bar and one line per running story
//! (iteration, criteria done/total, elapsed time, focus).
//!
//! Events alone do not carry criteria or focus (the worker writes those to status.json), so
//! the view asks the daemon for `status` of the phases it follows: after events (at most 5
//! times a second) and once a second anyway, for elapsed times and focus changes.
//! Only for terminals; pipes get the plain line-per-event output, unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sticler_proto::{Event, EventKind, PhaseView, Request, Response, RunOutcome, ServerMessage, StoryState};

use crate::client::{Client, ClientError};
use crate::render;

/// After an event, the status refresh waits at least this long since the last one.
const MIN_REFRESH: Duration = Duration::from_millis(200);
/// Without events, status is refreshed this often (elapsed times, focus).
const IDLE_REFRESH: Duration = Duration::from_secs(1);

type PhaseKey = (String, u32);

struct PhaseBars {
    overall: ProgressBar,
    stories: BTreeMap<String, ProgressBar>,
}

pub struct LiveView {
    socket: PathBuf,
    multi: MultiProgress,
    phases: BTreeMap<PhaseKey, PhaseBars>,
    /// One connection reused for the status refreshes; reopened after an error.
    status: Option<Client>,
}

/// `{wide_msg}`: indicatif gives the message what is left of the terminal's width and cuts it
/// there, so a line never wraps (a wrapped line is redrawn badly: "1 bl / ocked").
fn overall_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:.bold} [{bar:12.green/dim}] {pos}/{len} stories completed  {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn story_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner:.cyan} {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl LiveView {
    pub fn new(socket: &Path) -> LiveView {
        LiveView {
            socket: socket.to_path_buf(),
            // stdout, like the plain output: `watch > file` is never a terminal anyway.
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            phases: BTreeMap::new(),
            status: None,
        }
    }

    /// Follows a phase (a bar appears at the next refresh).
    pub fn track(&mut self, project: &str, phase: u32) {
        let key = (project.to_string(), phase);
        if self.phases.contains_key(&key) {
            return;
        }
        let overall = self.multi.add(ProgressBar::new(0).with_style(overall_style()));
        overall.set_prefix(format!("phase {phase}"));
        self.phases.insert(key, PhaseBars { overall, stories: BTreeMap::new() });
    }

    /// Prints the event above the bars.
    pub fn event(&mut self, event: &Event) {
        let _ = self.multi.println(render::event(event));
        self.track(&event.project, event.phase);
    }

    /// Asks the daemon for the status of every followed phase and redraws.
    pub fn refresh(&mut self) {
        let keys: Vec<PhaseKey> = self.phases.keys().cloned().collect();
        for key in keys {
            if let Some(view) = self.phase_status(&key) {
                self.show(&key, &view);
            }
        }
    }

    fn phase_status(&mut self, (project, phase): &PhaseKey) -> Option<PhaseView> {
        let request = Request::Status { project: project.clone(), phase: Some(*phase), story: None };
        let client = match self.status.as_mut() {
            Some(client) => client,
            None => self.status.insert(Client::connect(&self.socket).ok()?),
        };
        match client.call(request) {
            Ok(Response::Status(mut report)) if !report.phases.is_empty() => Some(report.phases.remove(0)),
            Ok(_) => None,
            Err(_) => {
                // The connection may have broken; the next refresh reconnects.
                self.status = None;
                None
            }
        }
    }

    fn show(&mut self, key: &PhaseKey, view: &PhaseView) {
        let Some(bars) = self.phases.get_mut(key) else { return };
        let c = &view.counts;
        bars.overall.set_prefix(format!("phase {} {}", view.phase, render::cut(&view.title, 16)));
        bars.overall.set_length(u64::from(c.total));
        bars.overall.set_position(u64::from(c.completed));
        let mut msg = format!("{} running", c.running);
        for (n, what) in [(c.failed, "failed"), (c.blocked, "blocked"), (c.invalid, "invalid")] {
            if n > 0 {
                msg.push_str(&format!(", {}", render::paint_state(StoryState::Failed, &format!("{n} {what}"))));
            }
        }
        if let Some(cost) = view.cost_usd {
            msg.push_str(&format!(", ${cost:.2}"));
        }
        if let Some(waiting) = &view.waiting {
            msg.push_str(&format!("  {}", render::paint_state(StoryState::Blocked, waiting)));
        }
        if !view.running {
            msg.push_str(&format!("  [{}]", view.status));
        }
        bars.overall.set_message(msg);

        let running: BTreeMap<&str, _> = view
            .stories
            .iter()
            .filter(|s| matches!(s.state, StoryState::Running | StoryState::Verifying))
            .map(|s| (s.id.as_str(), s))
            .collect();
        // Lines of stories that stopped running go away; new ones are added in id order.
        bars.stories.retain(|id, bar| {
            let keep = running.contains_key(id.as_str());
            if !keep {
                bar.finish_and_clear();
                self.multi.remove(bar);
            }
            keep
        });
        for (id, story) in running {
            if !bars.stories.contains_key(id) {
                // Under the phase's last story line, so lines stay in the order stories start.
                let after = bars.stories.values().last().unwrap_or(&bars.overall).clone();
                let bar = self.multi.insert_after(&after, ProgressBar::new_spinner().with_style(story_style()));
                bars.stories.insert(id.to_string(), bar);
            }
            let Some(bar) = bars.stories.get(id) else { continue };
            let state = if story.state == StoryState::Verifying { "verifying" } else { "running" };
            let elapsed = story.running_secs.map(|s| format!(" {s}s")).unwrap_or_default();
            let focus =
                if story.focus.is_empty() { String::new() } else { format!("  {}", render::cut(&story.focus, 60)) };
            bar.set_message(format!(
                "{:<11} {}{elapsed}  iteration {}  criteria {}/{}{focus}",
                story.id,
                render::paint_state(story.state, state),
                render::shown_iteration(story),
                story.criteria_done,
                story.criteria_total
            ));
        }
    }

    /// Spinners move between refreshes so a long iteration visibly lives.
    pub fn tick(&self) {
        for bars in self.phases.values() {
            for bar in bars.stories.values() {
                bar.tick();
            }
        }
    }

    /// Removes the story lines and leaves each phase's bar as it last was.
    pub fn finish(&mut self) {
        for bars in self.phases.values_mut() {
            for (_, bar) in std::mem::take(&mut bars.stories) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
            bars.overall.abandon();
        }
    }
}

/// Follows a watch stream with the live view. With `until_end`, returns the outcome of the
/// first run that ends (for `start --wait`); otherwise runs until the stream breaks.
pub fn follow(
    watcher: crate::reconnect::Watch,
    socket: &Path,
    start: Option<(String, u32)>,
    until_end: bool,
) -> Result<RunOutcome, ClientError> {
    let mut view = LiveView::new(socket);
    if let Some((project, phase)) = start {
        view.track(&project, phase);
    }
    // The stream blocks on reads; a thread turns it into a channel so the view can refresh
    // and tick between events.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut watcher = watcher;
        loop {
            let message = watcher.next();
            let failed = message.is_err();
            if tx.send(message).is_err() || failed {
                return;
            }
        }
    });
    let mut last_refresh = Instant::now();
    view.refresh();
    let mut dirty = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(ServerMessage::Event(event))) => {
                view.event(&event);
                dirty = true;
                if let (true, EventKind::RunEnded { outcome, .. }) = (until_end, &event.kind) {
                    view.refresh();
                    view.finish();
                    return Ok(*outcome);
                }
            }
            Ok(Ok(ServerMessage::Response(_))) => {}
            Ok(Ok(other)) => {
                view.finish();
                return Err(ClientError::Protocol(format!("unexpected {other:?}")));
            }
            Ok(Err(e)) => {
                view.finish();
                return Err(e);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                view.finish();
                return Err(ClientError::Protocol("the event stream ended".into()));
            }
        }
        let since = last_refresh.elapsed();
        if (dirty && since >= MIN_REFRESH) || since >= IDLE_REFRESH {
            view.refresh();
            last_refresh = Instant::now();
            dirty = false;
        }
        view.tick();
    }
}
