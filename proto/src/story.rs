//! Story ids (`US-P<phase>-<digits>`): one parser for the daemon, the client and the tests.

/// A story id of the form `US-P<phase>-<digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoryId {
    text: String,
    pub phase: u32,
}

impl StoryId {
    pub fn parse(text: &str) -> Option<StoryId> {
        let rest = text.strip_prefix("US-P")?;
        let (phase, number) = rest.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(phase) || !digits(number) {
            return None;
        }
        Some(StoryId { text: text.to_string(), phase: phase.parse().ok()? })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for StoryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn story_ids_are_strict() {
        assert_eq!(StoryId::parse("US-P12-007").map(|s| s.phase), Some(12));
        for bad in ["US-P1-", "US-P-001", "us-p1-001", "US-P1-00a", "US-P1-001/..", "US-P1-0\0", ""] {
            assert!(StoryId::parse(bad).is_none(), "{bad:?}");
        }
    }
}
