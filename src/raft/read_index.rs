//! The read index: the log index a linearizable read must see applied, from a leader that
//! has just confirmed with a quorum that it still leads. One implementation, used by the
//! leader's own reads and by the `raft.v1.ReadIndex` RPC it answers for followers.

use std::collections::BTreeSet;

use openraft::error::{CheckIsLeaderError, RaftError};

use super::{NodeId, NodeInfo, Raft};

#[derive(Debug, thiserror::Error)]
pub enum ReadIndexError {
    /// This node does not lead; the leader, if one is known.
    #[error("not the leader")]
    NotLeader {
        leader: Option<(NodeId, Option<NodeInfo>)>,
    },
    /// This node leads but a quorum did not confirm it (which voters did not answer, in
    /// words: openraft's error would print its whole membership).
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Stopped(String),
}

/// The read index, after confirming leadership with a quorum (leader only).
pub async fn confirmed(raft: &Raft, me: NodeId) -> Result<Option<u64>, ReadIndexError> {
    match raft.get_read_log_id().await {
        Ok((read_log_id, _)) => Ok(read_log_id.map(|l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ReadIndexError::NotLeader {
                leader: f.leader_id.map(|id| (id, f.leader_node)),
            })
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
            Err(ReadIndexError::NoQuorum(no_quorum(raft, me, &e.got)))
        }
        Err(RaftError::Fatal(e)) => Err(ReadIndexError::Stopped(format!(
            "raft is not running on node {me}: {e}"
        ))),
    }
}

fn no_quorum(raft: &Raft, me: NodeId, answered: &BTreeSet<NodeId>) -> String {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let silent: Vec<String> = membership
        .voter_ids()
        .filter(|id| !answered.contains(id))
        .map(|id| match membership.get_node(&id) {
            Some(info) => format!("node {id} at {}", info.grpc_addr),
            None => format!("node {id}"),
        })
        .collect();
    format!(
        "node {me} leads but could not confirm it with a quorum of voters: no answer from {} \
         (down or partitioned); nothing was read, retry later",
        silent.join(", ")
    )
}
