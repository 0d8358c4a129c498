//! Workflows end to end on real nodes: transitions, racing workers, restarts, temporal
//! queries, import, upcasting and the replay check.

mod common;

use std::time::Duration;

use aetherops::proto::aetherops::v1 as pb;
use aetherops::proto::aetherops::v1::workflows_client::WorkflowsClient;
use common::cluster::TestCluster;
use common::*;
use tonic::Code;

async fn wf(node: &TestNode) -> WorkflowsClient<TestChannel> {
    WorkflowsClient::new(node.channel().await)
}

fn w(id: &str) -> Option<pb::WorkflowWrite> {
    Some(pb::WorkflowWrite {
        workflow_id: id.into(),
        expected_version: None,
        event_id: String::new(),
    })
}

fn w_at(id: &str, version: u64) -> Option<pb::WorkflowWrite> {
    Some(pb::WorkflowWrite {
        workflow_id: id.into(),
        expected_version: expected(pb::expected_version::Kind::Exact, version),
        event_id: String::new(),
    })
}

fn create(id: &str, steps: &[&str], max_attempts: u32) -> pb::CreateWorkflowRequest {
    pb::CreateWorkflowRequest {
        write: w(id),
        name: format!("{id} pipeline"),
        steps: steps
            .iter()
            .map(|s| pb::StepDefinition {
                id: s.to_string(),
                name: s.to_string(),
                max_attempts,
            })
            .collect(),
        metadata: Default::default(),
    }
}

fn start(id: &str, step: &str) -> pb::StartStepRequest {
    pb::StartStepRequest {
        write: w(id),
        step_id: step.into(),
        attempt: 0,
        worker: "w1".into(),
    }
}

fn done(id: &str, step: &str, output: &str) -> pb::CompleteStepRequest {
    pb::CompleteStepRequest {
        write: w(id),
        step_id: step.into(),
        output_json: output.into(),
    }
}

async fn state(
    c: &mut WorkflowsClient<TestChannel>,
    id: &str,
    at: Option<pb::get_workflow_state_request::At>,
) -> Result<serde_json::Value, tonic::Status> {
    let r = c
        .get_state(pb::GetWorkflowStateRequest {
            workflow_id: id.into(),
            at,
            consistency: 0,
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.state_json).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_and_illegal_transitions() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    let r = c
        .create(create("wf-1", &["fetch", "process", "upload"], 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.status.as_str()), (0, "pending"));

    // Illegal transitions are refused, with a reason, and write nothing.
    let cases: Vec<(
        &str,
        Result<tonic::Response<pb::WorkflowWriteResponse>, tonic::Status>,
    )> = vec![
        (
            "not running",
            c.complete_step(done("wf-1", "fetch", "{}")).await,
        ),
        ("not a step", c.start_step(start("wf-1", "nope")).await),
        ("already exists", c.create(create("wf-1", &["a"], 1)).await),
        (
            "steps are not completed",
            c.complete(pb::CompleteWorkflowRequest {
                write: w("wf-1"),
                status: "succeeded".into(),
                reason: String::new(),
            })
            .await,
        ),
        (
            "before the workflow exists",
            c.start_step(start("wf-missing", "a")).await,
        ),
    ];
    for (msg, res) in cases {
        let e = res.expect_err(msg);
        assert_eq!(e.code(), Code::FailedPrecondition, "{msg}: {e:?}");
        assert!(
            e.message().contains(msg),
            "expected {msg:?} in {:?}",
            e.message()
        );
    }
    let s = state(&mut c, "wf-1", None).await.unwrap();
    assert_eq!(s["version"], 0, "refused writes left no trace");

    c.start_step(start("wf-1", "fetch")).await.unwrap();
    let e = c
        .start_step(start("wf-1", "fetch"))
        .await
        .expect_err("double start");
    assert!(e.message().contains("already running"), "{}", e.message());
    c.complete_step(done("wf-1", "fetch", r#"{"bytes":1024}"#))
        .await
        .unwrap();
    c.start_step(start("wf-1", "process")).await.unwrap();
    c.fail_step(pb::FailStepRequest {
        write: w("wf-1"),
        step_id: "process".into(),
        error: "disk full".into(),
        attempt: 0,
        retryable: true,
    })
    .await
    .unwrap();
    let s = state(&mut c, "wf-1", None).await.unwrap();
    assert_eq!(s["steps"][1]["status"], "failed");
    assert_eq!(s["steps"][1]["last_error"], "disk full");
    assert_eq!(s["current_step"], "process");
    // Retry: attempt 2 of 2.
    c.start_step(start("wf-1", "process")).await.unwrap();
    c.complete_step(done("wf-1", "process", "null"))
        .await
        .unwrap();
    c.start_step(start("wf-1", "upload")).await.unwrap();
    c.complete_step(done("wf-1", "upload", r#"{"url":"s3://x"}"#))
        .await
        .unwrap();
    let r = c
        .complete(pb::CompleteWorkflowRequest {
            write: w("wf-1"),
            status: "succeeded".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.status.as_str()), (9, "succeeded"));
    let s = state(&mut c, "wf-1", None).await.unwrap();
    assert_eq!(s["steps"][1]["attempts"], 2);
    assert_eq!(s["steps"][0]["output"]["bytes"], 1024);
    // Nothing follows completion.
    let e = c
        .start_step(start("wf-1", "fetch"))
        .await
        .expect_err("after completion");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Bad input.
    let e = c
        .create(create("wf-2", &["a", "a"], 1))
        .await
        .expect_err("duplicate step ids");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c.create(create("", &["a"], 1)).await.expect_err("empty id");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = state(
        &mut c,
        "wf-1",
        Some(pb::get_workflow_state_request::At::AtTime(
            "2026-11-26T10:00:00".into(),
        )),
    )
    .await
    .expect_err("time without a zone");
    assert_eq!(e.code(), Code::InvalidArgument);
    // The events are ordinary events of stream workflow-wf-1.
    let mut ec = node.client().await;
    let page = ec
        .read_stream(pb::ReadStreamRequest {
            stream: "workflow-wf-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let types: Vec<&str> = page.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types[..3],
        ["WorkflowCreated", "StepStarted", "StepCompleted"]
    );
    assert_eq!(types.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_workers_on_different_nodes_cannot_double_start_a_step() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let mut lc = wf(&c.nodes[leader]).await;
    for round in 0..5 {
        let id = format!("race-{round}");
        let r = lc
            .create(create(&id, &["launch"], 1))
            .await
            .unwrap()
            .into_inner();
        // Every worker read version r.version and tries to start the step.
        let mut tasks = Vec::new();
        for worker in 0..12 {
            let mut client = wf(&c.nodes[worker % 3]).await;
            let id = id.clone();
            let version = r.version;
            tasks.push(tokio::spawn(async move {
                client
                    .start_step(pb::StartStepRequest {
                        write: w_at(&id, version),
                        step_id: "launch".into(),
                        attempt: 0,
                        worker: format!("worker-{worker}"),
                    })
                    .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => wins += 1,
                Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
            }
        }
        assert_eq!(wins, 1, "exactly one worker starts the step");
        let s = state(&mut lc, &id, None).await.unwrap();
        assert_eq!(s["steps"][0]["attempts"], 1);
        assert_eq!(s["version"], 1);
    }
    // And without expected versions the transition rule alone stops a second start.
    let r = lc
        .create(create("race-any", &["launch"], 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.version, 0);
    let mut tasks = Vec::new();
    for worker in 0..12 {
        let mut client = wf(&c.nodes[worker % 3]).await;
        tasks.push(tokio::spawn(async move {
            client.start_step(start("race-any", "launch")).await
        }));
    }
    let wins = futures_count(tasks).await;
    assert_eq!(wins, 1);
    c.wait_converged(&c.all()).await;
    let out = c.nodes[0].ctl(&["workflow", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("on 3 members"));
}

async fn futures_count(
    tasks: Vec<
        tokio::task::JoinHandle<Result<tonic::Response<pb::WorkflowWriteResponse>, tonic::Status>>,
    >,
) -> usize {
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    wins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_kill_9() {
    let mut node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    c.create(create("persist", &["a", "b"], 1)).await.unwrap();
    c.start_step(start("persist", "a")).await.unwrap();
    c.complete_step(done("persist", "a", r#"{"ok":true}"#))
        .await
        .unwrap();
    let before = state(&mut c, "persist", None).await.unwrap();
    node.kill9();
    node.restart();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    assert_eq!(state(&mut c, "persist", None).await.unwrap(), before);
    // The projection continues where it was: "a" cannot start again, "b" can.
    assert!(c.start_step(start("persist", "a")).await.is_err());
    c.start_step(start("persist", "b")).await.unwrap();
    node.stop();
    node.restart();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    let s = state(&mut c, "persist", None).await.unwrap();
    assert_eq!(s["steps"][1]["status"], "running");
    assert_eq!(s["version"], 3);
}

fn iso(ns: i64, offset_hours: i8) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(offset_hours, 0, 0).unwrap());
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_queries_by_time_and_version_from_snapshots() {
    let node = NodeBuilder::dev()
        .config("workflow_snapshot_every = 4\n")
        .start();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    let steps: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let step_refs: Vec<&str> = steps.iter().map(|s| s.as_str()).collect();
    let mut commits = Vec::new(); // (version, commit time, state right after)
    let r = c
        .create(create("t", &step_refs, 1))
        .await
        .unwrap()
        .into_inner();
    commits.push((
        r.version,
        r.commit_time_ns,
        state(&mut c, "t", None).await.unwrap(),
    ));
    for s in &steps {
        // Space events out so that "between two events" is a real interval.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let r = c.start_step(start("t", s)).await.unwrap().into_inner();
        commits.push((
            r.version,
            r.commit_time_ns,
            state(&mut c, "t", None).await.unwrap(),
        ));
        tokio::time::sleep(Duration::from_millis(3)).await;
        let r = c
            .complete_step(done("t", s, "1"))
            .await
            .unwrap()
            .into_inner();
        commits.push((
            r.version,
            r.commit_time_ns,
            state(&mut c, "t", None).await.unwrap(),
        ));
    }
    assert_eq!(commits.len(), 25);
    // At every version: the state as it was right after that event.
    for (v, _, expected) in &commits {
        let got = state(
            &mut c,
            "t",
            Some(pb::get_workflow_state_request::At::AtVersion(*v)),
        )
        .await
        .unwrap();
        assert_eq!(&got, expected, "at version {v}");
    }
    let e = state(
        &mut c,
        "t",
        Some(pb::get_workflow_state_request::At::AtVersion(99)),
    )
    .await
    .expect_err("future version");
    assert_eq!(e.code(), Code::OutOfRange);
    // At times: exactly at, between, before the first, after the last; in several zones.
    let expect_at = |t: i64| commits.iter().rfind(|(_, ct, _)| *ct <= t).map(|c| &c.2);
    for (i, (_, ct, _)) in commits.iter().enumerate() {
        let mut times = vec![*ct];
        if let Some((_, next, _)) = commits.get(i + 1) {
            times.push(ct + (next - ct) / 2);
        }
        for (j, t) in times.into_iter().enumerate() {
            let at = iso(t, [0, 2, -5][(i + j) % 3]);
            let got = state(
                &mut c,
                "t",
                Some(pb::get_workflow_state_request::At::AtTime(at.clone())),
            )
            .await
            .unwrap();
            assert_eq!(Some(&got), expect_at(t), "at {at}");
        }
    }
    let before = iso(commits[0].1 - 1_000_000, 1);
    let e = state(
        &mut c,
        "t",
        Some(pb::get_workflow_state_request::At::AtTime(before)),
    )
    .await
    .expect_err("before creation");
    assert_eq!(e.code(), Code::NotFound);
    let after = iso(commits.last().unwrap().1 + 3_600_000_000_000, 9);
    let got = state(
        &mut c,
        "t",
        Some(pb::get_workflow_state_request::At::AtTime(after)),
    )
    .await
    .unwrap();
    assert_eq!(&got, &commits.last().unwrap().2);
    // The replay check sees the stored projection snapshots (every 4 events).
    let v = c
        .verify(pb::VerifyWorkflowRequest {
            workflow_id: "t".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.converged, "{}", v.divergence);
    assert_eq!(v.events, 25);
    assert_eq!(v.stored_snapshots_checked, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_idempotent_and_projections_continue_from_snapshots() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let lines = [
        r#"{"id":"old-1","name":"orbit raise","status":"running","created_at":"2025-03-01T10:00:00Z","steps":[{"id":"burn-1","status":"completed","attempts":1,"started_at":"2025-03-01T10:05:00Z","ended_at":"2025-03-01T10:06:00+00:00","output":{"dv":1.5}},{"id":"burn-2","status":"pending","max_attempts":2}]}"#,
        r#"{"id":"old-2","name":"downlink","status":"pending","created_at":"2025-03-02T08:00:00+02:00","steps":[{"id":"pass","status":"pending"}]}"#,
        r#"{"id":"old-3","name":"done","status":"succeeded","created_at":"2025-01-01T00:00:00Z","completed_at":"2025-01-02T00:00:00Z","steps":[{"id":"x","status":"completed"}]}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = node.ctl(&["workflow", "import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported 3 workflows, 0 already present")
    );
    let out = node.ctl(&[
        "--output",
        "json",
        "workflow",
        "import",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["imported"].as_u64(), v["unchanged"].as_u64()),
        (Some(0), Some(3)),
        "re-import changes nothing"
    );

    let mut c = wf(&node).await;
    let s = state(&mut c, "old-1", None).await.unwrap();
    assert_eq!(s["version"], 0);
    assert_eq!(s["steps"][0]["output"]["dv"], 1.5);
    assert_eq!(s["current_step"], "burn-2");
    // The imported workflow continues like any other.
    c.start_step(start("old-1", "burn-2")).await.unwrap();
    c.complete_step(done("old-1", "burn-2", "{}"))
        .await
        .unwrap();
    c.complete(pb::CompleteWorkflowRequest {
        write: w("old-1"),
        status: "succeeded".into(),
        reason: String::new(),
    })
    .await
    .unwrap();
    let e = c
        .start_step(start("old-3", "x"))
        .await
        .expect_err("completed import");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let list = c
        .list(pb::ListWorkflowsRequest {
            after: String::new(),
            limit: 10,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.workflows
            .iter()
            .map(|w| w.workflow_id.as_str())
            .collect::<Vec<_>>(),
        vec!["old-1", "old-2", "old-3"]
    );
    assert_eq!(list.workflows[0].status, "succeeded");
    // A broken file is reported with the workflow it concerns, and imports nothing.
    std::fs::write(
        &file,
        r#"{"id":"bad","name":"x","status":"sleeping","created_at":"2025-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let out = node.ctl(&["workflow", "import", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_schema_versions_are_upcast_on_read() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    // Events as an older version of the code wrote them: WorkflowCreated v1 (steps as
    // strings), StepFailed v1 ({step, error}).
    let ev = |ty: &str, v: u32, payload: &str| pb::WorkflowEventInput {
        event_id: String::new(),
        event_type: ty.into(),
        schema_version: v,
        payload: payload.as_bytes().to_vec().into(),
    };
    c.append_events(pb::AppendWorkflowEventsRequest {
        workflow_id: "legacy".into(),
        expected_version: expected(pb::expected_version::Kind::NoStream, 0),
        events: vec![
            ev(
                "WorkflowCreated",
                1,
                r#"{"workflow_id":"legacy","name":"legacy","steps":["a","b"]}"#,
            ),
            ev("StepStarted", 1, r#"{"step_id":"a","attempt":1}"#),
            ev("StepFailed", 1, r#"{"step":"a","error":"timeout"}"#),
        ],
    })
    .await
    .unwrap();
    let s = state(&mut c, "legacy", None).await.unwrap();
    assert_eq!(s["steps"][0]["id"], "a");
    assert_eq!(s["steps"][0]["max_attempts"], 1, "v2→v3 added max_attempts");
    assert_eq!(s["steps"][0]["status"], "failed");
    assert_eq!(
        s["steps"][0]["retryable"], false,
        "v2→v3 added retryable: false"
    );
    assert_eq!(s["steps"][0]["last_error"], "timeout");
    // Stored as written (v1); read as current.
    let mut ec = node.client().await;
    let page = ec
        .read_stream(pb::ReadStreamRequest {
            stream: "workflow-legacy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events[0].schema_version, 1);
    assert_eq!(page.events[2].schema_version, 1);
    let v = state(
        &mut c,
        "legacy",
        Some(pb::get_workflow_state_request::At::AtVersion(0)),
    )
    .await
    .unwrap();
    assert_eq!(v["steps"][1]["name"], "b");
    // A version from the future is refused with a clear message, and nothing is written.
    let e = c
        .append_events(pb::AppendWorkflowEventsRequest {
            workflow_id: "legacy".into(),
            expected_version: None,
            events: vec![ev("StepStarted", 9, r#"{"step_id":"b","attempt":1}"#)],
        })
        .await
        .expect_err("future schema version");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("9"), "{}", e.message());
    assert_eq!(state(&mut c, "legacy", None).await.unwrap()["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_store_interface_reads_one_workflow_or_all_since_a_time() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    c.create(create("early", &["a"], 1)).await.unwrap();
    c.start_step(start("early", "a")).await.unwrap();
    // An ordinary stream in between: not a workflow event.
    node.client()
        .await
        .append(append_req(
            "orders-1",
            None,
            vec![new_event("Placed", "{}")],
        ))
        .await
        .unwrap();
    let cut = c
        .create(create("late", &["x", "y"], 1))
        .await
        .unwrap()
        .into_inner()
        .commit_time_ns;
    c.complete_step(done("early", "a", "{}")).await.unwrap();
    c.start_step(start("late", "x")).await.unwrap();

    let events = |r: pb::WorkflowEventsResponse| -> Vec<(String, String, u64)> {
        r.events
            .into_iter()
            .map(|e| (e.workflow_id, e.event_type, e.stream_version))
            .collect()
    };
    let since = c
        .events(pb::WorkflowEventsRequest {
            select: Some(pb::workflow_events_request::Select::Since(iso(cut, 3))),
            limit: 100,
            consistency: 0,
            from: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        events(since),
        vec![
            ("late".into(), "WorkflowCreated".into(), 0),
            ("early".into(), "StepCompleted".into(), 2),
            ("late".into(), "StepStarted".into(), 1),
        ]
    );
    let one = c
        .events(pb::WorkflowEventsRequest {
            select: Some(pb::workflow_events_request::Select::WorkflowId(
                "early".into(),
            )),
            limit: 0,
            consistency: 0,
            from: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.events.len(), 3);
    assert!(one.events.iter().all(|e| e.workflow_id == "early"));
    let created: serde_json::Value = serde_json::from_slice(&one.events[0].payload).unwrap();
    assert_eq!(created["steps"][0]["max_attempts"], 1);
}

/// Workflow events come in pages bounded by bytes (the node's `max_read_bytes`, 3 MiB by
/// default), each page saying where the next starts; paging reaches every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_events_come_in_pages_bounded_by_bytes() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = wf(&node).await;
    let steps: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let step_ids: Vec<&str> = steps.iter().map(String::as_str).collect();
    let before = c
        .create(create("big", &step_ids, 1))
        .await
        .unwrap()
        .into_inner()
        .commit_time_ns;
    // Eight step outputs of 700 KB: 5.6 MB, more than a gRPC client takes in one reply.
    let output = format!("{{\"blob\":\"{}\"}}", "x".repeat(700_000));
    for s in &step_ids {
        c.start_step(start("big", s)).await.unwrap();
        c.complete_step(done("big", s, &output)).await.unwrap();
    }
    let all = 1 + 2 * step_ids.len() as u64;
    for select in [
        pb::workflow_events_request::Select::WorkflowId("big".into()),
        pb::workflow_events_request::Select::Since(iso(before, 0)),
    ] {
        let mut versions = Vec::new();
        let mut from = None;
        let mut pages = 0;
        loop {
            let page = c
                .events(pb::WorkflowEventsRequest {
                    select: Some(select.clone()),
                    limit: 0,
                    consistency: 0,
                    from,
                })
                .await
                .expect("events page")
                .into_inner();
            pages += 1;
            let bytes: usize = page.events.iter().map(|e| e.payload.len()).sum();
            assert!(
                page.events.len() <= 1 || bytes <= 3 << 20,
                "{select:?}: a page of {} events carries {bytes} bytes",
                page.events.len()
            );
            versions.extend(page.events.iter().map(|e| e.stream_version));
            match page.next {
                Some(n) => from = Some(n),
                None => break,
            }
            assert!(pages < 100, "{select:?}: paging did not end");
        }
        assert_eq!(versions, (0..all).collect::<Vec<_>>(), "{select:?}");
        assert!(pages >= 2, "{select:?}: 5.6 MB came in one page");
    }
}
