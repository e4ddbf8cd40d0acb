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

/// The width output is fitted to: `$COLUMNS` when set to a number (scripts and tests pin it
/// there), else the terminal's width when stdout is one; `None` (nothing cut) for pipes and
/// files, so `grep` and scripts see whole lines.
pub fn terminal_width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok()) {
        return (columns > 0).then_some(columns);
    }
    let term = console::Term::stdout();
    if !term.is_term() {
        return None;
    }
    term.size_checked().map(|(_, columns)| usize::from(columns)).filter(|c| *c > 0)
}

/// `text` cut to `width` when there is one.
fn fit(text: &str, width: Option<usize>) -> String {
    width.map_or_else(|| text.to_string(), |w| cut(text, w))
}

/// A problem's path inside the project, shorter and the same wherever the project is.
fn short_path<'a>(project: &str, path: &'a str) -> &'a str {
    path.strip_prefix(project).and_then(|p| p.strip_prefix('/')).unwrap_or(path)
}

/// "Phase N: title [status]", or what is wrong with phase_config.json when it cannot be read.
fn phase_header(view: &PhaseView) -> String {
    let running = if view.running { ", running" } else { "" };
    let unreadable = view.problems.iter().find(|p| p.path.ends_with("/phase_config.json"));
    match unreadable {
        Some(problem) if view.title.is_empty() && view.status.is_empty() => {
            format!("Phase {}: (phase_config.json unreadable: {}){running}", view.phase, problem.message)
        }
        _ => format!("Phase {}: {} [{}{running}]", view.phase, view.title, view.status),
    }
}

pub fn phase(view: &PhaseView, width: Option<usize>) -> String {
    let mut out = String::new();
    let c = &view.counts;
    let _ = writeln!(out, "{}", fit(&phase_header(view), width));
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
        let _ = writeln!(out, "  {}", paint_state(StoryState::Blocked, &fit(waiting, width.map(|w| w - w.min(2)))));
    }
    if let Some(summary) = &view.summary {
        let _ = writeln!(out, "  last run: {summary}");
    }
    crate::table::stories(view, width, &mut out);
    // Problems are said whole (a cut message would hide what to fix), with paths in the project.
    for p in &view.problems {
        let _ = writeln!(out, "  problem: {}: {}", short_path(&view.project, &p.path), p.message);
    }
    out
}

pub fn story(view: &PhaseView, s: &StoryView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {}  (phase {}: {})", s.id, s.title, view.phase, view.title);
    let _ = writeln!(out, "  state:        {} (status.json: {})", crate::table::state_label(s), s.disk_status);
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
    if let Some(job) = &s.job {
        // PENDING (Resources), RUNNING on node7
        let place = match (&job.reason, &job.node) {
            (Some(reason), _) if job.state == "PENDING" => format!(" ({reason})"),
            (_, Some(node)) => format!(" on {node}"),
            _ => String::new(),
        };
        let _ = writeln!(out, "  slurm job:    {} {}{place}", job.id, job.state);
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

pub fn validation(report: &ValidationReport) -> String {
    if report.problems.is_empty() {
        return format!("phase {} of {} is valid ({} stories)\n", report.phase, report.project, report.stories);
    }
    let mut out = format!("phase {} of {} has {} problem(s):\n", report.phase, report.project, report.problems.len());
    for p in &report.problems {
        let _ = writeln!(out, "  {}: {}", short_path(&report.project, &p.path), p.message);
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
