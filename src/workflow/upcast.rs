//! Schema evolution on read.
//!
//! Stored events are never rewritten. When the shape of an event's payload changes, its schema
//! version goes up by one and a pure function that turns a payload of the previous version into
//! the new one is appended to that event type's chain. Reading an event of version `k` runs the
//! steps `k → k+1 → … → current` in order, so any stored version can be read by today's code.
//!
//! The registry is a map from event type to an ordered list of steps; step `i` (0-based) turns
//! version `i + 1` into version `i + 2`, so an event type with `n` steps is currently at
//! version `n + 1`. Versions start at 1.
//!
//! Evolutions registered by [`UpcasterRegistry::standard`]:
//!
//! * `StepFailed` v1 `{step, error}` → v2 `{step_id, error, attempt: 1}` → v3 adds
//!   `retryable: false`. (Version 1 did not count attempts, so every v1 failure reads as a
//!   failure of attempt 1; v1 had no notion of retrying, hence `retryable: false`.)
//! * `WorkflowCreated` v1 `steps: ["a", "b"]` → v2 `steps: [{id: "a", name: "a"}, …]` → v3
//!   adds `max_attempts: 1` to every step.
//!
//! All other workflow event types are still at version 1.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::events::{
    STEP_COMPLETED, STEP_FAILED, STEP_STARTED, WORKFLOW_COMPLETED, WORKFLOW_CREATED,
    WORKFLOW_SNAPSHOT,
};

/// One evolution step: a payload of version `k` in, the same payload at version `k + 1` out.
pub type UpcastFn = fn(Value) -> Result<Value, UpcastStepError>;

/// Why one upcaster step could not convert a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UpcastStepError(pub String);

impl UpcastStepError {
    pub fn new(message: impl Into<String>) -> Self {
        UpcastStepError(message.into())
    }
}

/// Why a payload could not be brought to the requested version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error("no upcasters are registered for event type {0:?}")]
    UnknownEventType(String),
    #[error("{event_type} has schema version 0; versions start at 1")]
    ZeroVersion { event_type: String },
    #[error(
        "{event_type} schema version {version} is newer than this code understands \
         (it reads up to version {current}); upgrade the reader before reading this stream"
    )]
    FutureVersion {
        event_type: String,
        version: u32,
        current: u32,
    },
    #[error(
        "{event_type} must be read at version {target}, but upcasters are only registered up to \
         version {registered}"
    )]
    MissingSteps {
        event_type: String,
        target: u32,
        registered: u32,
    },
    #[error("upcasting {event_type} from v{from} to v{to} failed: {source}")]
    StepFailed {
        event_type: String,
        from: u32,
        to: u32,
        #[source]
        source: UpcastStepError,
    },
    #[error(
        "cannot register an upcaster {event_type} v{from} -> v{}: the chain currently ends at \
         v{current}, so the next step must start there", from + 1
    )]
    ChainGap {
        event_type: String,
        from: u32,
        current: u32,
    },
}

/// Upcaster chains per event type.
#[derive(Debug, Clone, Default)]
pub struct UpcasterRegistry {
    chains: BTreeMap<String, Vec<UpcastFn>>,
}

impl UpcasterRegistry {
    /// A registry that knows no event types.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chains this code uses to read workflow events (see the module docs).
    pub fn standard() -> &'static UpcasterRegistry {
        static STANDARD: OnceLock<UpcasterRegistry> = OnceLock::new();
        STANDARD.get_or_init(|| {
            UpcasterRegistry::new()
                .with_chain(
                    WORKFLOW_CREATED,
                    vec![workflow_created_v1_to_v2, workflow_created_v2_to_v3],
                )
                .with_chain(STEP_STARTED, Vec::new())
                .with_chain(STEP_COMPLETED, Vec::new())
                .with_chain(
                    STEP_FAILED,
                    vec![step_failed_v1_to_v2, step_failed_v2_to_v3],
                )
                .with_chain(WORKFLOW_COMPLETED, Vec::new())
                .with_chain(WORKFLOW_SNAPSHOT, Vec::new())
        })
    }

    /// Sets the whole chain of `event_type`: `steps[i]` turns version `i + 1` into `i + 2`.
    /// An empty chain means the type is at version 1.
    pub fn with_chain(mut self, event_type: &str, steps: Vec<UpcastFn>) -> Self {
        self.chains.insert(event_type.to_owned(), steps);
        self
    }

    /// Appends one step to `event_type`'s chain (creating the chain at version 1 if needed).
    /// `from_version` must be the chain's current version, which keeps chains gap-free.
    pub fn add_step(
        &mut self,
        event_type: &str,
        from_version: u32,
        step: UpcastFn,
    ) -> Result<(), UpcastError> {
        let chain = self.chains.entry(event_type.to_owned()).or_default();
        let current = chain_version(chain);
        if from_version != current {
            return Err(UpcastError::ChainGap {
                event_type: event_type.to_owned(),
                from: from_version,
                current,
            });
        }
        chain.push(step);
        Ok(())
    }

    /// The version the chain of `event_type` ends at, or `None` for an unknown type.
    pub fn current_version(&self, event_type: &str) -> Option<u32> {
        self.chains
            .get(event_type)
            .map(|chain| chain_version(chain))
    }

    /// The event types this registry knows.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    /// Brings `payload`, stored at `version`, to the chain's current version.
    pub fn upcast(
        &self,
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<Value, UpcastError> {
        let current = self
            .current_version(event_type)
            .ok_or_else(|| UpcastError::UnknownEventType(event_type.to_owned()))?;
        self.upcast_to(event_type, version, current, payload)
    }

    /// Brings `payload`, stored at `version`, to exactly `target`. A stored version above
    /// `target` is an error: old code cannot read what newer code wrote.
    pub fn upcast_to(
        &self,
        event_type: &str,
        version: u32,
        target: u32,
        payload: Value,
    ) -> Result<Value, UpcastError> {
        let chain = self
            .chains
            .get(event_type)
            .ok_or_else(|| UpcastError::UnknownEventType(event_type.to_owned()))?;
        if version == 0 {
            return Err(UpcastError::ZeroVersion {
                event_type: event_type.to_owned(),
            });
        }
        if version > target {
            return Err(UpcastError::FutureVersion {
                event_type: event_type.to_owned(),
                version,
                current: target,
            });
        }
        let registered = chain_version(chain);
        if target > registered {
            return Err(UpcastError::MissingSteps {
                event_type: event_type.to_owned(),
                target,
                registered,
            });
        }
        let mut value = payload;
        for from in version..target {
            // `from` starts at 1 and stays below `registered`, so the index is in range.
            let Some(step) = chain.get((from - 1) as usize) else {
                return Err(UpcastError::MissingSteps {
                    event_type: event_type.to_owned(),
                    target,
                    registered,
                });
            };
            value = step(value).map_err(|source| UpcastError::StepFailed {
                event_type: event_type.to_owned(),
                from,
                to: from + 1,
                source,
            })?;
        }
        Ok(value)
    }
}

fn chain_version(chain: &[UpcastFn]) -> u32 {
    u32::try_from(chain.len()).map_or(u32::MAX, |n| n.saturating_add(1))
}

fn into_object(value: Value, what: &str) -> Result<Map<String, Value>, UpcastStepError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(UpcastStepError::new(format!(
            "{what} payload must be a JSON object, found {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `StepFailed` v1 → v2: renames `step` to `step_id` and adds `attempt: 1`.
pub fn step_failed_v1_to_v2(payload: Value) -> Result<Value, UpcastStepError> {
    let mut map = into_object(payload, "StepFailed v1")?;
    let step = map
        .remove("step")
        .ok_or_else(|| UpcastStepError::new("StepFailed v1 payload has no \"step\" field"))?;
    if !step.is_string() {
        return Err(UpcastStepError::new(format!(
            "StepFailed v1 \"step\" must be a string, found {}",
            json_kind(&step)
        )));
    }
    if map.contains_key("step_id") {
        return Err(UpcastStepError::new(
            "StepFailed v1 payload already has a \"step_id\" field; is it mislabelled as v1?",
        ));
    }
    map.insert("step_id".to_owned(), step);
    map.entry("attempt").or_insert(Value::from(1u32));
    Ok(Value::Object(map))
}

/// `StepFailed` v2 → v3: adds `retryable: false`.
pub fn step_failed_v2_to_v3(payload: Value) -> Result<Value, UpcastStepError> {
    let mut map = into_object(payload, "StepFailed v2")?;
    map.entry("retryable").or_insert(Value::Bool(false));
    Ok(Value::Object(map))
}

/// `WorkflowCreated` v1 → v2: each step id string becomes `{id, name}` with the id as name.
pub fn workflow_created_v1_to_v2(payload: Value) -> Result<Value, UpcastStepError> {
    let mut map = into_object(payload, "WorkflowCreated v1")?;
    let steps = match map.remove("steps") {
        Some(Value::Array(steps)) => steps,
        Some(other) => {
            return Err(UpcastStepError::new(format!(
                "WorkflowCreated v1 \"steps\" must be an array of strings, found {}",
                json_kind(&other)
            )))
        }
        None => {
            return Err(UpcastStepError::new(
                "WorkflowCreated v1 payload has no \"steps\" field",
            ))
        }
    };
    let mut upgraded = Vec::with_capacity(steps.len());
    for (index, step) in steps.into_iter().enumerate() {
        match step {
            Value::String(id) => {
                let mut obj = Map::new();
                obj.insert("id".to_owned(), Value::String(id.clone()));
                obj.insert("name".to_owned(), Value::String(id));
                upgraded.push(Value::Object(obj));
            }
            other => {
                return Err(UpcastStepError::new(format!(
                    "WorkflowCreated v1 step #{index} must be a string, found {}",
                    json_kind(&other)
                )))
            }
        }
    }
    map.insert("steps".to_owned(), Value::Array(upgraded));
    Ok(Value::Object(map))
}

/// `WorkflowCreated` v2 → v3: every step gets `max_attempts: 1`.
pub fn workflow_created_v2_to_v3(payload: Value) -> Result<Value, UpcastStepError> {
    let mut map = into_object(payload, "WorkflowCreated v2")?;
    match map.get_mut("steps") {
        Some(Value::Array(steps)) => {
            for (index, step) in steps.iter_mut().enumerate() {
                match step {
                    Value::Object(obj) => {
                        obj.entry("max_attempts").or_insert(Value::from(1u32));
                    }
                    other => {
                        return Err(UpcastStepError::new(format!(
                            "WorkflowCreated v2 step #{index} must be an object, found {}",
                            json_kind(other)
                        )))
                    }
                }
            }
        }
        Some(other) => {
            return Err(UpcastStepError::new(format!(
                "WorkflowCreated v2 \"steps\" must be an array, found {}",
                json_kind(other)
            )))
        }
        None => {
            return Err(UpcastStepError::new(
                "WorkflowCreated v2 payload has no \"steps\" field",
            ))
        }
    }
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::super::events::{
        current_version, EventError, StepDef, StepFailed, WorkflowCreated, WorkflowEvent,
        WorkflowRecord, EVENT_TYPES,
    };
    use super::*;
    use serde_json::json;

    fn stored(event_type: &str, schema_version: u32, payload: Value) -> WorkflowRecord {
        WorkflowRecord {
            stream_version: 0,
            commit_time_ns: 1,
            event_type: event_type.to_owned(),
            schema_version,
            payload: serde_json::to_vec(&payload).expect("test payload encodes"),
        }
    }

    #[test]
    fn standard_registry_matches_the_event_schema_versions() {
        let reg = UpcasterRegistry::standard();
        for (event_type, version) in EVENT_TYPES {
            assert_eq!(
                reg.current_version(event_type),
                Some(version),
                "{event_type}"
            );
        }
        assert_eq!(reg.event_types().count(), EVENT_TYPES.len());
    }

    #[test]
    fn step_failed_v1_is_read_as_current() {
        let rec = stored(
            "StepFailed",
            1,
            json!({"step": "burn", "error": "thruster fault"}),
        );
        let event = WorkflowEvent::decode(&rec).expect("v1 decodes");
        assert_eq!(
            event,
            WorkflowEvent::StepFailed(StepFailed {
                step_id: "burn".into(),
                error: "thruster fault".into(),
                attempt: 1,
                retryable: false,
            })
        );
    }

    #[test]
    fn step_failed_v2_is_read_as_current() {
        let rec = stored(
            "StepFailed",
            2,
            json!({"step_id": "burn", "error": "e", "attempt": 3}),
        );
        let WorkflowEvent::StepFailed(e) = WorkflowEvent::decode(&rec).expect("v2 decodes") else {
            panic!("wrong variant");
        };
        assert_eq!(e.attempt, 3);
        assert!(!e.retryable);
    }

    #[test]
    fn current_version_passes_through_untouched() {
        let payload = json!({"step_id": "s", "error": "e", "attempt": 2, "retryable": true});
        let out = UpcasterRegistry::standard()
            .upcast("StepFailed", 3, payload.clone())
            .expect("no-op");
        assert_eq!(out, payload);
    }

    #[test]
    fn step_failed_chain_step_by_step() {
        let v1 = json!({"step": "burn", "error": "x"});
        let v2 = step_failed_v1_to_v2(v1).expect("v1->v2");
        assert_eq!(v2, json!({"step_id": "burn", "error": "x", "attempt": 1}));
        let v3 = step_failed_v2_to_v3(v2.clone()).expect("v2->v3");
        assert_eq!(
            v3,
            json!({"step_id": "burn", "error": "x", "attempt": 1, "retryable": false})
        );
        let reg = UpcasterRegistry::standard();
        assert_eq!(
            reg.upcast_to("StepFailed", 1, 2, json!({"step": "burn", "error": "x"}))
                .expect("to v2"),
            v2
        );
        assert_eq!(reg.upcast_to("StepFailed", 2, 3, v2).expect("to v3"), v3);
    }

    #[test]
    fn workflow_created_chain_step_by_step() {
        let v1 = json!({"workflow_id": "w", "name": "W", "steps": ["a", "b"]});
        let v2 = workflow_created_v1_to_v2(v1.clone()).expect("v1->v2");
        assert_eq!(
            v2,
            json!({"workflow_id": "w", "name": "W",
                   "steps": [{"id": "a", "name": "a"}, {"id": "b", "name": "b"}]})
        );
        let v3 = workflow_created_v2_to_v3(v2).expect("v2->v3");
        assert_eq!(
            v3,
            json!({"workflow_id": "w", "name": "W",
                   "steps": [{"id": "a", "name": "a", "max_attempts": 1},
                             {"id": "b", "name": "b", "max_attempts": 1}]})
        );
        let event = WorkflowEvent::decode(&stored("WorkflowCreated", 1, v1)).expect("decodes");
        assert_eq!(
            event,
            WorkflowEvent::WorkflowCreated(WorkflowCreated {
                workflow_id: "w".into(),
                name: "W".into(),
                steps: vec![StepDef::new("a", "a"), StepDef::new("b", "b")],
                metadata: Default::default(),
            })
        );
    }

    #[test]
    fn v2_max_attempts_already_present_is_kept() {
        let v2 = json!({"workflow_id": "w", "name": "W",
                        "steps": [{"id": "a", "name": "A", "max_attempts": 4}]});
        let v3 = workflow_created_v2_to_v3(v2).expect("v2->v3");
        assert_eq!(v3["steps"][0]["max_attempts"], json!(4));
    }

    /// The code's current StepFailed version is 2 in one release and 3 in the next; the same
    /// stored v1 bytes are readable by both, each in its own current shape.
    #[test]
    fn upgrading_the_current_version_keeps_old_bytes_readable() {
        let stored_v1 = br#"{"step":"burn","error":"thruster fault"}"#.to_vec();
        let parse = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).expect("json") };

        let release_2 =
            UpcasterRegistry::new().with_chain("StepFailed", vec![step_failed_v1_to_v2]);
        assert_eq!(release_2.current_version("StepFailed"), Some(2));
        let read_2 = release_2
            .upcast("StepFailed", 1, parse(&stored_v1))
            .expect("release 2 reads v1");
        assert_eq!(
            read_2,
            json!({"step_id": "burn", "error": "thruster fault", "attempt": 1})
        );

        let mut release_3 = release_2.clone();
        release_3
            .add_step("StepFailed", 2, step_failed_v2_to_v3)
            .expect("contiguous");
        assert_eq!(release_3.current_version("StepFailed"), Some(3));
        let read_3 = release_3
            .upcast("StepFailed", 1, parse(&stored_v1))
            .expect("release 3 reads v1");
        assert_eq!(
            read_3,
            json!({"step_id": "burn", "error": "thruster fault", "attempt": 1, "retryable": false})
        );

        // What release 2 itself wrote (v2) is read by release 3 too.
        let read_2_by_3 = release_3
            .upcast("StepFailed", 2, read_2)
            .expect("release 3 reads v2");
        assert_eq!(read_2_by_3, read_3);

        // Release 2 cannot read what release 3 writes: a clear error, not garbage.
        let err = release_2
            .upcast("StepFailed", 3, read_3)
            .expect_err("future version");
        assert_eq!(
            err,
            UpcastError::FutureVersion {
                event_type: "StepFailed".into(),
                version: 3,
                current: 2
            }
        );
        assert!(err.to_string().contains("newer than this code understands"));

        // Typed decoding with an out-of-date registry says what is missing.
        let rec = WorkflowRecord {
            stream_version: 0,
            commit_time_ns: 0,
            event_type: "StepFailed".into(),
            schema_version: 1,
            payload: stored_v1.clone(),
        };
        let err = WorkflowEvent::decode_with(&release_2, &rec).expect_err("registry too old");
        assert!(
            matches!(
                err,
                EventError::Upcast(UpcastError::MissingSteps {
                    target: 3,
                    registered: 2,
                    ..
                })
            ),
            "{err}"
        );
        assert!(WorkflowEvent::decode_with(&release_3, &rec).is_ok());
        assert_eq!(current_version("StepFailed"), Some(3));
    }

    #[test]
    fn unknown_and_invalid_versions_are_clear_errors() {
        let reg = UpcasterRegistry::standard();
        let err = reg.upcast("StepFailed", 4, json!({})).expect_err("future");
        assert_eq!(
            err.to_string(),
            "StepFailed schema version 4 is newer than this code understands (it reads up to \
             version 3); upgrade the reader before reading this stream"
        );
        assert_eq!(
            reg.upcast("StepFailed", 0, json!({})),
            Err(UpcastError::ZeroVersion {
                event_type: "StepFailed".into()
            })
        );
        assert_eq!(
            reg.upcast("Nope", 1, json!({})),
            Err(UpcastError::UnknownEventType("Nope".into()))
        );
    }

    #[test]
    fn failing_steps_name_the_hop() {
        let reg = UpcasterRegistry::standard();
        let err = reg
            .upcast("StepFailed", 1, json!({"error": "x"}))
            .expect_err("no step field");
        assert!(
            matches!(&err, UpcastError::StepFailed { from: 1, to: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("from v1 to v2"), "{err}");
        assert!(err.to_string().contains("\"step\""), "{err}");

        let err = reg
            .upcast("StepFailed", 2, json!([1, 2]))
            .expect_err("not an object");
        assert!(err.to_string().contains("found an array"), "{err}");

        let err = reg
            .upcast(
                "WorkflowCreated",
                1,
                json!({"workflow_id": "w", "name": "n", "steps": [1]}),
            )
            .expect_err("number step");
        assert!(
            err.to_string().contains("step #0 must be a string"),
            "{err}"
        );

        let err = reg
            .upcast(
                "WorkflowCreated",
                1,
                json!({"workflow_id": "w", "name": "n"}),
            )
            .expect_err("no steps");
        assert!(err.to_string().contains("no \"steps\""), "{err}");

        let err = reg
            .upcast(
                "StepFailed",
                1,
                json!({"step": "a", "step_id": "a", "error": "x"}),
            )
            .expect_err("mislabelled");
        assert!(err.to_string().contains("mislabelled"), "{err}");

        let err = reg
            .upcast(
                "WorkflowCreated",
                2,
                json!({"workflow_id": "w", "name": "n", "steps": ["a"]}),
            )
            .expect_err("v2 steps must be objects");
        assert!(err.to_string().contains("from v2 to v3"), "{err}");
    }

    #[test]
    fn chains_must_be_contiguous() {
        let mut reg = UpcasterRegistry::new();
        assert_eq!(reg.current_version("StepFailed"), None);
        let err = reg
            .add_step("StepFailed", 2, step_failed_v2_to_v3)
            .expect_err("gap");
        assert_eq!(
            err,
            UpcastError::ChainGap {
                event_type: "StepFailed".into(),
                from: 2,
                current: 1
            }
        );
        reg.add_step("StepFailed", 1, step_failed_v1_to_v2)
            .expect("first");
        reg.add_step("StepFailed", 2, step_failed_v2_to_v3)
            .expect("second");
        assert_eq!(reg.current_version("StepFailed"), Some(3));
    }
}
