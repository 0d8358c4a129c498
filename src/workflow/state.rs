//! The folded state of one workflow ([`WorkflowState`], its steps and statuses) and its
//! consistency check, which a `WorkflowSnapshot` event or an import must pass.
//!
//! Its serde form is also the `WorkflowSnapshot` event payload and the projection snapshot
//! format (see [`super::snapshot`]), so fields are only ever added with defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{
    validate_definition, validate_step_def, CompletionStatus, DefinitionError, WorkflowCreated,
    MAX_NAME_BYTES, MAX_OUTPUT_DEPTH, MAX_STEPS,
};

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

impl WorkflowStatus {
    /// The status named by [`WorkflowStatus::as_str`].
    pub fn parse(s: &str) -> Option<WorkflowStatus> {
        [
            WorkflowStatus::Pending,
            WorkflowStatus::Running,
            WorkflowStatus::Succeeded,
            WorkflowStatus::Failed,
            WorkflowStatus::Cancelled,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
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

    pub(super) fn step_mut(&mut self, step_id: &str) -> Option<&mut StepState> {
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

#[cfg(test)]
mod status_tests {
    use super::WorkflowStatus;

    #[test]
    fn statuses_parse_back_from_their_names() {
        for s in [
            WorkflowStatus::Pending,
            WorkflowStatus::Running,
            WorkflowStatus::Succeeded,
            WorkflowStatus::Failed,
            WorkflowStatus::Cancelled,
        ] {
            assert_eq!(WorkflowStatus::parse(s.as_str()), Some(s));
        }
        for bad in ["", "Running", "done"] {
            assert_eq!(WorkflowStatus::parse(bad), None, "{bad:?}");
        }
    }
}
