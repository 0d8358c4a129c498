//! The telemetry commands the Raft log carries, their outcomes, and the fixed structural
//! rules they are checked by. The rules are constants, the same on every node (the
//! configured, usually smaller, limits are checked at the edge): apply may refuse only by
//! rules every replica shares.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::retention::{RetentionPolicy, HOUR_NS};

/// Longest time span of one raw segment; a range read starts this much earlier.
pub const MAX_SEGMENT_SPAN_NS: i64 = HOUR_NS;
/// Most points in one raw segment.
pub const MAX_SEGMENT_POINTS: usize = 65_536;
/// Timestamps must leave room for bucket arithmetic.
pub const MIN_TS: i64 = i64::MIN / 2;
pub const MAX_TS: i64 = i64::MAX / 2;
/// Longest series name (or retention prefix) apply accepts: a fixed structural bound, the
/// same on every node (the configured, usually smaller, limit is checked at the edge).
pub const MAX_SERIES_NAME_BYTES: usize = 1024;

/// Raw points of one series, as the ingesting node encoded them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSegment {
    pub series: String,
    pub segment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TelemetryCommand {
    Ingest(Vec<SeriesSegment>),
    SetRetention(RetentionPolicy),
}

impl TelemetryCommand {
    /// The checks at every edge where a command enters (a client API or a peer's
    /// `Propose`): series names and policies. Segment contents are checked on apply.
    pub fn validate(&self, limits: &crate::model::Limits) -> std::result::Result<(), String> {
        match self {
            TelemetryCommand::Ingest(segments) => {
                // Refused before it is proposed (apply refuses it too, but only once an
                // entry holds it).
                if segments.is_empty() {
                    return Err("an ingest carries at least one segment".into());
                }
                for s in segments {
                    limits
                        .validate_stream(&s.series)
                        .map_err(|e| format!("series: {e}"))?;
                    check_name(&s.series, false)?;
                }
                Ok(())
            }
            TelemetryCommand::SetRetention(p) => p.validate(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TelemetryOutcome {
    /// `points` were written; `late_dropped` were older than the lateness bound; `skipped`
    /// were not stored because their time is past every tier's retention, or inside the
    /// span of a rollup-only bucket that already exists (a re-sent point always is).
    Ingested {
        points: u64,
        late_dropped: u64,
        skipped: u64,
    },
    RetentionSet,
    Rejected {
        reason: String,
    },
}

/// A series name (or a retention prefix, which may be empty) by the fixed rules apply
/// checks: at most [`MAX_SERIES_NAME_BYTES`] of the stream charset; a series is
/// `source/channel`.
pub fn check_name(name: &str, prefix: bool) -> std::result::Result<(), String> {
    if name.len() > MAX_SERIES_NAME_BYTES {
        return Err(format!(
            "series name of {} bytes: at most {MAX_SERIES_NAME_BYTES}",
            name.len()
        ));
    }
    if let Some(at) = name.bytes().position(|b| !crate::model::stream_char_ok(b)) {
        return Err(format!(
            "series name {:?}: character outside [A-Za-z0-9_.:/@+=-] at byte {at}",
            name.chars().take(64).collect::<String>()
        ));
    }
    if !prefix && !name.contains('/') {
        return Err(format!("series {name:?} is not source/channel"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_fixed_rules() {
        assert!(check_name("sat-7/battery_v", false).is_ok());
        assert!(check_name("", true).is_ok());
        assert!(check_name("sat-", true).is_ok());
        assert!(check_name("no-channel", false).is_err());
        assert!(check_name("bad name/x", false).is_err());
        assert!(check_name(&"a/".repeat(MAX_SERIES_NAME_BYTES), false).is_err());
    }
}
