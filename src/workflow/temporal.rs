//! Temporal queries: [`plan_at_version`] and [`plan_at_time`] pick the projection snapshot
//! to start from and the events to fold for "state at version V" and "state at time T" (the
//! last event committed at or before T); [`state_at_version`] and [`state_at_time`] run
//! such a plan over events in memory.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::events::WorkflowRecord;
use super::projection::{state_after_replay, ProjectionError};
use super::state::WorkflowState;

/// Position and commit time of one stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPoint {
    pub stream_version: u64,
    pub commit_time_ns: i64,
}

impl From<&WorkflowRecord> for EventPoint {
    fn from(record: &WorkflowRecord) -> Self {
        EventPoint {
            stream_version: record.stream_version,
            commit_time_ns: record.commit_time_ns,
        }
    }
}

/// What to fold to get the state at `target_version`: resume from the projection snapshot
/// taken at `snapshot_version` (or start from nothing) and fold [`ReplayPlan::fold_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPlan {
    pub target_version: u64,
    pub snapshot_version: Option<u64>,
}

impl ReplayPlan {
    /// Stream versions to fold, inclusive; empty when the snapshot is exactly the target.
    pub fn fold_range(&self) -> RangeInclusive<u64> {
        let start = self.snapshot_version.map_or(0, |v| v.saturating_add(1));
        start..=self.target_version
    }
}

/// Why a temporal query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemporalError {
    #[error(
        "event points must be in stream order with non-decreasing commit times; entry #{index} \
         (version {stream_version}) breaks the order"
    )]
    NotSorted { index: usize, stream_version: u64 },
    #[error("the stream has no event at version {requested} (its last version is {})",
        last.map_or_else(|| "none: it is empty".to_owned(), |v| v.to_string()))]
    VersionNotFound { requested: u64, last: Option<u64> },
}

fn check_sorted(points: &[EventPoint]) -> Result<(), TemporalError> {
    for (index, pair) in points.windows(2).enumerate() {
        if pair[1].stream_version <= pair[0].stream_version
            || pair[1].commit_time_ns < pair[0].commit_time_ns
        {
            return Err(TemporalError::NotSorted {
                index: index + 1,
                stream_version: pair[1].stream_version,
            });
        }
    }
    Ok(())
}

/// The version of the last event committed at or before `t_ns`, or `None` when every event
/// is later (the workflow did not exist yet). `points` must be sorted (checked).
pub fn version_at_time(points: &[EventPoint], t_ns: i64) -> Result<Option<u64>, TemporalError> {
    check_sorted(points)?;
    let after = points.partition_point(|p| p.commit_time_ns <= t_ns);
    Ok(after
        .checked_sub(1)
        .and_then(|i| points.get(i))
        .map(|p| p.stream_version))
}

/// The plan for "state at version `version`": the latest snapshot at or below it, if any.
/// `points` (sorted, checked) tell which versions exist; `snapshot_versions` may be in any
/// order.
pub fn plan_at_version(
    points: &[EventPoint],
    snapshot_versions: &[u64],
    version: u64,
) -> Result<ReplayPlan, TemporalError> {
    check_sorted(points)?;
    if points
        .binary_search_by_key(&version, |p| p.stream_version)
        .is_err()
    {
        return Err(TemporalError::VersionNotFound {
            requested: version,
            last: points.last().map(|p| p.stream_version),
        });
    }
    Ok(ReplayPlan {
        target_version: version,
        snapshot_version: snapshot_versions
            .iter()
            .copied()
            .filter(|&v| v <= version)
            .max(),
    })
}

/// The plan for "state at time `t_ns`", or `None` when the first event is later than `t_ns`.
pub fn plan_at_time(
    points: &[EventPoint],
    snapshot_versions: &[u64],
    t_ns: i64,
) -> Result<Option<ReplayPlan>, TemporalError> {
    match version_at_time(points, t_ns)? {
        None => Ok(None),
        Some(version) => plan_at_version(points, snapshot_versions, version).map(Some),
    }
}

/// Why an in-memory temporal query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Temporal(#[from] TemporalError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("the plan needs the projection snapshot at version {0}, which was not given")]
    MissingSnapshot(u64),
}

/// The state right after the event at `version`, from in-memory `records` (sorted, the whole
/// stream or at least everything after the chosen snapshot) and projection `snapshots`.
pub fn state_at_version(
    snapshots: &[WorkflowState],
    records: &[WorkflowRecord],
    version: u64,
) -> Result<WorkflowState, QueryError> {
    let points: Vec<EventPoint> = records.iter().map(EventPoint::from).collect();
    let snapshot_versions: Vec<u64> = snapshots.iter().map(|s| s.version).collect();
    let plan = plan_at_version(&points, &snapshot_versions, version)?;
    run_plan(snapshots, records, plan)
}

/// The state as of time `t_ns` (after the last event committed at or before it), or `None`
/// if the workflow did not exist yet.
pub fn state_at_time(
    snapshots: &[WorkflowState],
    records: &[WorkflowRecord],
    t_ns: i64,
) -> Result<Option<WorkflowState>, QueryError> {
    let points: Vec<EventPoint> = records.iter().map(EventPoint::from).collect();
    let snapshot_versions: Vec<u64> = snapshots.iter().map(|s| s.version).collect();
    match plan_at_time(&points, &snapshot_versions, t_ns)? {
        None => Ok(None),
        Some(plan) => run_plan(snapshots, records, plan).map(Some),
    }
}

fn run_plan(
    snapshots: &[WorkflowState],
    records: &[WorkflowRecord],
    plan: ReplayPlan,
) -> Result<WorkflowState, QueryError> {
    let start = match plan.snapshot_version {
        None => None,
        Some(v) => Some(
            snapshots
                .iter()
                .find(|s| s.version == v)
                .cloned()
                .ok_or(QueryError::MissingSnapshot(v))?,
        ),
    };
    let range = plan.fold_range();
    let state = state_after_replay(
        start,
        records.iter().filter(|r| range.contains(&r.stream_version)),
    )?;
    // The plan only exists for a version present in `records`, so the fold produced a state.
    state.ok_or(QueryError::Temporal(TemporalError::VersionNotFound {
        requested: plan.target_version,
        last: records.last().map(|r| r.stream_version),
    }))
}
