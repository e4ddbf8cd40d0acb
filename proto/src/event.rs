//! Events: what the daemon numbers, stores and broadcasts, and their two shapes on the wire.
//!
//! In JSON (`watch --json`, the socket's JSON mode) an event is one flat object tagged by `kind`:
//! `{"seq":12,"time_ms":..,"project":"..","phase":1,"kind":"iteration_started","story":"US-P1-001",..}`,
//! so `jq 'select(.kind == "story_completed") | .story'` works. In bincode (our own client, the
//! store) it is the plain tuple of its fields, because bincode cannot read a tagged map.

use serde::de::Error as _;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::message::{ExitReason, RunOutcome};

/// The envelope fields of the flat JSON shape, in their order; an event kind has none of these
/// as a field.
#[cfg(test)]
const ENVELOPE: [&str; 5] = ["seq", "time_ms", "project", "phase", "kind"];

/// One transition, numbered by the daemon. Sequence numbers only grow.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub project: String,
    pub phase: u32,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        stories: u32,
    },
    IterationStarted {
        story: String,
        iteration: u32,
        pid: u32,
    },
    IterationEnded {
        story: String,
        iteration: u32,
        exit: ExitReason,
        verdict: String,
    },
    StoryCompleted {
        story: String,
    },
    StoryFailed {
        story: String,
        reason: String,
    },
    StoryBlocked {
        story: String,
        by: String,
    },
    StoryRetried {
        story: String,
    },
    RunStopping {
        kill: bool,
    },
    RunEnded {
        outcome: RunOutcome,
        summary: String,
    },
    /// An agent hit its usage or rate limit: the whole project starts no iteration until then.
    UsageLimitWait {
        story: String,
        until_unix: i64,
        reason: String,
    },
    /// The usage-limit wait is over (`early`: ended by `resume`).
    UsageLimitResumed {
        early: bool,
    },
    /// `max_cost_usd_per_phase` is spent: no new iteration starts in this run.
    BudgetSpent {
        cost_usd: f64,
        budget_usd: f64,
    },
}

impl EventKind {
    /// One line of human text, used in the daemon's log and by `sticlerctl watch`.
    pub fn describe(&self) -> String {
        match self {
            EventKind::RunStarted { stories } => format!("run started ({stories} stories)"),
            EventKind::IterationStarted { story, iteration, pid } => {
                format!("{story} iteration {iteration} started (pid {pid})")
            }
            EventKind::IterationEnded { story, iteration, exit, verdict } => {
                format!("{story} iteration {iteration} ended: {}, {verdict}", exit.describe())
            }
            EventKind::StoryCompleted { story } => format!("{story} completed"),
            EventKind::StoryFailed { story, reason } => format!("{story} failed: {reason}"),
            EventKind::StoryBlocked { story, by } => format!("{story} blocked by {by}"),
            EventKind::StoryRetried { story } => format!("{story} retried"),
            EventKind::RunStopping { kill: true } => "run killed".into(),
            EventKind::RunStopping { kill: false } => "run stopping".into(),
            EventKind::RunEnded { outcome, summary } => format!("run {}: {summary}", outcome.as_str()),
            EventKind::UsageLimitWait { story, until_unix, reason } => {
                let until = crate::time::rfc3339((*until_unix).max(0) as u64);
                let clock = until.get(11..16).unwrap_or("??:??");
                format!("{story} hit a usage limit ({reason}); waiting for usage limit until {clock} UTC")
            }
            EventKind::UsageLimitResumed { early: true } => "usage-limit wait ended by resume".into(),
            EventKind::UsageLimitResumed { early: false } => "usage-limit wait over".into(),
            EventKind::BudgetSpent { cost_usd, budget_usd } => format!(
                "phase budget spent: ${cost_usd:.2} of max_cost_usd_per_phase ${budget_usd:.2}; no new iterations start"
            ),
        }
    }

    pub fn story(&self) -> Option<&str> {
        match self {
            EventKind::IterationStarted { story, .. }
            | EventKind::IterationEnded { story, .. }
            | EventKind::StoryCompleted { story }
            | EventKind::StoryFailed { story, .. }
            | EventKind::StoryBlocked { story, .. }
            | EventKind::StoryRetried { story }
            | EventKind::UsageLimitWait { story, .. } => Some(story),
            _ => None,
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return (self.seq, self.time_ms, &self.project, self.phase, &self.kind).serialize(serializer);
        }
        let (name, fields) = match serde_json::to_value(&self.kind).map_err(S::Error::custom)? {
            Value::Object(tagged) => {
                tagged.into_iter().next().ok_or_else(|| S::Error::custom("event kind without a name"))?
            }
            other => return Err(S::Error::custom(format!("event kind is not an object: {other}"))),
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("time_ms", &self.time_ms)?;
        map.serialize_entry("project", &self.project)?;
        map.serialize_entry("phase", &self.phase)?;
        map.serialize_entry("kind", &name)?;
        if let Value::Object(fields) = fields {
            for (key, value) in fields {
                map.serialize_entry(&key, &value)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        if !deserializer.is_human_readable() {
            let (seq, time_ms, project, phase, kind) = <(u64, u64, String, u32, EventKind)>::deserialize(deserializer)?;
            return Ok(Event { seq, time_ms, project, phase, kind });
        }
        let mut object = Map::<String, Value>::deserialize(deserializer)?;
        let mut take = |key: &'static str| object.remove(key).ok_or_else(|| D::Error::missing_field(key));
        let seq = serde_json::from_value(take("seq")?).map_err(D::Error::custom)?;
        let time_ms = serde_json::from_value(take("time_ms")?).map_err(D::Error::custom)?;
        let project = serde_json::from_value(take("project")?).map_err(D::Error::custom)?;
        let phase = serde_json::from_value(take("phase")?).map_err(D::Error::custom)?;
        let name: String = serde_json::from_value(take("kind")?).map_err(D::Error::custom)?;
        let tagged = Value::Object(Map::from_iter([(name, Value::Object(object))]));
        let kind = serde_json::from_value(tagged).map_err(D::Error::custom)?;
        Ok(Event { seq, time_ms, project, phase, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        Event { seq: 7, time_ms: 1_700_000_000_000, project: "/p".into(), phase: 2, kind }
    }

    #[test]
    fn json_is_flat_and_tagged_by_kind() {
        let e = event(EventKind::IterationStarted { story: "US-P2-001".into(), iteration: 3, pid: 42 });
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"seq": 7, "time_ms": 1_700_000_000_000u64, "project": "/p", "phase": 2,
                "kind": "iteration_started", "story": "US-P2-001", "iteration": 3, "pid": 42})
        );
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys[..5], ENVELOPE, "the envelope comes first");
    }

    #[test]
    fn every_kind_round_trips_in_json_and_bincode() {
        let kinds = [
            EventKind::RunStarted { stories: 3 },
            EventKind::IterationEnded {
                story: "US-P1-001".into(),
                iteration: 1,
                exit: ExitReason::Exited(2),
                verdict: "progress".into(),
            },
            EventKind::StoryBlocked { story: "US-P1-002".into(), by: "US-P1-001".into() },
            EventKind::RunStopping { kill: true },
            EventKind::RunEnded { outcome: RunOutcome::Completed, summary: "ok".into() },
            EventKind::BudgetSpent { cost_usd: 1.5, budget_usd: 1.0 },
        ];
        for kind in kinds {
            let e = event(kind);
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e, "{text}");
            let frame = crate::codec::encode_frame(&e).unwrap();
            let (back, _): (Event, _) = crate::codec::decode_frame(&frame).unwrap().unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn json_without_an_envelope_field_is_refused_by_name() {
        let err =
            serde_json::from_str::<Event>(r#"{"seq":1,"time_ms":2,"project":"p","kind":"run_started","stories":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("phase"), "{err}");
    }
}
