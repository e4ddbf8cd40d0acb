//! sticler's own edits of a story's status.json, all made while no process of the story runs:
//! its verdict (`failed` and the reason), a claim of completion turned back (`in_progress` and
//! the reason), and the story's commit. Every edit re-reads the file, keeps the fields it does
//! not touch, writes atomically, and never replaces a malformed file.

use std::path::Path;

use serde_json::Value;

use crate::project::{DiskStatus, JsonDoc, ProjectError, StatusFields};

/// `failed`, with `sticler: <reason>` appended to `failed_reasons`.
pub fn mark_failed(status: &Path, reason: &str) -> Result<(), ProjectError> {
    edit(status, |doc| {
        doc.set_status(DiskStatus::Failed);
        push_reason(doc, reason);
    })
}

/// A claim of completion was turned back: `in_progress` again, with the reason.
pub fn reopen(status: &Path, reason: &str) -> Result<(), ProjectError> {
    edit(status, |doc| {
        doc.set_status(DiskStatus::InProgress);
        push_reason(doc, reason);
    })
}

/// Records `commit_hash`, read afresh so that nothing written since the commit check is lost.
pub fn record_hash(status: &Path, oid: git2::Oid) -> Result<(), ProjectError> {
    let mut doc = JsonDoc::read(status)?;
    if doc.commit_hash() == oid.to_string() {
        return Ok(());
    }
    doc.map.insert("commit_hash".into(), Value::String(oid.to_string()));
    doc.write()
}

fn edit(status: &Path, change: impl FnOnce(&mut JsonDoc)) -> Result<(), ProjectError> {
    let mut doc = JsonDoc::read(status)?;
    change(&mut doc);
    doc.write()
}

/// Appends `sticler: <reason>` to `failed_reasons` (created if missing).
fn push_reason(doc: &mut JsonDoc, reason: &str) {
    let reasons = doc.map.entry("failed_reasons").or_insert_with(|| Value::Array(vec![]));
    if !reasons.is_array() {
        *reasons = Value::Array(vec![]);
    }
    if let Value::Array(list) = reasons {
        list.push(Value::String(format!("sticler: {reason}")));
    }
}
