//! The single node, end to end: real `aetherd` processes, real gRPC, real RocksDB on disk.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aetherops::proto::aetherops::v1 as pb;
use common::*;
use pb::expected_version::Kind;
use tonic::Code;

fn versions(r: &pb::ReadResponse) -> Vec<u64> {
    r.events.iter().map(|e| e.stream_version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_expected_versions_and_read_both_ways() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;

    // no-stream on a new stream, then exact versions.
    let r = c
        .append(append_req(
            "orders-7",
            expected(Kind::NoStream, 0),
            vec![new_event("Placed", "{}"), new_event("Paid", "{}")],
        ))
        .await
        .expect("first append")
        .into_inner();
    assert_eq!((r.first_stream_version, r.last_stream_version), (0, 1));
    assert_eq!((r.first_global_position, r.last_global_position), (0, 1));
    assert!(!r.duplicate);
    assert!(r.commit_time_ns > 0);

    // Conflicts name the current version and write nothing.
    let cases = [
        (expected(Kind::NoStream, 0), "its current version is 1"),
        (expected(Kind::Exact, 0), "its current version is 1"),
        (expected(Kind::Exact, 5), "its current version is 1"),
    ];
    for (exp, msg) in cases {
        let e = c
            .append(append_req("orders-7", exp, vec![new_event("X", "{}")]))
            .await
            .expect_err("conflict");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(msg), "{}", e.message());
        assert_eq!(e.metadata().get("x-aether-current-version").unwrap(), "1");
    }
    let e = c
        .append(append_req(
            "nothing-here",
            expected(Kind::StreamExists, 0),
            vec![new_event("X", "{}")],
        ))
        .await
        .expect_err("stream-exists on a missing stream");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("does not exist"), "{}", e.message());

    let r = c
        .append(append_req(
            "orders-7",
            expected(Kind::Exact, 1),
            vec![new_event("Shipped", "{}")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.first_stream_version, 2);
    let r = c
        .append(append_req(
            "orders-7",
            expected(Kind::StreamExists, 0),
            vec![new_event("Delivered", "{}")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.first_stream_version, 3);
    // Another stream interleaves in the global order.
    c.append(append_req(
        "orders-8",
        None,
        vec![new_event("Placed", "{}")],
    ))
    .await
    .unwrap();
    for i in 0..6 {
        c.append(append_req(
            "orders-7",
            expected(Kind::Any, 0),
            vec![new_event("Note", &format!("{{\"i\":{i}}}"))],
        ))
        .await
        .unwrap();
    }

    let read = |from: Option<u64>, backwards: bool, limit: u32| pb::ReadStreamRequest {
        stream: "orders-7".into(),
        from_version: from,
        backwards,
        limit,
        consistency: pb::Consistency::Linearizable as i32,
    };
    let all = c
        .read_stream(read(None, false, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&all), (0..10).collect::<Vec<_>>());
    assert_eq!(all.last, Some(9));
    assert_eq!(all.next, None);
    let types: Vec<&str> = all.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(&types[..4], &["Placed", "Paid", "Shipped", "Delivered"]);
    let page = c
        .read_stream(read(Some(3), false, 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&page), vec![3, 4, 5, 6]);
    assert_eq!(page.next, Some(7));
    let back = c
        .read_stream(read(None, true, 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&back), vec![9, 8, 7]);
    assert_eq!(back.next, Some(6));
    let back = c
        .read_stream(read(Some(1), true, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&back), vec![1, 0]);
    assert_eq!(back.next, None);
    let local = c
        .read_stream(pb::ReadStreamRequest {
            consistency: pb::Consistency::Local as i32,
            ..read(Some(8), false, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&local), vec![8, 9]);
    let missing = c
        .read_stream(pb::ReadStreamRequest {
            stream: "never-written".into(),
            ..read(None, false, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.events.is_empty() && missing.last.is_none());

    // The global log: gap-free positions, every event once, in commit order.
    let events = read_all_events(&mut c, pb::Consistency::Linearizable).await;
    assert_eq!(
        events.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        (0..11).collect::<Vec<_>>()
    );
    assert_eq!(events[4].stream, "orders-8");
    let mut last_commit = 0;
    for e in &events {
        assert!(
            e.commit_time_ns >= last_commit,
            "commit time went backwards"
        );
        last_commit = e.commit_time_ns;
        assert_eq!(
            e.event_time_ns, e.commit_time_ns,
            "event time defaults to commit time"
        );
    }
    let tail = c
        .read_all(pb::ReadAllRequest {
            from_position: None,
            backwards: true,
            limit: 2,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        tail.events
            .iter()
            .map(|e| e.global_position)
            .collect::<Vec<_>>(),
        vec![10, 9]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_round_trips() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;
    let id = uuid::Uuid::new_v4().to_string();
    let ev = pb::NewEvent {
        event_id: id.clone(),
        event_type: "TelemetryConfigured".into(),
        schema_version: 3,
        event_time_ns: 1_700_000_000_123_456_789,
        payload: br#"{"rate_hz":1000}"#.to_vec().into(),
        metadata: HashMap::from([
            ("source".to_string(), "sat-7".to_string()),
            ("trace".to_string(), "abc".to_string()),
        ]),
    };
    c.append(append_req("sat-7/config", None, vec![ev.clone()]))
        .await
        .unwrap();
    let r = c
        .read_stream(pb::ReadStreamRequest {
            stream: "sat-7/config".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = &r.events[0];
    assert_eq!(e.event_id, id);
    assert_eq!(e.stream, "sat-7/config");
    assert_eq!((e.stream_version, e.global_position), (0, 0));
    assert_eq!(e.event_type, "TelemetryConfigured");
    assert_eq!(e.schema_version, 3);
    assert_eq!(e.event_time_ns, 1_700_000_000_123_456_789);
    assert!(e.commit_time_ns > e.event_time_ns);
    assert_eq!(&e.payload[..], br#"{"rate_hz":1000}"#);
    assert_eq!(e.metadata, ev.metadata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_returns_original_positions_across_restarts() {
    let mut node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;
    c.append(append_req("other", None, vec![new_event("A", "{}")]))
        .await
        .unwrap();
    let batch = vec![
        new_event("A", "{}"),
        new_event("B", "{}"),
        new_event("C", "{}"),
    ];
    let first = c
        .append(append_req(
            "orders-1",
            expected(Kind::NoStream, 0),
            batch.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    assert_eq!(first.first_global_position, 1);

    let check_retry = |r: pb::AppendResponse| {
        assert!(r.duplicate, "a retry is reported as a duplicate");
        assert_eq!(
            (
                r.first_stream_version,
                r.last_stream_version,
                r.first_global_position,
                r.last_global_position
            ),
            (
                first.first_stream_version,
                first.last_stream_version,
                first.first_global_position,
                first.last_global_position
            )
        );
        assert_eq!(r.commit_time_ns, first.commit_time_ns);
    };
    // Even with an expected version that no longer holds: the retry of a success succeeds.
    check_retry(
        c.append(append_req(
            "orders-1",
            expected(Kind::NoStream, 0),
            batch.clone(),
        ))
        .await
        .unwrap()
        .into_inner(),
    );

    // A partial overlap, or the same id in another stream, is refused and writes nothing.
    let e = c
        .append(append_req(
            "orders-1",
            None,
            vec![batch[0].clone(), new_event("D", "{}")],
        ))
        .await
        .expect_err("partial overlap");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = c
        .append(append_req("orders-2", None, vec![batch[1].clone()]))
        .await
        .expect_err("id reused in another stream");
    assert_eq!(e.code(), Code::AlreadyExists);

    node.stop();
    node.restart();
    node.wait_leader().await;
    let mut c = node.client().await;
    check_retry(
        c.append(append_req("orders-1", None, batch.clone()))
            .await
            .unwrap()
            .into_inner(),
    );

    node.kill9();
    node.restart();
    node.wait_leader().await;
    let mut c = node.client().await;
    check_retry(
        c.append(append_req("orders-1", None, batch.clone()))
            .await
            .unwrap()
            .into_inner(),
    );
    let all = read_all_events(&mut c, pb::Consistency::Linearizable).await;
    assert_eq!(all.len(), 4, "retries wrote nothing: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_window_expires_deterministically() {
    // A 1-second window: after it, the same id is a new event.
    let node = NodeBuilder::dev()
        .config("dedupe_window_secs = 1\n")
        .start();
    node.wait_leader().await;
    let mut c = node.client().await;
    let ev = new_event("A", "{}");
    let first = c
        .append(append_req("s", None, vec![ev.clone()]))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .append(append_req("s", None, vec![ev.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    let deadline = Instant::now() + DEADLINE;
    // Commit time is what counts: wait until a later append commits past the window.
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let probe = c
            .append(append_req("probe", None, vec![new_event("P", "{}")]))
            .await
            .unwrap()
            .into_inner();
        if probe.commit_time_ns > first.commit_time_ns + 1_100_000_000 {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let later = c
        .append(append_req("s", None, vec![ev.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert!(!later.duplicate, "outside the window the id is new again");
    assert_eq!(later.first_stream_version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_catch_up_then_go_live_without_gap_or_duplicate() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;
    for i in 0..1500u32 {
        let stream = if i % 3 == 0 { "sat-1" } else { "sat-2" };
        c.append(append_req(
            stream,
            None,
            vec![new_event("T", &format!("{{\"i\":{i}}}"))],
        ))
        .await
        .unwrap();
        if i == 200 {
            // A subscription that starts mid-way catches up from position 0 regardless.
        }
    }
    let sub = |target: pb::subscribe_request::Target, from: Option<u64>| pb::SubscribeRequest {
        target: Some(target),
        from,
    };
    let mut all = c
        .subscribe(sub(pb::subscribe_request::Target::All(true), Some(0)))
        .await
        .unwrap()
        .into_inner();
    let mut one = node
        .client()
        .await
        .subscribe(sub(
            pb::subscribe_request::Target::Stream("sat-1".into()),
            Some(100),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut live_only = node
        .client()
        .await
        .subscribe(sub(pb::subscribe_request::Target::All(true), None))
        .await
        .unwrap()
        .into_inner();

    // Writers keep appending while the subscribers catch up.
    let writer = {
        let mut c = node.client().await;
        tokio::spawn(async move {
            for i in 1500..2500u32 {
                let stream = if i % 3 == 0 { "sat-1" } else { "sat-2" };
                c.append(append_req(
                    stream,
                    None,
                    vec![new_event("T", &format!("{{\"i\":{i}}}"))],
                ))
                .await
                .unwrap();
            }
        })
    };

    let mut positions = Vec::new();
    let mut caught_up_at = None;
    while positions.len() < 2500 {
        let m = tokio::time::timeout(DEADLINE, all.message())
            .await
            .expect("subscription stalled")
            .unwrap()
            .unwrap();
        match m.kind.unwrap() {
            pb::subscribe_response::Kind::Event(e) => positions.push(e.global_position),
            pb::subscribe_response::Kind::CaughtUp(cu) => {
                assert!(caught_up_at.is_none(), "caught-up is sent once");
                assert_eq!(cu.next, positions.len() as u64);
                caught_up_at = Some(cu.next);
            }
        }
    }
    assert_eq!(
        positions,
        (0..2500).collect::<Vec<_>>(),
        "no gap, no duplicate, in order"
    );
    assert!(caught_up_at.is_some_and(|n| n >= 1500));

    let mut versions = Vec::new();
    while versions.len() < 734 {
        let m = tokio::time::timeout(DEADLINE, one.message())
            .await
            .expect("stream subscription stalled")
            .unwrap()
            .unwrap();
        if let pb::subscribe_response::Kind::Event(e) = m.kind.unwrap() {
            assert_eq!(e.stream, "sat-1");
            versions.push(e.stream_version);
        }
    }
    // sat-1 holds versions 0..=833 (every third of 2500 events); we asked from 100.
    assert_eq!(versions, (100..834).collect::<Vec<_>>());

    writer.await.unwrap();
    // The live-only subscription saw a suffix of the log, contiguous, starting where it began.
    let mut live = Vec::new();
    loop {
        let m = tokio::time::timeout(DEADLINE, live_only.message())
            .await
            .expect("live stalled")
            .unwrap()
            .unwrap();
        if let pb::subscribe_response::Kind::Event(e) = m.kind.unwrap() {
            live.push(e.global_position);
            if e.global_position == 2499 {
                break;
            }
        }
    }
    assert!(live[0] >= 1500);
    assert_eq!(live, (live[0]..2500).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    let mut node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, String, u64)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = node.client().await;
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let stream = format!("w-{w}");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ev = new_event("Tick", "{\"x\":1}");
                let id = ev.event_id.clone();
                match c.append(append_req(&stream, None, vec![ev])).await {
                    Ok(r) => acked.lock().unwrap().push((
                        stream.clone(),
                        id,
                        r.into_inner().first_global_position,
                    )),
                    // In flight when the node died: outcome unknown, not acknowledged.
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the writers get well under way, then kill -9 mid-flight.
    let deadline = Instant::now() + DEADLINE;
    while acked.lock().unwrap().len() < 2000 {
        assert!(Instant::now() < deadline, "writers too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    node.restart();
    node.wait_leader().await;
    let mut c = node.client().await;
    let events = read_all_events(&mut c, pb::Consistency::Linearizable).await;
    let by_id: HashMap<&str, &pb::RecordedEvent> =
        events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    assert_eq!(by_id.len(), events.len(), "no event stored twice");
    for (stream, id, pos) in &acked {
        let e = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("acknowledged event {id} lost after kill -9"));
        assert_eq!((&e.stream, e.global_position), (stream, *pos));
    }
    assert_eq!(
        events.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        (0..events.len() as u64).collect::<Vec<_>>(),
        "global positions stay gap-free"
    );
    // Per stream, versions are gap-free too.
    let mut per_stream: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &events {
        per_stream
            .entry(&e.stream)
            .or_default()
            .push(e.stream_version);
    }
    for (s, v) in per_stream {
        assert_eq!(v, (0..v.len() as u64).collect::<Vec<_>>(), "stream {s}");
    }
    eprintln!(
        "{} acknowledged before kill -9, {} stored after restart",
        acked.len(),
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_log_was_purged_behind_a_snapshot_loses_nothing() {
    // The state machine writes no WAL of its own: the Raft log is its record until a snapshot
    // lets the log be purged, so the snapshot must have made the state machine durable. Kill
    // -9 right after purges and check that nothing applied before them is missing.
    let mut node = NodeBuilder::dev()
        .config("[raft]\nsnapshot_every_entries = 40\nmax_in_snapshot_log_to_keep = 0\n")
        .start();
    node.wait_leader().await;
    let mut c = node.client().await;
    let mut acked = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    // One append at a time: one log entry each, so snapshots (and purges) come often.
    loop {
        let ev = new_event("Tick", "{}");
        let id = ev.event_id.clone();
        let r = c
            .append(append_req("purged", None, vec![ev]))
            .await
            .unwrap();
        acked.push((id, r.into_inner().first_global_position));
        if acked.len() >= 200 && node.status().await.purged_index.unwrap_or(0) >= 120 {
            break;
        }
        assert!(Instant::now() < deadline, "the log was never purged");
    }
    node.kill9();
    node.restart();
    node.wait_leader().await;
    let s = node.status().await;
    assert!(s.purged_index.unwrap_or(0) >= 120, "purge survived: {s:?}");
    let mut c = node.client().await;
    let events = read_all_events(&mut c, pb::Consistency::Linearizable).await;
    assert_eq!(events.len(), acked.len(), "every acknowledged event, once");
    for ((id, pos), e) in acked.iter().zip(&events) {
        assert_eq!((&e.event_id, e.global_position), (id, *pos));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_invalid_argument_and_writes_nothing() {
    let node = NodeBuilder::dev()
        .config("[limits]\nmax_event_bytes = 1024\nmax_request_bytes = 4096\nmax_events_per_append = 5\n")
        .start();
    node.wait_leader().await;
    let mut c = node.client().await;
    c.append(append_req("ok", None, vec![new_event("A", "{}")]))
        .await
        .unwrap();

    let big = "x".repeat(1100);
    let dup = new_event("A", "{}");
    let mut bad_id = new_event("A", "{}");
    bad_id.event_id = "not-a-uuid".into();
    let mut bad_meta = new_event("A", "{}");
    bad_meta.metadata.insert(String::new(), "v".into());
    let cases: Vec<(pb::AppendRequest, &str)> = vec![
        (
            append_req("", None, vec![new_event("A", "{}")]),
            "stream name is empty",
        ),
        (
            append_req("has space", None, vec![new_event("A", "{}")]),
            "character outside",
        ),
        (
            append_req("$all", None, vec![new_event("A", "{}")]),
            "reserved",
        ),
        (
            append_req(&"s".repeat(300), None, vec![new_event("A", "{}")]),
            "the limit is 256",
        ),
        (append_req("s", None, vec![]), "no events"),
        (
            append_req("s", None, (0..6).map(|_| new_event("A", "{}")).collect()),
            "6 events, the limit is 5",
        ),
        (
            append_req("s", None, vec![new_event("A", &big)]),
            "the limit is 1024",
        ),
        (
            append_req(
                "s",
                None,
                (0..5).map(|_| new_event("A", &"y".repeat(900))).collect(),
            ),
            "the limit is 4096",
        ),
        (
            append_req("s", None, vec![new_event("", "{}")]),
            "event type is empty",
        ),
        (
            append_req("s", None, vec![new_event("bad type!", "{}")]),
            "event type",
        ),
        (append_req("s", None, vec![bad_id]), "not a UUID"),
        (
            append_req("s", None, vec![dup.clone(), dup]),
            "appears twice",
        ),
        (append_req("s", None, vec![bad_meta]), "metadata key"),
        (
            append_req(
                "s",
                Some(pb::ExpectedVersion {
                    kind: 42,
                    version: 0,
                }),
                vec![new_event("A", "{}")],
            ),
            "unknown expected version",
        ),
    ];
    for (req, msg) in cases {
        let e = c.append(req).await.expect_err(msg);
        assert_eq!(e.code(), Code::InvalidArgument, "{msg}: {e:?}");
        assert!(
            e.message().contains(msg),
            "expected {msg:?} in {:?}",
            e.message()
        );
    }
    let e = c
        .read_stream(pb::ReadStreamRequest {
            stream: "bad name".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad stream name on read");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .read_all(pb::ReadAllRequest {
            limit: 1_000_000,
            ..Default::default()
        })
        .await
        .expect_err("page too large");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .subscribe(pb::SubscribeRequest {
            target: None,
            from: None,
        })
        .await
        .expect_err("no target");
    assert_eq!(e.code(), Code::InvalidArgument);

    let events = read_all_events(&mut c, pb::Consistency::Linearizable).await;
    assert_eq!(
        events.len(),
        1,
        "nothing but the first good append was written"
    );
    // The node is still healthy.
    assert_eq!(node.http_get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_reflection_and_grpc_health() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let (code, body) = node.http_get("/healthz").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["role"], "leader");
    let mut c = node.client().await;
    c.append(append_req("m", None, vec![new_event("A", "{}")]))
        .await
        .unwrap();
    let (code, body) = node.http_get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "aether_appends_total{code=\"OK\"} 1",
        "aether_events_stored 1",
        "aether_raft_is_leader 1",
        "aether_queue_utilization{queue=\"proposals\"}",
        "aether_append_seconds_bucket",
        "aether_log_syncs",
        "aether_log_sync_seconds",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }

    // The standard gRPC health service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel().await);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "aetherops.v1.EventStore".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Server reflection lists our services.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(node.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let listed = format!("{:?}", msg.message_response);
    for s in [
        "aetherops.v1.EventStore",
        "aetherops.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(s), "{s} not listed: {listed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_identity() {
    let mut node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;
    for i in 0..50 {
        c.append(append_req(
            "r",
            None,
            vec![new_event("A", &format!("{{\"i\":{i}}}"))],
        ))
        .await
        .unwrap();
    }
    let before = node.status().await;
    node.stop();
    node.restart();
    node.wait_leader().await;
    let after = node.status().await;
    assert_eq!(after.event_count, 50);
    assert!(after.applied_index >= before.applied_index);
    assert_eq!(after.voters.len(), 1, "restart does not re-initialize");
    // Same data dir under another node id is refused.
    let out = std::process::Command::new(AETHERD)
        .args([
            "--dev",
            "--node-id",
            "2",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&node.dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to node 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_bounded_and_holds_back_only_itself() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;
    // A subscriber that reads nothing for now.
    let mut stalled = node
        .client()
        .await
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::All(true)),
            from: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    for i in 0..50 {
        let events = (0..40).map(|_| new_event("Tick", &payload)).collect();
        c.append(append_req(&format!("s-{}", i % 4), None, events))
            .await
            .unwrap();
    }
    // Its server-side buffer fills up and stays full: bounded, not growing with the log.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, body) = node.http_get("/metrics").await;
        if body.contains("aether_queue_utilization{queue=\"subscribers\"} 1.0") {
            assert!(body.contains("aether_subscribers 1"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriber buffer never filled:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writers were not held back: more appends go through while it stalls.
    let t = Instant::now();
    for _ in 0..20 {
        c.append(append_req("other", None, vec![new_event("A", "{}")]))
            .await
            .unwrap();
    }
    assert!(t.elapsed() < DEADLINE);
    // When it reads again, it gets everything, in order, without gap.
    let mut next = 0u64;
    while next < 2020 {
        let m = tokio::time::timeout(DEADLINE, stalled.message())
            .await
            .expect("stalled")
            .unwrap()
            .unwrap();
        if let Some(pb::subscribe_response::Kind::Event(e)) = m.kind {
            assert_eq!(e.global_position, next);
            next += 1;
        }
    }
}

/// Issue 9.1, from outside: a forged node-to-node `Propose` (the target header is built from
/// what `Admin.Status` tells anyone) carrying an append with no events, and one to a
/// workflow's stream. Each is refused on its own — nothing written, the node keeps running,
/// positions do not wrap — and a valid command in the same batch goes ahead. A batch larger
/// than one entry is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_propose_is_validated_like_a_client_request() {
    use aetherops::eventstore::{AppendCommand, AppendOutcome};
    use aetherops::model::{ExpectedVersion, NewEvent};
    use aetherops::proto::raft::v1::{raft_client::RaftClient, RaftMessage};
    use aetherops::raft::{Command, CommandOutcome};

    // Entries of at most 64 KiB (and limits to match).
    let mut node = NodeBuilder::dev()
        .config(
            "[limits]\nmax_request_bytes = 16384\nmax_event_bytes = 16384\n\
             max_events_per_append = 10\nmax_metadata_entries = 4\n\
             [proposer]\nmax_batch_bytes = 65536\n",
        )
        .start();
    node.wait_leader().await;
    let status = node
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let cmd = |stream: &str, events: usize| {
        Command::Append(AppendCommand {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: (0..events)
                .map(|_| NewEvent::new(uuid::Uuid::now_v7(), "T", b"{}"))
                .collect(),
        })
    };
    let target = format!("{}:{}", status.node_id, status.incarnation);
    let channel = node.channel().await;
    let propose = |batch: Vec<Command>| {
        let mut req = tonic::Request::new(RaftMessage {
            body: postcard::to_allocvec(&batch).unwrap().into(),
        });
        req.metadata_mut()
            .insert("x-aether-target", target.parse().unwrap());
        let mut client = RaftClient::new(channel.clone());
        async move {
            let reply = client
                .propose(req)
                .await
                .expect("the call is answered")
                .into_inner();
            let outcomes: Result<Vec<CommandOutcome>, aetherops::node::ProposeError> =
                postcard::from_bytes(&reply.body).unwrap();
            outcomes.expect("the batch was taken")
        }
    };
    // A batch larger than one entry of this node: every command refused, nothing written.
    let big: Vec<Command> = (0..8)
        .map(|i| {
            let mut c = cmd(&format!("big-{i}"), 1);
            if let Command::Append(a) = &mut c {
                a.events[0].payload = bytes::Bytes::from(vec![b'x'; 12_000]);
            }
            c
        })
        .collect();
    let outcomes = propose(big).await;
    assert_eq!(outcomes.len(), 8);
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            CommandOutcome::Append(AppendOutcome::Rejected { reason }) if reason.contains("larger than one entry")
        )),
        "{outcomes:?}"
    );
    let batch = vec![cmd("s", 0), cmd("workflow-wf-3", 1), cmd("s", 1)];
    let outcomes = propose(batch).await;
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes[..2] {
        assert!(
            matches!(o, CommandOutcome::Append(AppendOutcome::Rejected { .. })),
            "{o:?}"
        );
    }
    match &outcomes[2] {
        CommandOutcome::Append(AppendOutcome::Appended(p)) => {
            assert_eq!((p.last_stream_version, p.last_global_position), (0, 0))
        }
        o => panic!("the valid command was not appended: {o:?}"),
    }
    // The node is alive and the stream's versions continue from 0.
    let r = node
        .client()
        .await
        .append(append_req("s", None, vec![new_event("T", "{}")]))
        .await
        .expect("append after the forged batch")
        .into_inner();
    assert_eq!((r.last_stream_version, r.last_global_position), (1, 1));
    assert!(node.is_running());
}

/// Issue 9.12: a workflow's stream is written through the Workflows API only; a plain append
/// is refused with an error that says where to go, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_appends_to_a_workflow_stream_point_to_the_workflows_api() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;
    let e = c
        .append(append_req(
            "workflow-wf-3",
            None,
            vec![new_event("StepStarted", "{}")],
        ))
        .await
        .expect_err("plain append to a workflow stream");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("Workflows API"), "{}", e.message());
    let page = c
        .read_all(pb::ReadAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.events.is_empty(), "nothing written");
}

/// Issue 9.9e: the idempotency window is one replicated setting, changed through the admin
/// API (and the CLI), refused when out of range, and reported by every node's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_window_is_set_cluster_wide_from_the_cli() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let mut c = node.client().await;
    c.append(append_req("s", None, vec![new_event("T", "{}")]))
        .await
        .unwrap();
    // Seeded, when the leader adopts this version's rules, from its dedupe_window_secs
    // (default 24 h).
    node.wait_rules_adopted().await;
    assert_eq!(node.status().await.dedupe_window_secs, Some(24 * 3600));
    let out = node.ctl(&["cluster", "set-dedupe-window", "2h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.status().await.dedupe_window_secs, Some(7200));
    let out = node.ctl(&["cluster", "set-dedupe-window", "0s"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.status().await.dedupe_window_secs, Some(7200));
}

/// Issue 11.2: `aetherctl limits set/list/delete` on a node; a policy survives a restart;
/// a bad spec is refused before anything is sent, a bad policy by the node.
#[tokio::test]
async fn limit_policies_from_the_cli_survive_a_restart() {
    let mut node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The node adopts the rules that know policies within seconds of starting.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let out = node.ctl(&[
            "limits",
            "set",
            "ingest",
            "--methods",
            "Ingest,Append",
            "--key",
            "stream-prefix",
            "--sliding-window",
            "1000,10s,10",
        ]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("set policy ingest"));
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("FailedPrecondition"), "{err}");
        assert!(std::time::Instant::now() < deadline, "rules never adopted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok(node.ctl(&[
        "limits",
        "set",
        "all",
        "--token-bucket",
        "50,0.27",
        "--shadow",
    ]));
    let listed = ok(node.ctl(&["--output", "json", "limits", "list"]));
    let policies: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(policies.len(), 2, "{listed}");
    assert_eq!(policies[0]["name"], "all");
    assert_eq!(policies[0]["shadow"], true);
    assert_eq!(policies[0]["algorithm"]["token_bucket"]["burst"], 50);
    assert_eq!(
        policies[0]["algorithm"]["token_bucket"]["rate_per_sec"],
        0.27
    );
    assert_eq!(policies[1]["name"], "ingest");
    assert_eq!(policies[1]["key"], "stream-prefix");
    assert_eq!(
        policies[1]["methods"],
        serde_json::json!(["Ingest", "Append"])
    );
    assert_eq!(
        policies[1]["algorithm"]["sliding_window"],
        serde_json::json!({"limit": 1000, "window_ms": 10000, "window_count": 10})
    );

    // Refused before sending: a spec that does not parse, or neither algorithm.
    for args in [
        &["limits", "set", "x", "--token-bucket", "50"][..],
        &["limits", "set", "x"][..],
        &[
            "limits",
            "set",
            "x",
            "--methods",
            "Bogus",
            "--token-bucket",
            "1,1",
        ][..],
    ] {
        let out = node.ctl(args);
        assert!(!out.status.success(), "{args:?}");
    }
    // Refused by the node: the name of a policy that does not exist.
    let out = node.ctl(&["limits", "delete", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));

    node.stop();
    node.restart();
    node.wait_leader().await;
    let listed = ok(node.ctl(&["limits", "list"]));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    ok(node.ctl(&["limits", "delete", "all"]));
    let listed = ok(node.ctl(&["limits", "list"]));
    assert!(
        listed.starts_with("ingest\tIngest,Append\tkey=stream-prefix"),
        "{listed}"
    );
}

/// Issue 11.3 (first slice): a node enforces the cluster's policies on its API. Past a
/// policy's burst an append is refused with RESOURCE_EXHAUSTED and a `retry-after-ms`
/// trailer, writing nothing; methods the policy does not cover pass; a shadow policy only
/// counts; deleting the policy lifts it.
#[tokio::test]
async fn a_policy_refuses_past_its_burst_with_retry_after_and_a_shadow_only_counts() {
    let node = NodeBuilder::dev().start();
    node.wait_leader().await;
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    node.wait_rules_adopted().await;
    // Three appends, then one every 1000 s.
    ok(node.ctl(&[
        "limits",
        "set",
        "appends",
        "--methods",
        "Append",
        "--token-bucket",
        "3,0.001",
    ]));
    let mut c = node.client().await;
    let refusal = append_until_refused(&mut c, "limited-1").await;
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(refusal.message().contains("\"appends\""), "{refusal:?}");
    let retry_ms: u64 = refusal
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (900_000..=1_000_000).contains(&retry_ms),
        "one token per 1000 s: {retry_ms}"
    );
    // Refused appends wrote nothing: the stream holds what was admitted, and stays so.
    let before = node.status().await.event_count;
    for _ in 0..5 {
        let e = c
            .append(append_req("limited-1", None, vec![new_event("T", "{}")]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }
    assert_eq!(node.status().await.event_count, before);
    // Reads are not covered by the policy.
    c.read_stream(pb::ReadStreamRequest {
        stream: "limited-1".into(),
        ..Default::default()
    })
    .await
    .expect("reads pass");
    let (_, metrics) = node.http_get("/metrics").await;
    assert!(
        metrics.contains("aether_limit_refused{policy=\"appends\"} 6"),
        "{metrics}"
    );

    // A shadow policy on reads refuses nothing and counts what it would refuse.
    ok(node.ctl(&[
        "limits",
        "set",
        "reads",
        "--methods",
        "Read",
        "--token-bucket",
        "1,0.001",
        "--shadow",
    ]));
    wait_metrics(
        &node,
        "aether_limit_shadow_refused{policy=\"reads\"} 1",
        || {
            let mut c = c.clone();
            async move {
                c.read_stream(pb::ReadStreamRequest {
                    stream: "limited-1".into(),
                    ..Default::default()
                })
                .await
                .expect("a shadow policy refuses nothing");
            }
        },
    )
    .await;

    ok(node.ctl(&["limits", "delete", "appends"]));
    let deadline = std::time::Instant::now() + DEADLINE;
    while append_one(&mut c, "limited-1").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted policy still refuses"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 11: a restart neither refills a drained bucket to its burst nor forgets it: the
/// limiters' state is written on shutdown (and every few seconds) with wall-clock times and
/// read back at start. (Multi-threaded: `stop` blocks while the node closes this test's
/// connections.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_a_drained_bucket_drained() {
    let mut node = NodeBuilder::dev().start();
    node.wait_leader().await;
    node.wait_rules_adopted().await;
    let out = node.ctl(&[
        "limits",
        "set",
        "appends",
        "--methods",
        "Append",
        "--token-bucket",
        "3,0.001",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = node.client().await;
    append_until_refused(&mut c, "drained-1").await;
    drop(c);
    node.stop();
    node.restart();
    node.wait_leader().await;
    // Once the restarted node enforces the policy again (its share shows in /metrics), the
    // bucket is as it was: empty. A fresh one would admit a burst of 3.
    wait_metrics(&node, "aether_limit_share{policy=\"appends\"}", || async {}).await;
    let mut c = node.client().await;
    let e = append_one(&mut c, "drained-1").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
}

/// Runs `step`, then reads `/metrics`, until it shows `needle`.
async fn wait_metrics<F, Fut>(node: &TestNode, needle: &str, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        step().await;
        let (_, metrics) = node.http_get("/metrics").await;
        if metrics.contains(needle) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics never showed {needle}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn append_one(
    c: &mut pb::event_store_client::EventStoreClient<TestChannel>,
    stream: &str,
) -> Result<(), tonic::Status> {
    c.append(append_req(stream, None, vec![new_event("T", "{}")]))
        .await
        .map(drop)
}

/// Appends single events until one is refused (a policy takes effect within a reload).
async fn append_until_refused(
    c: &mut pb::event_store_client::EventStoreClient<TestChannel>,
    stream: &str,
) -> tonic::Status {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the policy was never enforced"
        );
        match append_one(c, stream).await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(s) => return s,
        }
    }
}
