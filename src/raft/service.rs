//! The Raft transport, server side: decodes peers' messages and hands them to openraft.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status};

use super::clock::ClusterClock;
use super::lease::{LeaseAsk, LeaseDesk, LeaseError};
use super::network::TARGET_HEADER;
use super::{Command, CommandOutcome, NodeId, ProposeError, Raft};
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
        }
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
        self.check_target(&req)?;
        let rpc = decode(req.get_ref())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_target(&req)?;
        let rpc = decode(req.get_ref())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_target(&req)?;
        let rpc = decode(req.get_ref())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn clock(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_target(&req)?;
        encode(&super::clock::ClockReply {
            now_ns: self.clock.local_now_ns(),
            rules_version: crate::eventstore::APPLY_RULES_VERSION,
        })
    }

    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        use super::read_index::{confirmed, ReadIndexError};
        self.check_target(&req)?;
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
        self.check_target(&req)?;
        let ask: LeaseAsk = decode(req.get_ref())?;
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
        self.check_target(&req)?;
        let weight = req.get_ref().body.len();
        let cmds: Vec<Command> = decode(req.get_ref())?;
        // A batch must fit one entry (every entry stays shippable to a follower): a peer
        // configured with larger batches than this leader gets its commands refused.
        if weight > self.rules.max_entry_bytes {
            let reason = format!(
                "a forwarded batch of {weight} bytes is larger than one entry of this leader \
                 ({} bytes): check proposer.max_batch_bytes on every node",
                self.rules.max_entry_bytes
            );
            tracing::warn!("{reason}");
            let refused: Vec<CommandOutcome> =
                cmds.iter().map(|c| c.rejected(reason.clone())).collect();
            return encode(&Ok::<_, ProposeError>(refused));
        }
        // A peer's commands are as untrusted as a client's: each is validated here, and one
        // that fails is refused on its own (its neighbours, other clients' commands that the
        // follower batched with it, still go ahead).
        let mut refused: Vec<Option<CommandOutcome>> = Vec::with_capacity(cmds.len());
        let mut valid = Vec::with_capacity(cmds.len());
        for cmd in cmds {
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
