//! The keys orchestrator.config.json may hold, checked before the config is read: an unknown
//! key is refused by name with the nearest known key, so a typo never falls back to a default.

use serde_json::Value;

/// Top-level keys (the fields of `OrchestratorConfig`).
pub(super) const TOP_KEYS: &[&str] = &[
    "max_parallel_workers",
    "max_iterations_per_task",
    "retry_limit",
    "auto_commit",
    "workspace",
    "worker",
    "verify",
    "push",
    "max_cost_usd_per_story",
    "max_cost_usd_per_phase",
    "usage_limit",
    "runner",
];

/// Keys of `worker` (the fields of `RawWorkerConfig`).
pub(super) const WORKER_KEYS: &[&str] = &[
    "preset",
    "command",
    "args",
    "stdin",
    "iteration_timeout_secs",
    "exit_grace_secs",
    "idle_timeout_secs",
    "env",
    "limit_patterns",
];

/// Keys of `usage_limit` (the fields of `UsageLimitConfig`).
pub(super) const USAGE_LIMIT_KEYS: &[&str] = &["margin_secs", "backoff_min_secs", "backoff_max_secs"];

/// Keys of `runner` (the fields of `RawRunner`).
pub(super) const RUNNER_KEYS: &[&str] = &["kind", "partition", "time_limit_mins", "cpus", "mem_mb", "extra_args"];

/// Checks the shape of the whole file: a JSON object whose keys, and those of `worker` and
/// `usage_limit` and `runner` when they are objects, are all known. The message says what to write instead.
pub(super) fn check(value: &Value) -> Result<(), String> {
    let Value::Object(top) = value else {
        return Err(format!(
            "expected a JSON object of settings such as {{\"max_parallel_workers\": 3}}, not {}",
            kind(value)
        ));
    };
    check_keys("", top.keys(), TOP_KEYS)?;
    for (section, known) in [("worker", WORKER_KEYS), ("usage_limit", USAGE_LIMIT_KEYS), ("runner", RUNNER_KEYS)] {
        match top.get(section) {
            Some(Value::Object(map)) => check_keys(&format!("{section}."), map.keys(), known)?,
            None | Some(Value::Null) => {}
            Some(other) => return Err(format!("{section} must be an object, not {}", kind(other))),
        }
    }
    Ok(())
}

fn check_keys<'a>(prefix: &str, keys: impl Iterator<Item = &'a String>, known: &[&str]) -> Result<(), String> {
    for key in keys {
        if !known.contains(&key.as_str()) {
            let hint = match nearest(key, known) {
                Some(near) => format!("did you mean \"{prefix}{near}\"?"),
                None => format!(
                    "known keys: {}",
                    known.iter().map(|k| format!("{prefix}{k}")).collect::<Vec<_>>().join(", ")
                ),
            };
            return Err(format!("unknown key \"{prefix}{key}\"; {hint}"));
        }
    }
    Ok(())
}

/// The known key closest to `key` by edit distance, when it is close enough to be a typo of it
/// (at most a third of the key's letters differ).
fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let (distance, near) = known.iter().map(|k| (edit_distance(key, k), *k)).min()?;
    (distance <= (key.chars().count() / 3).max(2)).then_some(near)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("max_paralel_workers", "max_parallel_workers"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn unknown_keys_are_named_with_the_nearest_known_one() {
        let check = |json: &str| check(&serde_json::from_str(json).unwrap());
        assert_eq!(
            check(r#"{"max_paralel_workers": 2}"#),
            Err("unknown key \"max_paralel_workers\"; did you mean \"max_parallel_workers\"?".into())
        );
        assert_eq!(
            check(r#"{"worker": {"comand": "x"}}"#),
            Err("unknown key \"worker.comand\"; did you mean \"worker.command\"?".into())
        );
        let far = check(r#"{"usage_limit": {"zzzzzzzz": 1}}"#).unwrap_err();
        assert!(far.starts_with("unknown key \"usage_limit.zzzzzzzz\"; known keys: usage_limit.margin_secs"), "{far}");
        assert!(check("[1, 2]").unwrap_err().contains("not a list"));
        assert!(check(r#"{"worker": "claude"}"#).unwrap_err().contains("worker must be an object, not a string"));
        assert_eq!(check(r#"{"worker": {"preset": "claude"}, "usage_limit": null, "push": false}"#), Ok(()));
    }
}
