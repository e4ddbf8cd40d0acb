//! Backend presets (the table is `sticler_proto::preset`, shared with `sticlerctl presets`).

pub use sticler_proto::preset::{names, preset, OutputFormat};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_has_a_program_and_valid_patterns() {
        for p in sticler_proto::preset::PRESETS {
            assert!(!p.argv.is_empty() && !p.argv[0].is_empty(), "{}", p.name);
            for pattern in p.limit_patterns {
                assert!(regex::Regex::new(pattern).is_ok(), "{}: {pattern}", p.name);
            }
        }
        assert_eq!(preset("claude").map(|p| p.output), Some(OutputFormat::ClaudeStreamJson));
        assert!(preset("nope").is_none());
    }

    #[test]
    fn claude_streams_json_non_interactively() {
        let argv = preset("claude").map(|p| p.argv.join(" ")).unwrap_or_default();
        for flag in ["-p", "--output-format stream-json", "--verbose", "--dangerously-skip-permissions"] {
            assert!(argv.contains(flag), "{argv}");
        }
    }
}
