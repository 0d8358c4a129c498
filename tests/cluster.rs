//! Cluster behaviour on real processes: membership changes under load, snapshots and log
//! purge, late joiners, follower reads, subscriptions across leader changes, digests.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aetherops::proto::aetherops::v1 as pb;
use common::cluster::TestCluster;
use common::*;

type Acked = Arc<Mutex<Vec<(String, u64)>>>;

/// What was acknowledged so far (the lock is released at once).
fn taken(acked: &Acked) -> Vec<(String, u64)> {
    acked.lock().unwrap().clone()
}

fn writers(
    addrs: Vec<String>,
    clients: usize,
    per_client: usize,
    prefix: &str,
    acked: Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|w| {
            let addrs = addrs.clone();
            let acked = acked.clone();
            let stream = format!("{prefix}-{w}");
            tokio::spawn(async move {
                let mut appender = RetryingAppender::new(addrs);
                for i in 0..per_client {
                    let ev = new_event("Tick", &format!("{{\"i\":{i}}}"));
                    let id = ev.event_id.clone();
                    let r = appender.append(append_req(&stream, None, vec![ev])).await;
                    assert_eq!(r.first_stream_version, i as u64);
                    acked.lock().unwrap().push((id, r.first_global_position));
                }
            })
        })
        .collect()
}

/// A config file with small snapshot thresholds, so a test sees snapshots and purges.
fn snapshot_config(dir: &std::path::Path, every: u64, keep: u64) -> String {
    let p = dir.join("snap.toml");
    std::fs::write(
        &p,
        format!("[raft]\nsnapshot_every_entries = {every}\nmax_in_snapshot_log_to_keep = {keep}\n"),
    )
    .unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_join_and_leave_under_write_load_without_loss_or_duplicates() {
    let mut c = TestCluster::start(3, &[]).await;
    let acked: Acked = Arc::default();
    // Writers use nodes 1 and 3 only: node 2 is about to leave.
    let addrs = vec![c.nodes[0].grpc_addr.clone(), c.nodes[2].grpc_addr.clone()];
    let ws = writers(addrs, 4, 200, "m", acked.clone());

    // Node 4 joins as a learner, catches up while writes go on, then becomes a voter.
    let four = c.spawn_node().await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let incarnation = c.nodes[four].status().await.incarnation;
    let mut admin = c.nodes[leader].admin().await;
    admin
        .add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                incarnation,
                ..c.member(four)
            }),
            blocking: true,
        })
        .await
        .expect("add learner");
    let r = admin
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![1, 2, 3, 4],
            retain: false,
        })
        .await
        .expect("promote")
        .into_inner();
    assert_eq!(r.voters.len(), 4);
    // Node 2 leaves.
    let leader = c.wait_leader(&[0, 1, 2, 3]).await;
    let r = c.nodes[leader]
        .admin()
        .await
        .remove_node(pb::RemoveNodeRequest { node_id: 2 })
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(
        r.voters.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    for w in ws {
        w.await.unwrap();
    }
    let members = [0, 2, 3];
    c.wait_leader(&members).await;
    c.wait_converged(&members).await;
    let nodes: Vec<&TestNode> = members.iter().map(|i| &c.nodes[*i]).collect();
    assert_eq!(check_logs(&nodes, &taken(&acked)).await, 800);
    let s = c.nodes[3].status().await;
    assert_eq!(s.voters.len(), 3);
    assert!(s.voters.iter().all(|m| m.node_id != 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_purge_the_log_and_late_or_lagging_nodes_install_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = snapshot_config(tmp.path(), 200, 50);
    let mut c = TestCluster::start(3, &["--config", &cfg]).await;
    let leader = c.wait_leader(&c.all()).await;
    let acked: Acked = Arc::default();
    for w in writers(
        vec![c.nodes[leader].grpc_addr.clone()],
        4,
        300,
        "s",
        acked.clone(),
    ) {
        w.await.unwrap();
    }
    c.wait_converged(&c.all()).await;
    // Every node snapshotted and purged its log behind the snapshot: the log stays bounded.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut all_purged = true;
        for n in &c.nodes {
            let s = n.status().await;
            let kept = s.last_log_index.unwrap_or(0) - s.purged_index.unwrap_or(0);
            all_purged &=
                s.snapshot_index.is_some() && s.purged_index.is_some() && kept <= 200 + 50 + 64;
        }
        if all_purged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs were not purged behind snapshots"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A node that joins late cannot get the purged entries: it installs a snapshot.
    let four = c.spawn_node().await;
    c.add_learner(leader, four).await;
    let s = c.wait_converged(&c.all()).await;
    assert_eq!(s.event_count, 1200);
    let joined = c.nodes[four].status().await;
    assert!(
        joined.snapshot_index.is_some(),
        "the late joiner installed a snapshot"
    );
    assert!(joined.purged_index.is_some(), "and holds no log before it");

    // A node that falls far behind (down while the log moves on and is purged) catches up
    // by snapshot too.
    let lagging = (leader + 1) % 3;
    let lag_last = c.nodes[lagging].status().await.last_log_index.unwrap_or(0);
    c.nodes[lagging].kill9();
    let rest: Vec<String> = c
        .all()
        .into_iter()
        .filter(|i| *i != lagging)
        .map(|i| c.nodes[i].grpc_addr.clone())
        .collect();
    for w in writers(rest.clone(), 4, 200, "late", acked.clone()) {
        w.await.unwrap();
    }
    // The number of entries those writes made depends on how the proposer batched them:
    // keep appending (one entry each) until the leader has purged past the lagging node's
    // log, so that it can only catch up by snapshot.
    let mut extra = 0u64;
    let mut appender = RetryingAppender::new(rest);
    let deadline = Instant::now() + DEADLINE;
    while c.nodes[leader].status().await.purged_index.unwrap_or(0) <= lag_last {
        assert!(
            Instant::now() < deadline,
            "the leader never purged past index {lag_last}"
        );
        let ev = new_event("Tick", "{}");
        let id = ev.event_id.clone();
        let r = appender
            .append(append_req("late-extra", None, vec![ev]))
            .await;
        acked.lock().unwrap().push((id, r.first_global_position));
        extra += 1;
    }
    c.nodes[lagging].restart();
    let s = c.wait_converged(&c.all()).await;
    assert_eq!(s.event_count, 2000 + extra);
    let nodes: Vec<&TestNode> = c.nodes.iter().collect();
    assert_eq!(
        check_logs(&nodes, &taken(&acked)).await as u64,
        2000 + extra
    );
    let caught_up = c.nodes[lagging].status().await;
    assert!(
        caught_up.snapshot_index.is_some_and(|i| i > lag_last),
        "the lagging node caught up by installing a snapshot: {caught_up:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_forward_writes_and_serve_linearizable_and_local_reads() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let follower = (leader + 1) % 3;
    let mut fc = c.nodes[follower].client().await;
    // A write sent to a follower is forwarded; the reply is the leader's.
    let r = fc
        .append(append_req("fwd", None, vec![new_event("A", "{}")]))
        .await
        .expect("forwarded append")
        .into_inner();
    assert_eq!(r.first_global_position, 0);
    // Conflicts come back through the forward too.
    let e = fc
        .append(append_req(
            "fwd",
            expected(pb::expected_version::Kind::NoStream, 0),
            vec![new_event("A", "{}")],
        ))
        .await
        .expect_err("conflict through a follower");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    // Read-your-write on every node with linearizable reads, right after the ack.
    for i in 0..20 {
        let r = c.nodes[leader]
            .client()
            .await
            .append(append_req(
                "fwd",
                None,
                vec![new_event("B", &format!("{{\"i\":{i}}}"))],
            ))
            .await
            .unwrap()
            .into_inner();
        for n in &c.nodes {
            let page = n
                .client()
                .await
                .read_stream(pb::ReadStreamRequest {
                    stream: "fwd".into(),
                    from_version: Some(r.first_stream_version),
                    consistency: pb::Consistency::Linearizable as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                page.events.len(),
                1,
                "node {} missed an acknowledged write",
                n.id
            );
        }
    }
    // Local reads answer from the node's own state (eventually the same).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = fc
            .read_stream(pb::ReadStreamRequest {
                stream: "fwd".into(),
                consistency: pb::Consistency::Local as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if page.events.len() == 21 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_continue_through_a_leader_change_and_resume_elsewhere() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let follower = (leader + 1) % 3;
    let sub = pb::SubscribeRequest {
        target: Some(pb::subscribe_request::Target::All(true)),
        from: Some(0),
    };
    let mut on_follower = c.nodes[follower]
        .client()
        .await
        .subscribe(sub.clone())
        .await
        .unwrap()
        .into_inner();
    let mut on_leader = c.nodes[leader]
        .client()
        .await
        .subscribe(sub)
        .await
        .unwrap()
        .into_inner();
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let acked: Acked = Arc::default();
    for w in writers(addrs.clone(), 2, 100, "a", acked.clone()) {
        w.await.unwrap();
    }
    // Read part of the leader's subscription, then the leader dies.
    let mut from_leader = Vec::new();
    while from_leader.len() < 120 {
        if let Some(pb::subscribe_response::Kind::Event(e)) =
            on_leader.message().await.unwrap().unwrap().kind
        {
            from_leader.push(e.global_position);
        }
    }
    c.nodes[leader].kill9();
    let rest: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
    c.wait_leader(&rest).await;
    let rest_addrs: Vec<String> = rest.iter().map(|i| c.nodes[*i].grpc_addr.clone()).collect();
    for w in writers(rest_addrs, 2, 100, "b", acked.clone()) {
        w.await.unwrap();
    }
    // The follower's subscription went on through the leader change.
    let mut seen = Vec::new();
    while seen.len() < 400 {
        let m = tokio::time::timeout(DEADLINE, on_follower.message())
            .await
            .expect("stalled")
            .unwrap()
            .unwrap();
        if let Some(pb::subscribe_response::Kind::Event(e)) = m.kind {
            seen.push(e.global_position);
        }
    }
    assert_eq!(seen, (0..400).collect::<Vec<_>>());
    // The subscriber whose node died resumes elsewhere from its last position + 1.
    let resume_at = from_leader.last().unwrap() + 1;
    let other = rest[0];
    let mut resumed = c.nodes[other]
        .client()
        .await
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::All(true)),
            from: Some(resume_at),
        })
        .await
        .unwrap()
        .into_inner();
    while from_leader.len() < 400 {
        let m = tokio::time::timeout(DEADLINE, resumed.message())
            .await
            .expect("stalled")
            .unwrap()
            .unwrap();
        if let Some(pb::subscribe_response::Kind::Event(e)) = m.kind {
            from_leader.push(e.global_position);
        }
    }
    assert_eq!(
        from_leader,
        (0..400).collect::<Vec<_>>(),
        "no gap, no duplicate across the resume"
    );
    c.nodes[leader].restart();
    c.wait_converged(&c.all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_compares_digests_and_fails_loudly_on_divergence() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let mut lc = c.nodes[leader].client().await;
    for i in 0..50 {
        lc.append(append_req(
            "v",
            None,
            vec![new_event("A", &format!("{{\"i\":{i}}}"))],
        ))
        .await
        .unwrap();
    }
    c.wait_converged(&c.all()).await;
    verify_deep_agrees(&c.nodes[0]);

    // Change one record at rest on a follower (a valid record, valid checksum: silent).
    let victim = (leader + 1) % 3;
    c.nodes[victim].stop();
    {
        let store = aetherops::storage::SmStore::open(&c.nodes[victim].dir.join("sm")).unwrap();
        let db = store.db();
        let cf = db.cf(aetherops::storage::sm_db::CF_EVENTS).unwrap();
        let key = 7u64.to_be_bytes();
        let mut ev: aetherops::model::RecordedEvent =
            aetherops::storage::decode("event", &db.db().get_cf(cf, key).unwrap().unwrap())
                .unwrap();
        ev.payload = bytes::Bytes::from_static(b"{\"i\":\"tampered\"}");
        db.db()
            .put_cf(cf, key, aetherops::storage::encode("event", &ev).unwrap())
            .unwrap();
        db.sync().unwrap();
    }
    c.nodes[victim].restart();
    c.wait_converged(&c.all()).await;
    // The chained digest vouches for the writes applied — identical — but the deep scan
    // sees what is on disk now.
    let out = c.nodes[0].ctl(&["cluster", "verify", "--deep"]);
    assert!(!out.status.success(), "verify must fail on divergence");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("REPLICAS DIVERGE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_is_refused_until_removed_and_added_again() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let mut lc = c.nodes[leader].client().await;
    for _ in 0..20 {
        lc.append(append_req("w", None, vec![new_event("A", "{}")]))
            .await
            .unwrap();
    }
    let victim = (leader + 1) % 3;
    let victim_id = c.nodes[victim].id;
    c.nodes[victim].kill9();
    std::fs::remove_dir_all(&c.nodes[victim].dir).unwrap();
    c.nodes[victim].restart();
    // The cluster's messages for the old member are refused, loudly, and nothing is applied.
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(c.nodes[victim].log_path())
        .unwrap_or_default()
        .contains("not the one the cluster knows")
    {
        assert!(
            Instant::now() < deadline,
            "the wiped node was not refused:\n{}",
            c.nodes[victim].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = c.nodes[victim].status().await;
    assert_eq!(s.event_count, 0);
    assert!(
        s.voters.is_empty(),
        "the wiped node did not silently rejoin"
    );
    // The two others still make progress.
    lc.append(append_req("w", None, vec![new_event("A", "{}")]))
        .await
        .unwrap();

    // The operator removes it and adds it back under its new incarnation.
    let mut admin = c.nodes[leader].admin().await;
    admin
        .remove_node(pb::RemoveNodeRequest { node_id: victim_id })
        .await
        .expect("remove");
    admin
        .add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                incarnation: s.incarnation,
                ..c.member(victim)
            }),
            blocking: true,
        })
        .await
        .expect("re-add");
    admin
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![1, 2, 3],
            retain: false,
        })
        .await
        .expect("promote");
    let s = c.wait_converged(&c.all()).await;
    assert_eq!(s.event_count, 21);
}

/// Issue 9.8: a leader whose wall clock runs a year ahead does not carry the cluster's time
/// with it: it stamps the majority's time (so idempotency records and telemetry cutoffs stay
/// put), and reports its skew as a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_with_a_clock_a_year_ahead_stamps_the_majority_time() {
    const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
    let mut c = TestCluster::start_uninitialized(0, &[]).await;
    c.spawn_node_with_config(Some(&format!("clock_offset_ms = {YEAR_MS}")))
        .await;
    c.spawn_node().await;
    c.spawn_node().await;
    c.init(&[1, 2, 3]).await; // node 1 campaigns first
                              // Make the skewed node the leader: while another leads, pause it until one is elected
                              // among the rest (bounded tries; each election is a fresh draw).
    let mut leader = c.wait_leader(&c.all()).await;
    for _ in 0..20 {
        if leader == 0 {
            break;
        }
        c.nodes[leader].pause();
        let others: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
        c.wait_leader(&others).await;
        c.nodes[leader].resume();
        leader = c.wait_leader(&c.all()).await;
    }
    assert_eq!(leader, 0, "node 1 never won an election");
    let r = c.nodes[0]
        .client()
        .await
        .append(append_req("clock", None, vec![new_event("T", "{}")]))
        .await
        .expect("append on the skewed leader")
        .into_inner();
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let off_secs = (r.commit_time_ns - real_now) as f64 / 1e9;
    assert!(
        off_secs.abs() < 600.0,
        "commit time is {off_secs} s off the real time"
    );
    // Every voter answers the clock probe: the leader adopts this version's rules, which
    // seeds the replicated idempotency window on every node.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut windows = Vec::new();
        for i in c.all() {
            windows.push(c.nodes[i].status().await.dedupe_window_secs);
        }
        if windows.iter().all(|w| *w == Some(24 * 3600)) {
            break;
        }
        assert!(Instant::now() < deadline, "windows {windows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = c.nodes[0].http_get("/metrics").await;
    let skew: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("aether_clock_skew_seconds "))
        .expect("skew metric")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (skew - YEAR_MS as f64 / 1e3).abs() < 600.0,
        "skew metric {skew}"
    );
}

/// Issue 11.2: rate-limit policies are replicated state. Set through a follower, every
/// member holds the same policy; a member that joins after the log was purged gets it from
/// the snapshot; a member killed and restarted keeps it; a deletion reaches every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_policies_are_cluster_state_that_snapshots_carry() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = snapshot_config(tmp.path(), 50, 10);
    let mut c = TestCluster::start(3, &["--config", &cfg]).await;
    let leader = c.wait_leader(&c.all()).await;
    let follower = (leader + 1) % 3;
    let policy = pb::LimitPolicy {
        name: "writes".into(),
        methods: vec!["Append".into(), "Ingest".into()],
        key: "caller".into(),
        algorithm: Some(pb::limit_policy::Algorithm::TokenBucket(pb::TokenBucket {
            burst: 100,
            refill_millis: 270,
        })),
        shadow: true,
    };
    assert!(!set_limit_when_ready(&c.nodes[follower], policy.clone()).await);
    for i in c.all() {
        assert_eq!(
            list_limits(&c, i, pb::Consistency::Linearizable).await,
            vec![policy.clone()]
        );
    }
    // A bad policy is refused with the reason, and changes nothing.
    let mut bad = policy.clone();
    bad.name = "no spaces".into();
    let e = c.nodes[leader]
        .admin()
        .await
        .set_limit(pb::SetLimitRequest { policy: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Enough writes that every node snapshots and purges the entry that set the policy.
    let acked: Acked = Arc::default();
    for w in writers(
        vec![c.nodes[leader].grpc_addr.clone()],
        2,
        60,
        "p",
        acked.clone(),
    ) {
        w.await.unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    while c.nodes[leader].status().await.purged_index.unwrap_or(0) < 20 {
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let four = c.spawn_node().await;
    c.add_learner(leader, four).await;
    c.wait_converged(&c.all()).await;
    assert!(c.nodes[four].status().await.snapshot_index.is_some());
    assert_eq!(
        list_limits(&c, four, pb::Consistency::Local).await,
        vec![policy.clone()],
        "the late joiner got the policy from the snapshot"
    );

    c.nodes[follower].kill9();
    c.nodes[follower].restart();
    assert_eq!(
        list_limits(&c, follower, pb::Consistency::Linearizable).await,
        vec![policy]
    );

    c.nodes[four]
        .admin()
        .await
        .delete_limit(pb::DeleteLimitRequest {
            name: "writes".into(),
        })
        .await
        .expect("delete through a learner");
    let e = c.nodes[leader]
        .admin()
        .await
        .delete_limit(pb::DeleteLimitRequest {
            name: "writes".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    for i in c.all() {
        assert!(list_limits(&c, i, pb::Consistency::Linearizable)
            .await
            .is_empty());
    }
}

async fn list_limits(
    c: &TestCluster,
    i: usize,
    consistency: pb::Consistency,
) -> Vec<pb::LimitPolicy> {
    c.nodes[i]
        .admin()
        .await
        .list_limits(pb::ListLimitsRequest {
            consistency: consistency as i32,
        })
        .await
        .expect("list limits")
        .into_inner()
        .policies
}

/// `aetherctl cluster verify --deep` through `node` finds the three replicas equal.
fn verify_deep_agrees(node: &TestNode) {
    let out = node.ctl(&["cluster", "verify", "--deep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified (deep): 3 nodes agree"));
}

/// A gauge of `node`'s `/metrics`.
async fn gauge(node: &TestNode, name: &str) -> u64 {
    let (code, body) = node.http_get("/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Commit heartbeats carry the leader's next entries (`raft::carry`): under concurrent
/// writes the leader's heartbeats go out with entries, and openraft's next AppendEntries of
/// those entries are answered from the follower's success instead of travelling again. Every
/// acknowledged write is on every node, once, where it was acknowledged, and a deep verify
/// finds the replicas equal. With `raft.carry_wait_ms = 0` nothing is carried, and the same
/// checks hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_heartbeats_carry_the_next_entries_and_replicas_stay_equal() {
    for wait_ms in [2, 0] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("carry.toml");
        std::fs::write(&cfg, format!("[raft]\ncarry_wait_ms = {wait_ms}\n")).unwrap();
        let c = TestCluster::start(3, &["--config", &cfg.to_string_lossy()]).await;
        c.wait_leader(&c.all()).await;
        let acked: Acked = Arc::default();
        let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
        // Rounds of concurrent writes until a leader has carried entries and had an
        // AppendEntries answered from a carry (with carrying on), or for three rounds.
        let deadline = Instant::now() + DEADLINE;
        let mut round = 0;
        loop {
            for w in writers(addrs.clone(), 16, 25, &format!("c{round}"), acked.clone()) {
                w.await.unwrap();
            }
            round += 1;
            // Summed over the nodes: whichever leads (leadership may move) counts.
            let (mut carrying, mut answered) = (0, 0);
            for n in &c.nodes {
                carrying += gauge(n, "aether_raft_heartbeats_carrying").await;
                answered += gauge(n, "aether_raft_answered_from_carried").await;
            }
            if wait_ms == 0 {
                assert_eq!((carrying, answered), (0, 0), "carrying is off");
                if round == 3 {
                    break;
                }
            } else if carrying > 0 && answered > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no carried heartbeat after {round} rounds of writes ({carrying} carrying, {answered} answered)"
            );
        }
        c.wait_converged(&c.all()).await;
        let nodes: Vec<&TestNode> = c.nodes.iter().collect();
        assert_eq!(
            check_logs(&nodes, &taken(&acked)).await,
            taken(&acked).len()
        );
        verify_deep_agrees(&c.nodes[0]);
    }
}
