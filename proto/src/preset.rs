//! Backend presets: what sticler knows of each coding agent it can run as the worker. A preset
//! is a command line (with the worker placeholders), what goes on the agent's stdin, how its
//! output is read, and the text that means "usage or rate limit hit".
//!
//! The table is here, next to the protocol, because the daemon runs it and `sticlerctl presets`
//! prints it (without a daemon). The flags follow each agent's documented non-interactive form;
//! where a flag is an assumption the preset's `note` says so.

use serde::Serialize;

/// How an agent's output is read, while the iteration runs (its final result event) and after
/// it (limits, cost, the error it ended with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Claude Code's `--output-format stream-json`: one JSON event per line, a `result` last;
    /// that `result` is the agent's word that the iteration is over.
    ClaudeStreamJson,
    /// Plain text: only the limit patterns apply, and the iteration ends when the process exits.
    Text,
}

#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    pub name: &'static str,
    pub summary: &'static str,
    /// argv with the worker placeholders (`{story_id}`, `{spec}`, `{status}`, …).
    pub argv: &'static [&'static str],
    /// `spec`: the story's spec.md on stdin; `none`: /dev/null.
    pub stdin: &'static str,
    pub output: OutputFormat,
    /// Regexes (case-insensitive) of output lines that mean the agent hit a usage or rate limit.
    /// A named group `reset` holding unix seconds (or milliseconds) gives the reset time.
    pub limit_patterns: &'static [&'static str],
    pub note: &'static str,
}

/// The prompt of the agents that have no `/phase-worker` command of their own.
const PROMPT: &str = "You are the worker of story {story_id}. Read the story's spec at {spec} and its progress file \
{status}, do the next step toward its acceptance criteria, and record your progress, notes and status in {status} \
as the phase-worker contract says. Set status to completed when every criterion is met, or failed if it cannot be done.";

/// Claude Code's plain-text limit messages: the older `...usage limit reached|<unix seconds>`,
/// the newer "You've hit your limit · resets 5pm (…)" (no machine-readable time: backoff), and
/// the API's 429 error kind.
const CLAUDE_LIMITS: &[&str] =
    &[r"usage limit reached\|(?P<reset>\d{9,13})", r"you've hit your (usage )?limit", r"rate_limit_error"];

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "claude",
        summary: "Claude Code, non-interactive, streaming JSON events (cost, tokens and limits are read)",
        argv: &[
            "claude",
            "-p",
            "/phase-worker {story_id}",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
        ],
        stdin: "spec",
        output: OutputFormat::ClaudeStreamJson,
        limit_patterns: CLAUDE_LIMITS,
        note: "stream-json needs --verbose with -p; the /phase-worker command must be installed in the project; the iteration ends at the final `result` event (worker.exit_grace_secs after it at the latest)",
    },
    Preset {
        name: "codex",
        summary: "OpenAI Codex CLI, `codex exec` (no approvals in exec mode) in a workspace-write sandbox",
        argv: &["codex", "exec", "--sandbox", "workspace-write", PROMPT],
        stdin: "none",
        output: OutputFormat::Text,
        limit_patterns: &[r"you've hit your usage limit", r"rate limit (reached|exceeded)", r"\b429 Too Many Requests"],
        note: "--sandbox workspace-write replaces the deprecated --full-auto; output is read as text (its --json events are not read yet): the iteration ends when codex exits, or at the stall watchdog or the timeout",
    },
    Preset {
        name: "gemini",
        summary: "Google Gemini CLI, one prompt, auto-approving tool calls",
        argv: &["gemini", "--approval-mode", "yolo", "-p", PROMPT],
        stdin: "none",
        output: OutputFormat::Text,
        limit_patterns: &[r"RESOURCE_EXHAUSTED", r"quota exceeded", r"rate limit exceeded"],
        note: "--approval-mode yolo replaces the deprecated --yolo (older versions: preset command); output is read as text: the iteration ends when gemini exits, or at the stall watchdog or the timeout",
    },
    Preset {
        name: "aider",
        summary: "Aider, one message, answering yes to every question",
        argv: &["aider", "--message", PROMPT, "--yes-always"],
        stdin: "none",
        output: OutputFormat::Text,
        limit_patterns: &[r"RateLimitError", r"rate limit (reached|exceeded)"],
        note: "aider commits on its own unless --no-auto-commits is added with worker.args; no event stream: the iteration ends when aider exits, or at the stall watchdog or the timeout",
    },
    Preset {
        name: "opencode",
        summary: "OpenCode, `opencode run` with one prompt",
        argv: &["opencode", "run", PROMPT],
        stdin: "none",
        output: OutputFormat::Text,
        limit_patterns: &[r"rate limit (reached|exceeded)", r"usage limit"],
        note: "assumes `opencode run <prompt>`; output is read as text: the iteration ends when opencode exits, or at the stall watchdog or the timeout",
    },
    Preset {
        name: "command",
        summary: "any command: worker.command as given (the default when no preset is named)",
        argv: &["claude", "-p", "/phase-worker {story_id}", "--dangerously-skip-permissions"],
        stdin: "spec",
        // Any command may be Claude Code with --output-format stream-json (or a wrapper of it):
        // its events are read when they appear, other lines are text.
        output: OutputFormat::ClaudeStreamJson,
        limit_patterns: CLAUDE_LIMITS,
        note: "argv shown is the default worker.command; Claude's stream-json events (its final `result` ends the iteration, as with the claude preset) and plain-text limit messages are read when the command prints them",
    },
];

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn names() -> String {
    PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}
