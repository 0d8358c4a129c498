//! Replication of large entries on real processes: a follower that fell behind by many
//! large entries catches up (issue 9, point 9a).
//!
//! openraft 0.9 shrinks an AppendEntries batch only when the network answers
//! `PayloadTooLarge`; any other error makes it send the same range again. A follower behind
//! by more bytes than one message may carry would otherwise be sent the same oversized
//! batch forever.

mod common;

use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::*;

/// Catching up 800 MB through two proxies on a loaded 2-core machine takes a while.
const CATCH_UP: Duration = Duration::from_secs(300);

/// An event of about 1 MB (under the default 1 MiB event limit, so four fit one append).
fn big_event(i: usize, j: usize) -> aetherops::proto::aetherops::v1::NewEvent {
    let mut e = new_event("Blob", "");
    let mut payload = vec![b'x'; 1_000_000];
    payload[..16].copy_from_slice(format!("{i:08}-{j:07}").as_bytes());
    e.payload = payload.into();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_by_large_entries_catches_up() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(&c.all()).await;
    let lagging = (leader + 1) % 3;
    c.nodes[lagging].kill9();

    // 200 appends of 4 x 1 MB while the follower is down: ~800 MB of log it lacks, far more
    // than one Raft message may carry (MAX_RAFT_MESSAGE_BYTES = 256 MiB).
    let mut appender = RetryingAppender::new(vec![c.nodes[leader].grpc_addr.clone()]);
    const APPENDS: usize = 200;
    for i in 0..APPENDS {
        let events = (0..4).map(|j| big_event(i, j)).collect();
        appender.append(append_req("blobs", None, events)).await;
    }
    let target = c.nodes[leader]
        .status()
        .await
        .applied_index
        .expect("leader applied");

    c.nodes[lagging].restart();
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let applied = c
            .try_status(lagging)
            .await
            .ok()
            .and_then(|s| s.applied_index);
        if applied.is_some_and(|a| a >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lagging follower stayed at applied index {applied:?}, the leader is at \
             {target}:\n{}",
            c.nodes[leader].log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = c.wait_converged(&c.all()).await;
    assert_eq!(s.event_count, 4 * APPENDS as u64);
}
