//! The cluster clock: the time a leader stamps into log entries, checked against a majority
//! of the voters' clocks.
//!
//! The state machine takes time from the entry, never from the applying node (so replicas
//! agree), and never lets it go backwards. That makes the leader's wall clock the cluster's
//! time: one leader whose clock runs a year ahead would expire every idempotency record and
//! jump every telemetry cutoff for good. A per-entry clamp inside the state machine cannot
//! tell such a clock from a cluster that was idle or down for a year — it has no reference —
//! so the reference is the cluster itself. The leader reads every voter's clock
//! (`raft.v1.Clock`, taken at the round trip's midpoint) and carries each reading forward on
//! its own *monotonic* clock; the stamp is the median of those voters' clocks and its own.
//! One wrong clock is outvoted — the leader's own included, also when it jumps between two
//! readings. Where the votes do not settle it (an even number of fresh readings whose middle
//! two disagree, or members too old to answer), the leader falls back to advancing time at
//! the rate of its monotonic clock from its last stamp (or the last commit time): never a
//! jump, at worst a lag. A leader that has neither a majority of readings nor such a
//! fallback waits for readings (a commit needs that majority anyway). A single-node cluster
//! has no reference: there the stamp is the node's own clock.
//!
//! The skew of this node's clock from the stamp is a metric and a loud warning.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::NodeId;

/// A peer's reading is trusted this long after it was taken.
pub const READING_FRESH_FOR: Duration = Duration::from_secs(5);
/// How often a leader reads its voters' clocks.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The two middle clocks of an even vote must agree this closely to settle it.
pub const AGREE_NS: i64 = 1_000_000_000;
/// Skew from the stamp beyond which a node warns (at most once a minute).
pub const WARN_SKEW_NS: i64 = 1_000_000_000;
const WARN_EVERY: Duration = Duration::from_secs(60);

/// This node's wall clock, ns since the Unix epoch.
pub fn system_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The time a majority of `clocks` vouches for: the median of an odd count; of an even count
/// the earlier middle clock, if the two middle ones agree within [`AGREE_NS`]. `None`: the
/// vote does not settle it.
pub fn majority_time(mut clocks: Vec<i64>) -> Option<i64> {
    clocks.sort_unstable();
    let n = clocks.len();
    if n == 0 {
        return None;
    }
    if n % 2 == 1 {
        return Some(clocks[n / 2]);
    }
    let (a, b) = (clocks[n / 2 - 1], clocks[n / 2]);
    (b.saturating_sub(a) <= AGREE_NS).then_some(a)
}

/// One reading of a peer's clock.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// The peer's clock at `at` (our monotonic clock at the probe's midpoint), and the
    /// newest apply rules its code knows.
    Clock {
        peer_ns: i64,
        at: Instant,
        rules_version: u32,
    },
    /// The peer does not know `raft.v1.Clock` (an older version, in a rolling upgrade).
    Unsupported { at: Instant },
}

impl Reading {
    fn at(&self) -> Instant {
        match self {
            Reading::Clock { at, .. } | Reading::Unsupported { at } => *at,
        }
    }
}

#[derive(Debug)]
pub struct ClusterClock {
    me: NodeId,
    /// Fault injection for tests: shifts this node's wall clock (0 in production).
    injected_offset_ns: AtomicI64,
    readings: Mutex<HashMap<NodeId, Reading>>,
    /// The last stamp given, and when (monotonic): the fallback advances from it.
    anchor: Mutex<Option<(i64, Instant)>>,
    /// Our clock minus the stamp, for metrics.
    skew_ns: AtomicI64,
    last_warning: Mutex<Option<Instant>>,
}

impl ClusterClock {
    pub fn new(me: NodeId, injected_offset_ns: i64) -> ClusterClock {
        ClusterClock {
            me,
            injected_offset_ns: AtomicI64::new(injected_offset_ns),
            readings: Mutex::new(HashMap::new()),
            anchor: Mutex::new(None),
            skew_ns: AtomicI64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// This node's own wall clock (what it answers to `raft.v1.Clock`).
    pub fn local_now_ns(&self) -> i64 {
        system_now_ns().saturating_add(self.injected_offset_ns.load(Ordering::Relaxed))
    }

    /// Fault injection: moves this node's wall clock (tests of clock jumps).
    pub fn set_injected_offset_ns(&self, offset_ns: i64) {
        self.injected_offset_ns.store(offset_ns, Ordering::Relaxed);
    }

    /// Records a reading of a peer's clock, taken at `at` (the probe's midpoint), from a
    /// peer whose code knows apply rules up to `rules_version`.
    pub fn record(&self, peer: NodeId, peer_ns: i64, at: Instant, rules_version: u32) {
        self.readings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                peer,
                Reading::Clock {
                    peer_ns,
                    at,
                    rules_version,
                },
            );
    }

    /// Records that a peer cannot be read (it does not know `raft.v1.Clock`).
    pub fn record_unsupported(&self, peer: NodeId) {
        self.readings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Reading::Unsupported { at: Instant::now() });
    }

    /// Whether every voter but this node answered a clock probe lately from code that knows
    /// apply rules `version` (what adopting those rules waits for).
    pub fn all_voters_know(&self, voters: &[NodeId], version: u32) -> bool {
        let readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        voters.iter().filter(|v| **v != self.me).all(|v| {
            matches!(readings.get(v), Some(r @ Reading::Clock { rules_version, .. })
                if *rules_version >= version && r.at().elapsed() <= READING_FRESH_FOR)
        })
    }

    /// The time to stamp for a cluster of `voters` whose last commit time is
    /// `last_commit_ns`; `None` while neither a majority of readings nor the fallback can
    /// decide (see the module's documentation).
    pub fn stamp_ns(&self, voters: &[NodeId], last_commit_ns: i64) -> Option<i64> {
        let local = self.local_now_ns();
        if voters.iter().all(|v| *v == self.me) {
            // Alone (or not a voter, which never stamps): nothing to compare with.
            return Some(self.stamped(local, local));
        }
        let majority = voters.len() / 2 + 1;
        let (clocks, unsupported) = {
            let readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
            let mut clocks = Vec::with_capacity(voters.len());
            let mut unsupported = 0;
            for v in voters {
                if *v == self.me {
                    clocks.push(local);
                    continue;
                }
                match readings
                    .get(v)
                    .filter(|r| r.at().elapsed() <= READING_FRESH_FOR)
                {
                    // The reading carried forward on our monotonic clock.
                    Some(Reading::Clock { peer_ns, at, .. }) => {
                        clocks.push(peer_ns.saturating_add(nanos(at.elapsed())))
                    }
                    Some(Reading::Unsupported { .. }) => unsupported += 1,
                    None => {}
                }
            }
            (clocks, unsupported)
        };
        let readable = clocks.len();
        let decided = if readable >= majority {
            majority_time(clocks)
        } else {
            None
        };
        match decided {
            Some(t) => Some(self.stamped(t, local)),
            None if readable + unsupported >= majority => {
                Some(self.stamped(self.fallback(local, last_commit_ns), local))
            }
            None => None,
        }
    }

    /// Time advanced on the monotonic clock from the last stamp (or `last_commit_ns`), and
    /// never past this node's own clock.
    fn fallback(&self, local: i64, last_commit_ns: i64) -> i64 {
        let anchor = *self.anchor.lock().unwrap_or_else(|p| p.into_inner());
        let from = match anchor {
            Some((stamp, at)) if stamp >= last_commit_ns => {
                stamp.saturating_add(nanos(at.elapsed()))
            }
            _ => last_commit_ns,
        };
        from.min(local)
    }

    /// Records `stamp` as given, updates the skew, and returns it.
    fn stamped(&self, stamp: i64, local: i64) -> i64 {
        *self.anchor.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, Instant::now()));
        let skew = local.saturating_sub(stamp);
        self.skew_ns.store(skew, Ordering::Relaxed);
        if skew.saturating_abs() > WARN_SKEW_NS {
            self.warn(skew);
        }
        stamp
    }

    /// This node's clock minus the last stamp it gave.
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
            "this node's wall clock is {:.3} s off the time the voters agree on: commit times \
             follow the voters; fix this machine's time synchronization",
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
                match probe(&network, id, &node).await {
                    Ok((reply, at)) => clock.record(id, reply.now_ns, at, reply.rules_version),
                    // A member on an older version, during a rolling upgrade: it cannot be
                    // read; the leader falls back to its monotonic clock (see `stamp_ns`).
                    Err(ProbeError::Unsupported) => clock.record_unsupported(id),
                    Err(ProbeError::Failed(e)) => {
                        tracing::debug!("clock probe of node {id}: {e}")
                    }
                }
            }
        });
        futures::future::join_all(probes).await;
    }
}

/// The apply rules member `id` runs code for, asked now (`raft.v1.Clock`): a member that
/// does not know the RPC runs code older than rules 2.
pub async fn rules_known_by(
    network: &super::network::NetworkFactory,
    id: NodeId,
    node: &super::NodeInfo,
) -> Result<u32, String> {
    match probe(network, id, node).await {
        Ok((reply, _)) => Ok(reply.rules_version),
        Err(ProbeError::Unsupported) => Ok(1),
        Err(ProbeError::Failed(e)) => Err(format!(
            "node {id} at {} did not say which rules it knows: {e}",
            node.grpc_addr
        )),
    }
}

/// Checks, with a fresh probe of each, that every member but `me` (voters and learners)
/// runs code that knows apply rules `version`: what adopting them waits for, since a
/// member that cannot apply an entry must never be asked to.
pub async fn all_members_know(
    network: &super::network::NetworkFactory,
    me: NodeId,
    members: &[(NodeId, super::NodeInfo)],
    version: u32,
) -> Result<(), String> {
    let asks = members
        .iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, node)| async move { (*id, rules_known_by(network, *id, node).await) });
    for (id, known) in futures::future::join_all(asks).await {
        let known = known?;
        if known < version {
            return Err(format!(
                "node {id} runs code that knows apply rules up to {known}, not {version}"
            ));
        }
    }
    Ok(())
}

/// A member's answer to `raft.v1.Clock`: its wall clock, and the newest apply rules its
/// code knows (so a leader adopts new rules only once every voter can apply them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockReply {
    pub now_ns: i64,
    pub rules_version: u32,
}

impl ClockReply {
    /// Rules version 2 introduced `raft.v1.Clock`, whose first replies carried the clock
    /// alone.
    const BARE_CLOCK_RULES: u32 = 2;

    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        // Fields in order: a member on older code reads the clock and ignores the rest.
        postcard::to_allocvec(self)
    }

    pub fn decode(body: &[u8]) -> Result<ClockReply, postcard::Error> {
        postcard::from_bytes(body).or_else(|_| {
            postcard::from_bytes::<i64>(body).map(|now_ns| ClockReply {
                now_ns,
                rules_version: Self::BARE_CLOCK_RULES,
            })
        })
    }
}

enum ProbeError {
    /// The peer does not know `raft.v1.Clock`.
    Unsupported,
    Failed(String),
}

/// One `raft.v1.Clock` call: the peer's clock, and the (monotonic) midpoint of the round
/// trip, when it is taken to have been read.
async fn probe(
    network: &super::network::NetworkFactory,
    id: NodeId,
    node: &super::NodeInfo,
) -> Result<(ClockReply, Instant), ProbeError> {
    let failed = ProbeError::Failed;
    let started = Instant::now();
    let reply = network
        .peer(id, node)
        .call(
            super::network::PeerRpc::Clock,
            bytes::Bytes::new(),
            PROBE_INTERVAL,
        )
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unimplemented => ProbeError::Unsupported,
            code => failed(format!("{code}: {}", s.message())),
        })?;
    let midpoint = started + started.elapsed() / 2;
    let reply = ClockReply::decode(&reply).map_err(|e| failed(format!("bad reply: {e}")))?;
    Ok((reply, midpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: i64 = 365 * 24 * 3600 * 1_000_000_000;
    const MINUTE: i64 = 60_000_000_000;

    fn near_real(t: i64) -> bool {
        (t - system_now_ns()).abs() < MINUTE
    }

    #[test]
    fn the_majority_outvotes_one_wrong_clock() {
        // (the voters' clocks) → the time they vouch for.
        let cases: &[(&[i64], Option<i64>)] = &[
            (&[5], Some(5)),
            (&[YEAR, 0, 0], Some(0)), // the leader runs a year ahead
            (&[0, YEAR, 3], Some(3)),
            (&[0, -5, 7], Some(0)),
            (&[0, 300_000_000], Some(0)), // two that agree: the earlier
            (&[0, YEAR], None),           // two that disagree settle nothing
            (&[0, -YEAR], None),
            (&[0, 1, 2, YEAR], Some(1)),
            (&[0, 1, 2, YEAR, YEAR], Some(2)),
            (&[], None),
        ];
        for (clocks, want) in cases {
            assert_eq!(majority_time(clocks.to_vec()), *want, "{clocks:?}");
        }
    }

    #[test]
    fn a_leader_stamps_only_with_a_majority_and_its_own_clock_is_one_vote() {
        let alone = ClusterClock::new(1, YEAR);
        assert!(
            !near_real(alone.stamp_ns(&[1], 0).unwrap()),
            "alone: own clock"
        );
        let clock = ClusterClock::new(1, YEAR);
        assert_eq!(clock.stamp_ns(&[1, 2, 3], 0), None, "no reading yet");
        clock.record(2, system_now_ns(), Instant::now(), 2);
        // Self (a year ahead) and one peer disagree: the fallback, from the last commit time.
        let last = system_now_ns() - MINUTE / 2;
        let t = clock.stamp_ns(&[1, 2, 3], last).unwrap();
        assert!(t >= last && near_real(t), "{t}");
        clock.record(3, system_now_ns(), Instant::now(), 2);
        let t = clock.stamp_ns(&[1, 2, 3], last).unwrap();
        assert!(near_real(t), "two peers outvote the leader");
        assert!((clock.skew_ns() - YEAR).abs() < MINUTE);
    }

    #[test]
    fn a_jump_of_the_leaders_clock_after_its_readings_is_outvoted() {
        let clock = ClusterClock::new(1, 0);
        clock.record(2, system_now_ns(), Instant::now(), 2);
        clock.record(3, system_now_ns(), Instant::now(), 2);
        assert!(near_real(clock.stamp_ns(&[1, 2, 3], 0).unwrap()));
        clock.set_injected_offset_ns(YEAR);
        let t = clock.stamp_ns(&[1, 2, 3], 0).unwrap();
        assert!(near_real(t), "the readings carried forward decide: {t}");
    }

    #[test]
    fn members_that_cannot_be_read_make_time_advance_monotonically_not_jump() {
        let clock = ClusterClock::new(1, YEAR);
        clock.record_unsupported(2);
        clock.record_unsupported(3);
        let last = system_now_ns();
        let first = clock.stamp_ns(&[1, 2, 3], last).unwrap();
        assert_eq!(first, last, "no jump: the last commit time");
        std::thread::sleep(Duration::from_millis(20));
        let second = clock.stamp_ns(&[1, 2, 3], last).unwrap();
        assert!(
            second > first && near_real(second),
            "advances on the monotonic clock"
        );
    }

    #[test]
    fn clock_replies_read_across_versions() {
        let new = ClockReply {
            now_ns: 1_700_000_000_000_000_000,
            rules_version: 3,
        };
        let bytes = new.encode().unwrap();
        assert_eq!(ClockReply::decode(&bytes).unwrap(), new);
        // Older code reads the clock off a newer reply.
        assert_eq!(postcard::from_bytes::<i64>(&bytes).unwrap(), new.now_ns);
        // A reply from older code: the clock alone, rules version 2.
        let old = postcard::to_allocvec(&new.now_ns).unwrap();
        assert_eq!(
            ClockReply::decode(&old).unwrap(),
            ClockReply {
                now_ns: new.now_ns,
                rules_version: 2
            }
        );
        assert!(ClockReply::decode(&[]).is_err());
    }

    #[test]
    fn rules_are_known_once_every_other_voter_answered_with_them() {
        let clock = ClusterClock::new(1, 0);
        assert!(clock.all_voters_know(&[1], 3), "alone");
        assert!(!clock.all_voters_know(&[1, 2, 3], 3), "no readings");
        clock.record(2, system_now_ns(), Instant::now(), 3);
        clock.record_unsupported(3);
        assert!(!clock.all_voters_know(&[1, 2, 3], 2), "3 has no clock RPC");
        clock.record(3, system_now_ns(), Instant::now(), 2);
        assert!(clock.all_voters_know(&[1, 2, 3], 2));
        assert!(
            !clock.all_voters_know(&[1, 2, 3], 3),
            "3 knows rules 2 only"
        );
        clock.record(3, system_now_ns(), Instant::now(), 3);
        assert!(clock.all_voters_know(&[1, 2, 3], 3));
    }
}
