//! Circuit breakers on this node's client-serving calls to its peers: a follower's batches
//! proposed to the leader (`Propose`) and its read barriers (`ReadIndex`). One breaker per
//! peer node id ([`crate::guard::CircuitBreaker`], the pure core), shared by every
//! [`Peer`](super::network::Peer) value of that node, so that a follower whose leader stopped
//! answering fails its clients at once (`UNAVAILABLE`, nothing sent) instead of holding each
//! request until its deadline — and a new leader, another id, has a breaker of its own.
//!
//! openraft's own RPCs (AppendEntries, Vote, InstallSnapshot) and the leader's clock probes
//! never pass a breaker: openraft retries and backs off on its own, and a breaker that
//! refused Vote or AppendEntries for its reset timeout could hold up an election or a
//! leader's heartbeats — exactly when the cluster needs them.
//!
//! What counts as a failure ([`is_failure`]): a transport failure (the status carries a
//! local source error), `UNAVAILABLE` and `DEADLINE_EXCEEDED`; answers such as "not the
//! leader" or `INVALID_ARGUMENT` are the peer doing its job. A call still unanswered after
//! `slow_call` counts as a (slow) failure *at that moment*: a stopped process never answers,
//! and waiting for the call's deadline (seconds) would let the breaker open only after the
//! cluster had long elected another leader. The call itself goes on until its deadline; its
//! late outcome is not counted twice.
//!
//! Each call is admitted in an epoch (the breaker's transitions so far) and its outcome is
//! recorded only in that same epoch: a call admitted while closed that ends after the
//! breaker opened and half-opened must not be taken for one of the probes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::guard::{BreakerPolicy, CircuitBreaker, FailureDetector, GrpcCodes, State, Transition};

use super::NodeId;

/// Breakers at most (one per peer node id ever called; a cluster is far smaller).
pub const MAX_PEERS: usize = 1024;

/// gRPC codes that say the peer could not take a call: DEADLINE_EXCEEDED (4), UNAVAILABLE (14).
const FAILURE_CODES: [i32; 2] = [4, 14];

/// What a node does with its breakers' transitions and refusals (metrics, logs, telemetry);
/// implemented by the node, so that this module needs nothing above `raft`.
pub trait BreakerEvents: Send + Sync {
    fn transition(&self, peer: NodeId, t: &Transition);
    fn refused(&self, peer: NodeId);
}

/// Ignores every event (tools and tests that need no observer).
pub struct NoEvents;

impl BreakerEvents for NoEvents {
    fn transition(&self, _: NodeId, _: &Transition) {}
    fn refused(&self, _: NodeId) {}
}

/// A call refused by the breaker to `peer`: nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the circuit breaker to node {peer} is {} after failed or unanswered calls; nothing was \
     sent (it lets a probe through {reset_ms} ms after it opened)",
    state_word(*.state)
)]
pub struct BreakerOpen {
    pub peer: NodeId,
    pub state: State,
    pub reset_ms: u64,
}

fn state_word(s: State) -> &'static str {
    match s {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half-open (its probes are out)",
        State::ForcedOpen => "held open by an operator",
        State::ForcedClosed => "held closed by an operator",
    }
}

/// The state as a number, for the gauge and the telemetry series: 0 closed, 1 half-open,
/// 2 open. Forced states count as what they do (no command forces a peer's breaker yet).
pub fn state_code(s: State) -> u8 {
    match s {
        State::Closed | State::ForcedClosed => 0,
        State::HalfOpen => 1,
        State::Open | State::ForcedOpen => 2,
    }
}

/// The refusal a status carries, if the breaker refused the call.
pub fn refusal(s: &tonic::Status) -> Option<&BreakerOpen> {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if let Some(open) = e.downcast_ref::<BreakerOpen>() {
            return Some(open);
        }
        source = e.source();
    }
    None
}

/// Whether a failed call counts against the peer (see the module doc).
pub fn is_failure(s: &tonic::Status) -> bool {
    let transport = std::error::Error::source(s).is_some();
    transport || detector().is_failure(&(s.code() as i32))
}

fn detector() -> GrpcCodes {
    GrpcCodes::new(&FAILURE_CODES).unwrap_or_default()
}

/// Monotonic ns, anchored once at the wall clock: a breaker's timing never jumps with a
/// stepped clock (a step back would hold it open for the step), and its transitions still
/// carry wall-clock times for the telemetry series.
fn now_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    let (at, wall) = ORIGIN.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        (Instant::now(), wall)
    });
    wall.saturating_add(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

struct Entry {
    breaker: CircuitBreaker,
    /// Transitions so far: calls record only into the epoch they were admitted in.
    epoch: u64,
}

struct Inner {
    policy: BreakerPolicy,
    slow_call: Duration,
    peers: Mutex<HashMap<NodeId, Entry>>,
    events: Arc<dyn BreakerEvents>,
    /// Bumped on every transition, for waiters that act on a breaker opening.
    changed: tokio::sync::watch::Sender<u64>,
}

/// The breakers of one node, one per peer; cheap to clone (shared).
#[derive(Clone)]
pub struct PeerBreakers {
    inner: Arc<Inner>,
}

/// An admitted call: where its outcome goes.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    peer: NodeId,
    epoch: u64,
}

impl PeerBreakers {
    /// Breakers with `policy` (validated by the caller's config; an invalid one is refused
    /// here too); a call unanswered after `slow_call` counts as failed.
    pub fn new(
        policy: BreakerPolicy,
        slow_call: Duration,
        events: Arc<dyn BreakerEvents>,
    ) -> Result<PeerBreakers, crate::guard::GuardError> {
        policy.validate()?;
        Ok(PeerBreakers {
            inner: Arc::new(Inner {
                policy,
                slow_call,
                peers: Mutex::default(),
                events,
                changed: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    /// Asks the breaker to `peer` whether a call may go out now.
    pub fn admit(&self, peer: NodeId) -> Result<Ticket, BreakerOpen> {
        let now = now_ns();
        let (admitted, epoch, state, transitions) = {
            let mut peers = self.lock();
            if !peers.contains_key(&peer) && peers.len() >= MAX_PEERS {
                // Ids come from the membership; this many means a defect, and forgetting
                // a closed breaker loses only its recent window.
                peers.retain(|_, e| e.breaker.state() != State::Closed);
            }
            let entry = peers.entry(peer).or_insert_with(|| Entry {
                breaker: CircuitBreaker::new(self.inner.policy)
                    .expect("the policy was validated by PeerBreakers::new"),
                epoch: 0,
            });
            let admitted = entry.breaker.allow_request(now);
            let transitions = drain(entry);
            (admitted, entry.epoch, entry.breaker.state(), transitions)
        };
        self.publish(peer, &transitions);
        if admitted {
            Ok(Ticket { peer, epoch })
        } else {
            self.inner.events.refused(peer);
            Err(BreakerOpen {
                peer,
                state,
                reset_ms: self.inner.policy.reset_timeout_ns / 1_000_000,
            })
        }
    }

    /// Records an admitted call's outcome (ignored if the breaker moved on since).
    pub fn record(&self, ticket: Ticket, failed: bool, latency: Duration) {
        let now = now_ns();
        let latency_ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let transitions = {
            let mut peers = self.lock();
            let Some(entry) = peers.get_mut(&ticket.peer) else {
                return;
            };
            if entry.epoch != ticket.epoch {
                return;
            }
            if failed {
                entry.breaker.record_failure(now, latency_ns);
            } else {
                entry.breaker.record_success(now, latency_ns);
            }
            drain(entry)
        };
        self.publish(ticket.peer, &transitions);
    }

    /// Runs `call` to `peer` through its breaker: refused at once while it is open, else
    /// sent, and its outcome (or its slowness) recorded.
    pub async fn guard<F>(&self, peer: NodeId, call: F) -> Result<bytes::Bytes, tonic::Status>
    where
        F: std::future::Future<Output = Result<bytes::Bytes, tonic::Status>>,
    {
        let ticket = self.admit(peer).map_err(into_status)?;
        let started = Instant::now();
        let mut call = std::pin::pin!(call);
        match tokio::time::timeout(self.inner.slow_call, &mut call).await {
            Ok(result) => {
                let failed = result.as_ref().err().is_some_and(is_failure);
                self.record(ticket, failed, started.elapsed());
                result
            }
            Err(_) => {
                self.record(ticket, true, started.elapsed());
                call.await
            }
        }
    }

    /// The breaker to `peer` (closed if it was never called).
    pub fn state(&self, peer: NodeId) -> State {
        self.lock()
            .get(&peer)
            .map_or(State::Closed, |e| e.breaker.state())
    }

    /// Refuses a call to `peer` now if its breaker is not closed, without asking it for a
    /// probe: for a caller that cannot call yet (every slot is taken by calls still
    /// waiting on the peer) and must not keep its client waiting on a peer judged sick. A
    /// refusal is counted like one at [`PeerBreakers::admit`].
    pub fn refuse_unless_closed(&self, peer: NodeId) -> Option<BreakerOpen> {
        let state = self.state(peer);
        if matches!(state, State::Closed | State::ForcedClosed) {
            return None;
        }
        self.inner.events.refused(peer);
        Some(BreakerOpen {
            peer,
            state,
            reset_ms: self.inner.policy.reset_timeout_ns / 1_000_000,
        })
    }

    /// Every peer's breaker state.
    pub fn states(&self) -> Vec<(NodeId, State)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, e)| (*id, e.breaker.state()))
            .collect();
        v.sort_unstable_by_key(|(id, _)| *id);
        v
    }

    /// Changes whenever a breaker changes state.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.inner.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands transitions to the node, outside the lock.
    fn publish(&self, peer: NodeId, transitions: &[Transition]) {
        if transitions.is_empty() {
            return;
        }
        for t in transitions {
            self.inner.events.transition(peer, t);
        }
        self.inner.changed.send_modify(|n| *n += 1);
    }
}

fn drain(entry: &mut Entry) -> Vec<Transition> {
    let t: Vec<Transition> = entry.breaker.drain_transitions().collect();
    entry.epoch += t.len() as u64;
    t
}

/// A refusal as the status `Peer::call` returns: `UNAVAILABLE`, the refusal its source.
pub fn into_status(open: BreakerOpen) -> tonic::Status {
    let mut s = tonic::Status::unavailable(open.to_string());
    s.set_source(Arc::new(open));
    s
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_rate_pct: 50,
            slow_call_rate_pct: 100,
            slow_call_threshold_ns: 50_000_000,
            window_calls: 4,
            minimum_calls: 2,
            reset_timeout_ns: 3_600 * crate::guard::NANOS_PER_SEC,
            probe_count: 1,
            success_threshold: 1,
        }
    }

    #[derive(Default)]
    struct Counting {
        transitions: Mutex<Vec<(NodeId, State)>>,
        refused: AtomicUsize,
    }

    impl BreakerEvents for Counting {
        fn transition(&self, peer: NodeId, t: &Transition) {
            self.transitions.lock().unwrap().push((peer, t.to));
        }
        fn refused(&self, _: NodeId) {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Which answers count against the peer: table of (status, failure?).
    #[test]
    fn only_unreachable_or_unanswering_peers_count_as_failures() {
        let with_source = |mut s: tonic::Status| {
            s.set_source(Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )));
            s
        };
        let cases = [
            (tonic::Status::unavailable("shutting down"), true),
            (tonic::Status::deadline_exceeded("late"), true),
            (with_source(tonic::Status::unknown("h2 reset")), true),
            (
                with_source(tonic::Status::cancelled("Timeout expired")),
                true,
            ),
            (tonic::Status::invalid_argument("bad batch"), false),
            (
                tonic::Status::failed_precondition("wrong incarnation"),
                false,
            ),
            (tonic::Status::unimplemented("older leader"), false),
            (tonic::Status::resource_exhausted("queue full"), false),
            (tonic::Status::internal("encoding"), false),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(s, want)| is_failure(s) != *want)
            .map(|(s, want)| format!("{s:?}: want failure = {want}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn a_refusal_is_unavailable_and_recognizable() {
        let open = BreakerOpen {
            peer: 3,
            state: State::Open,
            reset_ms: 1000,
        };
        let s = into_status(open.clone());
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("breaker to node 3 is open"), "{s:?}");
        assert_eq!(refusal(&s), Some(&open));
        assert_eq!(refusal(&tonic::Status::unavailable("x")), None);
    }

    /// Breakers are per peer; refusals and transitions reach the node's observer.
    #[tokio::test]
    async fn each_peer_has_its_own_breaker() {
        let events = Arc::new(Counting::default());
        let b = PeerBreakers::new(policy(), Duration::from_secs(60), events.clone()).unwrap();
        for _ in 0..2 {
            let r = b
                .guard(1, async { Err(tonic::Status::unavailable("down")) })
                .await;
            assert!(r.is_err());
        }
        assert_eq!(b.state(1), State::Open);
        let refused = b.guard(1, async { Ok(bytes::Bytes::new()) }).await;
        assert!(refusal(&refused.unwrap_err()).is_some());
        assert_eq!(events.refused.load(Ordering::Relaxed), 1);
        // Another peer (a new leader) is not held back by the first one's breaker.
        assert!(b.guard(2, async { Ok(bytes::Bytes::new()) }).await.is_ok());
        assert_eq!(b.states(), vec![(1, State::Open), (2, State::Closed)]);
        assert!(b.refuse_unless_closed(2).is_none());
        assert_eq!(b.refuse_unless_closed(1).map(|o| o.peer), Some(1));
        assert_eq!(events.refused.load(Ordering::Relaxed), 2);
        assert_eq!(*events.transitions.lock().unwrap(), vec![(1, State::Open)]);
    }

    /// A call that does not answer within `slow_call` counts as failed at that moment, not
    /// at its deadline, and its late outcome is not counted again.
    #[tokio::test]
    async fn an_unanswered_call_counts_once_it_is_slow() {
        let b = PeerBreakers::new(policy(), Duration::from_millis(20), Arc::new(NoEvents)).unwrap();
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let mut changes = b.changes();
        let b2 = b.clone();
        let slow = tokio::spawn(async move {
            b2.guard(1, async {
                let _ = hold.await;
                Ok(bytes::Bytes::new())
            })
            .await
        });
        let fail = b
            .guard(1, async { Err(tonic::Status::deadline_exceeded("late")) })
            .await;
        assert!(fail.is_err());
        // The second failure (the unanswered call) opens the breaker while it still waits.
        changes.changed().await.unwrap();
        assert_eq!(b.state(1), State::Open);
        release.send(()).unwrap();
        assert!(slow.await.unwrap().is_ok(), "the call itself runs on");
        assert_eq!(b.state(1), State::Open, "its late success is not recorded");
    }

    /// An outcome from an earlier epoch is not taken for a probe's.
    #[test]
    fn outcomes_of_an_earlier_epoch_are_ignored() {
        let mut p = policy();
        p.reset_timeout_ns = 1;
        let b = PeerBreakers::new(p, Duration::from_secs(60), Arc::new(NoEvents)).unwrap();
        let old = b.admit(1).unwrap();
        let t1 = b.admit(1).unwrap();
        let t2 = b.admit(1).unwrap();
        b.record(t1, true, Duration::ZERO);
        b.record(t2, true, Duration::ZERO);
        assert_eq!(b.state(1), State::Open);
        // Reset timeout passed: the next admission is the probe.
        let probe = b.admit(1).unwrap();
        assert_eq!(b.state(1), State::HalfOpen);
        b.record(old, false, Duration::ZERO);
        assert_eq!(b.state(1), State::HalfOpen, "not the probe's outcome");
        b.record(probe, false, Duration::ZERO);
        assert_eq!(b.state(1), State::Closed);
    }
}
