//! The proposer: turns concurrent commands into Raft entries.
//!
//! Commands queue in a bounded channel. At most `max_inflight_batches` batches are in
//! flight; while all are, new commands gather in the queue and the next batch carries up to
//! `max_batch_commands` of them. Light load therefore costs no added latency (a lone command
//! goes at once), and heavy load amortizes Raft's per-entry work — above all the log's fsync,
//! which openraft 0.9 awaits entry by entry — over many commands.
//!
//! On the leader a batch becomes one Raft entry. On a follower the whole batch is sent to
//! the leader in one node-to-node `Propose` call (which the leader's proposer takes as a
//! unit), instead of one forwarded RPC per client request: on a cluster sharing two cores,
//! per-request forwarding costs more CPU than the write itself.
//!
//! Each command travels with its caller's bearer token ([`CallerToken`]): a follower hands
//! them to the leader with the batch (`raft.v1.ProposeAs`, each distinct token once), and
//! the leader authorizes every command again as its caller. On the leader itself the
//! service layer has authorized it already, and the token goes no further.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::call::{self, CallFailure};
use crate::config::ProposerSettings;
use crate::raft::breakers;
use crate::raft::clock::ClusterClock;
use crate::raft::forwarded::ProposeAs;
use crate::raft::network::{NetworkFactory, PeerRpc};
use crate::raft::state_machine::AppliedStatus;
pub use crate::raft::ProposeError;
use crate::raft::{Command, CommandOutcome, NodeId, NodeInfo, Raft, Request};

type Outcomes = Result<Vec<CommandOutcome>, ProposeError>;

/// The bearer token a command's caller presented (`None`: authentication is off, or the
/// node proposes the command itself).
pub type CallerToken = Option<Arc<str>>;

/// An entry that carried at least this many commands means load: the next one lingers.
const LINGER_AFTER_BATCH: usize = 8;
/// Scheduler yields the proposer spends gathering commands under load.
const MAX_LINGER_YIELDS: usize = 4;

/// Commands proposed together by one caller; they share one reply.
struct Pending {
    cmds: Vec<Command>,
    /// Whose commands they are.
    caller: CallerToken,
    /// Bytes the commands take in an entry (their encoding), for `max_batch_bytes`.
    weight: usize,
    /// Batches forwarded by a follower are never forwarded again: if this node is no longer
    /// the leader they are refused, so that two nodes with stale views cannot bounce them.
    local_only: bool,
    reply: oneshot::Sender<Outcomes>,
}

/// What the proposer needs to reach the leader from a follower.
#[derive(Clone)]
pub struct Route {
    pub id: NodeId,
    pub network: NetworkFactory,
    pub forward_timeout: Duration,
    /// The time a leader stamps: its clock checked against a majority of the voters'.
    pub clock: Arc<ClusterClock>,
    /// What the state machine applied (its last commit time anchors the clock's fallback).
    pub applied: tokio::sync::watch::Receiver<AppliedStatus>,
    /// Counts the commands handed to the leader (metric `aether_forwarded_appends`).
    pub forwarded: prometheus_client::metrics::counter::Counter,
}

/// Handle to the proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    inflight: Arc<Semaphore>,
    settings: ProposerSettings,
    batches: Arc<AtomicUsize>,
    batched_commands: Arc<AtomicUsize>,
    forwarded_batches: Arc<AtomicUsize>,
}

/// How full the proposer's queues are, 0.0..=1.0 each.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProposerLoad {
    pub queued: usize,
    pub queue_utilization: f64,
    pub inflight: usize,
    pub inflight_utilization: f64,
}

impl Proposer {
    pub fn start(
        raft: Raft,
        settings: ProposerSettings,
        dedupe_window: Duration,
        route: Route,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let inflight = Arc::new(Semaphore::new(settings.max_inflight_batches));
        let p = Proposer {
            tx,
            inflight: inflight.clone(),
            settings: settings.clone(),
            batches: Arc::default(),
            batched_commands: Arc::default(),
            forwarded_batches: Arc::default(),
        };
        let window_ns = i64::try_from(dedupe_window.as_nanos()).unwrap_or(i64::MAX);
        tokio::spawn(run(
            raft,
            rx,
            inflight,
            settings,
            window_ns,
            route,
            p.clone(),
        ));
        p
    }

    /// Proposes one command and waits for its outcome, at most `timeout`.
    pub async fn propose(
        &self,
        cmd: Command,
        caller: CallerToken,
        weight: usize,
        timeout: Duration,
    ) -> Result<CommandOutcome, ProposeError> {
        let mut outcomes = self
            .propose_many(vec![cmd], caller, weight, timeout)
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| ProposeError::Unknown("no outcome for the command".into()))
    }

    /// Proposes commands as a unit (they land in one entry) and waits for their outcomes,
    /// in order, at most `timeout`.
    pub async fn propose_many(
        &self,
        cmds: Vec<Command>,
        caller: CallerToken,
        weight: usize,
        timeout: Duration,
    ) -> Outcomes {
        self.enqueue(cmds, caller, weight, false, timeout).await
    }

    /// Proposes a batch a follower forwarded (its callers already authorized by the raft
    /// service); refused if this node does not lead.
    pub async fn propose_forwarded_batch(
        &self,
        cmds: Vec<Command>,
        weight: usize,
        timeout: Duration,
    ) -> Outcomes {
        self.enqueue(cmds, None, weight, true, timeout).await
    }

    async fn enqueue(
        &self,
        cmds: Vec<Command>,
        caller: CallerToken,
        weight: usize,
        local_only: bool,
        timeout: Duration,
    ) -> Outcomes {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            cmds,
            caller,
            weight,
            local_only,
            reply,
        };
        self.tx.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ProposeError::Overloaded(self.settings.queue_capacity)
            }
            mpsc::error::TrySendError::Closed(_) => {
                ProposeError::Stopped("proposer stopped".into())
            }
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            // The proposer let go of the command; it may have been proposed already.
            Ok(Err(_)) => Err(ProposeError::Unknown("the proposal was dropped".into())),
            Err(_) => Err(ProposeError::Timeout(timeout)),
        }
    }

    pub fn load(&self) -> ProposerLoad {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        let inflight = self.settings.max_inflight_batches - self.inflight.available_permits();
        ProposerLoad {
            queued,
            queue_utilization: queued as f64 / self.settings.queue_capacity as f64,
            inflight,
            inflight_utilization: inflight as f64 / self.settings.max_inflight_batches as f64,
        }
    }

    /// (batches proposed, commands they carried, batches forwarded to the leader) since start.
    pub fn batch_counts(&self) -> (usize, usize, usize) {
        (
            self.batches.load(Ordering::Relaxed),
            self.batched_commands.load(Ordering::Relaxed),
            self.forwarded_batches.load(Ordering::Relaxed),
        )
    }
}

/// Longest a leader waits to measure a majority of the voters' clocks before it gives up on
/// a batch (which could not commit without that majority either).
const CLOCK_WAIT: Duration = Duration::from_secs(3);

/// The commit time to stamp: the time the voters agree on (see [`ClusterClock`]).
async fn stamp_time(route: &Route, raft: &Raft) -> Result<i64, ProposeError> {
    let deadline = tokio::time::Instant::now() + CLOCK_WAIT;
    loop {
        let (leads, voters) = {
            let m = raft.metrics();
            let m = m.borrow();
            let leads =
                m.state == openraft::ServerState::Leader && m.current_leader == Some(route.id);
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            (leads, voters)
        };
        if !leads {
            // openraft refuses the write (ForwardToLeader): the stamp is never used.
            return Ok(route.clock.local_now_ns());
        }
        let last_commit = route.applied.borrow().last_commit_time_ns;
        if let Some(t) = route.clock.stamp_ns(&voters, last_commit) {
            return Ok(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ProposeError::Stopped(format!(
                "could not measure the clocks of a majority of voters {voters:?} within \
                 {CLOCK_WAIT:?}; nothing was written"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where a batch goes: this node's Raft, or the leader.
enum Target {
    Local,
    Leader(NodeId, NodeInfo),
}

fn target(raft: &Raft, me: NodeId) -> Target {
    let m = raft.metrics();
    let m = m.borrow();
    match m.current_leader {
        Some(l) if l != me => match m.membership_config.membership().get_node(&l) {
            Some(node) => Target::Leader(l, node.clone()),
            None => Target::Local,
        },
        // Leader here, or none known: openraft answers (and says whom to ask).
        _ => Target::Local,
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    inflight: Arc<Semaphore>,
    settings: ProposerSettings,
    dedupe_window_ns: i64,
    route: Route,
    handle: Proposer,
) {
    let mut last_batch = 0;
    let mut forwarding = ForwardingSlots::new(settings.max_forwarding_batches);
    // Commands that would have taken the last batch past `max_batch_bytes`: they start the
    // next one, so that an entry stays within what one AppendEntries message carries.
    let mut carried: Option<Pending> = None;
    loop {
        // Take a slot first: while none is free, commands gather in the queue.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.weight;
        let mut batch = vec![first];
        // Under load — the last batch carried many commands, or (on a follower) a forwarded
        // batch is still waiting for the leader — let the request handlers that are already
        // running enqueue theirs before this batch is cut: a few scheduler yields, no timer,
        // so a lone command is never delayed. On a follower this matters most: its batches
        // join the leader's next entry anyway, and fewer, fuller ones cost fewer `Propose`
        // round trips (3-node bench: 14.5k -> 17.3k appends/s, p90 6.8 -> 4.8 ms).
        let forwarding_busy = forwarding.busy();
        let mut yields = if last_batch >= LINGER_AFTER_BATCH || forwarding_busy {
            MAX_LINGER_YIELDS
        } else {
            0
        };
        let mut count = batch[0].cmds.len();
        loop {
            while count < settings.max_batch_commands && bytes < settings.max_batch_bytes {
                match rx.try_recv() {
                    Ok(p) if bytes.saturating_add(p.weight) > settings.max_batch_bytes => {
                        carried = Some(p);
                        break;
                    }
                    Ok(p) => {
                        bytes += p.weight;
                        count += p.cmds.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let full = carried.is_some()
                || count >= settings.max_batch_commands
                || bytes >= settings.max_batch_bytes;
            if yields == 0 || full {
                break;
            }
            yields -= 1;
            tokio::task::yield_now().await;
        }
        last_batch = count;
        handle.batches.fetch_add(1, Ordering::Relaxed);
        handle.batched_commands.fetch_add(count, Ordering::Relaxed);
        match target(&raft, route.id) {
            Target::Local => {
                let (commands, _, replies) = flatten(batch);
                match stamp_time(&route, &raft).await {
                    Ok(now) => {
                        propose_local(&raft, commands, replies, now, dedupe_window_ns, permit).await
                    }
                    Err(e) => distribute(replies, Err(e)),
                }
            }
            Target::Leader(id, node) => {
                // Batches other followers forwarded here are refused rather than bounced on.
                let (forwarded, own): (Vec<Pending>, Vec<Pending>) =
                    batch.into_iter().partition(|p| p.local_only);
                for p in forwarded {
                    let _ = p.reply.send(Err(ProposeError::NotLeader {
                        leader: Some((id, node.clone())),
                    }));
                }
                // Forwarded batches cost this node no log write: they do not hold the
                // local slot, only one of the (more numerous) forwarding slots, so a
                // follower's clients do not wait a full leader round trip per batch.
                drop(permit);
                if !own.is_empty() {
                    let callers = own.len() as u64;
                    let (commands, tokens, replies) = flatten(own);
                    match forwarding.take(id, &node, &raft, &route).await {
                        Ok(slot) => {
                            handle.forwarded_batches.fetch_add(1, Ordering::Relaxed);
                            route.forwarded.inc_by(callers);
                            let batch = ProposeAs::new(commands, &tokens);
                            tokio::spawn(forward(route.clone(), id, node, batch, replies, slot));
                        }
                        Err(e) => distribute(replies, Err(e)),
                    }
                }
            }
        }
    }
}

/// A follower's forwarding slots (`max_forwarding_batches`), per leader: batches waiting on
/// a leader that stopped answering hold only that leader's slots (until their deadline), so
/// that forwarding to its successor starts at once. Leaders with no batch in flight are
/// forgotten, so the map holds at most the members that led while calls were out.
struct ForwardingSlots {
    per_leader: HashMap<NodeId, Arc<Semaphore>>,
    size: usize,
}

impl ForwardingSlots {
    fn new(size: usize) -> Self {
        ForwardingSlots {
            per_leader: HashMap::new(),
            size,
        }
    }

    /// Whether a forwarded batch is still waiting for its leader's answer.
    fn busy(&self) -> bool {
        self.per_leader
            .values()
            .any(|s| s.available_permits() < self.size)
    }

    /// A slot for a batch to `leader`. While every slot is held by a call still waiting on
    /// it, the batch waits for one — unless the breaker to the leader is (or goes) open, or
    /// another node takes the lead: then it is refused at once (nothing was sent), so that
    /// the client hears it now rather than after the stuck calls' deadline.
    async fn take(
        &mut self,
        leader: NodeId,
        node: &NodeInfo,
        raft: &Raft,
        route: &Route,
    ) -> Result<OwnedSemaphorePermit, ProposeError> {
        let size = self.size;
        self.per_leader
            .retain(|id, s| *id == leader || s.available_permits() < size);
        let slots = self
            .per_leader
            .entry(leader)
            .or_insert_with(|| Arc::new(Semaphore::new(size)))
            .clone();
        let breakers = route.network.breakers();
        let mut breaker_changes = breakers.changes();
        let mut raft_changes = raft.metrics();
        loop {
            raft_changes.borrow_and_update();
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                return Ok(slot);
            }
            if let Some(open) = breakers.refuse_unless_closed(leader) {
                return Err(ProposeError::BreakerOpen {
                    leader: (leader, node.clone()),
                    reason: open.to_string(),
                });
            }
            if raft.metrics().borrow().current_leader != Some(leader) {
                return Err(ProposeError::NotLeader {
                    leader: Some((leader, node.clone())),
                });
            }
            let stopped = || ProposeError::Stopped("the node is shutting down".into());
            tokio::select! {
                slot = slots.clone().acquire_owned() => return slot.map_err(|_| stopped()),
                r = breaker_changes.changed() => r.map_err(|_| stopped())?,
                r = raft_changes.changed() => r.map_err(|_| stopped())?,
            }
        }
    }
}

type Replies = Vec<(oneshot::Sender<Outcomes>, usize)>;

/// The batch's commands, each one's caller token, and the callers' replies.
fn flatten(batch: Vec<Pending>) -> (Vec<Command>, Vec<CallerToken>, Replies) {
    let count = batch.iter().map(|p| p.cmds.len()).sum();
    let mut commands = Vec::with_capacity(count);
    let mut tokens = Vec::with_capacity(count);
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        replies.push((p.reply, p.cmds.len()));
        tokens.extend(std::iter::repeat_n(p.caller, p.cmds.len()));
        commands.extend(p.cmds);
    }
    (commands, tokens, replies)
}
async fn propose_local(
    raft: &Raft,
    commands: Vec<Command>,
    replies: Replies,
    commit_time_ns: i64,
    dedupe_window_ns: i64,
    permit: OwnedSemaphorePermit,
) {
    let request = Request {
        // Stamped once per entry; the state machine keeps commit times monotonic whatever
        // the clocks do.
        commit_time_ns,
        dedupe_window_ns,
        commands,
    };
    // `client_write_ff` only enqueues into openraft, in order; the outcome is awaited in a
    // task of its own so that the next batch can be proposed meanwhile.
    match raft.client_write_ff(request).await {
        Ok(outcome) => {
            tokio::spawn(async move {
                let res = outcome.await;
                drop(permit);
                let outcomes = match res {
                    Ok(Ok(resp)) => Ok(resp.data.outcomes),
                    Ok(Err(e)) => Err(client_write_error(e)),
                    Err(_) => Err(ProposeError::Unknown(
                        "raft stopped before the write's outcome was known".into(),
                    )),
                };
                distribute(replies, outcomes);
            });
        }
        Err(fatal) => distribute(replies, Err(ProposeError::Stopped(fatal.to_string()))),
    }
}

/// Sends a batch to the leader as one `ProposeAs` call (with its callers' credentials); a
/// leader on older code, which does not know that RPC (`UNIMPLEMENTED`: nothing was
/// proposed), gets it as a `Propose` without them, which is all it ever read.
async fn forward(
    route: Route,
    leader: NodeId,
    node: NodeInfo,
    batch: ProposeAs,
    replies: Replies,
    permit: OwnedSemaphorePermit,
) {
    let outcomes = async {
        let encoding = |e: postcard::Error| ProposeError::Forward(e.to_string());
        let body = postcard::to_allocvec(&batch).map_err(encoding)?;
        let peer = route.network.peer(leader, &node);
        let sent = peer
            .call(PeerRpc::ProposeAs, body.into(), route.forward_timeout)
            .await;
        let sent = match sent {
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                let commands: Vec<&Command> = batch.commands.iter().map(|(_, c)| c).collect();
                let body = postcard::to_allocvec(&commands).map_err(encoding)?;
                peer.call(PeerRpc::Propose, body.into(), route.forward_timeout)
                    .await
            }
            other => other,
        };
        let reply = sent.map_err(|s| forward_error(&s, leader, &node, route.forward_timeout))?;
        let outcomes: Outcomes = postcard::from_bytes(&reply).map_err(|e| {
            ProposeError::Unknown(format!(
                "the reply of leader node {leader} at {} is undecodable: {e}",
                node.grpc_addr
            ))
        })?;
        from_leader(outcomes, leader)
    }
    .await;
    drop(permit);
    distribute(replies, outcomes);
}

/// The leader's answer as this node takes it. Only this node's own breaker can say "nothing
/// was sent": from a peer's reply it would be a claim (with an address of the peer's
/// choosing) the peer cannot make, so it reads as "outcome unknown".
fn from_leader(outcomes: Outcomes, leader: NodeId) -> Outcomes {
    match outcomes {
        Err(ProposeError::BreakerOpen { reason, .. }) => Err(ProposeError::Unknown(format!(
            "leader node {leader} answered with a breaker refusal of its own ({reason}): the \
             batch may have been proposed"
        ))),
        outcomes => outcomes,
    }
}

/// What a failed `Propose` call to the leader means for the batch. Only a failure that proves
/// the leader never proposed it may say "not written"; after the batch may have left, a reset,
/// a keep-alive timeout or a deadline leaves its outcome unknown.
fn forward_error(
    s: &tonic::Status,
    leader: NodeId,
    node: &NodeInfo,
    timeout: Duration,
) -> ProposeError {
    use tonic::Code;
    let at = format!("leader node {leader} at {}", node.grpc_addr);
    if let Some(open) = breakers::refusal(s) {
        return ProposeError::BreakerOpen {
            leader: (leader, node.clone()),
            reason: open.to_string(),
        };
    }
    match call::classify(s) {
        // Never connected: the leader never saw the batch. Saying `NotLeader` with the same
        // leader lets the caller retry (it finds the leader again, or a new one).
        CallFailure::NotSent => {
            tracing::debug!(leader, addr = %node.grpc_addr, error = %call::status_detail(s),
                "cannot reach the leader; nothing was sent");
            ProposeError::NotLeader {
                leader: Some((leader, node.clone())),
            }
        }
        CallFailure::MaybeSent => ProposeError::Unknown(format!(
            "the connection to {at} failed after the batch was sent ({})",
            call::status_detail(s)
        )),
        CallFailure::Answered => match s.code() {
            Code::DeadlineExceeded | Code::Cancelled => ProposeError::Timeout(timeout),
            // The leader answered that it cannot take the batch now (stepping down,
            // shutting down) before proposing it: as if it were not the leader, so that the
            // write is tried again (and finds the next leader) until its deadline.
            Code::Unavailable => ProposeError::NotLeader {
                leader: Some((leader, node.clone())),
            },
            // Refusals the leader answers before proposing anything.
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented => ProposeError::Forward(format!(
                "{at} refused the batch: {:?}: {}",
                s.code(),
                s.message()
            )),
            _ => ProposeError::Unknown(format!("{at} answered {:?}: {}", s.code(), s.message())),
        },
    }
}

/// Hands each caller its share of the outcomes, in order.
fn distribute(replies: Replies, outcomes: Outcomes) {
    match outcomes {
        Ok(all) => {
            let expected: usize = replies.iter().map(|(_, n)| n).sum();
            if all.len() != expected {
                let e = ProposeError::Unknown(format!(
                    "{} outcomes for {expected} commands",
                    all.len()
                ));
                for (r, _) in replies {
                    let _ = r.send(Err(e.clone()));
                }
                return;
            }
            let mut it = all.into_iter();
            for (r, n) in replies {
                let _ = r.send(Ok(it.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            for (r, _) in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}

fn client_write_error(e: ClientWriteError<NodeId, NodeInfo>) -> ProposeError {
    match e {
        ClientWriteError::ForwardToLeader(f) => ProposeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        ClientWriteError::ChangeMembershipError(c) => ProposeError::Busy(c.to_string()),
    }
}

impl crate::raft::service::ForwardedBatches for Proposer {
    fn propose_forwarded(
        &self,
        cmds: Vec<Command>,
        weight: usize,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'_, Outcomes> {
        Box::pin(self.propose_forwarded_batch(cmds, weight, timeout))
    }

    /// The queue only: in-flight batches at their maximum is a pipeline doing its work;
    /// commands waiting behind it are the backlog that grows under overload.
    fn utilization(&self) -> f64 {
        self.load().queue_utilization
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::{Code, Status};

    use super::*;
    use crate::node::NodeError;

    /// A leader's reply claiming a breaker refusal is not "not written".
    #[test]
    fn a_breaker_refusal_from_the_wire_reads_as_outcome_unknown() {
        let claimed = Err(ProposeError::BreakerOpen {
            leader: (7, leader()),
            reason: "open".into(),
        });
        assert!(matches!(
            from_leader(claimed, 2),
            Err(ProposeError::Unknown(_))
        ));
        assert!(matches!(
            from_leader(Ok(Vec::new()), 2),
            Ok(v) if v.is_empty()
        ));
    }

    fn leader() -> NodeInfo {
        NodeInfo {
            grpc_addr: "127.0.0.1:7002".into(),
            http_addr: "127.0.0.1:8002".into(),
            incarnation: "abc".into(),
        }
    }

    /// The status code a client sees when forwarding a batch failed with `s` (the codes
    /// `api::status` gives these node errors; its own test pins that map).
    fn client_code(s: Status) -> Code {
        match NodeError::from(forward_error(&s, 2, &leader(), Duration::from_secs(9))) {
            NodeError::NotLeader { .. }
            | NodeError::BreakerOpen { .. }
            | NodeError::Unavailable(_) => Code::Unavailable,
            NodeError::OutcomeUnknown(_) | NodeError::Timeout(_) => Code::DeadlineExceeded,
            other => panic!("forwarding answered {other:?}"),
        }
    }

    fn with_source(mut s: Status, e: impl std::error::Error + Send + Sync + 'static) -> Status {
        s.set_source(Arc::new(e));
        s
    }

    /// Only a failure that proves the leader never got the batch may say "not written"
    /// (`UNAVAILABLE`, retried); anything that can happen after the request left is "outcome
    /// unknown" (`DEADLINE_EXCEEDED`), whatever code tonic gave it.
    #[test]
    fn forwarding_failures_say_not_written_only_when_nothing_was_sent() {
        use std::io::{Error, ErrorKind};
        let refused = || Error::from(ErrorKind::ConnectionRefused);
        let cases: Vec<(&str, Status, Code)> = vec![
            (
                "connection refused (tonic's connect error)",
                Status::from_error(Box::new(tonic::ConnectError(Box::new(refused())))),
                Code::Unavailable,
            ),
            (
                "HTTP/2 keep-alive timeout on a call in flight",
                with_source(
                    Status::unavailable("keep-alive timed out"),
                    Error::new(ErrorKind::TimedOut, "keep-alive timed out"),
                ),
                Code::DeadlineExceeded,
            ),
            (
                "connection reset after the request was written",
                Status::from_error(Box::new(Error::from(ErrorKind::ConnectionReset))),
                Code::DeadlineExceeded,
            ),
            (
                "HTTP/2 stream reset",
                Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL))),
                Code::DeadlineExceeded,
            ),
            (
                "HTTP/2 internal error",
                Status::from_error(Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR))),
                Code::DeadlineExceeded,
            ),
            (
                "the leader's deadline passed",
                Status::deadline_exceeded("Timeout expired"),
                Code::DeadlineExceeded,
            ),
            (
                "the leader refused the message before proposing it",
                Status::failed_precondition("raft message for member 2:old reached 2:new"),
                Code::Unavailable,
            ),
            (
                "the leader answered that it cannot take the batch now",
                Status::unavailable("shutting down"),
                Code::Unavailable,
            ),
            (
                "the breaker to the leader is open (nothing sent)",
                crate::raft::breakers::into_status(crate::raft::breakers::BreakerOpen {
                    peer: 2,
                    state: crate::guard::State::Open,
                    reset_ms: 1000,
                }),
                Code::Unavailable,
            ),
            (
                "the leader failed after proposing",
                Status::internal("encoding raft reply: ..."),
                Code::DeadlineExceeded,
            ),
        ];
        let mut wrong = Vec::new();
        for (what, status, want) in cases {
            let got = client_code(status);
            if got != want {
                wrong.push(format!("{what}: {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
        // An open breaker names the leader, for the client's hint.
        let open = crate::raft::breakers::into_status(crate::raft::breakers::BreakerOpen {
            peer: 2,
            state: crate::guard::State::Open,
            reset_ms: 1000,
        });
        match forward_error(&open, 2, &leader(), Duration::from_secs(9)) {
            ProposeError::BreakerOpen {
                leader: (2, info),
                reason,
            } => {
                assert_eq!(info, leader());
                assert!(reason.contains("breaker to node 2 is open"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // An answered UNAVAILABLE is "not the leader": the service tries the write again.
        assert!(matches!(
            forward_error(
                &Status::unavailable("shutting down"),
                2,
                &leader(),
                Duration::from_secs(9)
            ),
            ProposeError::NotLeader {
                leader: Some((2, _))
            }
        ));
    }
}
