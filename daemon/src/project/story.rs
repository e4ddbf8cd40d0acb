//! The fields of a story's `status.json` that sticler reads (`StatusSummary`, through the
//! `StatusFields` accessors).

use serde_json::{Map, Value};

/// The fields of status.json that sticler reads.
#[derive(Debug, Clone, Default)]
pub struct StatusSummary {
    status: String,
    title: String,
    focus: String,
    commit_hash: String,
    iteration: u32,
    dependencies: Vec<String>,
    failed_reasons: Vec<String>,
    criteria: (u32, u32),
}

impl StatusSummary {
    pub(super) fn of(map: &Map<String, Value>) -> StatusSummary {
        let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        let iteration = map.get("iteration").and_then(Value::as_u64).unwrap_or(0);
        let criteria = match map.get("criteria") {
            Some(Value::Array(items)) => {
                let done = items.iter().filter(|c| c.get("done").and_then(Value::as_bool) == Some(true));
                (done.count() as u32, items.len() as u32)
            }
            _ => (0, 0),
        };
        StatusSummary {
            status: text("status"),
            title: text("title"),
            focus: text("focus"),
            commit_hash: text("commit_hash"),
            iteration: u32::try_from(iteration).unwrap_or(u32::MAX),
            dependencies: string_list(map.get("dependencies")),
            failed_reasons: string_list(map.get("failed_reasons")),
            criteria,
        }
    }
}

/// Accessors for the fields of status.json that sticler reads.
pub trait StatusFields {
    fn summary(&self) -> &StatusSummary;

    fn status(&self) -> &str {
        &self.summary().status
    }
    fn title(&self) -> &str {
        &self.summary().title
    }
    fn focus(&self) -> &str {
        &self.summary().focus
    }
    fn commit_hash(&self) -> &str {
        &self.summary().commit_hash
    }
    fn iteration(&self) -> u32 {
        self.summary().iteration
    }
    fn dependencies(&self) -> &[String] {
        &self.summary().dependencies
    }
    fn failed_reasons(&self) -> &[String] {
        &self.summary().failed_reasons
    }
    /// (done, total) of the acceptance criteria.
    fn criteria(&self) -> (u32, u32) {
        self.summary().criteria
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}
