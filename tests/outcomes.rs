//! What clients are told when writes and reads fail under faults: whether a write may have
//! happened (README, "Errors and retries"), which node or address failed, and nothing of
//! openraft's internals.

mod common;

use std::time::{Duration, Instant};

use aetherops::proto::aetherops::v1 as pb;
use common::cluster::{node_ip, TestCluster};
use common::*;
use tonic::Code;

/// A config whose elections wait 30 s: the faults these tests inject must not move leadership
/// while they look at one leader.
fn slow_elections(dir: &std::path::Path) -> String {
    let path = dir.join("slow-elections.toml");
    std::fs::write(
        &path,
        "[raft]\nelection_timeout_min_ms = 30000\nelection_timeout_max_ms = 40000\n",
    )
    .expect("config");
    path.to_string_lossy().into_owned()
}

/// The first events of `stream`, read linearizably.
fn linearizable_read(stream: &str) -> pb::ReadStreamRequest {
    pb::ReadStreamRequest {
        stream: stream.into(),
        from_version: None,
        backwards: false,
        limit: 10,
        consistency: pb::Consistency::Linearizable as i32,
    }
}

/// A follower forwards a batch to the leader; the connection breaks after the batch went
/// out. The follower cannot know whether the leader proposed it: the client must hear
/// "outcome unknown" (DEADLINE_EXCEEDED), not "not written" (UNAVAILABLE, which invites a
/// blind retry) — and indeed the leader does write it once it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_cut_after_the_batch_was_sent_reports_outcome_unknown() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = slow_elections(cfg_dir.path());
    let c = TestCluster::start(3, &["--config", &cfg]).await;
    let li = c.wait_leader(&c.all()).await;
    let fi = (li + 1) % 3;
    let follower_ip = node_ip(c.nodes[fi].id);
    let mut client = c.nodes[fi].client().await;
    let before = c.proxies[li].bytes_from(follower_ip);

    // The leader stops reading: the forwarded batch reaches its socket, unanswered.
    c.nodes[li].pause();
    // Less than HTTP/2's initial stream window (64 KiB): it all goes out unacknowledged.
    let pad = "x".repeat(32 * 1024);
    let event_id = uuid::Uuid::new_v4().to_string();
    let req = append_req(
        "cut-1",
        None,
        vec![pb::NewEvent {
            event_id: event_id.clone(),
            ..new_event("Cut", &format!(r#"{{"pad":"{pad}"}}"#))
        }],
    );
    let call = {
        let req = req.clone();
        tokio::spawn(async move { client.append(req).await })
    };
    let deadline = Instant::now() + DEADLINE;
    while c.proxies[li].bytes_from(follower_ip) < before + pad.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "the forwarded batch never passed the leader's proxy"
        );
        assert!(
            !call.is_finished(),
            "the append ended before it was forwarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cut the link with the call in flight.
    c.proxies[li].block(follower_ip);
    let status = call
        .await
        .expect("task")
        .expect_err("no leader could have answered");
    let leader_addr = c.proxies[li].addr.to_string();
    println!(
        "the client was told: {:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "a cut after sending must be 'outcome unknown': {status:?}"
    );
    assert!(
        status.message().contains("outcome unknown") && status.message().contains(&leader_addr),
        "the message says the outcome is unknown and names the leader's address {leader_addr}: {}",
        status.message()
    );

    // The leader runs again: it reads the batch it was sent and may well write it. A retry
    // with the same event id settles the outcome without writing twice.
    c.nodes[li].resume();
    c.heal();
    let acked = RetryingAppender::new(vec![c.nodes[fi].grpc_addr.clone()])
        .append(req)
        .await;
    assert_eq!(acked.first_stream_version, 0);
    c.wait_converged(&c.all()).await;
    let events = c.nodes[fi]
        .client()
        .await
        .read_stream(linearizable_read("cut-1"))
        .await
        .expect("read")
        .into_inner()
        .events;
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        vec![event_id.as_str()],
        "the event is stored exactly once"
    );
}

/// A leader cut off from its followers cannot serve a linearizable read. It says so, naming
/// the voters it could not reach, without openraft's membership dump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_leader_without_quorum_names_the_missing_voters() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = slow_elections(cfg_dir.path());
    let mut c = TestCluster::start(3, &["--config", &cfg]).await;
    let li = c.wait_leader(&c.all()).await;
    let others: Vec<usize> = c.all().into_iter().filter(|&i| i != li).collect();
    for &i in &others {
        c.nodes[i].kill9();
    }
    let status = c.nodes[li]
        .client()
        .await
        .read_stream(linearizable_read("s"))
        .await
        .expect_err("no quorum, no linearizable read");
    let msg = status.message();
    println!("the client was told: {:?}: {msg}", status.code());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !msg.contains("NodeInfo") && !msg.contains("voters:["),
        "openraft internals in the message: {msg}"
    );
    for &i in &others {
        let name = format!("node {}", c.nodes[i].id);
        assert!(msg.contains(&name), "the message names {name}: {msg}");
    }
    assert!(msg.contains("quorum"), "{msg}");
}
