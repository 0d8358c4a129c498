//! Tests of the projection: every transition (legal and illegal), the fold, projection
//! snapshots and resume, convergence and temporal queries.

use std::collections::{BTreeMap, BTreeSet};

use super::super::events::{
    CompletionStatus, DefinitionError, StepCompleted, StepDef, StepFailed, StepStarted,
    WorkflowCompleted, WorkflowCreated, WorkflowEvent, WorkflowRecord, WorkflowSnapshot,
    MAX_NAME_BYTES, MAX_OUTPUT_DEPTH,
};
use super::super::replay::*;
use super::super::rules::*;
use super::super::snapshot::*;
use super::super::state::*;
use super::super::temporal::*;
use super::*;
use serde_json::json;

const T0: i64 = 1_780_000_000_000_000_000;

fn definition(steps: &[(&str, u32)]) -> WorkflowCreated {
    WorkflowCreated {
        workflow_id: "wf-1".into(),
        name: "Deorbit".into(),
        steps: steps
            .iter()
            .map(|(id, max)| StepDef::new(*id, id.to_uppercase()).with_max_attempts(*max))
            .collect(),
        metadata: BTreeMap::from([("asset".to_owned(), "sat-42".to_owned())]),
    }
}

fn create(steps: &[(&str, u32)]) -> WorkflowEvent {
    WorkflowEvent::WorkflowCreated(definition(steps))
}

fn start(step: &str, attempt: u32) -> WorkflowEvent {
    WorkflowEvent::StepStarted(StepStarted {
        step_id: step.into(),
        attempt,
        worker: None,
    })
}

fn complete(step: &str, output: Value) -> WorkflowEvent {
    WorkflowEvent::StepCompleted(StepCompleted {
        step_id: step.into(),
        output,
    })
}

fn fail(step: &str, attempt: u32, retryable: bool) -> WorkflowEvent {
    WorkflowEvent::StepFailed(StepFailed {
        step_id: step.into(),
        error: format!("{step} failed on attempt {attempt}"),
        attempt,
        retryable,
    })
}

fn finish(status: CompletionStatus) -> WorkflowEvent {
    WorkflowEvent::WorkflowCompleted(WorkflowCompleted {
        status,
        reason: Some(format!("{status} by test")),
    })
}

fn to_record(event: &WorkflowEvent, stream_version: u64, commit_time_ns: i64) -> WorkflowRecord {
    let encoded = event.encode().expect("test events encode");
    WorkflowRecord {
        stream_version,
        commit_time_ns,
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        payload: encoded.payload,
    }
}

/// Applies events one at a time at commit times T0, T0+10, T0+20, …
struct Harness {
    projection: WorkflowProjection,
    records: Vec<WorkflowRecord>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            projection: WorkflowProjection::new(),
            records: Vec::new(),
        }
    }

    fn with(events: &[WorkflowEvent]) -> Self {
        let mut h = Harness::new();
        for e in events {
            h.ok(e);
        }
        h
    }

    fn next_time(&self) -> i64 {
        T0 + 10 * self.records.len() as i64
    }

    fn ok(&mut self, event: &WorkflowEvent) -> &WorkflowState {
        let version = self.projection.next_version();
        let t = self.next_time();
        assert_eq!(
            validate(self.projection.state(), event),
            Ok(()),
            "{event:?}"
        );
        self.projection
            .apply(event, t, version)
            .unwrap_or_else(|e| panic!("{event:?} rejected: {e}"));
        self.records.push(to_record(event, version, t));
        self.state()
    }

    /// The event is rejected by both `validate` and `apply`, and nothing changes.
    fn err(&mut self, event: &WorkflowEvent) -> TransitionError {
        let before = self.projection.clone();
        let checked = validate(self.projection.state(), event).expect_err("validate rejects");
        let applied = self
            .projection
            .apply(event, self.next_time(), self.projection.next_version())
            .expect_err("apply rejects");
        assert_eq!(checked, applied);
        assert_eq!(
            self.projection, before,
            "a rejected event changed the state"
        );
        applied
    }

    fn state(&self) -> &WorkflowState {
        self.projection.state().expect("workflow exists")
    }

    fn step(&self, id: &str) -> &StepState {
        self.state().step(id).expect("step exists")
    }
}

// ----- creation and the start of a stream -----

#[test]
fn created_sets_up_a_pending_workflow() {
    let h = Harness::with(&[create(&[("plan", 1), ("burn", 3)])]);
    let s = h.state();
    assert_eq!(s.workflow_id, "wf-1");
    assert_eq!(s.name, "Deorbit");
    assert_eq!(s.status, WorkflowStatus::Pending);
    assert_eq!(s.current_step.as_deref(), Some("plan"));
    assert_eq!(s.created_at_ns, T0);
    assert_eq!(s.updated_at_ns, T0);
    assert_eq!(s.completed_at_ns, None);
    assert_eq!((s.version, s.event_count), (0, 1));
    assert_eq!(s.metadata.get("asset").map(String::as_str), Some("sat-42"));
    assert_eq!(s.steps.len(), 2);
    let burn = h.step("burn");
    assert_eq!(burn.name, "BURN");
    assert_eq!(burn.status, StepStatus::Pending);
    assert_eq!((burn.attempts, burn.max_attempts), (0, 3));
    assert_eq!(burn.started_at_ns, None);
}

#[test]
fn creating_twice_is_rejected() {
    let mut h = Harness::with(&[create(&[("a", 1)])]);
    assert_eq!(
        h.err(&create(&[("a", 1)])),
        TransitionError::AlreadyCreated {
            workflow_id: "wf-1".into()
        }
    );
    h.ok(&finish(CompletionStatus::Cancelled));
    assert!(matches!(
        h.err(&create(&[("a", 1)])),
        TransitionError::AlreadyCreated { .. }
    ));
}

#[test]
fn events_before_creation_are_rejected() {
    let mut h = Harness::new();
    for event in [
        start("a", 1),
        complete("a", Value::Null),
        fail("a", 1, true),
        finish(CompletionStatus::Cancelled),
    ] {
        let err = h.err(&event);
        assert_eq!(
            err,
            TransitionError::NotCreated {
                event_type: event.event_type()
            }
        );
        assert!(err
            .to_string()
            .contains("must start with WorkflowCreated or WorkflowSnapshot"));
    }
}

#[test]
fn invalid_definitions_are_rejected() {
    let mut h = Harness::new();
    let err = h.err(&create(&[("a", 1), ("a", 2)]));
    assert_eq!(
        err,
        TransitionError::InvalidDefinition(DefinitionError::DuplicateStepId("a".into()))
    );
    assert_eq!(
        err.to_string(),
        "invalid workflow definition: step id \"a\" appears more than once"
    );
    assert!(matches!(
        h.err(&create(&[("a", 0)])),
        TransitionError::InvalidDefinition(DefinitionError::ZeroMaxAttempts { .. })
    ));
}

#[test]
fn snapshot_may_start_a_stream_only() {
    let mut imported = WorkflowState::from_definition(&definition(&[("a", 2), ("b", 1)]), 5);
    imported.status = WorkflowStatus::Running;
    imported.steps[0].status = StepStatus::Completed;
    imported.steps[0].attempts = 1;
    imported.steps[0].output = json!({"ok": true});
    imported.version = 99; // ignored
    imported.event_count = 42; // ignored
    imported.current_step = Some("nonsense".into()); // recomputed
    let snapshot = WorkflowEvent::WorkflowSnapshot(WorkflowSnapshot {
        state: imported.clone(),
    });

    let mut h = Harness::with(std::slice::from_ref(&snapshot));
    let s = h.state();
    assert_eq!((s.version, s.event_count), (0, 1));
    assert_eq!(s.created_at_ns, 5, "imported times are kept");
    assert_eq!(s.updated_at_ns, T0, "updated_at is the commit time");
    assert_eq!(s.current_step.as_deref(), Some("b"));
    assert_eq!(s.steps, imported.steps);

    assert_eq!(
        h.err(&snapshot),
        TransitionError::SnapshotOnExisting {
            workflow_id: "wf-1".into()
        }
    );
    // The imported workflow goes on as usual.
    h.ok(&start("b", 1));
    h.ok(&complete("b", json!(1)));
    h.ok(&finish(CompletionStatus::Succeeded));

    let mut h = Harness::with(&[create(&[("a", 1)])]);
    assert!(matches!(
        h.err(&snapshot),
        TransitionError::SnapshotOnExisting { .. }
    ));
}

#[test]
fn inconsistent_snapshots_are_rejected() {
    let base = WorkflowState::from_definition(&definition(&[("a", 2), ("b", 1)]), 5);
    let check = |state: WorkflowState| {
        let mut h = Harness::new();
        h.err(&WorkflowEvent::WorkflowSnapshot(WorkflowSnapshot { state }))
    };

    let mut s = base.clone();
    s.status = WorkflowStatus::Succeeded;
    s.completed_at_ns = Some(10);
    let err = check(s);
    assert!(
        err.to_string()
            .contains("a succeeded workflow cannot have step \"a\" in status pending"),
        "{err}"
    );

    let mut s = base.clone();
    s.status = WorkflowStatus::Cancelled;
    assert!(check(s).to_string().contains("needs a completion time"));

    let mut s = base.clone();
    s.completed_at_ns = Some(10);
    assert!(check(s)
        .to_string()
        .contains("cannot have a completion time"));

    let mut s = base.clone();
    s.status = WorkflowStatus::Running;
    s.steps[0].status = StepStatus::Running;
    assert!(check(s)
        .to_string()
        .contains("is running but has 0 attempts"));

    let mut s = base.clone();
    s.status = WorkflowStatus::Running;
    s.steps[0].status = StepStatus::Failed;
    s.steps[0].attempts = 3;
    assert!(check(s)
        .to_string()
        .contains("has 3 attempts but max_attempts is 2"));

    let mut s = base.clone();
    s.steps[0].status = StepStatus::Running;
    s.steps[0].attempts = 1;
    assert!(check(s)
        .to_string()
        .contains("a pending workflow cannot have step"));

    let mut s = base.clone();
    s.steps[1].id = "a".into();
    assert!(matches!(
        check(s),
        TransitionError::InvalidSnapshot(StateError::Definition(DefinitionError::DuplicateStepId(
            _
        )))
    ));

    let mut s = base.clone();
    s.steps[0].started_at_ns = Some(10);
    s.steps[0].ended_at_ns = Some(9);
    assert!(check(s).to_string().contains("ended before it started"));

    let mut s = base.clone();
    s.status = WorkflowStatus::Failed;
    s.completed_at_ns = Some(4);
    assert!(check(s)
        .to_string()
        .contains("completed before it was created"));

    let mut s = base;
    s.completion_reason = Some("why".into());
    assert!(check(s)
        .to_string()
        .contains("cannot have a completion reason"));
}

// ----- steps -----

#[test]
fn starting_a_step_runs_it_and_the_workflow() {
    let mut h = Harness::with(&[create(&[("plan", 1), ("burn", 1)])]);
    let s = h.ok(&WorkflowEvent::StepStarted(StepStarted {
        step_id: "burn".into(),
        attempt: 1,
        worker: Some("worker-7".into()),
    }));
    assert_eq!(s.status, WorkflowStatus::Running);
    assert_eq!(s.current_step.as_deref(), Some("burn"), "the running step");
    assert_eq!((s.version, s.event_count, s.updated_at_ns), (1, 2, T0 + 10));
    let burn = h.step("burn");
    assert_eq!(burn.status, StepStatus::Running);
    assert_eq!(burn.attempts, 1);
    assert_eq!(burn.started_at_ns, Some(T0 + 10));
    assert_eq!(burn.worker.as_deref(), Some("worker-7"));
}

#[test]
fn starting_an_unknown_step_is_rejected() {
    let mut h = Harness::with(&[create(&[("a", 1)])]);
    let err = h.err(&start("ghost", 1));
    assert_eq!(
        err,
        TransitionError::UnknownStep {
            event_type: "StepStarted",
            workflow_id: "wf-1".into(),
            step_id: "ghost".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "StepStarted names step \"ghost\", which is not a step of workflow \"wf-1\""
    );
    for event in [complete("ghost", Value::Null), fail("ghost", 1, true)] {
        assert!(matches!(h.err(&event), TransitionError::UnknownStep { .. }));
    }
}

#[test]
fn a_running_step_cannot_start_again() {
    let mut h = Harness::with(&[create(&[("a", 3)]), start("a", 1)]);
    for attempt in [1, 2] {
        let err = h.err(&start("a", attempt));
        assert_eq!(
            err,
            TransitionError::StepAlreadyRunning {
                step_id: "a".into(),
                attempt: 1
            }
        );
    }
}

#[test]
fn a_completed_step_cannot_start_again() {
    let mut h = Harness::with(&[create(&[("a", 3)]), start("a", 1), complete("a", json!(7))]);
    assert_eq!(
        h.err(&start("a", 2)),
        TransitionError::StepAlreadyCompleted {
            step_id: "a".into()
        }
    );
}

#[test]
fn start_attempt_numbers_must_count_up() {
    let mut h = Harness::with(&[create(&[("a", 3)])]);
    for wrong in [0, 2, 7] {
        assert_eq!(
            h.err(&start("a", wrong)),
            TransitionError::AttemptMismatch {
                event_type: "StepStarted",
                step_id: "a".into(),
                expected: 1,
                got: wrong
            }
        );
    }
    h.ok(&start("a", 1));
    h.ok(&fail("a", 1, true));
    assert!(matches!(
        h.err(&start("a", 1)),
        TransitionError::AttemptMismatch {
            expected: 2,
            got: 1,
            ..
        }
    ));
    h.ok(&start("a", 2));
}

#[test]
fn retrying_a_failed_step() {
    let mut h = Harness::with(&[create(&[("a", 3)]), start("a", 1), fail("a", 1, true)]);
    let a = h.step("a");
    assert_eq!(a.status, StepStatus::Failed);
    assert_eq!(a.ended_at_ns, Some(T0 + 20));
    assert_eq!(a.last_error.as_deref(), Some("a failed on attempt 1"));
    assert_eq!(a.retryable, Some(true));
    assert_eq!(h.state().status, WorkflowStatus::Running);
    assert_eq!(
        h.state().current_step.as_deref(),
        Some("a"),
        "awaiting retry"
    );

    h.ok(&start("a", 2));
    let a = h.step("a");
    assert_eq!(a.status, StepStatus::Running);
    assert_eq!(a.attempts, 2);
    assert_eq!(a.started_at_ns, Some(T0 + 30));
    assert_eq!(a.ended_at_ns, None, "cleared for the new attempt");
    assert_eq!(
        a.last_error.as_deref(),
        Some("a failed on attempt 1"),
        "the last error is kept"
    );
    h.ok(&complete("a", json!({"ok": true})));
    let a = h.step("a");
    assert_eq!(a.status, StepStatus::Completed);
    assert_eq!(a.output, json!({"ok": true}));
    assert_eq!(a.ended_at_ns, Some(T0 + 40));
}

#[test]
fn a_failed_step_cannot_start_when_attempts_are_used_up() {
    let mut h = Harness::with(&[
        create(&[("a", 2)]),
        start("a", 1),
        fail("a", 1, true),
        start("a", 2),
        fail("a", 2, true),
    ]);
    let err = h.err(&start("a", 3));
    assert_eq!(
        err,
        TransitionError::AttemptsExhausted {
            step_id: "a".into(),
            attempts: 2,
            max_attempts: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "step \"a\" has used 2 of its 2 attempts; it cannot be started again"
    );
    // With max_attempts 1 (the default) a single failure is final.
    let mut h = Harness::with(&[create(&[("b", 1)]), start("b", 1), fail("b", 1, true)]);
    assert!(matches!(
        h.err(&start("b", 2)),
        TransitionError::AttemptsExhausted { .. }
    ));
    h.ok(&finish(CompletionStatus::Failed));
}

#[test]
fn a_non_retryable_failure_cannot_be_retried() {
    let mut h = Harness::with(&[create(&[("a", 5)]), start("a", 1), fail("a", 1, false)]);
    assert_eq!(
        h.err(&start("a", 2)),
        TransitionError::NotRetryable {
            step_id: "a".into()
        }
    );
}

#[test]
fn completing_or_failing_a_step_that_is_not_running() {
    let mut h = Harness::with(&[
        create(&[("a", 2), ("b", 1)]),
        start("b", 1),
        complete("b", json!(null)),
    ]);
    // pending
    assert_eq!(
        h.err(&complete("a", Value::Null)),
        TransitionError::StepNotRunning {
            event_type: "StepCompleted",
            step_id: "a".into(),
            status: StepStatus::Pending
        }
    );
    assert!(matches!(
        h.err(&fail("a", 0, true)),
        TransitionError::StepNotRunning {
            status: StepStatus::Pending,
            ..
        }
    ));
    // completed
    let err = h.err(&complete("b", Value::Null));
    assert_eq!(
        err.to_string(),
        "StepCompleted for step \"b\", which is completed, not running"
    );
    assert!(matches!(
        h.err(&fail("b", 1, true)),
        TransitionError::StepNotRunning {
            status: StepStatus::Completed,
            ..
        }
    ));
    // failed
    h.ok(&start("a", 1));
    h.ok(&fail("a", 1, true));
    assert!(matches!(
        h.err(&complete("a", Value::Null)),
        TransitionError::StepNotRunning {
            status: StepStatus::Failed,
            ..
        }
    ));
    assert!(matches!(
        h.err(&fail("a", 1, true)),
        TransitionError::StepNotRunning {
            status: StepStatus::Failed,
            ..
        }
    ));
}

#[test]
fn failure_attempt_must_be_the_running_attempt() {
    let mut h = Harness::with(&[
        create(&[("a", 3)]),
        start("a", 1),
        fail("a", 1, true),
        start("a", 2),
    ]);
    for wrong in [0, 1, 3] {
        assert_eq!(
            h.err(&fail("a", wrong, true)),
            TransitionError::AttemptMismatch {
                event_type: "StepFailed",
                step_id: "a".into(),
                expected: 2,
                got: wrong
            }
        );
    }
    h.ok(&fail("a", 2, true));
}

#[test]
fn worker_and_output_limits() {
    let mut h = Harness::with(&[create(&[("a", 1)])]);
    let err = h.err(&WorkflowEvent::StepStarted(StepStarted {
        step_id: "a".into(),
        attempt: 1,
        worker: Some("w".repeat(MAX_NAME_BYTES + 1)),
    }));
    assert!(matches!(
        err,
        TransitionError::FieldTooLong {
            field: "worker",
            ..
        }
    ));
    h.ok(&start("a", 1));
    let mut deep = json!(1);
    for _ in 0..=MAX_OUTPUT_DEPTH {
        deep = json!([deep]);
    }
    assert!(matches!(
        h.err(&complete("a", deep.clone())),
        TransitionError::OutputTooDeep { depth, .. } if depth == MAX_OUTPUT_DEPTH + 1
    ));
    if let Value::Array(mut inner) = deep {
        h.ok(&complete("a", inner.remove(0)));
    }
}

#[test]
fn json_depth_counts_nesting() {
    assert_eq!(json_depth(&json!(1)), 0);
    assert_eq!(json_depth(&json!([])), 1);
    assert_eq!(json_depth(&json!({"a": [1, {"b": {}}]})), 4);
}

// ----- workflow completion -----

#[test]
fn succeeding_needs_every_step_completed() {
    let mut h = Harness::with(&[
        create(&[("a", 1), ("b", 1), ("c", 1)]),
        start("a", 1),
        complete("a", json!(1)),
    ]);
    let err = h.err(&finish(CompletionStatus::Succeeded));
    assert_eq!(
        err,
        TransitionError::StepsIncomplete {
            workflow_id: "wf-1".into(),
            incomplete: vec!["b".into(), "c".into()]
        }
    );
    assert_eq!(
        err.to_string(),
        "workflow \"wf-1\" cannot succeed while steps are not completed: \"b\", \"c\""
    );
    h.ok(&start("b", 1));
    h.ok(&complete("b", json!(2)));
    h.ok(&start("c", 1));
    assert!(matches!(
        h.err(&finish(CompletionStatus::Succeeded)),
        TransitionError::StepsIncomplete { .. }
    ));
    h.ok(&complete("c", json!(3)));
    assert_eq!(h.state().current_step, None, "all steps completed");
    let s = h.ok(&finish(CompletionStatus::Succeeded));
    assert_eq!(s.status, WorkflowStatus::Succeeded);
    assert_eq!(
        s.completed_at_ns,
        Some(T0 + 70),
        "rejected events take no time slot"
    );
    assert_eq!(s.completion_reason.as_deref(), Some("succeeded by test"));
    assert_eq!(s.current_step, None);
}

#[test]
fn long_lists_of_incomplete_steps_are_abbreviated() {
    let ids: Vec<String> = (0..25).map(|i| format!("s{i}")).collect();
    let steps: Vec<(&str, u32)> = ids.iter().map(|s| (s.as_str(), 1)).collect();
    let mut h = Harness::with(&[create(&steps)]);
    let msg = h.err(&finish(CompletionStatus::Succeeded)).to_string();
    assert!(msg.ends_with("\"s9\" and 15 more"), "{msg}");
}

#[test]
fn a_workflow_without_steps_can_succeed_at_once() {
    let mut h = Harness::with(&[create(&[])]);
    assert_eq!(h.state().current_step, None);
    h.ok(&finish(CompletionStatus::Succeeded));
}

#[test]
fn failing_or_cancelling_is_allowed_at_any_time() {
    for status in [CompletionStatus::Failed, CompletionStatus::Cancelled] {
        let mut h = Harness::with(&[create(&[("a", 1)])]);
        assert_eq!(h.ok(&finish(status)).status, status.into());

        let mut h = Harness::with(&[create(&[("a", 1), ("b", 1)]), start("a", 1)]);
        let s = h.ok(&finish(status));
        assert_eq!(s.status, WorkflowStatus::from(status));
        assert_eq!(s.current_step, None);
        assert_eq!(
            h.step("a").status,
            StepStatus::Running,
            "steps are left as they were"
        );
    }
}

#[test]
fn nothing_follows_workflow_completion() {
    for status in [
        CompletionStatus::Succeeded,
        CompletionStatus::Failed,
        CompletionStatus::Cancelled,
    ] {
        let mut h = Harness::with(&[
            create(&[("a", 2), ("b", 2)]),
            start("a", 1),
            complete("a", json!(1)),
            start("b", 1),
            complete("b", json!(1)),
        ]);
        h.ok(&finish(status));
        for event in [
            start("b", 2),
            start("a", 2),
            complete("b", Value::Null),
            fail("b", 1, true),
            finish(CompletionStatus::Cancelled),
            finish(status),
        ] {
            let err = h.err(&event);
            assert_eq!(
                err,
                TransitionError::WorkflowFinished {
                    event_type: event.event_type(),
                    workflow_id: "wf-1".into(),
                    status: status.into()
                }
            );
        }
    }
    let mut h = Harness::with(&[create(&[("a", 1)]), finish(CompletionStatus::Cancelled)]);
    assert_eq!(
        h.err(&start("a", 1)).to_string(),
        "StepStarted on workflow \"wf-1\", which has already ended as cancelled"
    );
}

// ----- ordering and current step -----

#[test]
fn stream_versions_must_be_contiguous() {
    let mut p = WorkflowProjection::new();
    assert_eq!(
        p.apply(&create(&[("a", 1)]), T0, 1),
        Err(TransitionError::OutOfOrder {
            expected: 0,
            got: 1
        })
    );
    p.apply(&create(&[("a", 1)]), T0, 0).expect("first");
    for wrong in [0, 2, 5] {
        assert_eq!(
            p.apply(&start("a", 1), T0, wrong),
            Err(TransitionError::OutOfOrder {
                expected: 1,
                got: wrong
            })
        );
    }
    p.apply(&start("a", 1), T0, 1).expect("next");
    assert_eq!(p.next_version(), 2);
}

#[test]
fn current_step_follows_definition_order() {
    let mut h = Harness::with(&[create(&[("a", 2), ("b", 1), ("c", 1)])]);
    let cur = |h: &Harness| h.state().current_step.clone();
    assert_eq!(cur(&h).as_deref(), Some("a"));
    h.ok(&start("c", 1));
    assert_eq!(
        cur(&h).as_deref(),
        Some("c"),
        "the running step wins over pending ones"
    );
    h.ok(&start("b", 1));
    assert_eq!(
        cur(&h).as_deref(),
        Some("b"),
        "first running step in definition order"
    );
    h.ok(&complete("b", json!(1)));
    assert_eq!(cur(&h).as_deref(), Some("c"));
    h.ok(&complete("c", json!(1)));
    assert_eq!(cur(&h).as_deref(), Some("a"), "next pending");
    h.ok(&start("a", 1));
    h.ok(&fail("a", 1, true));
    assert_eq!(cur(&h).as_deref(), Some("a"), "failed, awaiting retry");
    h.ok(&finish(CompletionStatus::Failed));
    assert_eq!(cur(&h), None);
}

#[test]
fn timestamps_are_commit_times() {
    let mut p = WorkflowProjection::new();
    p.apply(&create(&[("a", 1)]), 100, 0).expect("ok");
    p.apply(&start("a", 1), 250, 1).expect("ok");
    p.apply(&complete("a", json!(1)), 250, 2)
        .expect("equal commit times are fine");
    p.apply(&finish(CompletionStatus::Succeeded), 900, 3)
        .expect("ok");
    let s = p.state().expect("exists");
    assert_eq!(s.created_at_ns, 100);
    assert_eq!(s.steps[0].started_at_ns, Some(250));
    assert_eq!(s.steps[0].ended_at_ns, Some(250));
    assert_eq!(s.completed_at_ns, Some(900));
    assert_eq!(s.updated_at_ns, 900);
    assert_eq!((s.version, s.event_count), (3, 4));
}

// ----- fold, replay, snapshots -----

fn sample_history() -> Harness {
    Harness::with(&[
        create(&[("plan", 1), ("burn", 3), ("verify", 1)]),
        start("plan", 1),
        complete("plan", json!({"delta_v": 12.5, "windows": [0.1, 1e-7, 3]})),
        start("burn", 1),
        fail("burn", 1, true),
        start("burn", 2),
        complete("burn", json!("done")),
        start("verify", 1),
        complete("verify", Value::Null),
        finish(CompletionStatus::Succeeded),
    ])
}

#[test]
fn replay_from_records_equals_incremental_apply() {
    let h = sample_history();
    let replayed = state_after_replay(None, &h.records)
        .expect("replays")
        .expect("exists");
    assert_eq!(&replayed, h.state());
    assert_eq!(replayed.version, 9);
    assert_eq!(replayed.event_count, 10);
    assert_eq!(
        state_after_replay(None, Vec::<WorkflowRecord>::new()).expect("empty"),
        None
    );
}

#[test]
fn resuming_from_any_snapshot_equals_full_replay() {
    let h = sample_history();
    let full = state_after_replay(None, &h.records).expect("ok");
    for k in 0..h.records.len() {
        let prefix = state_after_replay(None, &h.records[..=k])
            .expect("ok")
            .expect("exists");
        let stored = encode_projection_snapshot(&prefix).expect("encodes");
        let snapshot = decode_projection_snapshot(&stored).expect("decodes");
        assert_eq!(snapshot, prefix);
        // The whole stream may be passed: records covered by the snapshot are skipped.
        assert_eq!(
            state_after_replay(Some(snapshot.clone()), &h.records).expect("ok"),
            full
        );
        assert_eq!(
            state_after_replay(Some(snapshot), &h.records[k + 1..]).expect("ok"),
            full
        );
    }
}

#[test]
fn replay_reports_bad_records_with_their_version() {
    let h = sample_history();
    let mut records = h.records.clone();
    records[3].payload = b"{}".to_vec();
    let err = state_after_replay(None, &records).expect_err("bad payload");
    assert!(
        matches!(
            err,
            ProjectionError::Decode {
                stream_version: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with("cannot decode the event at stream version 3"));

    let mut records = h.records.clone();
    records.swap(3, 4);
    let err = state_after_replay(None, &records).expect_err("out of order");
    assert!(
        matches!(
            err,
            ProjectionError::Transition {
                stream_version: 4,
                source: TransitionError::OutOfOrder {
                    expected: 3,
                    got: 4
                },
                ..
            }
        ),
        "{err}"
    );

    let mut records = h.records[..4].to_vec();
    records.push(to_record(&start("burn", 1), 4, T0 + 999));
    let err = state_after_replay(None, &records).expect_err("illegal");
    assert_eq!(
        err.to_string(),
        "the StepStarted event at stream version 4 cannot be applied: step \"burn\" is already \
         running (attempt 1); it cannot be started twice"
    );
}

#[test]
fn old_schema_versions_fold_like_current_ones() {
    let created_v1 = WorkflowRecord {
        stream_version: 0,
        commit_time_ns: 1,
        event_type: "WorkflowCreated".into(),
        schema_version: 1,
        payload: br#"{"workflow_id":"old","name":"Old","steps":["a","b"]}"#.to_vec(),
    };
    let started = to_record(&start("a", 1), 1, 2);
    let failed_v1 = WorkflowRecord {
        stream_version: 2,
        commit_time_ns: 3,
        event_type: "StepFailed".into(),
        schema_version: 1,
        payload: br#"{"step":"a","error":"legacy failure"}"#.to_vec(),
    };
    let state = state_after_replay(None, [&created_v1, &started, &failed_v1])
        .expect("folds")
        .expect("exists");
    let a = state.step("a").expect("a");
    assert_eq!(a.status, StepStatus::Failed);
    assert_eq!(a.max_attempts, 1);
    assert_eq!(a.retryable, Some(false));
    assert_eq!(a.last_error.as_deref(), Some("legacy failure"));
}

#[test]
fn projection_snapshot_format() {
    let h = sample_history();
    let bytes = encode_projection_snapshot(h.state()).expect("encodes");
    assert!(bytes.starts_with(br#"{"format":1,"state":{"workflow_id":"wf-1""#));
    assert!(!bytes.contains(&b'\n'), "compact");

    let mut other = serde_json::from_slice::<Value>(&bytes).expect("json");
    other["format"] = json!(2);
    let err = decode_projection_snapshot(&serde_json::to_vec(&other).expect("json"))
        .expect_err("unknown format");
    assert!(matches!(
        err,
        SnapshotError::UnsupportedFormat {
            found: 2,
            expected: 1
        }
    ));
    assert!(err.to_string().contains("rebuild the projection"));
    assert!(matches!(
        decode_projection_snapshot(b"garbage"),
        Err(SnapshotError::Json(_))
    ));
    assert!(matches!(
        decode_projection_snapshot(br#"{"format":1,"state":{"workflow_id":"x"}}"#),
        Err(SnapshotError::Json(_))
    ));
}

/// The one-pass envelope reads what a derived `Deserialize` read: the fields in any order,
/// unknown ones ignored, a repeated or a missing one refused, another format refused
/// whatever its state holds (if it is JSON).
#[test]
fn projection_snapshot_envelope_reads_any_field_order() {
    let h = sample_history();
    let state = serde_json::to_value(h.state()).expect("json");
    let doc = |v: Value| serde_json::to_vec(&v).expect("json");
    let state_first = format!(r#"{{"state":{state},"extra":[1,{{}}],"format":1}}"#);
    assert_eq!(
        &decode_projection_snapshot(state_first.as_bytes()).expect("state first"),
        h.state()
    );
    assert_eq!(
        &decode_projection_snapshot(&doc(json!({"format": 1, "x": null, "state": state})))
            .expect("unknown field"),
        h.state()
    );
    for other in [
        json!({"format": 2, "state": "not a state"}),
        json!({"state": [1, 2], "format": 7}),
    ] {
        assert!(matches!(
            decode_projection_snapshot(&doc(other)),
            Err(SnapshotError::UnsupportedFormat { expected: 1, .. })
        ));
    }
    for bad in [
        format!(r#"{{"format":1,"format":1,"state":{state}}}"#),
        format!(r#"{{"format":1,"state":{state},"state":{state}}}"#),
        format!(r#"{{"state":{state}}}"#),
        r#"{"format":1}"#.to_owned(),
        r#"{"format":2,"state":[1,}"#.to_owned(),
        r#"{"format":"1","state":{}}"#.to_owned(),
    ] {
        assert!(
            matches!(
                decode_projection_snapshot(bad.as_bytes()),
                Err(SnapshotError::Json(_))
            ),
            "accepted {bad}"
        );
    }
}

/// The envelope in a derived `Deserialize`'s other form, a sequence `[format, state]`, is
/// read as it was before the one-pass decoder; and a key repeated inside the state is
/// refused wherever the state stands, before or after its format (one rule for every
/// replica: before, a state ahead of its format went through a `Value`, which kept the
/// last of the repeated keys, while one behind it was refused).
#[test]
fn projection_snapshot_envelope_as_a_sequence_and_repeated_state_keys() {
    let h = sample_history();
    let state = serde_json::to_string(h.state()).expect("json");
    assert_eq!(
        &decode_projection_snapshot(format!("[1,{state}]").as_bytes()).expect("sequence"),
        h.state()
    );
    assert!(matches!(
        decode_projection_snapshot(br#"[2,"not a state"]"#),
        Err(SnapshotError::UnsupportedFormat {
            found: 2,
            expected: 1
        })
    ));
    for bad in ["[1]".to_owned(), "[]".to_owned(), format!("[1,{state},3]")] {
        assert!(
            matches!(
                decode_projection_snapshot(bad.as_bytes()),
                Err(SnapshotError::Json(_))
            ),
            "accepted {bad}"
        );
    }
    let repeated = state.replacen('{', r#"{"version":0,"#, 1);
    assert!(repeated.contains(r#""version":0,"#) && repeated != state);
    for bad in [
        format!(r#"{{"format":1,"state":{repeated}}}"#),
        format!(r#"{{"state":{repeated},"format":1}}"#),
        format!("[1,{repeated}]"),
    ] {
        assert!(
            matches!(
                decode_projection_snapshot(bad.as_bytes()),
                Err(SnapshotError::Json(_))
            ),
            "accepted {bad}"
        );
    }
}

#[test]
fn snapshot_due_every_n_events() {
    let h = sample_history();
    let mut state = h.state().clone();
    state.event_count = 64;
    assert!(snapshot_due(&state, 64));
    assert!(snapshot_due(&state, 32));
    assert!(!snapshot_due(&state, 0));
    state.event_count = 65;
    assert!(!snapshot_due(&state, 64));
}

#[test]
fn fingerprints_are_stable_and_discriminating() {
    let h = sample_history();
    let a = state_fingerprint(h.state()).expect("fp");
    let replayed = state_after_replay(None, &h.records)
        .expect("ok")
        .expect("exists");
    assert_eq!(state_fingerprint(&replayed).expect("fp"), a);
    let mut changed = replayed.clone();
    changed.steps[1].attempts = 3;
    assert_ne!(state_fingerprint(&changed).expect("fp"), a);

    // FNV-1a 64 of the compact JSON, independent of process and platform.
    let tiny = WorkflowState::from_definition(&definition(&[]), 0);
    let bytes = serde_json::to_vec(&tiny).expect("json");
    let mut expected: u64 = 0xcbf29ce484222325;
    for b in bytes {
        expected = (expected ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    assert_eq!(state_fingerprint(&tiny).expect("fp"), expected);
}

#[test]
fn state_difference_points_at_the_field() {
    let h = sample_history();
    let a = h.state().clone();
    assert_eq!(state_difference(&a, &a), None);
    let mut b = a.clone();
    b.steps[1].last_error = Some("other".into());
    assert_eq!(
        state_difference(&a, &b).as_deref(),
        Some("/steps/1/last_error: \"burn failed on attempt 1\" != \"other\"")
    );
    let mut c = a.clone();
    c.completion_reason = None;
    assert_eq!(
        state_difference(&a, &c).as_deref(),
        Some("/completion_reason: \"succeeded by test\" != (absent)")
    );
}

#[test]
fn replay_converges_on_a_real_history() {
    let h = sample_history();
    for every in [0, 1, 2, 3, 64] {
        let report = replay_converges_every(&h.records, every).expect("folds");
        assert!(report.converged(), "{report:?}");
        assert_eq!(report.events, 10);
        assert_eq!(report.final_version, Some(9));
        assert_eq!(report.fingerprint, state_fingerprint(h.state()).ok());
        let expected_snapshots = match every {
            0 | 1 => 10,
            64 => 0,
            n => 10 / n,
        };
        assert_eq!(
            report.snapshots_checked, expected_snapshots,
            "every {every}"
        );
    }
    let report = replay_converges(&h.records).expect("folds");
    assert!(report.converged());
    let empty = replay_converges(&[]).expect("folds");
    assert!(empty.converged());
    assert_eq!(empty.final_version, None);

    let mut records = h.records.clone();
    records.remove(2);
    assert!(
        replay_converges(&records).is_err(),
        "an unfoldable stream is an error"
    );
}

// ----- temporal queries -----

fn points(times: &[i64]) -> Vec<EventPoint> {
    times
        .iter()
        .enumerate()
        .map(|(i, &t)| EventPoint {
            stream_version: i as u64,
            commit_time_ns: t,
        })
        .collect()
}

#[test]
fn version_at_time_cases() {
    let p = points(&[100, 200, 200, 300]);
    assert_eq!(version_at_time(&p, 99), Ok(None), "before the first event");
    assert_eq!(version_at_time(&p, i64::MIN), Ok(None));
    assert_eq!(version_at_time(&p, 100), Ok(Some(0)), "exactly at an event");
    assert_eq!(version_at_time(&p, 150), Ok(Some(0)), "between events");
    assert_eq!(
        version_at_time(&p, 200),
        Ok(Some(2)),
        "last of equal commit times"
    );
    assert_eq!(version_at_time(&p, 299), Ok(Some(2)));
    assert_eq!(version_at_time(&p, 300), Ok(Some(3)));
    assert_eq!(
        version_at_time(&p, i64::MAX),
        Ok(Some(3)),
        "after the last event"
    );
    assert_eq!(version_at_time(&[], 5), Ok(None));
    assert_eq!(
        version_at_time(&points(&[5, 4]), 5),
        Err(TemporalError::NotSorted {
            index: 1,
            stream_version: 1
        })
    );
    let dup = [p[0], p[0]];
    assert!(matches!(
        version_at_time(&dup, 5),
        Err(TemporalError::NotSorted { .. })
    ));
}

#[test]
fn plans_pick_the_latest_snapshot_at_or_before_the_target() {
    let p = points(&[10, 20, 30, 40, 50, 60]);
    let plan = plan_at_version(&p, &[4, 1, 9], 3).expect("plan");
    assert_eq!(
        plan,
        ReplayPlan {
            target_version: 3,
            snapshot_version: Some(1)
        }
    );
    assert_eq!(plan.fold_range(), 2..=3);
    let plan = plan_at_version(&p, &[4, 1], 4).expect("plan");
    assert_eq!(plan.snapshot_version, Some(4));
    assert!(plan.fold_range().is_empty(), "the snapshot is the answer");
    let plan = plan_at_version(&p, &[], 5).expect("plan");
    assert_eq!(plan.fold_range(), 0..=5);
    let err = plan_at_version(&p, &[], 6).expect_err("no such version");
    assert_eq!(
        err,
        TemporalError::VersionNotFound {
            requested: 6,
            last: Some(5)
        }
    );
    assert!(err.to_string().contains("its last version is 5"));
    assert!(plan_at_version(&[], &[], 0)
        .expect_err("empty")
        .to_string()
        .contains("it is empty"));

    assert_eq!(plan_at_time(&p, &[2], 9), Ok(None));
    assert_eq!(
        plan_at_time(&p, &[2], 35),
        Ok(Some(ReplayPlan {
            target_version: 2,
            snapshot_version: Some(2)
        }))
    );
    assert_eq!(
        plan_at_time(&p, &[2], 1000),
        Ok(Some(ReplayPlan {
            target_version: 5,
            snapshot_version: Some(2)
        }))
    );
}

#[test]
fn states_at_versions_and_times() {
    let h = sample_history();
    let prefix = |v: usize| {
        state_after_replay(None, &h.records[..=v])
            .expect("ok")
            .expect("exists")
    };
    let snapshots = vec![prefix(2), prefix(6)];
    for v in 0..h.records.len() {
        assert_eq!(
            state_at_version(&snapshots, &h.records, v as u64).expect("state"),
            prefix(v),
            "version {v}"
        );
        assert_eq!(
            state_at_version(&[], &h.records, v as u64).expect("state"),
            prefix(v)
        );
    }
    // Commit times are T0 + 10 * version.
    assert_eq!(
        state_at_time(&snapshots, &h.records, T0 - 1).expect("ok"),
        None
    );
    assert_eq!(
        state_at_time(&snapshots, &h.records, T0).expect("ok"),
        Some(prefix(0))
    );
    assert_eq!(
        state_at_time(&snapshots, &h.records, T0 + 35).expect("ok"),
        Some(prefix(3))
    );
    assert_eq!(
        state_at_time(&snapshots, &h.records, T0 + 70).expect("ok"),
        Some(prefix(7))
    );
    assert_eq!(
        state_at_time(&snapshots, &h.records, i64::MAX).expect("ok"),
        Some(prefix(9))
    );
    assert!(matches!(
        state_at_version(&snapshots, &h.records, 10),
        Err(QueryError::Temporal(TemporalError::VersionNotFound { .. }))
    ));
    // Only records after the snapshot are needed.
    assert_eq!(
        state_at_version(&snapshots, &h.records[7..], 8).expect("state"),
        prefix(8)
    );
}

// ----- property tests -----

mod model {
    //! A small model that generates random *legal* event sequences: at each step it lists the
    //! moves the rules allow and lets the generated choice pick one.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    pub struct Spec {
        pub max_attempts: Vec<u32>,
        pub import_first: bool,
        pub choices: Vec<(u16, bool, u8)>,
    }

    pub fn spec() -> impl Strategy<Value = Spec> {
        (
            prop::collection::vec(1u32..=3, 0..=5),
            any::<bool>(),
            prop::collection::vec((any::<u16>(), any::<bool>(), 0u8..=3), 0..40),
        )
            .prop_map(|(max_attempts, import_first, choices)| Spec {
                max_attempts,
                import_first,
                choices,
            })
    }

    fn legal_moves(state: &WorkflowState, choice: u16, flag: bool) -> Vec<WorkflowEvent> {
        let mut moves = Vec::new();
        for step in &state.steps {
            if step.can_start() {
                moves.push(WorkflowEvent::StepStarted(StepStarted {
                    step_id: step.id.clone(),
                    attempt: step.attempts + 1,
                    worker: flag.then(|| format!("w{choice}")),
                }));
            }
            if step.status == StepStatus::Running {
                moves.push(WorkflowEvent::StepCompleted(StepCompleted {
                    step_id: step.id.clone(),
                    output: json!({"n": choice, "f": f64::from(choice) / 7.0, "tag": step.id}),
                }));
                moves.push(WorkflowEvent::StepFailed(StepFailed {
                    step_id: step.id.clone(),
                    error: format!("error {choice}"),
                    attempt: step.attempts,
                    retryable: flag,
                }));
            }
        }
        if state
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Completed)
        {
            moves.push(finish(CompletionStatus::Succeeded));
        }
        // Giving up is legal at any time, but only sometimes chosen so histories get long.
        if moves.is_empty() || choice.is_multiple_of(23) {
            moves.push(finish(if flag {
                CompletionStatus::Failed
            } else {
                CompletionStatus::Cancelled
            }));
        }
        moves
    }

    /// Builds the events, checking each against `validate` on the way.
    pub fn build(spec: &Spec) -> Vec<WorkflowRecord> {
        let created = WorkflowCreated {
            workflow_id: "wf-model".into(),
            name: "model".into(),
            steps: spec
                .max_attempts
                .iter()
                .enumerate()
                .map(|(i, &m)| {
                    StepDef::new(format!("s{i}"), format!("Step {i}")).with_max_attempts(m)
                })
                .collect(),
            metadata: BTreeMap::new(),
        };
        let first = if spec.import_first {
            WorkflowEvent::WorkflowSnapshot(WorkflowSnapshot {
                state: WorkflowState::from_definition(&created, 1_000),
            })
        } else {
            WorkflowEvent::WorkflowCreated(created)
        };
        let mut projection = WorkflowProjection::new();
        let mut records = Vec::new();
        let mut t = T0;
        let mut push = |projection: &mut WorkflowProjection, event: &WorkflowEvent, dt: u8| {
            t += i64::from(dt);
            let version = projection.next_version();
            assert_eq!(validate(projection.state(), event), Ok(()), "{event:?}");
            projection
                .apply(event, t, version)
                .expect("legal move applies");
            records.push(to_record(event, version, t));
        };
        push(&mut projection, &first, 0);
        for &(choice, flag, dt) in &spec.choices {
            let Some(state) = projection.state() else {
                break;
            };
            if state.status.is_terminal() {
                break;
            }
            let moves = legal_moves(state, choice, flag);
            let event = moves[usize::from(choice) % moves.len()].clone();
            push(&mut projection, &event, dt);
        }
        records
    }

    /// Any event at all, legal or not.
    pub fn arbitrary_event() -> impl Strategy<Value = WorkflowEvent> {
        let step =
            prop_oneof![Just("s0"), Just("s1"), Just("s2"), Just("ghost")].prop_map(String::from);
        prop_oneof![
            (step.clone(), 0u32..4).prop_map(|(s, a)| start(&s, a)),
            step.clone().prop_map(|s| complete(&s, json!(1))),
            (step, 0u32..4, any::<bool>()).prop_map(|(s, a, r)| fail(&s, a, r)),
            prop_oneof![
                Just(CompletionStatus::Succeeded),
                Just(CompletionStatus::Failed),
                Just(CompletionStatus::Cancelled)
            ]
            .prop_map(finish),
            Just(create(&[("s0", 1)])),
        ]
    }
}

/// The model reaches the interesting corners: long histories, retries, exhausted attempts,
/// each way of ending, imports, and histories that are still open.
#[test]
fn model_covers_interesting_histories() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut longest, mut retries, mut exhausted, mut imported, mut open) = (0, 0, 0, 0, 0);
    let mut endings = BTreeSet::new();
    for _ in 0..300 {
        let spec = model::spec().new_tree(&mut runner).expect("tree").current();
        let records = model::build(&spec);
        longest = longest.max(records.len());
        let state = state_after_replay(None, &records)
            .expect("ok")
            .expect("exists");
        retries += usize::from(state.steps.iter().any(|s| s.attempts > 1));
        exhausted += usize::from(
            state
                .steps
                .iter()
                .any(|s| s.status == StepStatus::Failed && !s.can_start()),
        );
        imported += usize::from(records[0].event_type == "WorkflowSnapshot");
        if state.status.is_terminal() {
            endings.insert(state.status.as_str());
        } else {
            open += 1;
        }
    }
    assert!(longest >= 20, "longest history {longest}");
    assert!(retries > 10 && exhausted > 10 && imported > 50 && open > 10);
    assert_eq!(endings.len(), 3, "{endings:?}");
}

mod properties {
    use super::model::{arbitrary_event, build, spec};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Resuming from a projection snapshot taken after any event, written in its stored
        /// form and read back, gives exactly the state of a full replay.
        #[test]
        fn snapshot_resume_equals_full_replay(spec in spec()) {
            let records = build(&spec);
            let full = state_after_replay(None, &records).expect("replays").expect("exists");
            prop_assert_eq!(full.event_count, full.version + 1);
            prop_assert_eq!(full.version as usize, records.len() - 1);
            for k in 0..records.len() {
                let prefix = state_after_replay(None, &records[..=k]).expect("ok").expect("exists");
                let stored = encode_projection_snapshot(&prefix).expect("encodes");
                let snapshot = decode_projection_snapshot(&stored).expect("decodes");
                prop_assert_eq!(&snapshot, &prefix);
                let resumed = state_after_replay(Some(snapshot), &records[k + 1..])
                    .expect("ok")
                    .expect("exists");
                prop_assert_eq!(&resumed, &full, "resumed after version {}", k);
            }
        }

        #[test]
        fn replay_converges_for_any_interval(spec in spec(), every in 0u64..6) {
            let records = build(&spec);
            let report = replay_converges_every(&records, every).expect("folds");
            prop_assert!(report.converged(), "{:?}", report);
        }

        /// The state at time T is the fold of exactly the events committed at or before T,
        /// whichever snapshots are available.
        #[test]
        fn state_at_time_matches_a_filtered_fold(
            spec in spec(),
            offset in -2i64..200,
            snapshot_every in 1usize..5,
        ) {
            let records = build(&spec);
            let t = T0 + offset;
            let snapshots: Vec<WorkflowState> = (0..records.len())
                .filter(|i| (i + 1) % snapshot_every == 0)
                .map(|i| state_after_replay(None, &records[..=i]).expect("ok").expect("exists"))
                .collect();
            let expected = state_after_replay(
                None,
                records.iter().filter(|r| r.commit_time_ns <= t),
            ).expect("ok");
            prop_assert_eq!(state_at_time(&snapshots, &records, t).expect("query"), expected);
        }

        /// `validate` is exactly what `apply` accepts, and a rejected event changes nothing.
        #[test]
        fn apply_accepts_exactly_what_validate_accepts(
            spec in spec(),
            events in prop::collection::vec(arbitrary_event(), 1..12),
        ) {
            let records = build(&spec);
            let mut projection = WorkflowProjection::new();
            for r in &records {
                projection.apply_record(r).expect("legal history");
            }
            for event in &events {
                let before = projection.clone();
                let verdict = validate(projection.state(), event);
                let version = projection.next_version();
                let applied = projection.apply(event, T0 + 1_000, version);
                prop_assert_eq!(&verdict, &applied);
                if applied.is_err() {
                    prop_assert_eq!(&projection, &before);
                } else if let Some(state) = projection.state() {
                    prop_assert_eq!(state.version, version);
                    prop_assert!(state.check().is_ok(), "{:?}", state.check());
                }
            }
        }

        /// Every state the fold produces is internally consistent, so it could be exported
        /// and imported again as a WorkflowSnapshot.
        #[test]
        fn every_folded_state_is_consistent(spec in spec()) {
            let records = build(&spec);
            let mut projection = WorkflowProjection::new();
            for r in &records {
                projection.apply_record(r).expect("legal history");
                let state = projection.state().expect("exists");
                prop_assert!(state.check().is_ok(), "{:?}", state.check());
                prop_assert_eq!(&state.current_step, &state.compute_current_step());
            }
        }

        #[test]
        fn version_at_time_matches_a_linear_scan(
            deltas in prop::collection::vec(0i64..3, 0..30),
            t in -1i64..70,
        ) {
            let mut time = 0;
            let pts: Vec<EventPoint> = deltas
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    time += d;
                    EventPoint { stream_version: i as u64, commit_time_ns: time }
                })
                .collect();
            let expected = pts.iter().rev().find(|p| p.commit_time_ns <= t).map(|p| p.stream_version);
            prop_assert_eq!(version_at_time(&pts, t), Ok(expected));
        }
    }
}
