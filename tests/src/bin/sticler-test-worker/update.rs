//! The pure status.json changes of one iteration (progress, self-reported failure), applied to
//! the parsed document so that fields the worker does not know stay where they were.

use serde_json::{json, Map, Value};

use crate::WORKER_NAME;

pub struct ProgressInput<'a> {
    pub story_id: &'a str,
    pub complete_after: Option<u32>,
    pub files: &'a [String],
    pub now: &'a str,
}

#[derive(Debug)]
pub struct ProgressReport {
    pub iteration: u64,
    /// Text of the first criterion not yet done when the iteration began.
    pub worked_on: String,
    pub criteria_done: usize,
    pub criteria_total: usize,
    pub completed: bool,
    pub focus: String,
}

/// Applies one scripted progress iteration: bumps `iteration`, marks criteria (and checklist items)
/// done in proportion to `iteration / complete_after`, all of them once `complete_after` is reached,
/// and logs the iteration. Fields it does not know are left where they are.
pub fn apply_progress(status: &mut Value, input: &ProgressInput<'_>) -> Result<ProgressReport, String> {
    let object = status.as_object_mut().ok_or("status.json is not a JSON object")?;
    let iteration = current_iteration(object)? + 1;

    let criteria = array_field(object, "criteria")?;
    let total = criteria.len();
    let complete_after = input.complete_after.map_or(total as u64, u64::from).max(1);
    let completed = iteration >= complete_after;
    let target = if completed { total } else { (iteration * total as u64 / complete_after) as usize };
    let mut worked_on = None;
    for (index, criterion) in criteria.iter_mut().enumerate() {
        let criterion = criterion.as_object_mut().ok_or_else(|| format!("criteria[{index}] is not an object"))?;
        if criterion.get("done").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        worked_on.get_or_insert_with(|| criterion_text(criterion));
        if index < target {
            criterion.insert("done".into(), Value::Bool(true));
            criterion.insert("notes".into(), json!(format!("done in iteration {iteration} by {WORKER_NAME}")));
        }
    }
    let criteria_done = criteria.iter().filter(|c| c.get("done").and_then(Value::as_bool) == Some(true)).count();
    let focus = criteria
        .iter()
        .find(|c| c.get("done").and_then(Value::as_bool) != Some(true))
        .and_then(Value::as_object)
        .map_or_else(|| "All criteria met".to_string(), criterion_text);
    let worked_on = worked_on.unwrap_or_else(|| "All criteria met".to_string());

    let checklist = array_field(object, "checklist")?;
    let items = checklist.len() as u64;
    let checked = if completed { items } else { (iteration * items).div_ceil(complete_after) };
    for (index, item) in checklist.iter_mut().take(checked as usize).enumerate() {
        item.as_object_mut()
            .ok_or_else(|| format!("checklist[{index}] is not an object"))?
            .insert("done".into(), Value::Bool(true));
    }

    let modified = array_field(object, "files_modified")?;
    for file in input.files {
        if !modified.iter().any(|m| m.as_str() == Some(file)) {
            modified.push(json!(file));
        }
    }

    let notes = if completed {
        format!(
            "All criteria met ({criteria_done}/{total}) after {iteration} iterations. \
             {} complete.",
            input.story_id
        )
    } else {
        format!(
            "Iteration {iteration}: worked on \"{worked_on}\". {criteria_done}/{total} criteria \
             done. Next: {focus}"
        )
    };
    object.insert("status".into(), json!(if completed { "completed" } else { "in_progress" }));
    object.insert("focus".into(), json!(focus));
    object.insert("worker_notes".into(), json!(notes));
    object.insert("iteration".into(), json!(iteration));
    array_field(object, "notes_history")?.push(json!({"iteration": iteration, "note": notes, "timestamp": input.now}));
    array_field(object, "iteration_history")?.push(json!({
        "iteration": iteration,
        "action": format!("Worked on: {worked_on}"),
        "notes": notes,
        "completed_at": input.now,
    }));
    Ok(ProgressReport { iteration, worked_on, criteria_done, criteria_total: total, completed, focus })
}

/// Applies a scripted self-reported failure; returns the new iteration number.
pub fn apply_self_fail(status: &mut Value, now: &str) -> Result<u64, String> {
    let object = status.as_object_mut().ok_or("status.json is not a JSON object")?;
    let iteration = current_iteration(object)? + 1;
    let reason = format!("Scripted failure (script.mode \"self_fail\") in iteration {iteration}");
    let notes = format!("BLOCKED: {reason}. Nothing to fix: this story is scripted to fail.");
    array_field(object, "failed_reasons")?.push(json!(reason));
    object.insert("status".into(), json!("failed"));
    object.insert("worker_notes".into(), json!(notes));
    object.insert("iteration".into(), json!(iteration));
    array_field(object, "notes_history")?.push(json!({"iteration": iteration, "note": notes, "timestamp": now}));
    array_field(object, "iteration_history")?.push(json!({
        "iteration": iteration,
        "action": "Gave up (scripted self_fail)",
        "notes": notes,
        "completed_at": now,
    }));
    Ok(iteration)
}

fn current_iteration(object: &Map<String, Value>) -> Result<u64, String> {
    match object.get("iteration") {
        None | Some(Value::Null) => Ok(0),
        Some(value) => value.as_u64().ok_or_else(|| "field `iteration` is not a non-negative integer".into()),
    }
}

/// The array under `key`, created empty when missing or null.
fn array_field<'a>(object: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, String> {
    let slot = object.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().ok_or_else(|| format!("field `{key}` is not an array"))
}

fn criterion_text(criterion: &Map<String, Value>) -> String {
    criterion.get("text").and_then(Value::as_str).unwrap_or("(criterion without text)").to_string()
}

pub fn criteria_lines(status: &Value) -> Vec<(bool, String)> {
    let criteria = status.get("criteria").and_then(Value::as_array);
    criteria
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(|c| (c.get("done").and_then(Value::as_bool) == Some(true), criterion_text(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        json!({
            "story_id": "US-P1-002",
            "title": "Add the list command",
            "custom_first": {"kept": true},
            "status": "pending",
            "focus": "",
            "criteria": [
                {"text": "First", "done": false, "notes": ""},
                {"text": "Second", "done": false, "notes": ""},
                {"text": "Third", "done": false, "notes": ""}
            ],
            "checklist": [
                {"item": "a", "done": false}, {"item": "b", "done": false},
                {"item": "c", "done": false}, {"item": "d", "done": false}
            ],
            "worker_notes": "",
            "notes_history": [],
            "iteration": 0,
            "failed_reasons": [],
            "files_modified": ["already.txt"],
            "iteration_history": [],
            "script": {"sleep_ms": 5, "files": ["src/a.sh"]},
            "zz_unknown_last": 42
        })
    }

    fn input<'a>(complete_after: Option<u32>, files: &'a [String]) -> ProgressInput<'a> {
        ProgressInput { story_id: "US-P1-002", complete_after, files, now: "2026-01-28T10:00:00Z" }
    }

    fn done(status: &Value) -> Vec<bool> {
        criteria_lines(status).into_iter().map(|(d, _)| d).collect()
    }

    #[test]
    fn progress_marks_the_next_criterion_and_keeps_unknown_fields_in_order() {
        let mut s = status();
        let keys_before: Vec<String> = s.as_object().map(|o| o.keys().cloned().collect()).unwrap();
        let files = vec!["src/a.sh".to_string(), "already.txt".to_string()];
        let report = apply_progress(&mut s, &input(None, &files)).unwrap();

        assert_eq!(report.iteration, 1);
        assert_eq!(report.worked_on, "First");
        assert!(!report.completed);
        assert_eq!(done(&s), [true, false, false]);
        assert_eq!(s["criteria"][0]["notes"], "done in iteration 1 by sticler-test-worker");
        assert_eq!(s["status"], "in_progress");
        assert_eq!(s["focus"], "Second");
        assert_eq!(s["iteration"], 1);
        assert_eq!(s["custom_first"], json!({"kept": true}));
        assert_eq!(s["zz_unknown_last"], 42);
        assert_eq!(s["script"], json!({"sleep_ms": 5, "files": ["src/a.sh"]}));
        assert_eq!(s["files_modified"], json!(["already.txt", "src/a.sh"]));
        assert_eq!(s["notes_history"][0]["timestamp"], "2026-01-28T10:00:00Z");
        assert_eq!(s["iteration_history"][0]["action"], "Worked on: First");
        // ceil(1 * 4 / 3) = 2 checklist items.
        let checked: Vec<bool> = (0..4).map(|i| s["checklist"][i]["done"].as_bool().unwrap()).collect();
        assert_eq!(checked, [true, true, false, false]);
        let keys_after: Vec<String> = s.as_object().map(|o| o.keys().cloned().collect()).unwrap();
        assert_eq!(keys_after, keys_before);
    }

    #[test]
    fn story_completes_when_iteration_reaches_the_number_of_criteria() {
        let mut s = status();
        for expected in 1..=3u64 {
            let report = apply_progress(&mut s, &input(None, &[])).unwrap();
            assert_eq!(report.iteration, expected);
            assert_eq!(report.completed, expected == 3);
        }
        assert_eq!(done(&s), [true, true, true]);
        assert_eq!(s["status"], "completed");
        assert_eq!(s["focus"], "All criteria met");
        assert_eq!(s["notes_history"].as_array().map(Vec::len), Some(3));
        assert!(s["checklist"].as_array().unwrap().iter().all(|i| i["done"] == true));
    }

    #[test]
    fn complete_after_overrides_the_number_of_criteria() {
        let mut early = status();
        let report = apply_progress(&mut early, &input(Some(1), &[])).unwrap();
        assert!(report.completed);
        assert_eq!(done(&early), [true, true, true]);

        let mut late = status();
        for _ in 0..5 {
            apply_progress(&mut late, &input(Some(6), &[])).unwrap();
        }
        assert_eq!(late["status"], "in_progress");
        assert_eq!(done(&late), [true, true, false]); // 5 * 3 / 6 = 2
        apply_progress(&mut late, &input(Some(6), &[])).unwrap();
        assert_eq!(late["status"], "completed");
    }

    #[test]
    fn missing_fields_are_created_and_bad_shapes_are_errors() {
        let mut bare = json!({"story_id": "US-P1-009"});
        let report = apply_progress(&mut bare, &input(None, &[])).unwrap();
        assert!(report.completed); // no criteria: complete_after defaults to 1
        assert_eq!(bare["iteration"], 1);
        assert_eq!(bare["criteria"], json!([]));

        let mut bad = json!({"criteria": "nope"});
        assert!(apply_progress(&mut bad, &input(None, &[])).unwrap_err().contains("criteria"));
        let mut bad = json!({"iteration": -1});
        assert!(apply_progress(&mut bad, &input(None, &[])).unwrap_err().contains("iteration"));
    }

    #[test]
    fn self_fail_sets_failed_with_a_reason() {
        let mut s = status();
        assert_eq!(apply_self_fail(&mut s, "2026-01-28T10:00:00Z"), Ok(1));
        assert_eq!(s["status"], "failed");
        assert_eq!(s["failed_reasons"].as_array().map(Vec::len), Some(1));
        assert_eq!(s["zz_unknown_last"], 42);
    }
}
