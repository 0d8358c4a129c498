//! Typed workflow events and their JSON payloads.
//!
//! A workflow lives in its own stream, `workflow-{id}` (see [`stream_name`]). Every event in
//! that stream is one of the [`WorkflowEvent`] variants, stored as
//! `(event_type, schema_version, payload)` where the payload is JSON. Writers always store the
//! current schema version (the `*_VERSION` constants); readers accept any older version and
//! bring it to the current shape through the upcaster chain in [`super::upcast`].
//!
//! Payload field names are part of the stored format: renaming or removing a field means a
//! new schema version and an upcaster step, never an in-place change.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::WorkflowState;
use super::upcast::{UpcastError, UpcasterRegistry};

/// Current schema version of `WorkflowCreated` payloads (v1: steps as strings, v2: steps as
/// `{id, name}` objects, v3: steps carry `max_attempts`).
pub const WORKFLOW_CREATED_VERSION: u32 = 3;
/// Current schema version of `StepStarted` payloads.
pub const STEP_STARTED_VERSION: u32 = 1;
/// Current schema version of `StepCompleted` payloads.
pub const STEP_COMPLETED_VERSION: u32 = 1;
/// Current schema version of `StepFailed` payloads (v1: `{step, error}`, v2: `{step_id, error,
/// attempt}`, v3: adds `retryable`).
pub const STEP_FAILED_VERSION: u32 = 3;
/// Current schema version of `WorkflowCompleted` payloads.
pub const WORKFLOW_COMPLETED_VERSION: u32 = 1;
/// Current schema version of `WorkflowSnapshot` payloads. The payload embeds the serde form of
/// [`WorkflowState`], so a change to that struct's fields needs a new version here too.
pub const WORKFLOW_SNAPSHOT_VERSION: u32 = 1;

/// Event type names, exactly as stored.
pub const WORKFLOW_CREATED: &str = "WorkflowCreated";
pub const STEP_STARTED: &str = "StepStarted";
pub const STEP_COMPLETED: &str = "StepCompleted";
pub const STEP_FAILED: &str = "StepFailed";
pub const WORKFLOW_COMPLETED: &str = "WorkflowCompleted";
pub const WORKFLOW_SNAPSHOT: &str = "WorkflowSnapshot";

/// All workflow event types with their current schema versions.
pub const EVENT_TYPES: [(&str, u32); 6] = [
    (WORKFLOW_CREATED, WORKFLOW_CREATED_VERSION),
    (STEP_STARTED, STEP_STARTED_VERSION),
    (STEP_COMPLETED, STEP_COMPLETED_VERSION),
    (STEP_FAILED, STEP_FAILED_VERSION),
    (WORKFLOW_COMPLETED, WORKFLOW_COMPLETED_VERSION),
    (WORKFLOW_SNAPSHOT, WORKFLOW_SNAPSHOT_VERSION),
];

/// Prefix of a workflow's stream name.
pub const STREAM_PREFIX: &str = crate::model::WORKFLOW_STREAM_PREFIX;
/// Most steps a workflow definition may have.
pub const MAX_STEPS: usize = 1024;
/// Longest workflow id, step id, name or worker, in bytes (UTF-8).
pub const MAX_NAME_BYTES: usize = 256;
/// Most metadata entries on a workflow.
pub const MAX_METADATA_ENTRIES: usize = 256;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 256;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;
/// Deepest nesting of a step output. serde_json refuses documents nested deeper than 128
/// levels, and an output is stored a few levels deeper inside a snapshot than inside its
/// `StepCompleted` event, so outputs are capped well below that.
pub const MAX_OUTPUT_DEPTH: usize = 64;

/// The stream a workflow's events live in: `workflow-{id}`.
pub fn stream_name(workflow_id: &str) -> String {
    format!("{STREAM_PREFIX}{workflow_id}")
}

/// The workflow id of a `workflow-{id}` stream name, if it is one.
pub fn workflow_id_from_stream(stream: &str) -> Option<&str> {
    stream
        .strip_prefix(STREAM_PREFIX)
        .filter(|id| !id.is_empty())
}

/// The minimal view of a stored event that the workflow core needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// 0-based position of the event in its stream.
    pub stream_version: u64,
    /// Nanoseconds since the Unix epoch, stamped by the Raft leader at commit; monotonic.
    pub commit_time_ns: i64,
    pub event_type: String,
    pub schema_version: u32,
    /// JSON payload, in the shape of `schema_version`.
    pub payload: Vec<u8>,
}

/// One step of a workflow definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDef {
    pub id: String,
    pub name: String,
    /// How many times the step may be started in total (first attempt included); at least 1.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_max_attempts() -> u32 {
    1
}

impl StepDef {
    /// A step that may run once.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        StepDef {
            id: id.into(),
            name: name.into(),
            max_attempts: 1,
        }
    }

    /// The same step with `max_attempts` set.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }
}

/// A workflow comes into being with its ordered list of steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCreated {
    pub workflow_id: String,
    pub name: String,
    pub steps: Vec<StepDef>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl WorkflowCreated {
    /// Checks the definition on its own: ids, names, step count, attempts and metadata limits.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        validate_definition(&self.workflow_id, &self.name, &self.metadata)?;
        if self.steps.len() > MAX_STEPS {
            return Err(DefinitionError::TooManySteps {
                count: self.steps.len(),
                max: MAX_STEPS,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, step) in self.steps.iter().enumerate() {
            validate_step_def(index, &step.id, &step.name, step.max_attempts)?;
            if !seen.insert(step.id.as_str()) {
                return Err(DefinitionError::DuplicateStepId(step.id.clone()));
            }
        }
        Ok(())
    }
}

/// Checks the workflow-level fields shared by `WorkflowCreated` and imported states.
pub(crate) fn validate_definition(
    workflow_id: &str,
    name: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<(), DefinitionError> {
    check_id("workflow id", workflow_id).map_err(|e| match e {
        IdProblem::Empty => DefinitionError::EmptyWorkflowId,
        IdProblem::Other(e) => e,
    })?;
    check_len("workflow name", name, MAX_NAME_BYTES)?;
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(DefinitionError::TooManyMetadataEntries {
            count: metadata.len(),
            max: MAX_METADATA_ENTRIES,
        });
    }
    for (key, value) in metadata {
        if key.is_empty() {
            return Err(DefinitionError::EmptyMetadataKey);
        }
        check_len("metadata key", key, MAX_METADATA_KEY_BYTES)?;
        check_len("metadata value", value, MAX_METADATA_VALUE_BYTES)?;
    }
    Ok(())
}

/// Checks one step's fields (not uniqueness).
pub(crate) fn validate_step_def(
    index: usize,
    id: &str,
    name: &str,
    max_attempts: u32,
) -> Result<(), DefinitionError> {
    check_id("step id", id).map_err(|e| match e {
        IdProblem::Empty => DefinitionError::EmptyStepId { index },
        IdProblem::Other(e) => e,
    })?;
    check_len("step name", name, MAX_NAME_BYTES)?;
    if max_attempts == 0 {
        return Err(DefinitionError::ZeroMaxAttempts {
            step_id: id.to_owned(),
        });
    }
    Ok(())
}

enum IdProblem {
    Empty,
    Other(DefinitionError),
}

fn check_id(what: &'static str, id: &str) -> Result<(), IdProblem> {
    if id.is_empty() {
        return Err(IdProblem::Empty);
    }
    check_len(what, id, MAX_NAME_BYTES).map_err(IdProblem::Other)?;
    if id.chars().any(char::is_control) {
        return Err(IdProblem::Other(DefinitionError::ControlCharacter {
            what,
            value: id.to_owned(),
        }));
    }
    Ok(())
}

fn check_len(what: &'static str, value: &str, max: usize) -> Result<(), DefinitionError> {
    if value.len() > max {
        return Err(DefinitionError::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// A step attempt begins. `attempt` is 1 for the first run and counts up on each retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStarted {
    pub step_id: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The running attempt of a step succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCompleted {
    pub step_id: String,
    /// Any JSON; `null` when the step produced nothing.
    #[serde(default)]
    pub output: Value,
}

/// The running attempt of a step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailed {
    pub step_id: String,
    pub error: String,
    /// The attempt that failed; must be the running attempt.
    pub attempt: u32,
    /// Whether the step may be started again (attempts permitting).
    pub retryable: bool,
}

/// How a workflow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl fmt::Display for CompletionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompletionStatus::Succeeded => "succeeded",
            CompletionStatus::Failed => "failed",
            CompletionStatus::Cancelled => "cancelled",
        })
    }
}

/// The workflow reached a terminal status. No event may follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCompleted {
    pub status: CompletionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The whole state of a workflow at once, used to migrate workflows from an older system. It
/// may only be the first event of a stream. On apply, `version`, `event_count`,
/// `updated_at_ns` and `current_step` are recomputed rather than taken from the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSnapshot {
    pub state: WorkflowState,
}

/// Any event of a workflow stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowEvent {
    WorkflowCreated(WorkflowCreated),
    StepStarted(StepStarted),
    StepCompleted(StepCompleted),
    StepFailed(StepFailed),
    WorkflowCompleted(WorkflowCompleted),
    WorkflowSnapshot(WorkflowSnapshot),
}

/// An event ready to append: what the store keeps besides its own positions and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub event_type: &'static str,
    pub schema_version: u32,
    pub payload: Vec<u8>,
}

impl WorkflowEvent {
    /// The stored event type name.
    pub fn event_type(&self) -> &'static str {
        match self {
            WorkflowEvent::WorkflowCreated(_) => WORKFLOW_CREATED,
            WorkflowEvent::StepStarted(_) => STEP_STARTED,
            WorkflowEvent::StepCompleted(_) => STEP_COMPLETED,
            WorkflowEvent::StepFailed(_) => STEP_FAILED,
            WorkflowEvent::WorkflowCompleted(_) => WORKFLOW_COMPLETED,
            WorkflowEvent::WorkflowSnapshot(_) => WORKFLOW_SNAPSHOT,
        }
    }

    /// The schema version this code writes for this event.
    pub fn schema_version(&self) -> u32 {
        match self {
            WorkflowEvent::WorkflowCreated(_) => WORKFLOW_CREATED_VERSION,
            WorkflowEvent::StepStarted(_) => STEP_STARTED_VERSION,
            WorkflowEvent::StepCompleted(_) => STEP_COMPLETED_VERSION,
            WorkflowEvent::StepFailed(_) => STEP_FAILED_VERSION,
            WorkflowEvent::WorkflowCompleted(_) => WORKFLOW_COMPLETED_VERSION,
            WorkflowEvent::WorkflowSnapshot(_) => WORKFLOW_SNAPSHOT_VERSION,
        }
    }

    /// The step this event is about, if any.
    pub fn step_id(&self) -> Option<&str> {
        match self {
            WorkflowEvent::StepStarted(e) => Some(&e.step_id),
            WorkflowEvent::StepCompleted(e) => Some(&e.step_id),
            WorkflowEvent::StepFailed(e) => Some(&e.step_id),
            _ => None,
        }
    }

    /// Serializes the payload at the current schema version.
    pub fn encode(&self) -> Result<EncodedEvent, EventError> {
        let payload = match self {
            WorkflowEvent::WorkflowCreated(e) => serde_json::to_vec(e),
            WorkflowEvent::StepStarted(e) => serde_json::to_vec(e),
            WorkflowEvent::StepCompleted(e) => serde_json::to_vec(e),
            WorkflowEvent::StepFailed(e) => serde_json::to_vec(e),
            WorkflowEvent::WorkflowCompleted(e) => serde_json::to_vec(e),
            WorkflowEvent::WorkflowSnapshot(e) => serde_json::to_vec(e),
        }
        .map_err(|source| EventError::Encode {
            event_type: self.event_type(),
            source,
        })?;
        Ok(EncodedEvent {
            event_type: self.event_type(),
            schema_version: self.schema_version(),
            payload,
        })
    }

    /// Decodes a stored event with the standard upcaster chain.
    pub fn decode(record: &WorkflowRecord) -> Result<WorkflowEvent, EventError> {
        Self::decode_with(UpcasterRegistry::standard(), record)
    }

    /// Decodes a stored event, bringing an older payload to the current schema through
    /// `registry`. The registry must upcast each type to exactly the version this code reads.
    pub fn decode_with(
        registry: &UpcasterRegistry,
        record: &WorkflowRecord,
    ) -> Result<WorkflowEvent, EventError> {
        let event_type = record.event_type.as_str();
        let target = current_version(event_type)
            .ok_or_else(|| EventError::UnknownEventType(record.event_type.clone()))?;
        let raw: Value =
            serde_json::from_slice(&record.payload).map_err(|source| EventError::InvalidJson {
                event_type: record.event_type.clone(),
                schema_version: record.schema_version,
                source,
            })?;
        let value = registry.upcast_to(event_type, record.schema_version, target, raw)?;
        Self::from_current_value(event_type, value).map_err(|source| EventError::InvalidPayload {
            event_type: record.event_type.clone(),
            schema_version: record.schema_version,
            source,
        })
    }

    /// Builds the typed event from a payload already in the current shape.
    fn from_current_value(
        event_type: &str,
        value: Value,
    ) -> Result<WorkflowEvent, serde_json::Error> {
        Ok(match event_type {
            WORKFLOW_CREATED => WorkflowEvent::WorkflowCreated(serde_json::from_value(value)?),
            STEP_STARTED => WorkflowEvent::StepStarted(serde_json::from_value(value)?),
            STEP_COMPLETED => WorkflowEvent::StepCompleted(serde_json::from_value(value)?),
            STEP_FAILED => WorkflowEvent::StepFailed(serde_json::from_value(value)?),
            WORKFLOW_COMPLETED => WorkflowEvent::WorkflowCompleted(serde_json::from_value(value)?),
            WORKFLOW_SNAPSHOT => WorkflowEvent::WorkflowSnapshot(serde_json::from_value(value)?),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "{other:?} is not a workflow event type"
                )))
            }
        })
    }
}

/// The schema version this code reads and writes for `event_type`, or `None` for a type that
/// is not a workflow event.
pub fn current_version(event_type: &str) -> Option<u32> {
    EVENT_TYPES
        .iter()
        .find(|(name, _)| *name == event_type)
        .map(|(_, version)| *version)
}

/// Why a workflow definition is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("workflow id must not be empty")]
    EmptyWorkflowId,
    #[error("step #{index} has an empty id")]
    EmptyStepId { index: usize },
    #[error("step id {0:?} appears more than once")]
    DuplicateStepId(String),
    #[error("a workflow may have at most {max} steps, this one has {count}")]
    TooManySteps { count: usize, max: usize },
    #[error("{what} is {len} bytes long, at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} {value:?} contains a control character")]
    ControlCharacter { what: &'static str, value: String },
    #[error("step {step_id:?} has max_attempts 0; it must be at least 1")]
    ZeroMaxAttempts { step_id: String },
    #[error("a workflow may have at most {max} metadata entries, this one has {count}")]
    TooManyMetadataEntries { count: usize, max: usize },
    #[error("metadata keys must not be empty")]
    EmptyMetadataKey,
}

/// Why an event cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{0:?} is not a workflow event type")]
    UnknownEventType(String),
    #[error("{event_type} v{schema_version} payload is not valid JSON: {source}")]
    InvalidJson {
        event_type: String,
        schema_version: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    #[error("{event_type} v{schema_version} payload, once upcast, does not match the current schema: {source}")]
    InvalidPayload {
        event_type: String,
        schema_version: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {event_type}: {source}")]
    Encode {
        event_type: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(event_type: &str, schema_version: u32, payload: Value) -> WorkflowRecord {
        WorkflowRecord {
            stream_version: 0,
            commit_time_ns: 0,
            event_type: event_type.to_owned(),
            schema_version,
            payload: serde_json::to_vec(&payload).expect("test payload encodes"),
        }
    }

    fn created() -> WorkflowCreated {
        WorkflowCreated {
            workflow_id: "wf-1".into(),
            name: "Deorbit burn".into(),
            steps: vec![
                StepDef::new("plan", "Plan burn"),
                StepDef::new("burn", "Execute burn").with_max_attempts(3),
            ],
            metadata: BTreeMap::from([("asset".to_owned(), "sat-42".to_owned())]),
        }
    }

    fn all_events() -> Vec<WorkflowEvent> {
        vec![
            WorkflowEvent::WorkflowCreated(created()),
            WorkflowEvent::StepStarted(StepStarted {
                step_id: "plan".into(),
                attempt: 1,
                worker: Some("worker-7".into()),
            }),
            WorkflowEvent::StepStarted(StepStarted {
                step_id: "plan".into(),
                attempt: 2,
                worker: None,
            }),
            WorkflowEvent::StepCompleted(StepCompleted {
                step_id: "plan".into(),
                output: json!({"delta_v": 12.5, "window": [1, 2]}),
            }),
            WorkflowEvent::StepFailed(StepFailed {
                step_id: "burn".into(),
                error: "thruster fault".into(),
                attempt: 1,
                retryable: true,
            }),
            WorkflowEvent::WorkflowCompleted(WorkflowCompleted {
                status: CompletionStatus::Cancelled,
                reason: Some("operator".into()),
            }),
            WorkflowEvent::WorkflowSnapshot(WorkflowSnapshot {
                state: WorkflowState::from_definition(&created(), 5),
            }),
        ]
    }

    #[test]
    fn event_type_names_are_exact() {
        let names: Vec<_> = all_events().iter().map(|e| e.event_type()).collect();
        assert_eq!(
            names,
            [
                "WorkflowCreated",
                "StepStarted",
                "StepStarted",
                "StepCompleted",
                "StepFailed",
                "WorkflowCompleted",
                "WorkflowSnapshot"
            ]
        );
    }

    #[test]
    fn encode_decode_roundtrip_for_every_event() {
        for event in all_events() {
            let encoded = event.encode().expect("encodes");
            assert_eq!(encoded.event_type, event.event_type());
            assert_eq!(
                encoded.schema_version,
                current_version(event.event_type()).expect("known")
            );
            let rec = WorkflowRecord {
                stream_version: 3,
                commit_time_ns: 7,
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                payload: encoded.payload,
            };
            assert_eq!(WorkflowEvent::decode(&rec).expect("decodes"), event);
        }
    }

    #[test]
    fn current_versions() {
        assert_eq!(current_version("WorkflowCreated"), Some(3));
        assert_eq!(current_version("StepFailed"), Some(3));
        assert_eq!(current_version("StepStarted"), Some(1));
        assert_eq!(current_version("Nope"), None);
    }

    #[test]
    fn payload_shapes_are_stable() {
        let e = WorkflowEvent::StepFailed(StepFailed {
            step_id: "s".into(),
            error: "boom".into(),
            attempt: 2,
            retryable: false,
        });
        let v: Value = serde_json::from_slice(&e.encode().expect("encodes").payload).expect("json");
        assert_eq!(
            v,
            json!({"step_id": "s", "error": "boom", "attempt": 2, "retryable": false})
        );
        let e = WorkflowEvent::WorkflowCompleted(WorkflowCompleted {
            status: CompletionStatus::Succeeded,
            reason: None,
        });
        let v: Value = serde_json::from_slice(&e.encode().expect("encodes").payload).expect("json");
        assert_eq!(v, json!({"status": "succeeded"}));
    }

    #[test]
    fn defaults_apply_when_fields_are_missing() {
        let rec = record(
            "WorkflowCreated",
            3,
            json!({"workflow_id": "w", "name": "n", "steps": [{"id": "a", "name": "A"}]}),
        );
        match WorkflowEvent::decode(&rec).expect("decodes") {
            WorkflowEvent::WorkflowCreated(c) => {
                assert_eq!(c.steps[0].max_attempts, 1);
                assert!(c.metadata.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
        let rec = record("StepCompleted", 1, json!({"step_id": "a"}));
        match WorkflowEvent::decode(&rec).expect("decodes") {
            WorkflowEvent::StepCompleted(c) => assert_eq!(c.output, Value::Null),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decode_errors_are_typed() {
        let rec = record("Bogus", 1, json!({}));
        assert!(matches!(
            WorkflowEvent::decode(&rec),
            Err(EventError::UnknownEventType(t)) if t == "Bogus"
        ));

        let mut rec = record("StepStarted", 1, json!({}));
        rec.payload = b"{not json".to_vec();
        let err = WorkflowEvent::decode(&rec).expect_err("bad json");
        assert!(matches!(err, EventError::InvalidJson { .. }), "{err}");

        let rec = record("StepStarted", 1, json!({"step_id": "a"}));
        let err = WorkflowEvent::decode(&rec).expect_err("missing attempt");
        assert!(matches!(err, EventError::InvalidPayload { .. }), "{err}");
        assert!(err.to_string().contains("attempt"), "{err}");

        let rec = record("StepStarted", 9, json!({"step_id": "a", "attempt": 1}));
        let err = WorkflowEvent::decode(&rec).expect_err("future version");
        assert!(
            matches!(err, EventError::Upcast(UpcastError::FutureVersion { .. })),
            "{err}"
        );

        let rec = record("WorkflowCompleted", 1, json!({"status": "exploded"}));
        let err = WorkflowEvent::decode(&rec).expect_err("bad status");
        assert!(err.to_string().contains("exploded"), "{err}");
    }

    #[test]
    fn definition_validation() {
        assert_eq!(created().validate(), Ok(()));

        let mut c = created();
        c.workflow_id.clear();
        assert_eq!(c.validate(), Err(DefinitionError::EmptyWorkflowId));

        let mut c = created();
        c.steps[1].id = "plan".into();
        assert_eq!(
            c.validate(),
            Err(DefinitionError::DuplicateStepId("plan".into()))
        );

        let mut c = created();
        c.steps[1].id.clear();
        assert_eq!(c.validate(), Err(DefinitionError::EmptyStepId { index: 1 }));

        let mut c = created();
        c.steps = (0..=MAX_STEPS)
            .map(|i| StepDef::new(format!("s{i}"), "x"))
            .collect();
        assert!(matches!(
            c.validate(),
            Err(DefinitionError::TooManySteps { count, max: MAX_STEPS }) if count == MAX_STEPS + 1
        ));
        c.steps.pop();
        assert_eq!(c.validate(), Ok(()));

        let mut c = created();
        c.name = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            c.validate(),
            Err(DefinitionError::TooLong {
                what: "workflow name",
                ..
            })
        ));
        c.name = "é".repeat(MAX_NAME_BYTES / 2); // exactly 256 bytes
        assert_eq!(c.validate(), Ok(()));

        let mut c = created();
        c.steps[0].name = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            c.validate(),
            Err(DefinitionError::TooLong {
                what: "step name",
                ..
            })
        ));

        let mut c = created();
        c.steps[0].max_attempts = 0;
        assert!(matches!(
            c.validate(),
            Err(DefinitionError::ZeroMaxAttempts { .. })
        ));

        let mut c = created();
        c.workflow_id = "bad\nid".into();
        assert!(matches!(
            c.validate(),
            Err(DefinitionError::ControlCharacter { .. })
        ));

        let mut c = created();
        c.metadata.insert(String::new(), "v".into());
        assert_eq!(c.validate(), Err(DefinitionError::EmptyMetadataKey));

        let mut c = created();
        c.metadata
            .insert("k".into(), "v".repeat(MAX_METADATA_VALUE_BYTES + 1));
        assert!(matches!(
            c.validate(),
            Err(DefinitionError::TooLong {
                what: "metadata value",
                ..
            })
        ));

        let mut c = created();
        c.steps.clear();
        assert_eq!(c.validate(), Ok(()), "a workflow without steps is allowed");
    }

    #[test]
    fn step_ids_of_events() {
        let events = all_events();
        let ids: Vec<Option<&str>> = events.iter().map(|e| e.step_id()).collect();
        assert_eq!(
            ids,
            [
                None,
                Some("plan"),
                Some("plan"),
                Some("plan"),
                Some("burn"),
                None,
                None
            ]
        );
    }

    #[test]
    fn stream_names() {
        assert_eq!(stream_name("abc"), "workflow-abc");
        assert_eq!(workflow_id_from_stream("workflow-abc"), Some("abc"));
        assert_eq!(workflow_id_from_stream("workflow-"), None);
        assert_eq!(workflow_id_from_stream("other-abc"), None);
    }
}
