//! `JsonDoc`: a JSON object read from a project file with the bytes it came from, and the
//! bounded read and atomic write every project file goes through.
//!
//! Documents are kept as `serde_json::Map` (with key order preserved) so that fields this
//! version does not know survive every rewrite. A malformed file is reported with its path, line
//! and column and is never rewritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use super::story::{StatusFields, StatusSummary};
use super::ProjectError;

/// A JSON object read from disk together with the exact bytes it came from.
#[derive(Debug, Clone)]
pub struct JsonDoc {
    pub path: PathBuf,
    pub raw: Vec<u8>,
    pub map: Map<String, Value>,
    /// The status.json fields sticler reads, taken out of `map` once per read (and again after
    /// `write`): `status` of a large phase then costs no map lookups.
    fields: StatusSummary,
}

impl JsonDoc {
    pub fn read(path: &Path) -> Result<JsonDoc, ProjectError> {
        let raw = read_limited(path)?;
        let map = parse_object(path, &raw)?;
        Ok(JsonDoc::new(path.to_path_buf(), raw, map))
    }

    pub fn new(path: PathBuf, raw: Vec<u8>, map: Map<String, Value>) -> JsonDoc {
        let fields = StatusSummary::of(&map);
        JsonDoc { path, raw, map, fields }
    }

    pub fn str_field(&self, key: &str) -> &str {
        self.map.get(key).and_then(Value::as_str).unwrap_or("")
    }

    /// Writes the document back atomically; unknown fields are kept as they were read.
    pub fn write(&mut self) -> Result<(), ProjectError> {
        // Four-space indentation, as the worker contract's examples are written.
        let mut bytes = Vec::with_capacity(self.raw.len() + 64);
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
        serde::Serialize::serialize(&self.map, &mut serializer)
            .map_err(|e| ProjectError::Invalid { path: self.path.clone(), message: format!("cannot encode: {e}") })?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes)?;
        self.raw = bytes;
        self.fields = StatusSummary::of(&self.map);
        Ok(())
    }
}

/// Largest JSON file sticler reads from a project. Real status.json files are a few KiB; a
/// bigger one is refused with a clear error instead of being read into memory.
pub const MAX_JSON_FILE: u64 = 4 * 1024 * 1024;

/// Reads a project file that sticler parses (status.json, phase_config.json,
/// orchestrator.config.json). The file must be a regular file, not a symlink (which could lead
/// outside the project) nor a FIFO (which would block the reader), and at most `MAX_JSON_FILE`
/// bytes: memory stays bounded whatever a worker or a user leaves there.
pub fn read_limited(path: &Path) -> Result<Vec<u8>, ProjectError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |message: String| ProjectError::Invalid { path: path.to_path_buf(), message };
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for a file.
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ELOOP) => invalid("is a symlink; sticler reads only regular files inside the project".into()),
            _ => ProjectError::io(path, e),
        },
    )?;
    let meta = file.metadata().map_err(|e| ProjectError::io(path, e))?;
    if meta.is_dir() {
        return Err(invalid("is a directory, not a regular file".into()));
    }
    if !meta.is_file() {
        return Err(invalid("is not a regular file (a FIFO, socket or device)".into()));
    }
    let too_big = |len: u64| invalid(format!("is {len} bytes, more than the {MAX_JSON_FILE} bytes sticler reads"));
    if meta.len() > MAX_JSON_FILE {
        return Err(too_big(meta.len()));
    }
    let mut raw = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never take more than the limit plus one byte.
    file.take(MAX_JSON_FILE + 1).read_to_end(&mut raw).map_err(|e| ProjectError::io(path, e))?;
    if raw.len() as u64 > MAX_JSON_FILE {
        return Err(too_big(raw.len() as u64));
    }
    Ok(raw)
}

/// Parses a JSON object, naming the file, line and column on failure.
pub fn parse_object(path: &Path, raw: &[u8]) -> Result<Map<String, Value>, ProjectError> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProjectError::Invalid {
            path: path.to_path_buf(),
            message: "expected a JSON object at the top level".into(),
        }),
        Err(e) => Err(ProjectError::malformed(path, &e)),
    }
}

/// Replaces `path` with `bytes` so that readers see either the old or the new file, never a
/// mix: temp file in the same folder, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    replace_file(path, bytes, true)
}

/// Replaces `path` with `bytes` atomically for readers (temp file, rename), without waiting for
/// the disk: for copies of what git or a story's worktree also holds (a merge bringing files
/// into the project folder, the worker's status.json mirrored out of its worktree), where a
/// power cut loses nothing that cannot be brought again, and an fsync per file would be most of
/// a merge's cost.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), ProjectError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp =
        dir.join(format!(".{name}.sticler-{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            // Keep the user's permissions on the file we replace.
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ProjectError::io(path, e)
    })
}

impl StatusFields for JsonDoc {
    fn summary(&self) -> &StatusSummary {
        &self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_rewrite_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let text = r#"{"zeta": {"nested": [1, 2]}, "story_id": "US-P1-001", "status": "pending", "x-custom": true}"#;
        fs::write(&path, text).unwrap();
        let mut doc = JsonDoc::read(&path).unwrap();
        doc.map.insert("status".into(), Value::String("failed".into()));
        doc.write().unwrap();
        let back: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let keys: Vec<_> = back.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["zeta", "story_id", "status", "x-custom"]);
        assert_eq!(back["zeta"]["nested"][1], 2);
        assert_eq!(back["status"], "failed");
        assert_eq!(back["x-custom"], true);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
    }

    #[test]
    fn numbers_keep_their_value_through_a_rewrite() {
        // Found by fuzzing (a float changed) and by an outside audit (integers beyond 64 bits
        // became floats, `1e400` made the file unreadable): every number is written back as
        // it was written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        // (as written by the user, as sticler writes it back): the same digits; only an
        // exponent gets its sign spelt out.
        let numbers = [
            (
                "555755555555555555555555555555555555555555555550000",
                "555755555555555555555555555555555555555555555550000",
            ),
            ("3.14159265358979323846", "3.14159265358979323846"),
            ("123456789012345678901234567890", "123456789012345678901234567890"),
            ("-9223372036854775809", "-9223372036854775809"),
            ("1.0000000000000000001", "1.0000000000000000001"),
            ("1e400", "1e+400"),
            ("18446744073709551615", "18446744073709551615"),
            ("0.1", "0.1"),
        ];
        let fields: Vec<String> = numbers.iter().enumerate().map(|(i, (n, _))| format!("\"n{i}\": {n}")).collect();
        fs::write(&path, format!("{{{}}}", fields.join(", "))).unwrap();
        let mut doc = JsonDoc::read(&path).unwrap();
        doc.map.insert("status".into(), Value::String("failed".into()));
        doc.write().unwrap();
        let written = fs::read_to_string(&path).unwrap();
        for (i, (n, back)) in numbers.iter().enumerate() {
            assert!(written.contains(&format!("\"n{i}\": {back}")), "{n} changed:\n{written}");
        }
    }

    #[test]
    fn malformed_json_names_line_and_column_and_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let text = b"{\n  \"status\": \"pending\",\n  oops\n}\n";
        fs::write(&path, text).unwrap();
        match JsonDoc::read(&path) {
            Err(ProjectError::Malformed { line, column, .. }) => assert_eq!((line, column), (3, 3)),
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), text);
    }

    #[test]
    fn only_regular_files_within_the_size_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.json");
        fs::write(&outside, "{}").unwrap();
        let link = dir.path().join("status.json");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let err = JsonDoc::read(&link).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        // A FIFO with no writer would block a plain open forever.
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = JsonDoc::read(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let big = dir.path().join("big.json");
        fs::write(&big, vec![b' '; MAX_JSON_FILE as usize + 1]).unwrap();
        let err = JsonDoc::read(&big).unwrap_err().to_string();
        assert!(err.contains("more than the 4194304 bytes"), "{err}");
        fs::write(&big, vec![b' '; MAX_JSON_FILE as usize]).unwrap();
        assert!(matches!(JsonDoc::read(&big), Err(ProjectError::Malformed { .. })), "at the limit it is parsed");
    }
}
