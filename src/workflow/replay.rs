//! The replay check: resuming from projection snapshots converges on the state a rebuild
//! from scratch gives ([`replay_converges`]); and the means to compare states across
//! replicas cheaply ([`state_fingerprint`]) and to say where two differ
//! ([`state_difference`]).

use std::collections::BTreeSet;

use serde_json::Value;

use super::events::WorkflowRecord;
use super::projection::{state_after_replay, ProjectionError, WorkflowProjection};
use super::snapshot::{
    decode_projection_snapshot, encode_projection_snapshot, snapshot_due, SnapshotError,
    DEFAULT_SNAPSHOT_INTERVAL,
};
use super::state::WorkflowState;

/// A 64-bit FNV-1a hash of the state's compact JSON form, stable across runs, platforms and
/// builds of the same code, for comparing projections across replicas cheaply.
pub fn state_fingerprint(state: &WorkflowState) -> Result<u64, SnapshotError> {
    let bytes = serde_json::to_vec(state)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(hash)
}

/// The first place two states differ, as a JSON pointer with both values, or `None` if equal.
pub fn state_difference(a: &WorkflowState, b: &WorkflowState) -> Option<String> {
    if a == b {
        return None;
    }
    let (Ok(va), Ok(vb)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return Some("states differ (and cannot be serialized for a detailed comparison)".into());
    };
    Some(
        first_json_difference(&va, &vb, String::new())
            .unwrap_or_else(|| "states differ in a way their JSON forms do not show".to_owned()),
    )
}

fn first_json_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            keys.into_iter().find_map(|key| {
                let child = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (ma.get(key), mb.get(key)) {
                    (Some(x), Some(y)) => first_json_difference(x, y, child),
                    (x, y) => Some(format!("{child}: {} != {}", show(x), show(y))),
                }
            })
        }
        (Value::Array(xa), Value::Array(xb)) if xa.len() == xb.len() => xa
            .iter()
            .zip(xb)
            .enumerate()
            .find_map(|(i, (x, y))| first_json_difference(x, y, format!("{path}/{i}"))),
        _ if a == b => None,
        _ => Some(format!(
            "{}: {} != {}",
            if path.is_empty() { "/" } else { &path },
            show(Some(a)),
            show(Some(b))
        )),
    }
}

fn show(value: Option<&Value>) -> String {
    match value {
        None => "(absent)".to_owned(),
        Some(v) => {
            let text = v.to_string();
            if text.len() > 120 {
                let cut = (0..=117)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                format!("{}...", &text[..cut])
            } else {
                text
            }
        }
    }
}

/// Where resuming from snapshots and rebuilding from scratch first disagreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Stream version of the last event folded when the difference showed.
    pub at_version: u64,
    pub detail: String,
}

/// The outcome of [`replay_converges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvergenceReport {
    /// Records folded.
    pub events: u64,
    /// Projection snapshots taken, round-tripped through their stored form and resumed from.
    pub snapshots_checked: u64,
    /// Version of the final state, `None` for an empty stream.
    pub final_version: Option<u64>,
    /// [`state_fingerprint`] of the state rebuilt from scratch.
    pub fingerprint: Option<u64>,
    /// `None` when everything agreed.
    pub divergence: Option<Divergence>,
}

impl ConvergenceReport {
    pub fn converged(&self) -> bool {
        self.divergence.is_none()
    }
}

/// [`replay_converges_every`] with a snapshot every [`DEFAULT_SNAPSHOT_INTERVAL`] events.
pub fn replay_converges(records: &[WorkflowRecord]) -> Result<ConvergenceReport, ProjectionError> {
    replay_converges_every(records, DEFAULT_SNAPSHOT_INTERVAL)
}

/// Rebuilds the state from scratch, then folds the same records again incrementally, taking a
/// projection snapshot every `snapshot_every` events (every event if 0 or 1), writing it in
/// its stored form, reading it back and resuming from what was read. The report says whether
/// every snapshot read back equal to the state it was taken from and whether the incremental
/// result equals the rebuild. A record that cannot be folded at all is an error.
pub fn replay_converges_every(
    records: &[WorkflowRecord],
    snapshot_every: u64,
) -> Result<ConvergenceReport, ProjectionError> {
    let every = snapshot_every.max(1);
    let full = state_after_replay(None, records)?;
    let fingerprint = match &full {
        Some(state) => state_fingerprint(state).ok(),
        None => None,
    };
    let mut report = ConvergenceReport {
        events: records.len() as u64,
        snapshots_checked: 0,
        final_version: full.as_ref().map(|s| s.version),
        fingerprint,
        divergence: None,
    };
    let mut projection = WorkflowProjection::new();
    for record in records {
        projection.apply_record(record)?;
        let Some(state) = projection.state() else {
            continue;
        };
        if !snapshot_due(state, every) {
            continue;
        }
        report.snapshots_checked += 1;
        let at_version = state.version;
        let resumed =
            encode_projection_snapshot(state).and_then(|b| decode_projection_snapshot(&b));
        match resumed {
            Err(e) => {
                report.divergence = Some(Divergence {
                    at_version,
                    detail: format!("the projection snapshot does not round-trip: {e}"),
                });
                return Ok(report);
            }
            Ok(resumed) => {
                if let Some(diff) = state_difference(state, &resumed) {
                    report.divergence = Some(Divergence {
                        at_version,
                        detail: format!("the projection snapshot reads back differently at {diff}"),
                    });
                    return Ok(report);
                }
                projection = WorkflowProjection::from_snapshot(resumed);
            }
        }
    }
    let incremental = projection.into_state();
    let detail = match (&full, &incremental) {
        (Some(a), Some(b)) => {
            state_difference(a, b).map(|d| format!("rebuild != incremental at {d}"))
        }
        (None, None) => None,
        _ => Some("one fold produced a workflow and the other did not".to_owned()),
    };
    if let Some(detail) = detail {
        report.divergence = Some(Divergence {
            at_version: report.final_version.unwrap_or(0),
            detail,
        });
    }
    Ok(report)
}
