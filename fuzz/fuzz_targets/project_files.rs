//! The project files sticler parses: status.json and phase_config.json (kept as JSON objects
//! whose unknown fields must survive a rewrite), orchestrator.config.json, and story ids.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sticlerd::project::{parse_object, JsonDoc, OrchestratorConfig, StatusFields, StoryId};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/project/phases/phase_1/stories/US-P1-001/status.json");
    if let Ok(map) = parse_object(path, data) {
        let doc = JsonDoc::new(path.to_path_buf(), data.to_vec(), map.clone());
        // Every field sticler reads has a value, whatever its type on disk.
        let _ = (doc.status(), doc.title(), doc.focus(), doc.commit_hash(), doc.iteration());
        // A status sticler knows reads back as the same text; any other is `Other`.
        assert_eq!(doc.disk_status().as_str().unwrap_or(doc.status()), doc.status());
        let (done, total) = doc.criteria();
        assert!(done <= total);
        for dep in doc.dependencies() {
            let _ = StoryId::parse(dep);
        }
        // A rewrite keeps every field, in order.
        let rewritten = serde_json::to_vec_pretty(&map).expect("a parsed object encodes");
        let back = parse_object(path, &rewritten).expect("a rewrite parses");
        assert_eq!(back, map);
        assert!(back.keys().eq(map.keys()));
    }
    if let Ok(config) = OrchestratorConfig::parse(Path::new("/project/orchestrator.config.json"), data) {
        assert!(config.worker.command.argv().first().is_some_and(|p| !p.is_empty()));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(id) = StoryId::parse(text) {
            // An id is used as a folder name: it can never climb out of stories/.
            assert_eq!(id.as_str(), text);
            assert!(!text.contains(['/', '.', '\0', '\\']) && text.is_ascii());
        }
    }
});
