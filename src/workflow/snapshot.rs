//! The stored form of projection snapshots (the state after every N events, which bound the
//! replay behind temporal queries), and when one is due.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::WorkflowState;

/// Format version of [`encode_projection_snapshot`]. A snapshot in another format is not read;
/// the projection is rebuilt from the events instead.
pub const PROJECTION_SNAPSHOT_FORMAT: u32 = 1;
/// A reasonable default for "store a projection snapshot every N events".
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 64;

#[derive(Serialize)]
struct SnapshotEnvelopeRef<'a> {
    format: u32,
    state: &'a WorkflowState,
}

#[derive(Deserialize)]
struct SnapshotEnvelope {
    format: u32,
    state: Value,
}

/// Why a stored projection snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "projection snapshot has format {found}, this code reads format {expected}; rebuild \
         the projection from the events"
    )]
    UnsupportedFormat { found: u32, expected: u32 },
    #[error("projection snapshot is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// Whether a projection snapshot is due after applying the event that produced `state`.
pub fn snapshot_due(state: &WorkflowState, every: u64) -> bool {
    every > 0 && state.event_count.is_multiple_of(every)
}

/// The stored form of a projection snapshot: compact JSON `{"format":1,"state":{…}}`.
pub fn encode_projection_snapshot(state: &WorkflowState) -> Result<Vec<u8>, SnapshotError> {
    Ok(serde_json::to_vec(&SnapshotEnvelopeRef {
        format: PROJECTION_SNAPSHOT_FORMAT,
        state,
    })?)
}

/// Reads a projection snapshot written by [`encode_projection_snapshot`].
pub fn decode_projection_snapshot(bytes: &[u8]) -> Result<WorkflowState, SnapshotError> {
    let envelope: SnapshotEnvelope = serde_json::from_slice(bytes)?;
    if envelope.format != PROJECTION_SNAPSHOT_FORMAT {
        return Err(SnapshotError::UnsupportedFormat {
            found: envelope.format,
            expected: PROJECTION_SNAPSHOT_FORMAT,
        });
    }
    Ok(serde_json::from_value(envelope.state)?)
}
