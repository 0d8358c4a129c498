//! The Raft transport, server side: decodes peers' messages and hands them to openraft.
//!
//! With authentication on, every call is checked before anything else (before the target
//! header, whose refusal names this node's incarnation):
//! - a bearer token valid on the node plane (`auth.node_audience`): missing, invalid, or a
//!   client token of any role → `UNAUTHENTICATED`;
//! - its `sub` is `node-<id>` and that node is a member — a voter or a learner — of the
//!   latest membership this node's log holds (committed or not, as openraft uses it), else
//!   `PERMISSION_DENIED`. A node with no membership yet (not initialized: a learner being
//!   added, before the leader's first entries reach it) takes any node-plane identity: it
//!   has no state to protect, and the leader that adds it is a member only of a
//!   membership the newcomer has not seen. A removed node is refused as soon as the
//!   membership without it is in the log; a node added is taken as soon as the membership
//!   with it is (the leader appends it before it replicates to the newcomer). A lagging
//!   member that has not yet seen a newcomer refuses it, as if it had not answered: Raft
//!   tolerates that, and the majority that committed the membership knows it;
//! - a token bound to another member (`tgt`, see `auth::node_token`) →
//!   `PERMISSION_DENIED`: a member cannot replay a token it received to a third;
//! - where the message names its sender — a Vote's candidate, AppendEntries' and
//!   InstallSnapshot's leader, a Lease's `from` — it must be the token's node, else
//!   `PERMISSION_DENIED` (a member cannot speak for another: e.g. take another voter's
//!   lease shares). Clock, ReadIndex and Propose name no sender;
//! - a forwarded batch's commands are each authorized again as their own caller
//!   ([`super::forwarded`]).
//!
//! With authentication on or off, a message of a shape openraft never sends is refused
//! (`INVALID_ARGUMENT`) before openraft sees it: a leader's AppendEntries or InstallSnapshot
//! carries its committed vote, a candidate's Vote an uncommitted one (`check_vote`), and
//! AppendEntries' entries follow its `prev_log_id` in the leader's log order
//! (`check_entries`). openraft assumes both and asserts them in debug builds. Memberships
//! (in entries and in a snapshot's meta) and a snapshot's last log id must be ones a leader
//! makes (`check_membership`, `check_snapshot_meta`): openraft validates a membership
//! where it makes one, not where it receives one.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status};

use super::clock::ClusterClock;
use super::forwarded::{self, ProposeAs};
use super::lease::{LeaseAsk, LeaseDesk, LeaseError};
use super::network::TARGET_HEADER;
use super::{Command, CommandOutcome, Entry, LogId, NodeId, ProposeError, Raft, TypeConfig};
use crate::auth::{node_id_of, AuthError, Plane, Reason, Verifier};
use crate::model::Limits;
use crate::proto::raft::v1::{raft_server, RaftMessage};

pub struct RaftService {
    raft: Raft,
    proposer: Arc<dyn ForwardedBatches>,
    leases: Arc<LeaseDesk>,
    rules: ProposeRules,
    clock: Arc<ClusterClock>,
    id: NodeId,
    /// `node_id:incarnation` of this node: what peers must address.
    me: String,
    /// Verifies the callers' node-plane tokens (and forwarded commands' client tokens);
    /// `None`: authentication is off.
    auth: Option<Arc<Verifier>>,
}

/// Where a peer's `Propose` goes once validated: the leader's proposer, behind a trait so
/// that `raft` does not depend on the node that wires it.
pub trait ForwardedBatches: Send + Sync {
    /// Proposes commands a follower forwarded as one unit; refused if this node does not
    /// lead (never forwarded again).
    fn propose_forwarded(
        &self,
        cmds: Vec<Command>,
        weight: usize,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<Vec<CommandOutcome>, ProposeError>>;

    /// How full the proposer is (its queue, 0..1): what the adaptive factor of the
    /// cluster's rate limits follows.
    fn utilization(&self) -> f64;
}

/// How this node takes a peer's `Propose`: checked like a client's request.
pub struct ProposeRules {
    pub timeout: std::time::Duration,
    /// This node's limits.
    pub limits: Limits,
    /// Largest forwarded batch taken (one entry's payload and its envelope).
    pub max_entry_bytes: usize,
}

impl RaftService {
    pub fn new(
        raft: Raft,
        id: NodeId,
        incarnation: &str,
        proposer: Arc<dyn ForwardedBatches>,
        rules: ProposeRules,
        clock: Arc<ClusterClock>,
        leases: Arc<LeaseDesk>,
    ) -> Self {
        RaftService {
            raft,
            proposer,
            leases,
            rules,
            clock,
            id,
            me: format!("{id}:{incarnation}"),
            auth: None,
        }
    }

    /// Checks every call's node token with `auth` (and forwarded commands' client tokens);
    /// without it (`None`) authentication is off.
    pub fn with_auth(mut self, auth: Option<Arc<Verifier>>) -> Self {
        self.auth = auth;
        self
    }

    /// Who is calling: the member the node-plane token names (`None`: authentication is
    /// off), then the target check, then the member the token is bound to. Every RPC
    /// starts here.
    #[allow(clippy::result_large_err)]
    fn admit<T>(&self, req: &Request<T>) -> Result<Option<NodeId>, Status> {
        let caller = match &self.auth {
            None => None,
            Some(verifier) => Some(self.authenticate(verifier, req)?),
        };
        self.check_target(req)?;
        if let Some((node, Some(target))) = &caller {
            // A token bound to another member was replayed here (`auth::node_token`); one
            // without `tgt` comes from a node on older code.
            if *target != self.id.to_string() {
                tracing::warn!(node, target, "refused a node token bound to another member");
                return Err(Status::permission_denied(format!(
                    "node {node}'s token is bound to member {target:?}, not to node {}",
                    self.id
                )));
            }
        }
        Ok(caller.map(|(node, _)| node))
    }

    /// The member a valid node-plane token names, and the member it is bound to (`tgt`).
    #[allow(clippy::result_large_err)]
    fn authenticate<T>(
        &self,
        verifier: &Verifier,
        req: &Request<T>,
    ) -> Result<(NodeId, Option<String>), Status> {
        let token = bearer(req).map_err(|r| unauthenticated(AuthError::Unauthenticated(r)))?;
        let identity = verifier
            .verify(token, Plane::Node)
            .map_err(unauthenticated)?;
        let node = node_id_of(&identity.subject).ok_or_else(|| {
            Status::permission_denied(
                "the node plane takes node tokens only (sub node-<id>)".to_owned(),
            )
        })?;
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let mut members = membership.nodes().map(|(id, _)| *id).peekable();
        let known = members.peek().is_some();
        if known && !members.any(|id| id == node) {
            tracing::warn!(node, "refused a node-plane call from a non-member");
            return Err(Status::permission_denied(format!(
                "node {node} is not a member of node {}'s cluster",
                self.id
            )));
        }
        Ok((node, identity.target.clone()))
    }

    fn refuse(&self, msg: String) -> Status {
        tracing::warn!("{msg}");
        Status::failed_precondition(msg)
    }

    /// Refuses RPCs meant for another member, or for this member before its data was wiped.
    #[allow(clippy::result_large_err)]
    fn check_target<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match req.metadata().get(TARGET_HEADER).map(|v| v.to_str()) {
            Some(Ok(t)) if t == self.me => Ok(()),
            Some(Ok(t)) => Err(self.refuse(format!(
                "raft message for member {t} reached {}: this node's data directory is not the \
                 one the cluster knows (wiped or replaced); remove the node and add it again",
                self.me
            ))),
            _ => Err(Status::invalid_argument(format!(
                "raft message without a valid {TARGET_HEADER} header"
            ))),
        }
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer<T>(req: &Request<T>) -> Result<&str, Reason> {
    let Some(value) = req.metadata().get("authorization") else {
        return Err(Reason::Missing);
    };
    let value = value
        .to_str()
        .map_err(|_| Reason::Malformed("the authorization header is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(Reason::Malformed(
            "the authorization header is not `Bearer <token>`",
        )),
    }
}

fn unauthenticated(e: AuthError) -> Status {
    match e {
        AuthError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
        AuthError::Forbidden(_) => Status::permission_denied(e.to_string()),
    }
}

/// A leader's messages (AppendEntries, InstallSnapshot) carry its committed vote and a
/// candidate's Vote request an uncommitted one: openraft sends no other, and its state
/// asserts as much, so a message of another shape is refused here, whoever sent it, before
/// openraft sees it.
#[allow(clippy::result_large_err)]
fn check_vote(vote: &super::Vote, committed: bool, what: &str) -> Result<(), Status> {
    if vote.is_committed() == committed {
        return Ok(());
    }
    let want = if committed {
        "committed"
    } else {
        "uncommitted"
    };
    tracing::warn!(%vote, "refused {what}: its vote is not {want}");
    Err(Status::invalid_argument(format!(
        "{what} carries the vote {vote}; a {what} request carries a {want} vote"
    )))
}

/// A leader's AppendEntries carries entries from its log, in its order: each the next index
/// after `prev` (or after the one before it), from terms that never go back and never pass
/// the leader's own. openraft assumes as much (its debug builds assert it; a release build
/// would take a gap or a reordering into its log state), so another message is refused.
#[allow(clippy::result_large_err)]
fn check_entries(
    vote: &super::Vote,
    prev: Option<&LogId>,
    entries: &[Entry],
) -> Result<(), Status> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let invalid = |why: String| {
        tracing::warn!("refused AppendEntries: {why}");
        Err(Status::invalid_argument(format!("AppendEntries: {why}")))
    };
    let leader = *vote.leader_id();
    let mut next = prev.map_or(Some(0), |p| p.index.checked_add(1));
    let mut floor = prev.map(|p| p.leader_id);
    if let Some(p) = prev {
        if !matches!(p.leader_id.partial_cmp(&leader), Some(Less | Equal)) {
            return invalid(format!(
                "prev_log_id {p} is from past the leader's vote {vote}"
            ));
        }
    }
    for (i, e) in entries.iter().enumerate() {
        let id = e.log_id;
        if Some(id.index) != next {
            return invalid(format!(
                "entry {i} is {id}, not the next index ({})",
                next.map_or("none: the index space is used up".to_owned(), |n| n
                    .to_string())
            ));
        }
        if floor.is_some_and(|f| !matches!(id.leader_id.partial_cmp(&f), Some(Greater | Equal))) {
            return invalid(format!(
                "entry {i} is {id}, from a term before the entry before it"
            ));
        }
        if !matches!(id.leader_id.partial_cmp(&leader), Some(Less | Equal)) {
            return invalid(format!(
                "entry {i} is {id}, from past the leader's vote {vote}"
            ));
        }
        if let openraft::EntryPayload::Membership(m) = &e.payload {
            check_membership(m).or_else(|why| invalid(format!("entry {i} is {id}: {why}")))?;
        }
        next = id.index.checked_add(1);
        floor = Some(id.leader_id);
    }
    Ok(())
}

/// A membership openraft could have made: one or two configurations (a joint one while it
/// changes), none empty, every voter with its node. openraft checks this where it makes
/// one, not where it receives one.
fn check_membership(m: &super::Membership) -> Result<(), String> {
    let configs = m.get_joint_config();
    if configs.is_empty() || configs.len() > 2 || configs.iter().any(|c| c.is_empty()) {
        return Err(format!(
            "a membership of {} configurations, {} of them empty",
            configs.len(),
            configs.iter().filter(|c| c.is_empty()).count()
        ));
    }
    if let Some(v) = m.voter_ids().find(|v| m.get_node(v).is_none()) {
        return Err(format!("voter {v} of a membership has no node"));
    }
    Ok(())
}

/// A snapshot a leader sends covers its log up to a log id no later than its own vote, with
/// the membership of that log: a valid one, from no later than the snapshot's last log id.
#[allow(clippy::result_large_err)]
fn check_snapshot_meta(vote: &super::Vote, meta: &super::SnapshotMeta) -> Result<(), Status> {
    use std::cmp::Ordering::{Equal, Less};
    let why = if meta.last_log_id.is_some_and(|l| {
        !matches!(
            l.leader_id.partial_cmp(vote.leader_id()),
            Some(Less | Equal)
        )
    }) {
        format!("its last log id is from past the leader's vote {vote}")
    } else if !matches!(
        meta.last_membership.log_id().partial_cmp(&meta.last_log_id),
        Some(Less | Equal)
    ) {
        "its membership is from past its last log id".to_owned()
    } else if let Err(why) = check_membership(meta.last_membership.membership()) {
        why
    } else {
        return Ok(());
    };
    tracing::warn!("refused InstallSnapshot: {why}");
    Err(Status::invalid_argument(format!("InstallSnapshot: {why}")))
}

/// A message that names its sender must name the caller the token proves.
#[allow(clippy::result_large_err)]
fn check_sender(caller: Option<NodeId>, named: Option<NodeId>, what: &str) -> Result<(), Status> {
    match caller {
        Some(node) if named != Some(node) => Err(Status::permission_denied(format!(
            "{what} names node {} but the caller is node {node}",
            named.map_or("none".to_owned(), |n| n.to_string())
        ))),
        _ => Ok(()),
    }
}

/// Puts the outcomes of the proposed commands back between the refused ones, in order.
fn merge_outcomes(
    refused: Vec<Option<CommandOutcome>>,
    proposed: Vec<CommandOutcome>,
) -> Vec<CommandOutcome> {
    let mut proposed = proposed.into_iter();
    // If the leader answered fewer outcomes than commands, the follower's `distribute`
    // reports the mismatch: nothing is invented here.
    refused
        .into_iter()
        .filter_map(|r| r.or_else(|| proposed.next()))
        .collect()
}

fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    postcard::from_bytes(&m.body)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    postcard::to_allocvec(v)
        .map(|body| Response::new(RaftMessage { body: body.into() }))
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let caller = self.admit(&req)?;
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        check_sender(
            caller,
            rpc.vote.leader_id().voted_for(),
            "AppendEntries' leader",
        )?;
        check_vote(&rpc.vote, true, "AppendEntries")?;
        check_entries(&rpc.vote, rpc.prev_log_id.as_ref(), &rpc.entries)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let caller = self.admit(&req)?;
        let rpc: openraft::raft::InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        check_sender(
            caller,
            rpc.vote.leader_id().voted_for(),
            "InstallSnapshot's leader",
        )?;
        check_vote(&rpc.vote, true, "InstallSnapshot")?;
        check_snapshot_meta(&rpc.vote, &rpc.meta)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let caller = self.admit(&req)?;
        let rpc: openraft::raft::VoteRequest<NodeId> = decode(req.get_ref())?;
        check_sender(caller, rpc.vote.leader_id().voted_for(), "Vote's candidate")?;
        check_vote(&rpc.vote, false, "Vote")?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn clock(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        encode(&super::clock::ClockReply {
            now_ns: self.clock.local_now_ns(),
            rules_version: crate::eventstore::APPLY_RULES_VERSION,
        })
    }

    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        use super::read_index::{confirmed, ReadIndexError};
        self.admit(&req)?;
        match confirmed(&self.raft, self.id).await {
            Ok(index) => encode(&index),
            Err(ReadIndexError::NotLeader { leader }) => Err(Status::unavailable(match leader {
                Some((id, _)) => format!("node {} does not lead; node {id} does", self.id),
                None => format!("node {} does not lead, and no leader is known", self.id),
            })),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn lease(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let caller = self.admit(&req)?;
        let ask: LeaseAsk = decode(req.get_ref())?;
        check_sender(caller, Some(ask.from), "the lease request")?;
        match self
            .leases
            .grant_as_leader(&self.raft, self.id, &ask, self.proposer.utilization())
            .await
        {
            Ok(grant) => encode(&grant),
            Err(e @ LeaseError::NotLeader(_)) => Err(Status::unavailable(e.to_string())),
            Err(e @ LeaseError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
        }
    }

    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        let weight = req.get_ref().body.len();
        let cmds: Vec<Command> = decode(req.get_ref())?;
        // A batch without credentials (from a follower that met an older leader, or with
        // authentication off): with authentication on here, its commands are taken only
        // as the sending node's own.
        let callers = vec![None; cmds.len()];
        let batch = ProposeAs::new(cmds, &callers);
        self.propose_batch(batch, weight).await
    }

    async fn propose_as(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req)?;
        let batch: ProposeAs = decode(req.get_ref())?;
        // The entry carries the commands, not the credentials: weigh those.
        let weight = batch
            .commands
            .iter()
            .map(|(_, c)| {
                postcard::serialize_with_flavor(c, postcard::ser_flavors::Size::default())
                    .unwrap_or(usize::MAX)
            })
            .fold(0usize, usize::saturating_add);
        self.propose_batch(batch, weight).await
    }
}

impl RaftService {
    /// A forwarded batch of `weight` bytes in an entry: each command authorized as its
    /// caller and validated, the refused ones answered on their own, the rest proposed.
    async fn propose_batch(
        &self,
        batch: ProposeAs,
        weight: usize,
    ) -> Result<Response<RaftMessage>, Status> {
        let cmds = forwarded::authorize(self.auth.as_deref(), batch)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A batch must fit one entry (every entry stays shippable to a follower): a peer
        // configured with larger batches than this leader gets its commands refused.
        if weight > self.rules.max_entry_bytes {
            let reason = format!(
                "a forwarded batch of {weight} bytes is larger than one entry of this leader \
                 ({} bytes): check proposer.max_batch_bytes on every node",
                self.rules.max_entry_bytes
            );
            tracing::warn!("{reason}");
            let refused: Vec<CommandOutcome> = cmds
                .into_iter()
                .map(|c| match c {
                    Ok(c) => c.rejected(reason.clone()),
                    Err(denied) => denied,
                })
                .collect();
            return encode(&Ok::<_, ProposeError>(refused));
        }
        // A peer's commands are as untrusted as a client's: each is validated here, and one
        // that fails is refused on its own (its neighbours, other clients' commands that the
        // follower batched with it, still go ahead).
        let mut refused: Vec<Option<CommandOutcome>> = Vec::with_capacity(cmds.len());
        let mut valid = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let cmd = match cmd {
                Ok(cmd) => cmd,
                Err(denied) => {
                    refused.push(Some(denied));
                    continue;
                }
            };
            match cmd.validate(&self.rules.limits) {
                Ok(()) => {
                    refused.push(None);
                    valid.push(cmd);
                }
                Err(reason) => {
                    tracing::warn!("refused a command a peer proposed: {reason}");
                    refused.push(Some(cmd.rejected(reason)));
                }
            }
        }
        let outcomes = if valid.is_empty() {
            Ok(Vec::new())
        } else {
            self.proposer
                .propose_forwarded(valid, weight, self.rules.timeout)
                .await
        };
        encode(&outcomes.map(|o| merge_outcomes(refused, o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(v) = value {
            r.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        r
    }

    #[test]
    fn append_entries_must_follow_the_leaders_log_order() {
        use openraft::{CommittedLeaderId, EntryPayload};
        let id = |term: u64, node: u64, index: u64| {
            LogId::new(CommittedLeaderId::new(term, node), index)
        };
        let entry = |log_id: LogId| Entry {
            log_id,
            payload: EntryPayload::Blank,
        };
        let vote = super::super::Vote::new_committed(5, 2);
        let ok = |prev: Option<LogId>, ids: &[LogId]| {
            let entries: Vec<Entry> = ids.iter().copied().map(entry).collect();
            check_entries(&vote, prev.as_ref(), &entries)
        };
        // What a leader sends: its log from `prev` on, earlier terms before its own.
        assert!(ok(None, &[]).is_ok());
        assert!(ok(Some(id(3, 1, 9)), &[]).is_ok());
        assert!(ok(None, &[id(1, 1, 0), id(1, 1, 1), id(5, 2, 2)]).is_ok());
        assert!(ok(Some(id(3, 1, 9)), &[id(3, 1, 10), id(5, 2, 11)]).is_ok());
        // What it never sends.
        let refused = [
            (
                "a first index that does not follow prev",
                Some(id(3, 1, 9)),
                vec![id(3, 1, 11)],
            ),
            ("a first index past 0 without prev", None, vec![id(1, 1, 1)]),
            ("a gap", None, vec![id(1, 1, 0), id(1, 1, 2)]),
            ("an index repeated", None, vec![id(1, 1, 0), id(1, 1, 0)]),
            ("a term going back", None, vec![id(3, 1, 0), id(2, 1, 1)]),
            (
                "a term going back from prev",
                Some(id(4, 3, 9)),
                vec![id(3, 1, 10)],
            ),
            ("a term past the leader's", None, vec![id(6, 2, 0)]),
            (
                "another leader in the leader's term",
                None,
                vec![id(5, 3, 0)],
            ),
            ("prev past the leader's term", Some(id(6, 1, 9)), vec![]),
            (
                "the index space used up",
                Some(id(3, 1, u64::MAX)),
                vec![id(3, 1, 0)],
            ),
        ];
        for (case, prev, ids) in refused {
            let r = ok(prev, &ids);
            assert_eq!(
                r.as_ref().map_err(|s| s.code()),
                Err(tonic::Code::InvalidArgument),
                "{case}: {r:?}"
            );
        }
    }

    /// A membership as a peer could send it (deserialized: openraft's constructors would
    /// not make most of these).
    fn membership(configs: &str, nodes: &str) -> super::super::Membership {
        let node = serde_json::to_value(crate::raft::NodeInfo::default()).unwrap();
        let nodes: serde_json::Map<String, serde_json::Value> = nodes
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| (n.to_owned(), node.clone()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "configs": serde_json::from_str::<serde_json::Value>(configs).unwrap(),
            "nodes": nodes,
        }))
        .unwrap()
    }

    #[test]
    fn memberships_and_snapshots_must_be_ones_a_leader_makes() {
        use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta, StoredMembership};
        let id = |term: u64, index: u64| LogId::new(CommittedLeaderId::new(term, 1), index);
        let vote = super::super::Vote::new_committed(5, 1);
        assert!(check_membership(&membership("[[1,2,3]]", "1,2,3")).is_ok());
        assert!(check_membership(&membership("[[1,2,3],[1,2]]", "1,2,3,4")).is_ok());
        for (case, configs, nodes) in [
            ("no configuration", "[]", "1"),
            ("an empty configuration", "[[]]", ""),
            ("an empty half of a joint one", "[[1],[]]", "1"),
            ("three configurations", "[[1],[1],[1]]", "1"),
            ("a voter without its node", "[[1,2]]", "1"),
        ] {
            assert!(
                check_membership(&membership(configs, nodes)).is_err(),
                "{case}"
            );
            // Inside an entry, too.
            let entry = Entry {
                log_id: id(5, 0),
                payload: EntryPayload::Membership(membership(configs, nodes)),
            };
            let r = check_entries(&vote, None, &[entry]);
            assert_eq!(
                r.map_err(|s| s.code()),
                Err(tonic::Code::InvalidArgument),
                "{case}"
            );
        }
        let meta = |last: Option<LogId>, at: Option<LogId>, m| SnapshotMeta {
            last_log_id: last,
            last_membership: StoredMembership::new(at, m),
            snapshot_id: "s".into(),
        };
        let good = membership("[[1,2,3]]", "1,2,3");
        assert!(
            check_snapshot_meta(&vote, &meta(Some(id(5, 9)), Some(id(3, 2)), good.clone())).is_ok()
        );
        assert!(check_snapshot_meta(&vote, &meta(None, None, good.clone())).is_ok());
        for (case, m) in [
            (
                "past the leader's vote",
                meta(Some(id(6, 9)), Some(id(3, 2)), good.clone()),
            ),
            (
                "a membership past the last log id",
                meta(Some(id(5, 9)), Some(id(5, 10)), good.clone()),
            ),
            (
                "a membership without a last log id",
                meta(None, Some(id(1, 0)), good.clone()),
            ),
            (
                "an invalid membership",
                meta(Some(id(5, 9)), Some(id(3, 2)), membership("[[]]", "")),
            ),
        ] {
            let r = check_snapshot_meta(&vote, &m);
            assert_eq!(
                r.map_err(|s| s.code()),
                Err(tonic::Code::InvalidArgument),
                "{case}"
            );
        }
    }

    #[test]
    fn the_bearer_header_is_read_strictly() {
        let cases: [(Option<&str>, Result<&str, Reason>); 6] = [
            (Some("Bearer a.b.c"), Ok("a.b.c")),
            (Some("bearer  a.b.c "), Ok("a.b.c")),
            (None, Err(Reason::Missing)),
            (
                Some("Basic dXNlcjpwdw=="),
                Err(Reason::Malformed(
                    "the authorization header is not `Bearer <token>`",
                )),
            ),
            (
                Some("a.b.c"),
                Err(Reason::Malformed(
                    "the authorization header is not `Bearer <token>`",
                )),
            ),
            (Some("Bearer "), Ok("")),
        ];
        for (header, want) in cases {
            let req = with_auth(header);
            assert_eq!(bearer(&req), want, "{header:?}");
        }
    }

    /// With authentication off nothing is checked; with it, a message names its caller.
    #[test]
    fn a_message_names_its_caller() {
        assert!(check_sender(None, Some(2), "x").is_ok());
        assert!(check_sender(Some(2), Some(2), "x").is_ok());
        let refused = check_sender(Some(2), Some(3), "Vote's candidate").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "Vote's candidate names node 3 but the caller is node 2"
        );
        let refused = check_sender(Some(2), None, "x").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }
}
