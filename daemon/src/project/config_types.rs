//! The type each key of orchestrator.config.json must have, checked before serde reads the
//! file: a value of the wrong type is refused by its key's full name and what to write, in
//! words ("worker.command must be an argv array of strings or a string"), never serde's
//! "expected usize" or "did not match any variant of untagged enum CommandSpec".

use serde_json::Value;

/// What a key holds.
#[derive(Clone, Copy)]
enum Shape {
    /// A whole number, 0 or more (zero is refused later by name where it is no setting).
    Count,
    Flag,
    /// A number of USD, or null.
    Usd,
    /// An argv array of strings or a string; `nullable` for `verify`.
    Command {
        nullable: bool,
    },
    /// One of these words.
    Word(&'static [&'static str]),
    Text,
    TextList,
    TextMap,
    /// A whole number or null (off).
    CountOrNull,
}

const TOP: &[(&str, Shape)] = &[
    ("max_parallel_workers", Shape::Count),
    ("max_iterations_per_task", Shape::Count),
    ("retry_limit", Shape::Count),
    ("auto_commit", Shape::Flag),
    ("workspace", Shape::Word(&["worktree", "shared"])),
    ("verify", Shape::Command { nullable: true }),
    ("push", Shape::Flag),
    ("max_cost_usd_per_story", Shape::Usd),
    ("max_cost_usd_per_phase", Shape::Usd),
];

const WORKER: &[(&str, Shape)] = &[
    ("preset", Shape::Text),
    ("command", Shape::Command { nullable: false }),
    ("args", Shape::TextList),
    ("stdin", Shape::Word(&["spec", "none"])),
    ("iteration_timeout_secs", Shape::Count),
    ("exit_grace_secs", Shape::Count),
    ("idle_timeout_secs", Shape::CountOrNull),
    ("env", Shape::TextMap),
    ("limit_patterns", Shape::TextList),
];

/// Keys of `worker` whose `null` means "not given".
const WORKER_NULLABLE: &[&str] = &["preset", "command", "stdin", "iteration_timeout_secs", "exit_grace_secs"];

const USAGE_LIMIT: &[(&str, Shape)] =
    &[("margin_secs", Shape::Count), ("backoff_min_secs", Shape::Count), ("backoff_max_secs", Shape::Count)];

const RUNNER: &[(&str, Shape)] = &[
    ("kind", Shape::Word(&["local", "slurm"])),
    ("partition", Shape::Text),
    ("time_limit_mins", Shape::Count),
    ("cpus", Shape::Count),
    ("mem_mb", Shape::Count),
    ("extra_args", Shape::TextList),
];

/// Checks the types of the keys of `top`, an object whose keys are known (`config_keys`).
pub(super) fn check(top: &serde_json::Map<String, Value>) -> Result<(), String> {
    check_section("", top, TOP)?;
    for (section, shapes) in [("worker", WORKER), ("usage_limit", USAGE_LIMIT), ("runner", RUNNER)] {
        if let Some(Value::Object(map)) = top.get(section) {
            // worker's optional settings read `null` as not given (the preset's value).
            let map: serde_json::Map<String, Value> = map
                .iter()
                .filter(|(key, value)| {
                    !(section == "worker" && value.is_null() && WORKER_NULLABLE.contains(&key.as_str()))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let map = &map;
            check_section(&format!("{section}."), map, shapes)?;
        }
    }
    Ok(())
}

fn check_section(prefix: &str, map: &serde_json::Map<String, Value>, shapes: &[(&str, Shape)]) -> Result<(), String> {
    for (key, shape) in shapes {
        let Some(value) = map.get(*key) else { continue };
        if !fits(*shape, value) {
            return Err(format!("{prefix}{key} must be {}, not {}", expected(*shape), shown(value)));
        }
    }
    Ok(())
}

fn fits(shape: Shape, value: &Value) -> bool {
    let strings = |v: &Vec<Value>| v.iter().all(Value::is_string);
    match (shape, value) {
        (Shape::Count, v) | (Shape::CountOrNull, v) if v.is_u64() => true,
        (Shape::CountOrNull | Shape::Usd | Shape::Command { nullable: true }, Value::Null) => true,
        (Shape::Flag, Value::Bool(_)) | (Shape::Usd, Value::Number(_)) | (Shape::Text, Value::String(_)) => true,
        (Shape::Command { .. }, Value::String(_)) => true,
        (Shape::Command { .. } | Shape::TextList, Value::Array(items)) => strings(items),
        (Shape::Word(words), Value::String(s)) => words.contains(&s.as_str()),
        (Shape::TextMap, Value::Object(map)) => map.values().all(Value::is_string),
        _ => false,
    }
}

fn expected(shape: Shape) -> String {
    match shape {
        Shape::Count => "a whole number such as 3".into(),
        Shape::CountOrNull => "a whole number of seconds, or null for off".into(),
        Shape::Flag => "true or false".into(),
        Shape::Usd => "a number of USD such as 2.5, or null".into(),
        Shape::Command { nullable } => format!(
            "an argv array of strings such as [\"claude\", \"-p\"] or a string run by sh -c{}",
            if nullable { ", or null" } else { "" }
        ),
        Shape::Word(words) => {
            format!("one of {}", words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(", "))
        }
        Shape::Text => "a string".into(),
        Shape::TextList => "an array of strings".into(),
        Shape::TextMap => "an object of string values such as {\"NAME\": \"value\"}".into(),
    }
}

/// The value as the user wrote it, cut short when long.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 40 {
        return text;
    }
    let mut cut: String = text.chars().take(39).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_json(json: &str) -> Result<(), String> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(map) => check(&map),
            _ => unreachable!(),
        }
    }

    #[test]
    fn wrong_types_are_named_by_key_with_what_to_write() {
        for (json, says) in [
            (r#"{"worker": {"command": 5}}"#, "worker.command must be an argv array of strings"),
            (r#"{"worker": {"command": ["a", 1]}}"#, "or a string run by sh -c, not [\"a\",1]"),
            (r#"{"max_parallel_workers": "x"}"#, "max_parallel_workers must be a whole number such as 3, not \"x\""),
            (r#"{"retry_limit": -1}"#, "retry_limit must be a whole number"),
            (r#"{"push": "no"}"#, "push must be true or false"),
            (r#"{"workspace": "tree"}"#, "workspace must be one of \"worktree\", \"shared\", not \"tree\""),
            (r#"{"worker": {"idle_timeout_secs": "10"}}"#, "worker.idle_timeout_secs must be a whole number"),
            (r#"{"worker": {"env": {"A": 1}}}"#, "worker.env must be an object of string values"),
            (r#"{"usage_limit": {"margin_secs": 1.5}}"#, "usage_limit.margin_secs must be a whole number"),
            (r#"{"runner": {"kind": "slurm", "cpus": "4"}}"#, "runner.cpus must be a whole number"),
            (r#"{"runner": {"kind": "lsf"}}"#, "runner.kind must be one of \"local\", \"slurm\", not \"lsf\""),
        ] {
            let err = check_json(json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
            assert!(!err.contains("expected") && !err.contains("untagged"), "{err}");
        }
    }

    #[test]
    fn right_types_pass() {
        let ok = r#"{"max_parallel_workers": 2, "verify": null, "max_cost_usd_per_story": 1.5,
            "worker": {"command": "echo hi", "idle_timeout_secs": null, "env": {"A": "b"}, "args": []}}"#;
        assert_eq!(check_json(r#"{"worker": {"command": null, "preset": "claude"}}"#), Ok(()));
        assert_eq!(check_json(ok), Ok(()));
    }
}
