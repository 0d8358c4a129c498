//! The cluster clock: the time a leader stamps into log entries, checked against a majority
//! of the voters' clocks.
//!
//! The state machine takes time from the entry, never from the applying node (so replicas
//! agree), and never lets it go backwards. That makes the leader's wall clock the cluster's
//! time: one leader whose clock runs a year ahead would expire every idempotency record and
//! jump every telemetry cutoff for good. A per-entry clamp inside the state machine cannot
//! tell such a clock from a cluster that was idle or down for a year — it has no reference —
//! so the reference is the cluster itself: the leader measures every voter's clock
//! (`raft.v1.Clock`, round-trip corrected) and stamps its own clock moved by the *median*
//! offset over itself and the voters measured in the last few seconds. One wrong clock,
//! the leader's included, is outvoted; a commit needs a majority of voters anyway, so a
//! leader that cannot measure a majority could not commit either, and it waits for a fresh
//! measurement rather than stamping its own clock unchecked. A single-node cluster has no
//! reference: there the stamp is the node's own clock.
//!
//! The skew of this node's clock from the majority is a metric and a loud warning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::NodeId;

/// A peer's offset is trusted this long after it was measured.
pub const OFFSET_FRESH_FOR: Duration = Duration::from_secs(5);
/// How often a leader measures its voters' clocks.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Skew from the majority beyond which a node warns (at most once a minute).
pub const WARN_SKEW_NS: i64 = 1_000_000_000;
const WARN_EVERY: Duration = Duration::from_secs(60);

/// This node's wall clock, ns since the Unix epoch.
pub fn system_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The lower median of `offsets` (with this node's own 0 among them): with an even count the
/// earlier of the two middle clocks wins, as a clock that runs ahead does the lasting harm.
pub fn median_offset(mut offsets: Vec<i64>) -> i64 {
    offsets.sort_unstable();
    offsets
        .get(offsets.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// The offset of a peer's clock from ours, from one probe: our clock read when the probe was
/// sent, the round trip, and the peer's clock in its answer (taken, we assume, half-way).
pub fn probe_offset(sent_at_ns: i64, round_trip: Duration, peer_ns: i64) -> i64 {
    let half = i64::try_from(round_trip.as_nanos() / 2).unwrap_or(i64::MAX);
    peer_ns.saturating_sub(sent_at_ns.saturating_add(half))
}

#[derive(Debug)]
pub struct ClusterClock {
    me: NodeId,
    /// Fault injection for tests: shifts this node's wall clock (0 in production).
    injected_offset_ns: i64,
    /// Peer → (its clock minus ours, when measured).
    offsets: Mutex<HashMap<NodeId, (i64, Instant)>>,
    /// Our clock minus the majority's at the last stamp, for metrics.
    skew_ns: AtomicI64,
    last_warning: Mutex<Option<Instant>>,
}

impl ClusterClock {
    pub fn new(me: NodeId, injected_offset_ns: i64) -> ClusterClock {
        ClusterClock {
            me,
            injected_offset_ns,
            offsets: Mutex::new(HashMap::new()),
            skew_ns: AtomicI64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// This node's own wall clock (what it answers to `raft.v1.Clock`).
    pub fn local_now_ns(&self) -> i64 {
        system_now_ns().saturating_add(self.injected_offset_ns)
    }

    /// Records one measurement of a peer's clock.
    pub fn record(&self, peer: NodeId, offset_ns: i64) {
        self.offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, (offset_ns, Instant::now()));
    }

    /// The majority's time for a cluster of `voters`, or `None` while fewer than a majority
    /// of them (this node counted if it votes) have a fresh measurement.
    pub fn cluster_now_ns(&self, voters: &[NodeId]) -> Option<i64> {
        let local = self.local_now_ns();
        let fresh: Vec<i64> = {
            let offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
            voters
                .iter()
                .filter_map(|v| {
                    if *v == self.me {
                        return Some(0);
                    }
                    offsets
                        .get(v)
                        .filter(|(_, at)| at.elapsed() <= OFFSET_FRESH_FOR)
                        .map(|(o, _)| *o)
                })
                .collect()
        };
        // Not a voter (a learner never stamps), or nobody to compare with: own clock.
        if voters.is_empty() || (voters.len() == 1 && voters[0] == self.me) {
            self.skew_ns.store(0, Ordering::Relaxed);
            return Some(local);
        }
        if fresh.len() < voters.len() / 2 + 1 {
            return None;
        }
        let offset = median_offset(fresh);
        let skew = offset.saturating_neg();
        self.skew_ns.store(skew, Ordering::Relaxed);
        if skew.saturating_abs() > WARN_SKEW_NS {
            self.warn(skew);
        }
        Some(local.saturating_add(offset))
    }

    /// This node's clock minus the majority's, as of the last stamp.
    pub fn skew_ns(&self) -> i64 {
        self.skew_ns.load(Ordering::Relaxed)
    }

    fn warn(&self, skew_ns: i64) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        tracing::error!(
            skew_secs = skew_ns as f64 / 1e9,
            "this node's wall clock is {:.3} s off the majority of the voters': commit times \
             follow the majority; fix this machine's time synchronization",
            skew_ns as f64 / 1e9
        );
    }
}

/// While this node leads, measures every other voter's clock each [`PROBE_INTERVAL`] (all
/// at once, each bounded by the interval). Runs until the Raft instance shuts down.
pub async fn run_probes(
    raft: super::Raft,
    clock: std::sync::Arc<ClusterClock>,
    network: super::network::NetworkFactory,
) {
    let mut metrics = raft.metrics();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new leader measures at once: its first stamp waits for a majority.
                let leads = metrics.borrow().state == openraft::ServerState::Leader;
                let became = leads && !was_leader;
                was_leader = leads;
                if !became {
                    continue;
                }
            }
        }
        let peers: Vec<(NodeId, super::NodeInfo)> = {
            let m = metrics.borrow_and_update();
            was_leader = m.state == openraft::ServerState::Leader;
            if !was_leader {
                if m.running_state.is_err() {
                    return;
                }
                continue;
            }
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .filter(|id| *id != clock.me)
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
                .collect()
        };
        let probes = peers.into_iter().map(|(id, node)| {
            let clock = clock.clone();
            let network = network.clone();
            async move {
                match probe(&network, &clock, id, &node).await {
                    Ok((sent_at, rtt, peer_ns)) => {
                        clock.record(id, probe_offset(sent_at, rtt, peer_ns))
                    }
                    // A member on an older version, during a rolling upgrade: it cannot be
                    // measured, and counts as agreeing, so that writes go on.
                    Err(ProbeError::Unsupported) => clock.record(id, 0),
                    Err(ProbeError::Failed(e)) => {
                        tracing::debug!("clock probe of node {id}: {e}")
                    }
                }
            }
        });
        futures::future::join_all(probes).await;
    }
}

enum ProbeError {
    /// The peer does not know `raft.v1.Clock`.
    Unsupported,
    Failed(String),
}

/// One `raft.v1.Clock` call: (our clock when sent, round trip, the peer's clock).
async fn probe(
    network: &super::network::NetworkFactory,
    clock: &ClusterClock,
    id: NodeId,
    node: &super::NodeInfo,
) -> Result<(i64, Duration, i64), ProbeError> {
    let failed = ProbeError::Failed;
    use crate::proto::raft::v1::{raft_client::RaftClient, RaftMessage};
    let channel = network
        .channel(&node.grpc_addr)
        .map_err(|e| failed(format!("address {}: {e}", node.grpc_addr)))?;
    let mut req = tonic::Request::new(RaftMessage::default());
    req.set_timeout(PROBE_INTERVAL);
    let target = format!("{id}:{}", node.incarnation)
        .parse()
        .map_err(|_| failed("incarnation is not a header value".to_owned()))?;
    req.metadata_mut()
        .insert(super::network::TARGET_HEADER, target);
    let sent_at = clock.local_now_ns();
    let started = Instant::now();
    let reply = RaftClient::new(channel)
        .clock(req)
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unimplemented => ProbeError::Unsupported,
            code => failed(format!("{code}: {}", s.message())),
        })?;
    let rtt = started.elapsed();
    let peer_ns: i64 = postcard::from_bytes(&reply.get_ref().body)
        .map_err(|e| failed(format!("bad reply: {e}")))?;
    Ok((sent_at, rtt, peer_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: i64 = 365 * 24 * 3600 * 1_000_000_000;

    #[test]
    fn the_median_outvotes_one_wrong_clock() {
        // (offsets of the voters' clocks from this node's, self first) → the offset used.
        let cases: &[(&[i64], i64)] = &[
            (&[0], 0),
            (&[0, -YEAR, -YEAR], -YEAR), // this leader runs a year ahead
            (&[0, YEAR, 3], 3),          // one follower runs ahead
            (&[0, -5, 7], 0),
            (&[0, -YEAR], -YEAR), // two voters: the earlier clock wins
            (&[0, YEAR], 0),
            (&[0, 1, 2, YEAR, YEAR], 2),
        ];
        for (offsets, want) in cases {
            assert_eq!(median_offset(offsets.to_vec()), *want, "{offsets:?}");
        }
    }

    #[test]
    fn a_probe_is_corrected_by_half_the_round_trip() {
        assert_eq!(probe_offset(1_000, Duration::from_nanos(200), 1_100), 0);
        assert_eq!(probe_offset(1_000, Duration::from_nanos(0), 900), -100);
        assert_eq!(probe_offset(i64::MAX, Duration::from_secs(1), 0), -i64::MAX);
    }

    #[test]
    fn a_leader_stamps_only_with_a_fresh_majority() {
        let clock = ClusterClock::new(1, YEAR);
        assert!(clock.cluster_now_ns(&[1]).is_some(), "alone: own clock");
        assert_eq!(clock.cluster_now_ns(&[1, 2, 3]), None, "no measurement yet");
        clock.record(2, -YEAR);
        let now = clock.cluster_now_ns(&[1, 2, 3]).expect("self and one peer");
        // Self (0) and peer 2 (-YEAR): the lower median is the peer's clock.
        assert!((now - system_now_ns()).abs() < 60_000_000_000, "{now}");
        assert_eq!(clock.skew_ns(), YEAR);
        clock.record(3, -YEAR + 10);
        let now = clock.cluster_now_ns(&[1, 2, 3]).unwrap();
        assert!((now - system_now_ns()).abs() < 60_000_000_000);
    }
}
