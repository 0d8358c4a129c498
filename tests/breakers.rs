//! Circuit breakers on a follower's calls to its leader (issue 11), against real processes:
//! a SIGSTOPped leader opens its followers' breakers, after which they answer at once with
//! `UNAVAILABLE` and the leader's address; they close again once it continues, and every
//! transition is readable as telemetry (`aether/breaker/<peer>`). Then the fail-over figure:
//! the time from a leader's SIGSTOP to the next acknowledged append, under load through
//! every node. Figures are printed, not asserted (the machine is shared).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aetherops::proto::aetherops::v1 as pb;
use common::cluster::TestCluster;
use common::*;
use tonic::transport::Channel;

const LEADER_HEADER: &str = "x-aether-leader";

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The follower's breaker state toward `peer` (0 closed, 1 half-open, 2 open), if exposed.
async fn breaker_state(node: &TestNode, peer: u64) -> Option<i64> {
    let (_, body) = node.http_get("/metrics").await;
    let prefix = format!("aether_breaker_state{{peer=\"{peer}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn metric(node: &TestNode, line_prefix: &str) -> Option<f64> {
    let (_, body) = node.http_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn client_with_timeout(
    addr: &str,
    timeout: Duration,
) -> pb::event_store_client::EventStoreClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect()
        .await
        .expect("connect");
    pb::event_store_client::EventStoreClient::new(ch)
}

/// Issue 11, 3 and 4: a SIGSTOPped leader opens the followers' breakers; calls then fail
/// fast, naming the leader; after SIGCONT the breakers close and appends pass again; the
/// transitions are telemetry points of `aether/breaker/<leader>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_opens_the_followers_breakers_and_they_close_after_it_continues() {
    // Elections far apart: the followers keep following the stopped leader (the window in
    // which its breaker answers for it) instead of electing another one.
    // A reset timeout longer than the test's checks: the fast refusals below must not turn
    // into half-open probes of the stopped leader.
    let toml = "[raft]\nelection_timeout_min_ms = 30000\nelection_timeout_max_ms = 35000\n\
                [breakers]\nreset_timeout_ms = 20000\n";
    let mut c = TestCluster::start_uninitialized(0, &[]).await;
    for _ in 0..3 {
        c.spawn_node_with_config(Some(toml)).await;
    }
    c.init(&[1, 2, 3]).await;
    let leader = c.wait_leader(&c.all()).await;
    let leader_id = c.nodes[leader].id;
    let leader_addr = c.proxies[leader].addr.to_string();
    let f = (leader + 1) % 3;
    let started_ns = wall_ns();
    let mut client = client_with_timeout(&c.nodes[f].grpc_addr, Duration::from_secs(30)).await;
    client
        .append(append_req("warm", None, vec![new_event("Warm", "{}")]))
        .await
        .expect("append through the follower");

    c.nodes[leader].pause();
    // Appends through the follower, one at a time, each forwarded to the stopped leader and
    // left unanswered, until the follower's breaker has seen enough of them to open.
    let opened_by = Instant::now();
    let mut stuck = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while breaker_state(&c.nodes[f], leader_id).await != Some(2) {
        assert!(Instant::now() < deadline, "the breaker never opened");
        let mut cl = client.clone();
        stuck.push(tokio::spawn(async move {
            cl.append(append_req("stuck", None, vec![new_event("Stuck", "{}")]))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "breaker to node {leader_id} opened {} ms after the first unanswered append ({} sent)",
        opened_by.elapsed().as_millis(),
        stuck.len()
    );

    // Open: an append through the follower is refused at once, with the leader's address.
    let t = Instant::now();
    let refused = client
        .append(append_req("fast", None, vec![new_event("Fast", "{}")]))
        .await
        .expect_err("refused while the breaker is open");
    let latency = t.elapsed();
    println!(
        "breaker open: append through the follower failed in {:.1} ms (issue's figure: < 50 ms)",
        latency.as_secs_f64() * 1e3
    );
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get(LEADER_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some(leader_addr.as_str()),
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains(&format!("breaker to node {leader_id} is open")),
        "{refused:?}"
    );
    // A linearizable read through the follower needs the leader's read index: refused the
    // same way.
    let t = Instant::now();
    let read = client
        .read_stream(pb::ReadStreamRequest {
            stream: "warm".into(),
            consistency: pb::Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await
        .expect_err("no read index while the breaker is open");
    println!(
        "breaker open: linearizable read through the follower failed in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");
    assert_eq!(
        read.metadata()
            .get(LEADER_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some(leader_addr.as_str()),
        "{read:?}"
    );
    let refusals = metric(
        &c.nodes[f],
        &format!("aether_breaker_refused_total{{peer=\"{leader_id}\"}} "),
    )
    .await;
    assert!(refusals.is_some_and(|n| n >= 2.0), "{refusals:?}");
    assert_eq!(
        c.try_status(f).await.expect("status").leader_id,
        Some(leader_id),
        "the follower still follows the stopped leader (no election yet)"
    );

    c.nodes[leader].resume();
    // After its reset timeout the breaker lets probes through; once they pass it closes and
    // appends through the follower succeed again.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = client
            .append(append_req("after", None, vec![new_event("After", "{}")]))
            .await;
        if r.is_ok() && breaker_state(&c.nodes[f], leader_id).await == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in stuck {
        // Answered once the leader continued (written, or refused as late).
        let _ = s.await;
    }

    // The transitions (open, half-open, closed) are telemetry points of the leader's series,
    // written through Raft once a leader was reachable again.
    let series = format!("aether/breaker/{leader_id}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let to = (wall_ns() + 60_000_000_000).to_string();
        let out = c.nodes[f].ctl(&[
            "--output",
            "json",
            "telemetry",
            "query",
            &series,
            "--from",
            &started_ns.to_string(),
            "--to",
            &to,
            "--tier",
            "raw",
            "--points",
            "10",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["summary"].clone());
        // An open point (2) and a closed one (0), whatever flapping came between.
        if let Some(s) = summary.filter(|s| {
            s["count"].as_u64().unwrap_or(0) >= 3
                && s["max"].as_f64() == Some(2.0)
                && s["min"].as_f64() == Some(0.0)
        }) {
            println!("telemetry {series}: {s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transitions never readable as {series}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Acks = Arc<Mutex<Vec<(String, u64, Instant, Instant)>>>;

/// Issue 11, 4: the fail-over figure. While appends arrive at every node (a new one every
/// 20 ms per node, none waiting for another), the leader is SIGSTOPped; printed: the time
/// from the stop to the first acknowledged append sent after it. Asserted: acks resume, and
/// every acknowledged append is stored, once, where it was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_time_after_a_leader_stops_under_load() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let mut clients = Vec::new();
    for n in &c.nodes {
        clients.push(client_with_timeout(&n.grpc_addr, Duration::from_secs(20)).await);
    }
    let acks: Acks = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut generators = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let (acks, running) = (acks.clone(), running.clone());
        generators.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u64;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let (mut cl, acks) = (client.clone(), acks.clone());
                let ev = new_event("Tick", &format!("{{\"node\":{i},\"n\":{n}}}"));
                let stream = format!("fo-{i}-{n}");
                n += 1;
                sent.push(tokio::spawn(async move {
                    let at = Instant::now();
                    let id = ev.event_id.clone();
                    if let Ok(r) = cl.append(append_req(&stream, None, vec![ev])).await {
                        let r = r.into_inner();
                        acks.lock().unwrap().push((
                            id,
                            r.first_global_position,
                            at,
                            Instant::now(),
                        ));
                    }
                }));
            }
            for s in sent {
                let _ = s.await;
            }
        }));
    }
    // (first ack, acks) of the appends sent after `after`.
    let count = |after: Instant| {
        let acks = acks.lock().unwrap();
        let later: Vec<Instant> = acks.iter().filter(|a| a.2 > after).map(|a| a.3).collect();
        later.iter().min().map(|first| (*first, later.len()))
    };
    let deadline = Instant::now() + DEADLINE;
    while acks.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "no load acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopped = Instant::now();
    c.nodes[leader].pause();
    let rest: Vec<usize> = c.all().into_iter().filter(|i| *i != leader).collect();
    let resumed = async {
        let deadline = Instant::now() + DEADLINE;
        loop {
            // The first ack of an append sent after the stop: only a new leader can commit
            // it (while the old one is stopped).
            if let Some((first, n)) = count(stopped) {
                if n >= 50 {
                    return first;
                }
            }
            assert!(
                Instant::now() < deadline,
                "acks never resumed after the leader stopped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let elected = async {
        let l = c.wait_leader(&rest).await;
        (l, Instant::now())
    };
    let (first, (new_leader, agreed)) = tokio::join!(resumed, elected);
    println!(
        "failover: first ack {} ms after SIGSTOP of node {} (new leader node {} seen by both \
         followers after {} ms; election timeout 500-1000 ms; issue's target: acks within the \
         election timeout + 200 ms)",
        first.duration_since(stopped).as_millis(),
        c.nodes[leader].id,
        c.nodes[new_leader].id,
        agreed.duration_since(stopped).as_millis(),
    );

    running.store(false, std::sync::atomic::Ordering::Relaxed);
    c.nodes[leader].resume();
    for g in generators {
        g.await.expect("load generator");
    }
    c.wait_converged(&c.all()).await;
    let acked: Vec<(String, u64)> = acks
        .lock()
        .unwrap()
        .iter()
        .map(|a| (a.0.clone(), a.1))
        .collect();
    let nodes: Vec<&TestNode> = c.nodes.iter().collect();
    let stored = check_logs(&nodes, &acked).await;
    // check_logs fails if an acknowledged append is missing or stored twice.
    println!(
        "failover: {} appends acknowledged, {stored} events stored (unacknowledged ones may be stored too)",
        acked.len()
    );
}
