//! Reading what an agent printed during one iteration (its log file): whether it hit a usage
//! or rate limit (and when that resets), what the iteration cost, and the error it ended with.
//!
//! Claude Code's stream-json lines are parsed as JSON; every other line is plain text matched
//! against the preset's limit patterns. JSON lines are never matched as text: an agent that is
//! writing rate-limiter code prints "rate limit" in its messages without being limited.

use std::io::BufRead;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sticler_proto::TokenUsage;

use crate::agent::OutputFormat;

/// The agent was refused for its usage or rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitHit {
    /// When the limit resets (unix seconds), when the agent said so.
    pub reset_unix: Option<i64>,
    /// The line or event that showed it, shortened.
    pub evidence: String,
}

/// What the agent reported about itself over one iteration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReport {
    pub limit: Option<LimitHit>,
    pub usage: IterationUsage,
    /// The text of a final result marked as an error.
    pub error: Option<String>,
}

/// Cost and tokens of one iteration, as the backend reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationUsage {
    pub cost_usd: Option<f64>,
    pub tokens: Option<TokenUsage>,
    pub duration_ms: Option<u64>,
}

/// Log lines longer than this are not looked at (a tool result can be megabytes; results,
/// limit events and limit messages are short).
const MAX_LINE: usize = 256 * 1024;

/// Reads the iteration log at `path`. A missing or unreadable log reports nothing.
pub fn read_log(path: &Path, format: OutputFormat, patterns: &[Regex]) -> AgentReport {
    let Ok(file) = std::fs::File::open(path) else { return AgentReport::default() };
    let mut report = AgentReport::default();
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => continue,
            Ok(_) => report.line(&String::from_utf8_lossy(&line), format, patterns),
        }
    }
    report
}

/// Parses a whole output at once (tests, and small outputs).
#[cfg(test)]
pub fn parse(text: &str, format: OutputFormat, patterns: &[Regex]) -> AgentReport {
    let mut report = AgentReport::default();
    for line in text.lines() {
        report.line(line, format, patterns);
    }
    report
}

impl AgentReport {
    fn line(&mut self, line: &str, format: OutputFormat, patterns: &[Regex]) {
        let line = line.trim_end();
        if format == OutputFormat::ClaudeStreamJson && line.starts_with('{') {
            if let Ok(event) = serde_json::from_str::<Value>(line) {
                self.claude_event(&event, patterns);
                return;
            }
        }
        self.text(line, patterns);
    }

    /// A plain-text line: the first pattern that matches is a limit hit.
    fn text(&mut self, line: &str, patterns: &[Regex]) {
        for pattern in patterns {
            if let Some(caps) = pattern.captures(line) {
                let reset = caps.name("reset").and_then(|m| epoch_secs(m.as_str()));
                self.hit(reset, line);
                return;
            }
        }
    }

    fn hit(&mut self, reset_unix: Option<i64>, evidence: &str) {
        let evidence: String = evidence.chars().take(200).collect();
        match &mut self.limit {
            // A later line with a reset time improves an earlier one without.
            Some(hit) => {
                if hit.reset_unix.is_none() {
                    hit.reset_unix = reset_unix;
                }
            }
            None => self.limit = Some(LimitHit { reset_unix, evidence }),
        }
    }

    fn claude_event(&mut self, event: &Value, patterns: &[Regex]) {
        match event.get("type").and_then(Value::as_str) {
            Some("rate_limit_event") => {
                let info = event.get("rate_limit_info").unwrap_or(&Value::Null);
                let status = info.get("status").and_then(Value::as_str).unwrap_or("");
                // Sent on ordinary runs too; only a status other than allowed(_warning) limits.
                if !status.is_empty() && !status.starts_with("allowed") {
                    let reset = info.get("resetsAt").and_then(|v| v.as_i64().or_else(|| epoch_secs(v.as_str()?)));
                    let kind = info.get("rateLimitType").and_then(Value::as_str).unwrap_or("unknown");
                    self.hit(reset.map(normalise_epoch), &format!("rate_limit_event status {status} ({kind})"));
                }
            }
            Some("result") => self.claude_result(event, patterns),
            _ => {}
        }
    }

    fn claude_result(&mut self, event: &Value, patterns: &[Regex]) {
        let usage = event.get("usage");
        let count = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
        let tokens = TokenUsage {
            input: count("input_tokens").unwrap_or(0),
            output: count("output_tokens").unwrap_or(0),
            cache_creation: count("cache_creation_input_tokens").unwrap_or(0),
            cache_read: count("cache_read_input_tokens").unwrap_or(0),
        };
        self.usage = IterationUsage {
            cost_usd: event.get("total_cost_usd").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0),
            tokens: usage.is_some().then_some(tokens),
            duration_ms: event.get("duration_ms").and_then(Value::as_u64),
        };
        // `is_error` is the one to trust: results with subtype "success" and is_error true exist.
        if event.get("is_error").and_then(Value::as_bool) == Some(true) {
            let text = event.get("result").and_then(Value::as_str).unwrap_or("");
            let subtype = event.get("subtype").and_then(Value::as_str).unwrap_or("error");
            let text = if text.is_empty() { subtype.to_string() } else { text.chars().take(300).collect() };
            // The result text of an error is the agent's own message: limit messages count here.
            self.text(&text, patterns);
            self.error = Some(text);
        }
    }
}

/// Whether `line` (one line of the worker's output, newline excluded) is the agent's final
/// result event, after which the agent has nothing left to do: Claude Code's `{"type":"result"}`.
/// Formats without a structured end (plain text) never have one.
pub fn is_final_result(line: &[u8], format: OutputFormat) -> bool {
    match format {
        OutputFormat::ClaudeStreamJson => {
            let line = line.trim_ascii();
            // Most lines are assistant and tool events: a cheap test before a parse.
            line.starts_with(b"{")
                && line.windows(8).any(|w| w == b"\"result\"")
                && serde_json::from_slice::<Value>(line)
                    .is_ok_and(|event| event.get("type").and_then(Value::as_str) == Some("result"))
        }
        OutputFormat::Text => false,
    }
}

fn epoch_secs(text: &str) -> Option<i64> {
    text.trim().parse::<i64>().ok().map(normalise_epoch)
}

/// Unix seconds from seconds or milliseconds.
fn normalise_epoch(n: i64) -> i64 {
    if n > 100_000_000_000 {
        n / 1000
    } else {
        n
    }
}

/// Compiled patterns by their text. The config is read at every `validate` and `start`, and
/// compiling a case-insensitive pattern costs milliseconds; a `Regex` clone is a reference.
static COMPILED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Regex>>> =
    std::sync::OnceLock::new();

/// Compiles limit patterns case-insensitively; the error names the pattern.
pub fn compile(patterns: &[String]) -> Result<Vec<Regex>, String> {
    let cache = COMPILED.get_or_init(Default::default);
    patterns
        .iter()
        .map(|p| {
            let mut cache = crate::lock::lock(cache);
            if let Some(regex) = cache.get(p) {
                return Ok(regex.clone());
            }
            let regex = regex::RegexBuilder::new(p)
                .case_insensitive(true)
                .build()
                .map_err(|e| format!("pattern {p:?}: {e}"))?;
            // Only the config's patterns land here, so the cache stays small.
            cache.insert(p.clone(), regex.clone());
            Ok(regex)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent;

    fn claude_patterns() -> Vec<Regex> {
        let preset = agent::preset("claude").map(|p| p.limit_patterns).unwrap_or_default();
        compile(&preset.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn claude(text: &str) -> AgentReport {
        parse(text, OutputFormat::ClaudeStreamJson, &claude_patterns())
    }

    // Samples written for these tests in the shape of Claude Code's stream-json output.
    const INIT: &str =
        r#"{"type":"system","subtype":"init","session_id":"s-1","model":"m","tools":["Bash"],"cwd":"/p"}"#;
    const ALLOWED: &str = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","resetsAt":1900000000,"rateLimitType":"five_hour","overageStatus":"rejected","isUsingOverage":false},"uuid":"u-1","session_id":"s-1"}"#;
    const ASSISTANT_TALKS_ABOUT_LIMITS: &str = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Adding a rate_limit_error handler: usage limit reached|1800000000"}]}}"#;

    #[test]
    fn a_successful_run_reports_cost_and_tokens_and_no_limit() {
        let result = r#"{"type":"result","subtype":"success","is_error":false,"result":"Done: criteria 1-2 met","duration_ms":81234,"num_turns":12,"session_id":"s-1","total_cost_usd":0.4213,"usage":{"input_tokens":120,"output_tokens":3456,"cache_creation_input_tokens":20000,"cache_read_input_tokens":350000},"modelUsage":{"m":{"inputTokens":120}}}"#;
        let report = claude(&[INIT, ALLOWED, ASSISTANT_TALKS_ABOUT_LIMITS, result].join("\n"));
        assert_eq!(report.limit, None, "allowed events and assistant text are no limit");
        assert_eq!(report.error, None);
        assert_eq!(report.usage.cost_usd, Some(0.4213));
        assert_eq!(report.usage.duration_ms, Some(81234));
        let tokens = report.usage.tokens.unwrap();
        assert_eq!((tokens.input, tokens.output, tokens.cache_creation, tokens.cache_read), (120, 3456, 20000, 350000));
    }

    #[test]
    fn a_rejected_rate_limit_event_is_a_limit_with_its_reset() {
        let rejected = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1900003600,"rateLimitType":"seven_day"},"session_id":"s-1"}"#;
        let result = r#"{"type":"result","subtype":"success","is_error":true,"result":"Limit reached for this week","total_cost_usd":0.0,"usage":{"input_tokens":0,"output_tokens":0}}"#;
        let report = claude(&[INIT, rejected, result].join("\n"));
        let hit = report.limit.unwrap();
        assert_eq!(hit.reset_unix, Some(1_900_003_600));
        assert!(hit.evidence.contains("rejected") && hit.evidence.contains("seven_day"), "{}", hit.evidence);
        assert_eq!(report.error.as_deref(), Some("Limit reached for this week"));
    }

    #[test]
    fn the_old_pipe_form_in_a_result_or_in_plain_text_gives_the_reset() {
        let result = r#"{"type":"result","subtype":"success","is_error":true,"result":"Claude AI usage limit reached|1900007200"}"#;
        assert_eq!(claude(result).limit.and_then(|h| h.reset_unix), Some(1_900_007_200));
        let text = "starting\nClaude AI usage limit reached|1900007200000\n";
        let report = parse(text, OutputFormat::Text, &claude_patterns());
        assert_eq!(report.limit.and_then(|h| h.reset_unix), Some(1_900_007_200), "milliseconds are read as seconds");
    }

    #[test]
    fn the_newer_text_form_is_a_limit_without_a_time() {
        let report =
            parse("You've hit your limit · resets 5pm (Europe/Paris)\n", OutputFormat::Text, &claude_patterns());
        let hit = report.limit.unwrap();
        assert_eq!(hit.reset_unix, None);
        assert!(hit.evidence.starts_with("You've hit your limit"));
    }

    #[test]
    fn an_error_result_is_kept_and_json_noise_is_tolerated() {
        let text = [
            "not json at all",
            "{broken json",
            r#"{"type":"future_event","x":1}"#,
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,"result":"","total_cost_usd":0.02}"#,
        ]
        .join("\n");
        let report = claude(&text);
        assert_eq!(report.error.as_deref(), Some("error_during_execution"));
        assert_eq!(report.usage.cost_usd, Some(0.02));
        assert_eq!(report.usage.tokens, None);
        assert_eq!(report.limit, None);
    }

    #[test]
    fn only_a_result_event_of_a_structured_format_is_the_final_result() {
        let claude = |line: &str| is_final_result(line.as_bytes(), OutputFormat::ClaudeStreamJson);
        let result = r#"{"type":"result","subtype":"success","is_error":false,"result":"done"}"#;
        assert!(claude(result));
        assert!(claude(&format!("  {result}\r")), "surrounding blanks and a CR are tolerated");
        assert!(claude(r#"{"subtype":"error_max_turns","is_error":true,"type":"result"}"#), "any field order");
        for not_final in [
            INIT,
            ALLOWED,
            ASSISTANT_TALKS_ABOUT_LIMITS,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"{\"type\":\"result\"}"}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","content":"result"}]}}"#,
            r#"{"type":"result""#,
            r#"type":"result"}"#,
            "the result is ready",
            "",
        ] {
            assert!(!claude(not_final), "{not_final}");
        }
        assert!(!is_final_result(result.as_bytes(), OutputFormat::Text), "plain text has no structured end");
    }

    #[test]
    fn user_patterns_are_case_insensitive_and_bad_ones_are_named() {
        let patterns = compile(&["quota (?P<reset>\\d+)".into()]).unwrap();
        let report = parse("QUOTA 1900000000 exhausted", OutputFormat::Text, &patterns);
        assert_eq!(report.limit.and_then(|h| h.reset_unix), Some(1_900_000_000));
        let err = compile(&["(".into()]).unwrap_err();
        assert!(err.contains("\"(\""), "{err}");
    }
}
