//! The story table of `status`, fitted to a width: fixed columns (ID, STATE, ITER, CRITERIA,
//! DEPENDS ON, COMMIT, COST) and the rest shared by TITLE and FOCUS, each cut with `…`.
//! Narrow terminals (under 100 columns) drop COMMIT (`status <story>` shows it) and keep
//! DEPENDS ON to one id and how many more (`US-P1-002,+3`). Without a width nothing is cut.

use std::fmt::Write;

use sticler_proto::{PhaseView, StoryState, StoryView};

use crate::render::{cut, paint_state, shown_iteration};

/// Widths of the columns that change with the terminal; `None` means not cut.
struct Columns {
    deps: usize,
    commit: bool,
    cost: bool,
    title: Option<usize>,
    focus: Option<usize>,
}

/// ID, STATE, ITER and CRITERIA with their gaps and the row's indent.
const FIXED: usize = 2 + 11 + 1 + 13 + 1 + 4 + 1 + 8 + 2;

impl Columns {
    fn fit(view: &PhaseView, width: Option<usize>) -> Columns {
        let cost = view.stories.iter().any(|s| s.cost_usd.is_some());
        let longest_deps = view.stories.iter().map(|s| deps_text(&s.dependencies).chars().count()).max().unwrap_or(1);
        let longest_title = view.stories.iter().map(|s| s.title.chars().count()).max().unwrap_or(0).max(5);
        let Some(width) = width else {
            return Columns { deps: longest_deps.max(10), commit: true, cost, title: Some(longest_title), focus: None };
        };
        let commit = width >= 100;
        let deps = longest_deps.clamp(10, if width >= 120 { 21 } else { 12 });
        let used = FIXED + deps + 2 + if commit { 9 } else { 0 } + if cost { 10 } else { 0 };
        let rest = width.saturating_sub(used);
        // TITLE gets up to two fifths of what is left, FOCUS the rest.
        let title = longest_title.min((rest * 2 / 5).max(5));
        let focus = rest.saturating_sub(title + 2).max(1);
        Columns { deps, commit, cost, title: Some(title), focus: Some(focus) }
    }
}

fn deps_text(deps: &[String]) -> String {
    if deps.is_empty() {
        "-".into()
    } else {
        deps.join(",")
    }
}

/// The dependencies in `width` characters: as many ids as fit, then `+N` for the others.
pub fn deps_cell(deps: &[String], width: usize) -> String {
    let full = deps_text(deps);
    if full.chars().count() <= width {
        return full;
    }
    let mut shown = String::new();
    for (i, dep) in deps.iter().enumerate() {
        let more = format!("+{}", deps.len() - i);
        let sep = if shown.is_empty() { "" } else { "," };
        let rest_after = deps.len() - i - 1;
        let tail = if rest_after > 0 { format!(",+{rest_after}").len() } else { 0 };
        if shown.len() + sep.len() + dep.len() + tail > width {
            let joined = if shown.is_empty() { more } else { format!("{shown},{more}") };
            return cut(&joined, width);
        }
        shown = format!("{shown}{sep}{dep}");
    }
    shown
}

fn pad(text: &str, width: Option<usize>) -> String {
    match width {
        Some(w) => format!("{:<w$}", cut(text, w)),
        None => text.to_string(),
    }
}

/// The table's header and one row per story.
pub fn stories(view: &PhaseView, width: Option<usize>, out: &mut String) {
    if view.stories.is_empty() {
        return;
    }
    let c = Columns::fit(view, width);
    let commit_head = if c.commit { format!("{:<7}  ", "COMMIT") } else { String::new() };
    let cost_head = if c.cost { format!("{:>8}  ", "COST") } else { String::new() };
    let head = format!(
        "  {:<11} {:<13} {:>4} {:>8}  {:<deps$}  {commit_head}{cost_head}{}  FOCUS",
        "ID",
        "STATE",
        "ITER",
        "CRITERIA",
        "DEPENDS ON",
        pad("TITLE", c.title.or(Some(5))),
        deps = c.deps
    );
    let _ = writeln!(out, "{}", head.trim_end());
    for s in &view.stories {
        let _ = writeln!(out, "{}", row(s, &c).trim_end());
    }
}

fn row(s: &StoryView, c: &Columns) -> String {
    let mut focus = s.focus.clone();
    if s.state == StoryState::Blocked && !s.blocked_by.is_empty() {
        focus = format!("blocked by {}", s.blocked_by.join(", "));
    } else if let Some(why) = s.waiting.as_ref().filter(|_| s.state == StoryState::Pending) {
        // STATE says `waiting` already: FOCUS says for what.
        focus = why.strip_prefix("waiting for ").map_or_else(|| why.clone(), |what| format!("for {what}"));
    } else if s.state == StoryState::Failed {
        if let Some(last) = s.failed_reasons.last() {
            focus = last.clone();
        }
    }
    let commit = if !c.commit {
        String::new()
    } else if s.commit_hash.is_empty() {
        format!("{:<7}  ", "-")
    } else {
        format!("{:<7}  ", s.commit_hash.get(..7).unwrap_or(&s.commit_hash))
    };
    let cost = if c.cost {
        format!("{:>8}  ", s.cost_usd.map_or_else(|| "-".into(), |c| format!("${c:.2}")))
    } else {
        String::new()
    };
    let title = if s.title.is_empty() { "-" } else { &s.title };
    format!(
        "  {:<11} {} {:>4} {:>8}  {:<deps$}  {commit}{cost}{}  {}",
        s.id,
        paint_state(s.state, &format!("{:<13}", state_label(s))),
        shown_iteration(s),
        format!("{}/{}", s.criteria_done, s.criteria_total),
        deps_cell(&s.dependencies, c.deps),
        pad(title, c.title),
        c.focus.map_or(focus.clone(), |w| cut(&focus, w)),
        deps = c.deps
    )
}

pub fn state_label(story: &StoryView) -> String {
    match story.state {
        StoryState::Running => match story.running_secs {
            Some(secs) => format!("running {secs}s"),
            None => "running".into(),
        },
        // Pending, and why it cannot start yet (an earlier phase's story it waits for).
        StoryState::Pending if story.waiting.is_some() => "waiting".into(),
        state => state.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("US-P1-{i:03}")).collect()
    }

    #[test]
    fn dependencies_cut_say_how_many_more() {
        assert_eq!(deps_cell(&[], 12), "-");
        assert_eq!(deps_cell(&ids(1), 12), "US-P1-001");
        assert_eq!(deps_cell(&ids(4), 12), "US-P1-001,+3");
        assert_eq!(deps_cell(&ids(4), 21), "US-P1-001,+3");
        assert_eq!(deps_cell(&ids(2), 21), "US-P1-001,US-P1-002");
        assert_eq!(deps_cell(&ids(3), 22), "US-P1-001,US-P1-002,+1");
        assert_eq!(deps_cell(&ids(3), 5), "+3");
    }
}
