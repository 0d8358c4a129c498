//! The transition rules: [`validate`] is the pure check run before appending an event to a
//! workflow; it rejects an illegal transition with a message that says why.
//!
//! The rules (anything else is rejected):
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

use super::events::{
    CompletionStatus, DefinitionError, StepCompleted, StepFailed, StepStarted, WorkflowCompleted,
    WorkflowEvent, MAX_NAME_BYTES, MAX_OUTPUT_DEPTH, STEP_COMPLETED, STEP_FAILED, STEP_STARTED,
};
use super::state::{json_depth, StateError, StepState, StepStatus, WorkflowState, WorkflowStatus};

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
/// (`None`: the stream is empty). `Ok` means [`super::projection::WorkflowProjection::apply`] will
/// accept it.
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
