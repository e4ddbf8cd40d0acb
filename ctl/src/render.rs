//! Human output of `status`, `validate` and events.

use std::fmt::Write;

use sticler_proto::{Event, EventKind, PhaseView, RunOutcome, StoryState, StoryView, TokenUsage, ValidationReport};

/// Whether output gets colours: only on a terminal, and never when NO_COLOR is set to
/// anything non-empty (https://no-color.org). Decided once in `main`.
pub fn init_colours(stdout_is_terminal: bool) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    console::set_colors_enabled(stdout_is_terminal && !no_color && !dumb);
}

/// `text` in the colour of a story state (plain when colours are off).
pub fn paint_state(state: StoryState, text: &str) -> String {
    let style = match state {
        StoryState::Completed => console::Style::new().green(),
        StoryState::Failed | StoryState::Invalid => console::Style::new().red().bold(),
        StoryState::Blocked => console::Style::new().yellow(),
        StoryState::Running | StoryState::Verifying | StoryState::Merging => console::Style::new().cyan(),
        StoryState::Pending | StoryState::Ready => console::Style::new().dim(),
    };
    style.apply_to(text).to_string()
}

pub fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The iteration to show for a story: the one running now, else the worker's own counter
/// from status.json (which a running worker may not have raised yet).
pub fn shown_iteration(story: &StoryView) -> u32 {
    story.running_iteration.unwrap_or(story.iteration)
}

fn state_label(story: &StoryView) -> String {
    match story.state {
        StoryState::Running => match story.running_secs {
            Some(secs) => format!("running {secs}s"),
            None => "running".into(),
        },
        state => state.as_str().into(),
    }
}

pub fn phase(view: &PhaseView) -> String {
    let mut out = String::new();
    let running = if view.running { ", running" } else { "" };
    let c = &view.counts;
    let _ = writeln!(out, "Phase {}: {} [{}{running}]", view.phase, view.title, view.status);
    let _ = writeln!(
        out,
        "  {} stories: {} completed, {} running, {} pending, {} failed, {} blocked{}",
        c.total,
        c.completed,
        c.running,
        c.pending,
        c.failed,
        c.blocked,
        if c.invalid > 0 { format!(", {} invalid", c.invalid) } else { String::new() }
    );
    if let Some(cost) = view.cost_usd {
        let budget = view.budget_usd.map(|b| format!(" of ${b:.2} budget")).unwrap_or_default();
        let _ = writeln!(out, "  cost: ${cost:.2}{budget}{}", tokens(view.tokens.as_ref()));
    }
    if let Some(waiting) = &view.waiting {
        let _ = writeln!(out, "  {}", paint_state(StoryState::Blocked, waiting));
    }
    if let Some(summary) = &view.summary {
        let _ = writeln!(out, "  last run: {summary}");
    }
    let costs = view.stories.iter().any(|s| s.cost_usd.is_some());
    if !view.stories.is_empty() {
        let _ = writeln!(
            out,
            "  {:<11} {:<13} {:>4} {:>8}  {:<21} {:<7}  {}FOCUS",
            "ID",
            "STATE",
            "ITER",
            "CRITERIA",
            "DEPENDS ON",
            "COMMIT",
            if costs { format!("{:>8}  ", "COST") } else { String::new() }
        );
    }
    for s in &view.stories {
        let deps = if s.dependencies.is_empty() { "-".to_string() } else { s.dependencies.join(",") };
        let mut focus = s.focus.clone();
        if s.state == StoryState::Blocked && !s.blocked_by.is_empty() {
            focus = format!("blocked by {}", s.blocked_by.join(", "));
        } else if s.state == StoryState::Failed {
            if let Some(last) = s.failed_reasons.last() {
                focus = last.clone();
            }
        }
        let _ = writeln!(
            out,
            "  {:<11} {} {:>4} {:>8}  {:<21} {:<7}  {}{}",
            s.id,
            paint_state(s.state, &format!("{:<13}", state_label(s))),
            shown_iteration(s),
            format!("{}/{}", s.criteria_done, s.criteria_total),
            cut(&deps, 21),
            if s.commit_hash.is_empty() { "-" } else { s.commit_hash.get(..7).unwrap_or(&s.commit_hash) },
            if costs { format!("{:>8}  ", cost_cell(s)) } else { String::new() },
            cut(&focus, 60)
        );
    }
    for p in &view.problems {
        let _ = writeln!(out, "  problem: {p}");
    }
    out
}

pub fn story(view: &PhaseView, s: &StoryView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {}  (phase {}: {})", s.id, s.title, view.phase, view.title);
    let _ = writeln!(out, "  state:        {} (status.json: {})", state_label(s), s.disk_status);
    let _ = writeln!(out, "  iteration:    {} (sticler ran {} this run)", s.iteration, s.runs);
    if let Some(running) = s.running_iteration {
        let _ = writeln!(out, "  running:      iteration {running}");
    }
    if let Some(exit) = s.last_exit {
        let _ = writeln!(out, "  last ended:   {}", exit.describe());
    }
    let _ = writeln!(out, "  criteria:     {}/{}", s.criteria_done, s.criteria_total);
    let deps = if s.dependencies.is_empty() { "none".to_string() } else { s.dependencies.join(", ") };
    let _ = writeln!(out, "  depends on:   {deps}");
    if !s.blocked_by.is_empty() {
        let _ = writeln!(out, "  blocked by:   {}", s.blocked_by.join(", "));
    }
    let _ = writeln!(out, "  focus:        {}", s.focus);
    if let Some(cost) = s.cost_usd {
        let _ = writeln!(out, "  cost:         ${cost:.2}{}", tokens(s.tokens.as_ref()));
    }
    if !s.commit_hash.is_empty() {
        let _ = writeln!(out, "  commit:       {}", s.commit_hash);
    }
    if let Some(why) = &s.waiting {
        let _ = writeln!(out, "  waiting:      {why}");
    }
    if let Some(worktree) = &s.worktree {
        let _ = writeln!(out, "  worktree:     {worktree}");
    }
    for reason in &s.failed_reasons {
        let _ = writeln!(out, "  failed:       {reason}");
    }
    out
}

/// " (N input, N output, N cache tokens)", or "" when none were reported.
fn tokens(tokens: Option<&TokenUsage>) -> String {
    tokens.map_or_else(String::new, |t| {
        format!(" ({} input, {} output, {} cache tokens)", t.input, t.output, t.cache_creation + t.cache_read)
    })
}

/// The stories' cost, for the COST column (shown only when some story has one).
fn cost_cell(story: &StoryView) -> String {
    story.cost_usd.map_or_else(|| "-".to_string(), |c| format!("${c:.2}"))
}

pub fn validation(report: &ValidationReport) -> String {
    if report.problems.is_empty() {
        return format!("phase {} of {} is valid ({} stories)\n", report.phase, report.project, report.stories);
    }
    let mut out = format!("phase {} of {} has {} problem(s):\n", report.phase, report.project, report.problems.len());
    for p in &report.problems {
        let _ = writeln!(out, "  {p}");
    }
    out
}

pub fn event(event: &Event) -> String {
    let secs = event.time_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let text = event.kind.describe();
    let text = match &event.kind {
        EventKind::StoryCompleted { .. } | EventKind::RunEnded { outcome: RunOutcome::Completed, .. } => {
            paint_state(StoryState::Completed, &text)
        }
        EventKind::StoryFailed { .. } | EventKind::RunEnded { outcome: RunOutcome::Failed, .. } => {
            paint_state(StoryState::Failed, &text)
        }
        EventKind::StoryBlocked { .. }
        | EventKind::RunStopping { .. }
        | EventKind::RunEnded { .. }
        | EventKind::UsageLimitWait { .. }
        | EventKind::BudgetSpent { .. } => paint_state(StoryState::Blocked, &text),
        _ => text,
    };
    format!("{h:02}:{m:02}:{s:02} #{:<5} phase {} {text}", event.seq, event.phase)
}
