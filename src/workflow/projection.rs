//! The workflow projection: folding a workflow stream into a [`WorkflowState`].
//!
//! * [`validate`] is the pure check run before appending an event; it rejects illegal
//!   transitions with a message that says why.
//! * [`WorkflowProjection::apply`] validates and folds one event. It is atomic: on error the
//!   state is untouched. Every timestamp in the state is an event's commit time (stamped by the
//!   Raft leader), never the wall clock, so replicas folding the same events agree bit for bit.
//! * [`state_after_replay`] resumes from a projection snapshot (or from nothing) and folds the
//!   records after it; [`encode_projection_snapshot`]/[`decode_projection_snapshot`] are the
//!   stored form of such snapshots, and [`replay_converges`] checks that resuming from
//!   snapshots gives the same state as a rebuild from scratch.
//! * Temporal queries: [`plan_at_version`] and [`plan_at_time`] pick the snapshot to start
//!   from and the events to fold for "state at version V" and "state at time T" (the last
//!   event committed at or before T; [`crate::time::parse_timestamp`] reads T from text).
//!
//! Transition rules (anything else is rejected):
//!
//! * A stream starts with `WorkflowCreated` or `WorkflowSnapshot`; neither may appear again.
//! * `StepStarted` names a step of the definition that is `pending`, or `failed` with a
//!   retryable error, whose attempts are below `max_attempts`; its `attempt` is the step's
//!   attempt count plus one. Steps may run in any order and concurrently; the definition's
//!   order only decides [`WorkflowState::current_step`].
//! * `StepCompleted` and `StepFailed` name a `running` step; `StepFailed.attempt` is the
//!   running attempt.
//! * `WorkflowCompleted` with `succeeded` needs every step `completed`; `failed` and
//!   `cancelled` are accepted at any time (running steps are left as they were).
//! * Nothing follows `WorkflowCompleted`.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{
    validate_definition, validate_step_def, CompletionStatus, DefinitionError, EventError,
    StepCompleted, StepFailed, StepStarted, WorkflowCompleted, WorkflowCreated, WorkflowEvent,
    WorkflowRecord, MAX_NAME_BYTES, MAX_OUTPUT_DEPTH, MAX_STEPS, STEP_COMPLETED, STEP_FAILED,
    STEP_STARTED,
};

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Where a workflow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Created, no step started yet.
    Pending,
    /// At least one step has been started and the workflow has not completed.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl WorkflowStatus {
    /// Succeeded, failed or cancelled: no event may follow.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Succeeded | WorkflowStatus::Failed | WorkflowStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Pending => "pending",
            WorkflowStatus::Running => "running",
            WorkflowStatus::Succeeded => "succeeded",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
        }
    }
}

impl From<CompletionStatus> for WorkflowStatus {
    fn from(status: CompletionStatus) -> Self {
        match status {
            CompletionStatus::Succeeded => WorkflowStatus::Succeeded,
            CompletionStatus::Failed => WorkflowStatus::Failed,
            CompletionStatus::Cancelled => WorkflowStatus::Cancelled,
        }
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a workflow, as folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub id: String,
    pub name: String,
    pub status: StepStatus,
    /// Attempts started so far (the running one included).
    #[serde(default)]
    pub attempts: u32,
    pub max_attempts: u32,
    /// Commit time of the latest `StepStarted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ns: Option<i64>,
    /// Commit time of the latest `StepCompleted`/`StepFailed`; cleared when an attempt starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ns: Option<i64>,
    /// Output of the completed step; `null` until then.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub output: Value,
    /// Error of the latest failed attempt (kept when a retry starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Whether the latest failure may be retried; `None` if the step never failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Worker of the latest attempt, if the `StepStarted` named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl StepState {
    /// A step that has not run.
    pub fn pending(id: impl Into<String>, name: impl Into<String>, max_attempts: u32) -> Self {
        StepState {
            id: id.into(),
            name: name.into(),
            status: StepStatus::Pending,
            attempts: 0,
            max_attempts,
            started_at_ns: None,
            ended_at_ns: None,
            output: Value::Null,
            last_error: None,
            retryable: None,
            worker: None,
        }
    }

    /// Whether a `StepStarted` for this step would be accepted (ignoring workflow status).
    pub fn can_start(&self) -> bool {
        let status_ok = match self.status {
            StepStatus::Pending => true,
            StepStatus::Failed => self.retryable != Some(false),
            StepStatus::Running | StepStatus::Completed => false,
        };
        status_ok && self.attempts < self.max_attempts
    }
}

/// The folded state of one workflow. Its serde form is also the `WorkflowSnapshot` event
/// payload and the projection snapshot format, so fields are only ever added with defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub workflow_id: String,
    pub name: String,
    pub status: WorkflowStatus,
    /// Steps in definition order.
    pub steps: Vec<StepState>,
    /// The first running step in definition order; if none is running, the first step that
    /// is not completed (pending, or failed and awaiting a retry or the workflow's end);
    /// `None` when all steps are completed or the workflow has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Commit time of `WorkflowCreated`, or the original creation time of an imported workflow.
    pub created_at_ns: i64,
    /// Commit time of the last applied event.
    pub updated_at_ns: i64,
    /// Commit time of `WorkflowCompleted` (or the imported completion time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ns: Option<i64>,
    /// `reason` of `WorkflowCompleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_reason: Option<String>,
    /// Stream version of the last applied event.
    pub version: u64,
    /// Number of events applied (always `version + 1` for a well-formed stream).
    pub event_count: u64,
}

impl WorkflowState {
    /// The state right after `WorkflowCreated`, before any event bookkeeping (`version` and
    /// `event_count` are 0).
    pub fn from_definition(created: &WorkflowCreated, at_ns: i64) -> Self {
        let mut state = WorkflowState {
            workflow_id: created.workflow_id.clone(),
            name: created.name.clone(),
            status: WorkflowStatus::Pending,
            steps: created
                .steps
                .iter()
                .map(|s| StepState::pending(s.id.clone(), s.name.clone(), s.max_attempts))
                .collect(),
            current_step: None,
            metadata: created.metadata.clone(),
            created_at_ns: at_ns,
            updated_at_ns: at_ns,
            completed_at_ns: None,
            completion_reason: None,
            version: 0,
            event_count: 0,
        };
        state.current_step = state.compute_current_step();
        state
    }

    /// The step with this id.
    pub fn step(&self, step_id: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.id == step_id)
    }

    fn step_mut(&mut self, step_id: &str) -> Option<&mut StepState> {
        self.steps.iter_mut().find(|s| s.id == step_id)
    }

    /// What [`WorkflowState::current_step`] should be for the present steps and status.
    pub fn compute_current_step(&self) -> Option<String> {
        if self.status.is_terminal() {
            return None;
        }
        self.steps
            .iter()
            .find(|s| s.status == StepStatus::Running)
            .or_else(|| {
                self.steps
                    .iter()
                    .find(|s| s.status != StepStatus::Completed)
            })
            .map(|s| s.id.clone())
    }

    /// Checks that a state is internally consistent, as a `WorkflowSnapshot` or an import must
    /// be: a valid definition, attempts within bounds, step statuses that fit the workflow
    /// status, completion times exactly on terminal workflows, and no step ending before it
    /// started. `current_step`, `version`, `event_count` and `updated_at_ns` are not checked;
    /// applying a snapshot recomputes them.
    pub fn check(&self) -> Result<(), StateError> {
        validate_definition(&self.workflow_id, &self.name, &self.metadata)?;
        if self.steps.len() > MAX_STEPS {
            return Err(DefinitionError::TooManySteps {
                count: self.steps.len(),
                max: MAX_STEPS,
            }
            .into());
        }
        let mut seen = BTreeSet::new();
        for (index, step) in self.steps.iter().enumerate() {
            validate_step_def(index, &step.id, &step.name, step.max_attempts)?;
            if !seen.insert(step.id.as_str()) {
                return Err(DefinitionError::DuplicateStepId(step.id.clone()).into());
            }
            let problem = |problem: String| StateError::Step {
                step_id: step.id.clone(),
                problem,
            };
            if step.attempts > step.max_attempts {
                return Err(problem(format!(
                    "has {} attempts but max_attempts is {}",
                    step.attempts, step.max_attempts
                )));
            }
            if step.status != StepStatus::Pending && step.attempts == 0 {
                return Err(problem(format!("is {} but has 0 attempts", step.status)));
            }
            if let (Some(start), Some(end)) = (step.started_at_ns, step.ended_at_ns) {
                if end < start {
                    return Err(problem("ended before it started".to_owned()));
                }
            }
            if let Some(worker) = &step.worker {
                if worker.len() > MAX_NAME_BYTES {
                    return Err(problem(format!(
                        "worker is {} bytes long, at most {MAX_NAME_BYTES} are allowed",
                        worker.len()
                    )));
                }
            }
            let depth = json_depth(&step.output);
            if depth > MAX_OUTPUT_DEPTH {
                return Err(problem(format!(
                    "output is nested {depth} levels deep, at most {MAX_OUTPUT_DEPTH} are allowed"
                )));
            }
            let step_fits = match self.status {
                WorkflowStatus::Pending => step.status == StepStatus::Pending,
                WorkflowStatus::Succeeded => step.status == StepStatus::Completed,
                _ => true,
            };
            if !step_fits {
                return Err(StateError::Workflow(format!(
                    "a {} workflow cannot have step {:?} in status {}",
                    self.status, step.id, step.status
                )));
            }
        }
        match (self.status.is_terminal(), self.completed_at_ns) {
            (true, None) => {
                return Err(StateError::Workflow(format!(
                    "a {} workflow needs a completion time",
                    self.status
                )))
            }
            (false, Some(_)) => {
                return Err(StateError::Workflow(format!(
                    "a {} workflow cannot have a completion time",
                    self.status
                )))
            }
            (true, Some(done)) if done < self.created_at_ns => {
                return Err(StateError::Workflow(
                    "the workflow completed before it was created".to_owned(),
                ))
            }
            _ => {}
        }
        if !self.status.is_terminal() && self.completion_reason.is_some() {
            return Err(StateError::Workflow(format!(
                "a {} workflow cannot have a completion reason",
                self.status
            )));
        }
        Ok(())
    }
}

/// Why a whole state (snapshot or import) is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error("step {step_id:?} {problem}")]
    Step { step_id: String, problem: String },
    #[error("{0}")]
    Workflow(String),
}

/// Nesting depth of a JSON value: scalars are 0, `[]`/`{}` are 1, `[[1]]` is 2.
pub fn json_depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(depth + 1);
                stack.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(map) => {
                max = max.max(depth + 1);
                stack.extend(map.values().map(|item| (item, depth + 1)));
            }
            _ => {}
        }
    }
    max
}

// ---------------------------------------------------------------------------------------------
// Transitions
// ---------------------------------------------------------------------------------------------

/// Why an event may not be applied to a workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("workflow {workflow_id:?} already exists; it cannot be created again")]
    AlreadyCreated { workflow_id: String },
    #[error(
        "{event_type} before the workflow exists: a workflow stream must start with \
         WorkflowCreated or WorkflowSnapshot"
    )]
    NotCreated { event_type: &'static str },
    #[error(
        "WorkflowSnapshot can only start a workflow stream, but workflow {workflow_id:?} \
         already exists"
    )]
    SnapshotOnExisting { workflow_id: String },
    #[error("invalid workflow definition: {0}")]
    InvalidDefinition(#[from] DefinitionError),
    #[error("invalid workflow snapshot: {0}")]
    InvalidSnapshot(#[from] StateError),
    #[error(
        "{event_type} names step {step_id:?}, which is not a step of workflow {workflow_id:?}"
    )]
    UnknownStep {
        event_type: &'static str,
        workflow_id: String,
        step_id: String,
    },
    #[error("step {step_id:?} is already running (attempt {attempt}); it cannot be started twice")]
    StepAlreadyRunning { step_id: String, attempt: u32 },
    #[error("step {step_id:?} has already completed; it cannot be started again")]
    StepAlreadyCompleted { step_id: String },
    #[error(
        "step {step_id:?} has used {attempts} of its {max_attempts} attempts; it cannot be \
         started again"
    )]
    AttemptsExhausted {
        step_id: String,
        attempts: u32,
        max_attempts: u32,
    },
    #[error("step {step_id:?} failed with a non-retryable error; it cannot be started again")]
    NotRetryable { step_id: String },
    #[error("{event_type} for step {step_id:?}, which is {status}, not running")]
    StepNotRunning {
        event_type: &'static str,
        step_id: String,
        status: StepStatus,
    },
    #[error(
        "{event_type} for step {step_id:?} says attempt {got}, but attempt {expected} was expected"
    )]
    AttemptMismatch {
        event_type: &'static str,
        step_id: String,
        expected: u32,
        got: u32,
    },
    #[error("{event_type} on workflow {workflow_id:?}, which has already ended as {status}")]
    WorkflowFinished {
        event_type: &'static str,
        workflow_id: String,
        status: WorkflowStatus,
    },
    #[error(
        "workflow {workflow_id:?} cannot succeed while steps are not completed: {}",
        list_ids(incomplete)
    )]
    StepsIncomplete {
        workflow_id: String,
        incomplete: Vec<String>,
    },
    #[error("{field} is {len} bytes long, at most {max} are allowed")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("output of step {step_id:?} is nested {depth} levels deep, at most {max} are allowed")]
    OutputTooDeep {
        step_id: String,
        depth: usize,
        max: usize,
    },
    #[error(
        "event at stream version {got} cannot be applied here: the next event must be at \
         stream version {expected}"
    )]
    OutOfOrder { expected: u64, got: u64 },
}

fn list_ids(ids: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut out = ids
        .iter()
        .take(SHOWN)
        .map(|id| format!("{id:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        out.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    out
}

/// The pure check run before appending `event` to a workflow whose current state is `state`
/// (`None`: the stream is empty). `Ok` means [`WorkflowProjection::apply`] will accept it.
pub fn validate(
    state: Option<&WorkflowState>,
    event: &WorkflowEvent,
) -> Result<(), TransitionError> {
    let state = match (state, event) {
        (None, WorkflowEvent::WorkflowCreated(created)) => return Ok(created.validate()?),
        (None, WorkflowEvent::WorkflowSnapshot(snapshot)) => return Ok(snapshot.state.check()?),
        (None, other) => {
            return Err(TransitionError::NotCreated {
                event_type: other.event_type(),
            })
        }
        (Some(state), WorkflowEvent::WorkflowCreated(_)) => {
            return Err(TransitionError::AlreadyCreated {
                workflow_id: state.workflow_id.clone(),
            })
        }
        (Some(state), WorkflowEvent::WorkflowSnapshot(_)) => {
            return Err(TransitionError::SnapshotOnExisting {
                workflow_id: state.workflow_id.clone(),
            })
        }
        (Some(state), _) => state,
    };
    if state.status.is_terminal() {
        return Err(TransitionError::WorkflowFinished {
            event_type: event.event_type(),
            workflow_id: state.workflow_id.clone(),
            status: state.status,
        });
    }
    match event {
        WorkflowEvent::StepStarted(e) => validate_start(state, e),
        WorkflowEvent::StepCompleted(e) => validate_complete(state, e),
        WorkflowEvent::StepFailed(e) => validate_fail(state, e),
        WorkflowEvent::WorkflowCompleted(e) => validate_workflow_completed(state, e),
        // Handled above.
        WorkflowEvent::WorkflowCreated(_) | WorkflowEvent::WorkflowSnapshot(_) => Ok(()),
    }
}

fn find_step<'a>(
    state: &'a WorkflowState,
    event_type: &'static str,
    step_id: &str,
) -> Result<&'a StepState, TransitionError> {
    state
        .step(step_id)
        .ok_or_else(|| TransitionError::UnknownStep {
            event_type,
            workflow_id: state.workflow_id.clone(),
            step_id: step_id.to_owned(),
        })
}

fn validate_start(state: &WorkflowState, e: &StepStarted) -> Result<(), TransitionError> {
    let step = find_step(state, STEP_STARTED, &e.step_id)?;
    if let Some(worker) = &e.worker {
        if worker.len() > MAX_NAME_BYTES {
            return Err(TransitionError::FieldTooLong {
                field: "worker",
                len: worker.len(),
                max: MAX_NAME_BYTES,
            });
        }
    }
    match step.status {
        StepStatus::Running => {
            return Err(TransitionError::StepAlreadyRunning {
                step_id: step.id.clone(),
                attempt: step.attempts,
            })
        }
        StepStatus::Completed => {
            return Err(TransitionError::StepAlreadyCompleted {
                step_id: step.id.clone(),
            })
        }
        StepStatus::Failed if step.retryable == Some(false) => {
            return Err(TransitionError::NotRetryable {
                step_id: step.id.clone(),
            })
        }
        StepStatus::Pending | StepStatus::Failed => {}
    }
    if step.attempts >= step.max_attempts {
        return Err(TransitionError::AttemptsExhausted {
            step_id: step.id.clone(),
            attempts: step.attempts,
            max_attempts: step.max_attempts,
        });
    }
    // attempts < max_attempts <= u32::MAX, so this cannot overflow.
    let expected = step.attempts.saturating_add(1);
    if e.attempt != expected {
        return Err(TransitionError::AttemptMismatch {
            event_type: STEP_STARTED,
            step_id: step.id.clone(),
            expected,
            got: e.attempt,
        });
    }
    Ok(())
}

fn require_running<'a>(
    state: &'a WorkflowState,
    event_type: &'static str,
    step_id: &str,
) -> Result<&'a StepState, TransitionError> {
    let step = find_step(state, event_type, step_id)?;
    if step.status != StepStatus::Running {
        return Err(TransitionError::StepNotRunning {
            event_type,
            step_id: step.id.clone(),
            status: step.status,
        });
    }
    Ok(step)
}

fn validate_complete(state: &WorkflowState, e: &StepCompleted) -> Result<(), TransitionError> {
    let step = require_running(state, STEP_COMPLETED, &e.step_id)?;
    let depth = json_depth(&e.output);
    if depth > MAX_OUTPUT_DEPTH {
        return Err(TransitionError::OutputTooDeep {
            step_id: step.id.clone(),
            depth,
            max: MAX_OUTPUT_DEPTH,
        });
    }
    Ok(())
}

fn validate_fail(state: &WorkflowState, e: &StepFailed) -> Result<(), TransitionError> {
    let step = require_running(state, STEP_FAILED, &e.step_id)?;
    if e.attempt != step.attempts {
        return Err(TransitionError::AttemptMismatch {
            event_type: STEP_FAILED,
            step_id: step.id.clone(),
            expected: step.attempts,
            got: e.attempt,
        });
    }
    Ok(())
}

fn validate_workflow_completed(
    state: &WorkflowState,
    e: &WorkflowCompleted,
) -> Result<(), TransitionError> {
    if e.status == CompletionStatus::Succeeded {
        let incomplete: Vec<String> = state
            .steps
            .iter()
            .filter(|s| s.status != StepStatus::Completed)
            .map(|s| s.id.clone())
            .collect();
        if !incomplete.is_empty() {
            return Err(TransitionError::StepsIncomplete {
                workflow_id: state.workflow_id.clone(),
                incomplete,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Projection snapshots, fingerprints, convergence
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Temporal queries
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
#[path = "projection_tests.rs"]
mod tests;
