//! Story ids (`US-P<phase>-<digits>`): one parser for the daemon, the client and the tests.

/// A story id of the form `US-P<phase>-<digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoryId {
    text: String,
    pub phase: u32,
}

/// Why a text is not a story id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoryIdError {
    #[error("{0:?} is not a story id of the form US-P<phase>-<digits>")]
    NotAnId(String),
    /// The phase is a folder `phase_N` and a number in the protocol: it must fit a u32.
    #[error("{id:?}: phase number {phase} is too large; phase numbers go up to {max}", max = u32::MAX)]
    PhaseTooLarge { id: String, phase: String },
}

impl StoryId {
    /// `US-P<phase>-<digits>`: the story number may have any number of digits; the phase
    /// number must fit a u32 (4294967295).
    pub fn parse(text: &str) -> Option<StoryId> {
        StoryId::parse_checked(text).ok()
    }

    /// As `parse`, saying why a text is not an id.
    pub fn parse_checked(text: &str) -> Result<StoryId, StoryIdError> {
        let not_an_id = || StoryIdError::NotAnId(text.to_string());
        let rest = text.strip_prefix("US-P").ok_or_else(not_an_id)?;
        let (phase, number) = rest.split_once('-').ok_or_else(not_an_id)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(phase) || !digits(number) {
            return Err(not_an_id());
        }
        let too_large = || StoryIdError::PhaseTooLarge { id: text.to_string(), phase: phase.to_string() };
        Ok(StoryId { text: text.to_string(), phase: phase.parse().map_err(|_| too_large())? })
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

    #[test]
    fn story_numbers_may_have_any_number_of_digits_and_phases_fit_a_u32() {
        let id = StoryId::parse("US-P1-0000000007").unwrap();
        assert_eq!((id.phase, id.as_str()), (1, "US-P1-0000000007"));
        assert!(StoryId::parse(&format!("US-P1-{}", "9".repeat(40))).is_some());
        assert_eq!(StoryId::parse("US-P4294967295-001").map(|s| s.phase), Some(u32::MAX));
        assert_eq!(StoryId::parse("US-P0004-001").map(|s| s.phase), Some(4));
        let err = StoryId::parse_checked("US-P4294967296-001").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"US-P4294967296-001\": phase number 4294967296 is too large; phase numbers go up to 4294967295"
        );
        let err = StoryId::parse_checked("US-P1-x").unwrap_err();
        assert_eq!(err.to_string(), "\"US-P1-x\" is not a story id of the form US-P<phase>-<digits>");
    }
}
