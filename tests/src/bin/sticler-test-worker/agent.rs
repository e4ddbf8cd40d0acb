//! What a coding agent (Claude Code) prints, imitated so that sticler's reading of agent output
//! (costs, tokens, error results, usage limits) is tested against real process output.

use std::io::{self, Write};

use serde_json::json;

use crate::invocation::Script;
use crate::unix_now;

/// What an agent refused for its usage limit prints (`script.limit_form`).
pub fn print_limit(script: &Script) {
    let reset = unix_now() + script.limit_reset_secs;
    match script.limit_form.as_str() {
        "pipe" => say!("Claude AI usage limit reached|{reset}"),
        "no_time" => say!("You've hit your limit · resets 5pm (Europe/Paris)"),
        _ => {
            say!("{}", json!({"type": "system", "subtype": "init", "session_id": "demo", "model": "demo"}));
            let info = json!({"status": "rejected", "resetsAt": reset, "rateLimitType": "five_hour"});
            say!("{}", json!({"type": "rate_limit_event", "rate_limit_info": info, "session_id": "demo"}));
            say!(
                "{}",
                json!({"type": "result", "subtype": "success", "is_error": true,
                       "result": "Usage limit reached for this window", "total_cost_usd": 0.0,
                       "usage": {"input_tokens": 0, "output_tokens": 0}})
            );
        }
    }
}

/// The last line of an agent's iteration (`script.agent_output`).
pub fn print_agent_result(script: &Script) {
    let error = match script.agent_output.as_deref() {
        Some("claude") => false,
        Some("claude_error") => true,
        _ => return,
    };
    say!("{}", json!({"type": "system", "subtype": "init", "session_id": "demo", "model": "demo"}));
    let info = json!({"status": "allowed", "resetsAt": unix_now() + 3600, "rateLimitType": "five_hour"});
    say!("{}", json!({"type": "rate_limit_event", "rate_limit_info": info, "session_id": "demo"}));
    say!(
        "{}",
        json!({"type": "result", "subtype": "success", "is_error": error,
               "result": if error { script.error_text.as_str() } else { "iteration done" },
               "duration_ms": 1200, "num_turns": 3, "total_cost_usd": script.cost_usd,
               "usage": {"input_tokens": 100, "output_tokens": 200,
                         "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 5000}})
    );
}
