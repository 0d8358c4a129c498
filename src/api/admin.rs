//! gRPC `aetherops.v1.Admin`: node status and cluster membership.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use super::convert::status;
use crate::node::{Node, NodeError};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::admin_server::Admin;
use crate::raft::{NodeId, NodeInfo};

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }

    fn membership_reply(&self, log_index: u64) -> pb::MembershipResponse {
        let (voters, learners) = self.node.members();
        pb::MembershipResponse {
            log_index,
            voters: voters.into_iter().map(member).collect(),
            learners: learners.into_iter().map(member).collect(),
        }
    }
}

fn member((id, info): (NodeId, NodeInfo)) -> pb::Member {
    pb::Member {
        node_id: id,
        grpc_addr: info.grpc_addr,
        http_addr: info.http_addr,
        incarnation: info.incarnation,
    }
}

fn node_info(m: &pb::Member) -> Result<(NodeId, NodeInfo), Status> {
    if m.node_id == 0 {
        return Err(Status::invalid_argument("node_id must be at least 1"));
    }
    if m.grpc_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(Status::invalid_argument(format!(
            "grpc_addr {:?} is not HOST:PORT with an IP host",
            m.grpc_addr
        )));
    }
    Ok((
        m.node_id,
        NodeInfo {
            grpc_addr: m.grpc_addr.clone(),
            http_addr: m.http_addr.clone(),
            incarnation: m.incarnation.clone(),
        },
    ))
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => status(NodeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        }),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => Status::unavailable(c.to_string()),
            _ => Status::failed_precondition(c.to_string()),
        },
        RaftError::Fatal(f) => Status::unavailable(f.to_string()),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let n = &self.node;
        let m = n.raft_metrics();
        let applied = n.applied_status();
        let (voters, learners) = n.members();
        let leader_grpc_addr = m
            .current_leader
            .and_then(|l| {
                voters
                    .iter()
                    .chain(learners.iter())
                    .find(|(id, _)| *id == l)
                    .map(|(_, i)| i.grpc_addr.clone())
            })
            .unwrap_or_default();
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                let last = m.last_log_index.unwrap_or(0);
                r.iter()
                    .map(|(id, matched)| pb::ReplicationLag {
                        node_id: *id,
                        matched_index: matched.map(|l| l.index),
                        lag: last.saturating_sub(matched.map_or(0, |l| l.index)),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            node_id: n.id,
            grpc_addr: n.info.grpc_addr.clone(),
            http_addr: n.info.http_addr.clone(),
            role: n.role().to_owned(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: n.committed_index(),
            applied_index: applied.applied.map(|l| l.index),
            voters: voters.into_iter().map(member).collect(),
            learners: learners.into_iter().map(member).collect(),
            replication,
            event_count: applied.next_global_position,
            dedupe_window_secs: self
                .node
                .dedupe_window()
                .map_err(status)?
                .map(|d| d.as_secs()),
            state_digest: format!("{:032x}", applied.digest),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            leader_grpc_addr,
            incarnation: n.info.incarnation.clone(),
        }))
    }

    async fn init(
        &self,
        req: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        let members = req.into_inner().members;
        if members.is_empty() {
            return Err(Status::invalid_argument("init needs at least one member"));
        }
        let mut map = BTreeMap::new();
        for m in &members {
            let (id, info) = node_info(m)?;
            if map.insert(id, info).is_some() {
                return Err(Status::invalid_argument(format!("node {id} listed twice")));
            }
        }
        if !map.contains_key(&self.node.id) {
            return Err(Status::invalid_argument(format!(
                "init must list this node ({}) among the members",
                self.node.id
            )));
        }
        self.node.init(map).await.map_err(status)?;
        Ok(Response::new(pb::InitResponse {}))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let r = req.into_inner();
        let m = r
            .member
            .ok_or_else(|| Status::invalid_argument("member is required"))?;
        let (id, info) = node_info(&m)?;
        let resp = self
            .node
            .raft
            .add_learner(id, info, r.blocking)
            .await
            .map_err(write_error)?;
        Ok(Response::new(self.membership_reply(resp.log_id.index)))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let r = req.into_inner();
        let voters: BTreeSet<NodeId> = r.voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("the voter set cannot be empty"));
        }
        let resp = self
            .node
            .raft
            .change_membership(voters, r.retain)
            .await
            .map_err(write_error)?;
        Ok(Response::new(self.membership_reply(resp.log_id.index)))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let id = req.into_inner().node_id;
        let (voters, learners) = self.node.members();
        let change = if voters.iter().any(|(v, _)| *v == id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if learners.iter().any(|(l, _)| *l == id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(Status::not_found(format!("node {id} is not a member")));
        };
        let resp = self
            .node
            .raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        Ok(Response::new(self.membership_reply(resp.log_id.index)))
    }

    async fn read_index(
        &self,
        _: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let read_index = self.node.read_index().await.map_err(status)?;
        Ok(Response::new(pb::ReadIndexResponse { read_index }))
    }

    async fn set_dedupe_window(
        &self,
        req: Request<pb::SetDedupeWindowRequest>,
    ) -> Result<Response<pb::SetDedupeWindowResponse>, Status> {
        let secs = req.into_inner().window_secs;
        let set = self
            .node
            .set_dedupe_window(Duration::from_secs(secs))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetDedupeWindowResponse {
            window_secs: set.as_secs(),
        }))
    }

    async fn trigger_snapshot(
        &self,
        _: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        let target = self.node.applied_status().applied.map_or(0, |l| l.index);
        self.node
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let m = self
            .node
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= target),
                "snapshot built",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(e.to_string()))?;
        Ok(Response::new(pb::TriggerSnapshotResponse {
            snapshot_index: m.snapshot.map(|l| l.index),
        }))
    }

    async fn state_digest(
        &self,
        _: Request<pb::StateDigestRequest>,
    ) -> Result<Response<pb::StateDigestResponse>, Status> {
        let store = self.node.store.clone();
        let scan =
            tokio::task::spawn_blocking(move || crate::raft::state_machine::scan_digest(&store))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::StateDigestResponse {
            applied_index: scan.applied.map(|l| l.index),
            chained_digest: format!("{:032x}", scan.chained),
            scan_digest: format!("{:032x}", scan.scan),
            records: scan.records,
        }))
    }
}
