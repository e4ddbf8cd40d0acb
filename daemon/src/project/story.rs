//! A story's `status.json` as sticler sees it: the fields it reads (`StatusSummary`, through the
//! `StatusFields` accessors), its `status` as a `DiskStatus`, and the one field sticler writes
//! there itself (`JsonDoc::set_status`).

use serde_json::{Map, Value};

use super::{JsonDoc, ProjectError};

/// `status` of status.json.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
    /// Missing, not a string, or none of the four. Every reader treats it as not done yet, like
    /// `pending`; it has no text, so sticler never writes it.
    #[default]
    Other,
}

impl DiskStatus {
    pub fn parse(text: &str) -> DiskStatus {
        match text {
            "pending" => DiskStatus::Pending,
            "in_progress" => DiskStatus::InProgress,
            "completed" => DiskStatus::Completed,
            "failed" => DiskStatus::Failed,
            _ => DiskStatus::Other,
        }
    }

    /// The text in status.json; `None` for `Other`.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            DiskStatus::Pending => Some("pending"),
            DiskStatus::InProgress => Some("in_progress"),
            DiskStatus::Completed => Some("completed"),
            DiskStatus::Failed => Some("failed"),
            DiskStatus::Other => None,
        }
    }
}

impl JsonDoc {
    /// Sets `status` (written by the next `write`; other fields are left as they are). `Other`
    /// has no text to write: the field is then left as it is too.
    pub fn set_status(&mut self, status: DiskStatus) {
        if let Some(text) = status.as_str() {
            self.map.insert("status".into(), Value::String(text.into()));
        }
    }
}

/// The fields of status.json that sticler reads.
#[derive(Debug, Clone, Default)]
pub struct StatusSummary {
    status: String,
    disk_status: DiskStatus,
    title: String,
    focus: String,
    commit_hash: String,
    iteration: u32,
    dependencies: Vec<String>,
    failed_reasons: Vec<String>,
    criteria: (u32, u32),
    /// The first field sticler reads that has the wrong type (or a `status` none of the four),
    /// in words for the user. `None` when every field read is of its type or absent.
    problem: Option<String>,
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
        let status = text("status");
        StatusSummary {
            disk_status: DiskStatus::parse(&status),
            status,
            title: text("title"),
            focus: text("focus"),
            commit_hash: text("commit_hash"),
            iteration: u32::try_from(iteration).unwrap_or(u32::MAX),
            dependencies: string_list(map.get("dependencies")),
            failed_reasons: string_list(map.get("failed_reasons")),
            criteria,
            problem: type_problem(map),
        }
    }
}

/// What each field sticler reads must be, in the words of the message that refuses it. `null`
/// counts as absent: templates write `"commit_hash": null`.
const FIELD_TYPES: [(&str, &str); 8] = [
    ("story_id", "a string"),
    ("title", "a string"),
    ("focus", "a string"),
    ("commit_hash", "a string"),
    ("iteration", "a whole number (0 or more)"),
    ("dependencies", "a list of story ids (strings such as \"US-P1-002\")"),
    ("failed_reasons", "a list of strings"),
    ("criteria", "a list of objects such as {\"text\": \"...\", \"done\": false}"),
];

/// The first field of `map` that sticler would misread, said as "field `x` must be …, not …".
fn type_problem(map: &Map<String, Value>) -> Option<String> {
    if let Some(status) = map.get("status").filter(|v| !v.is_null()) {
        if status.as_str().map(DiskStatus::parse).is_none_or(|s| s == DiskStatus::Other) {
            return Some(format!(
                "field `status` is {}; it must be one of \"pending\", \"in_progress\", \"completed\", \"failed\"",
                shown(status)
            ));
        }
    }
    FIELD_TYPES.iter().find_map(|(key, expected)| {
        let value = map.get(*key).filter(|v| !v.is_null())?;
        let fits = match *key {
            "iteration" => value.is_u64(),
            "dependencies" | "failed_reasons" => value.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            "criteria" => value.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
            _ => value.is_string(),
        };
        (!fits).then(|| format!("field `{key}` must be {expected}, not {}", shown(value)))
    })
}

/// A value as a user recognises it in the file: short ones as written, long ones by their kind.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 40 {
        return text;
    }
    match value {
        Value::String(_) => "a long string".into(),
        Value::Array(items) => format!("a list of {} items", items.len()),
        Value::Object(_) => "an object".into(),
        _ => text.chars().take(40).collect(),
    }
}

impl JsonDoc {
    /// The document as a status.json: an error naming the file and the first field of the
    /// wrong type. Such a story is `invalid` until fixed; sticler never rewrites it.
    pub fn check_status_fields(&self) -> Result<(), ProjectError> {
        match &self.summary().problem {
            None => Ok(()),
            Some(message) => Err(ProjectError::Invalid { path: self.path.clone(), message: message.clone() }),
        }
    }
}

/// Accessors for the fields of status.json that sticler reads.
pub trait StatusFields {
    fn summary(&self) -> &StatusSummary;

    /// `status` as written, for showing it to a user; decisions use `disk_status`.
    fn status(&self) -> &str {
        &self.summary().status
    }
    fn disk_status(&self) -> DiskStatus {
        self.summary().disk_status
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

/// A list of strings; anything else reads as empty (`check_status_fields` refuses it).
fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_other_than_the_four_is_other_and_keeps_its_text() {
        for (json, disk, text) in [
            (r#"{"status": "pending"}"#, DiskStatus::Pending, "pending"),
            (r#"{"status": "in_progress"}"#, DiskStatus::InProgress, "in_progress"),
            (r#"{"status": "completed"}"#, DiskStatus::Completed, "completed"),
            (r#"{"status": "failed"}"#, DiskStatus::Failed, "failed"),
            (r#"{"status": "Completed"}"#, DiskStatus::Other, "Completed"),
            (r#"{"status": "done"}"#, DiskStatus::Other, "done"),
            (r#"{"status": 1}"#, DiskStatus::Other, ""),
            (r#"{}"#, DiskStatus::Other, ""),
        ] {
            let map: Map<String, Value> = serde_json::from_str(json).unwrap();
            let doc = JsonDoc::new("status.json".into(), json.into(), map);
            assert_eq!((doc.disk_status(), doc.status()), (disk, text), "{json}");
            assert_eq!(disk.as_str().map(DiskStatus::parse), (disk != DiskStatus::Other).then_some(disk));
        }
    }

    #[test]
    fn fields_of_the_wrong_type_are_refused_naming_field_and_expectation() {
        let check = |json: &str| {
            let map: Map<String, Value> = serde_json::from_str(json).unwrap();
            JsonDoc::new("/p/status.json".into(), json.into(), map).check_status_fields().map_err(|e| e.to_string())
        };
        for (json, says) in [
            (r#"{"dependencies": "US-P1-002"}"#, "field `dependencies` must be a list of story ids"),
            (r#"{"dependencies": ["US-P1-002", 3]}"#, "field `dependencies` must be a list"),
            (r#"{"criteria": "all of them"}"#, "field `criteria` must be a list of objects"),
            (r#"{"iteration": "three"}"#, "field `iteration` must be a whole number (0 or more), not \"three\""),
            (r#"{"iteration": -1}"#, "field `iteration` must be a whole number"),
            (r#"{"status": "complete"}"#, "field `status` is \"complete\"; it must be one of \"pending\""),
            (r#"{"status": 1}"#, "field `status` is 1; it must be one of"),
            (r#"{"title": ["a"]}"#, "field `title` must be a string, not [\"a\"]"),
        ] {
            let err = check(json).expect_err(json);
            assert!(err.starts_with("/p/status.json: ") && err.contains(says), "{json}: {err}");
        }
        for fine in [
            r#"{}"#,
            r#"{"status": "completed", "commit_hash": null, "iteration": 3, "dependencies": [], "criteria": []}"#,
            r#"{"criteria": [{"text": "a", "done": true}], "failed_reasons": ["x"], "unknown": 5}"#,
        ] {
            assert_eq!(check(fine), Ok(()), "{fine}");
        }
    }

    #[test]
    fn set_status_writes_the_text_and_other_leaves_the_field() {
        let mut doc = JsonDoc::new("status.json".into(), Vec::new(), Map::new());
        doc.set_status(DiskStatus::InProgress);
        assert_eq!(doc.map["status"], "in_progress");
        doc.set_status(DiskStatus::Other);
        assert_eq!(doc.map["status"], "in_progress");
    }
}
