//! The workflow projection: folding a workflow stream, event by event, into a
//! [`WorkflowState`].
//!
//! * [`WorkflowProjection::apply`] validates (by [`super::rules`]) and folds one event. It is
//!   atomic: on error the state is untouched. Every timestamp in the state is an event's
//!   commit time (stamped by the Raft leader), never the wall clock, so replicas folding the
//!   same events agree bit for bit.
//! * [`state_after_replay`] resumes from a projection snapshot (or from nothing) and folds
//!   the records after it.

use std::borrow::Borrow;

use serde_json::Value;

use super::events::{EventError, WorkflowEvent, WorkflowRecord};
use super::rules::{validate, TransitionError};
use super::state::{StepStatus, WorkflowState, WorkflowStatus};

/// Why a stored record could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("cannot decode the event at stream version {stream_version}: {source}")]
    Decode {
        stream_version: u64,
        #[source]
        source: EventError,
    },
    #[error(
        "the {event_type} event at stream version {stream_version} cannot be applied: {source}"
    )]
    Transition {
        stream_version: u64,
        event_type: String,
        #[source]
        source: TransitionError,
    },
}

/// Folds a workflow stream, event by event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowProjection {
    state: Option<WorkflowState>,
}

impl WorkflowProjection {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes from a projection snapshot; the next event must be at `state.version + 1`.
    pub fn from_snapshot(state: WorkflowState) -> Self {
        WorkflowProjection { state: Some(state) }
    }

    /// The state so far; `None` before the first event.
    pub fn state(&self) -> Option<&WorkflowState> {
        self.state.as_ref()
    }

    pub fn into_state(self) -> Option<WorkflowState> {
        self.state
    }

    /// The stream version the next event must have.
    pub fn next_version(&self) -> u64 {
        self.state
            .as_ref()
            .map_or(0, |s| s.version.saturating_add(1))
    }

    /// Validates `event` (see [`validate`]) and folds it. `stream_version` must be the next
    /// version of the stream (0 for the first event). On error nothing changes.
    pub fn apply(
        &mut self,
        event: &WorkflowEvent,
        commit_time_ns: i64,
        stream_version: u64,
    ) -> Result<(), TransitionError> {
        let expected = self.next_version();
        if stream_version != expected {
            return Err(TransitionError::OutOfOrder {
                expected,
                got: stream_version,
            });
        }
        validate(self.state.as_ref(), event)?;
        let t = commit_time_ns;
        match event {
            WorkflowEvent::WorkflowCreated(created) => {
                self.state = Some(WorkflowState::from_definition(created, t));
            }
            WorkflowEvent::WorkflowSnapshot(snapshot) => {
                let mut state = snapshot.state.clone();
                state.event_count = 0;
                self.state = Some(state);
            }
            other => {
                if let Some(state) = self.state.as_mut() {
                    fold_into(state, other, t);
                }
            }
        }
        if let Some(state) = self.state.as_mut() {
            state.version = stream_version;
            state.event_count = state.event_count.saturating_add(1);
            state.updated_at_ns = t;
            state.current_step = state.compute_current_step();
        }
        Ok(())
    }

    /// Decodes a stored record (upcasting older schema versions) and applies it.
    pub fn apply_record(&mut self, record: &WorkflowRecord) -> Result<(), ProjectionError> {
        let event = WorkflowEvent::decode(record).map_err(|source| ProjectionError::Decode {
            stream_version: record.stream_version,
            source,
        })?;
        self.apply(&event, record.commit_time_ns, record.stream_version)
            .map_err(|source| ProjectionError::Transition {
                stream_version: record.stream_version,
                event_type: record.event_type.clone(),
                source,
            })
    }
}

/// Folds a validated step or completion event into an existing state.
fn fold_into(state: &mut WorkflowState, event: &WorkflowEvent, t: i64) {
    match event {
        WorkflowEvent::StepStarted(e) => {
            if state.status == WorkflowStatus::Pending {
                state.status = WorkflowStatus::Running;
            }
            if let Some(step) = state.step_mut(&e.step_id) {
                step.status = StepStatus::Running;
                step.attempts = e.attempt;
                step.started_at_ns = Some(t);
                step.ended_at_ns = None;
                step.output = Value::Null;
                step.worker = e.worker.clone();
            }
        }
        WorkflowEvent::StepCompleted(e) => {
            if let Some(step) = state.step_mut(&e.step_id) {
                step.status = StepStatus::Completed;
                step.ended_at_ns = Some(t);
                step.output = e.output.clone();
            }
        }
        WorkflowEvent::StepFailed(e) => {
            if let Some(step) = state.step_mut(&e.step_id) {
                step.status = StepStatus::Failed;
                step.ended_at_ns = Some(t);
                step.last_error = Some(e.error.clone());
                step.retryable = Some(e.retryable);
            }
        }
        WorkflowEvent::WorkflowCompleted(e) => {
            state.status = e.status.into();
            state.completed_at_ns = Some(t);
            state.completion_reason = e.reason.clone();
        }
        WorkflowEvent::WorkflowCreated(_) | WorkflowEvent::WorkflowSnapshot(_) => {}
    }
}

/// Resumes from `snapshot` (a projection snapshot, or `None` for an empty stream) and folds
/// `records` in order. Records at or below the snapshot's version are skipped, so the caller
/// may pass the whole stream; the rest must be contiguous.
pub fn state_after_replay<I, R>(
    snapshot: Option<WorkflowState>,
    records: I,
) -> Result<Option<WorkflowState>, ProjectionError>
where
    I: IntoIterator<Item = R>,
    R: Borrow<WorkflowRecord>,
{
    let skip_through = snapshot.as_ref().map(|s| s.version);
    let mut projection = match snapshot {
        Some(state) => WorkflowProjection::from_snapshot(state),
        None => WorkflowProjection::new(),
    };
    for record in records {
        let record = record.borrow();
        if skip_through.is_some_and(|v| record.stream_version <= v) {
            continue;
        }
        projection.apply_record(record)?;
    }
    Ok(projection.into_state())
}

#[cfg(test)]
#[path = "projection_tests.rs"]
mod tests;
