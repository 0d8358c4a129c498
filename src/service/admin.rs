//! Admin: a node's status, cluster membership, the idempotency window, snapshots, the
//! state digest and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{guard, Caller, Service, ServiceError};
use crate::auth::{Identity, Resource};
use crate::limits::Method;
use crate::node::metrics::LimitGauges;
use crate::node::{Members, MembershipChange};
use crate::raft::state_machine::ScanDigest;
use crate::raft::{NodeId, NodeInfo};

/// One follower's replication progress, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationLag {
    pub node_id: NodeId,
    pub matched_index: Option<u64>,
    pub lag: u64,
}

/// Where a node stands.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub info: NodeInfo,
    pub role: &'static str,
    pub leader_id: Option<NodeId>,
    /// The leader's gRPC address, if the leader is a known member.
    pub leader_grpc_addr: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Members,
    pub learners: Members,
    /// Leader only.
    pub replication: Vec<ReplicationLag>,
    pub event_count: u64,
    pub dedupe_window: Option<Duration>,
    pub state_digest: u128,
    pub security: Security,
    /// The GraphQL API's limits (`[graphql]`).
    pub graphql: crate::config::GraphqlSettings,
}

/// How a node protects itself (shown by `aetherctl status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    /// Tokens are checked.
    pub auth: bool,
    pub tls: bool,
    /// `--dev`: loopback only.
    pub dev: bool,
    /// `--insecure`: reachable from elsewhere without authentication, on purpose.
    pub insecure: bool,
}

/// Liveness: what `/healthz` shows (read without touching the store).
#[derive(Debug, Clone)]
pub struct Health {
    pub node_id: NodeId,
    pub role: &'static str,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub applied_index: Option<u64>,
    pub event_count: u64,
    /// Why Raft stopped on this node, if it did.
    pub raft_error: Option<String>,
}

/// The members after a membership change, and the log index that carried it.
#[derive(Debug, Clone)]
pub struct Membership {
    pub log_index: u64,
    pub voters: Members,
    pub learners: Members,
}

impl Service {
    pub fn node_status(&self, caller: &Caller) -> Result<NodeStatus, ServiceError> {
        self.authorize_view(caller)?;
        let n = &self.node;
        let m = n.raft_metrics();
        let applied = n.applied_status();
        let (voters, learners) = n.members();
        let leader_grpc_addr = m.current_leader.and_then(|l| {
            voters
                .iter()
                .chain(learners.iter())
                .find(|(id, _)| *id == l)
                .map(|(_, i)| i.grpc_addr.clone())
        });
        let last = m.last_log_index.unwrap_or(0);
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, matched)| ReplicationLag {
                        node_id: *id,
                        matched_index: matched.map(|l| l.index),
                        lag: last.saturating_sub(matched.map_or(0, |l| l.index)),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(NodeStatus {
            node_id: n.id(),
            info: n.info().clone(),
            role: n.role(),
            leader_id: m.current_leader,
            leader_grpc_addr,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: n.committed_index(),
            applied_index: applied.applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters,
            learners,
            replication,
            event_count: applied.next_global_position,
            dedupe_window: n.dedupe_window()?,
            state_digest: applied.digest,
            security: Security {
                auth: n.auth().is_some(),
                tls: n.config().tls.is_some(),
                dev: n.config().dev,
                insecure: n.config().insecure,
            },
            graphql: n.config().graphql.clone(),
        })
    }

    /// The caller as this node verified it (`None`: authentication is off). Needs a valid
    /// token and nothing more: it is how a token's holder finds out what it grants.
    pub fn whoami(&self, caller: &Caller) -> Result<Option<Identity>, ServiceError> {
        Ok(self.verified(caller)?.cloned())
    }

    pub fn health(&self, _caller: &Caller) -> Health {
        let n = &self.node;
        let m = n.raft_metrics();
        let applied = n.applied_status();
        Health {
            node_id: n.id(),
            role: n.role(),
            leader_id: m.current_leader,
            term: m.current_term,
            applied_index: applied.applied.map(|l| l.index),
            event_count: applied.next_global_position,
            raft_error: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }

    /// Initializes a new cluster with these voters (this node among them).
    pub async fn init_cluster(
        &self,
        caller: &Caller,
        members: Vec<(NodeId, NodeInfo)>,
    ) -> Result<(), ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        if members.is_empty() {
            return Err(ServiceError::invalid("init needs at least one member"));
        }
        let mut map = BTreeMap::new();
        for (id, info) in members {
            check_member(id, &info)?;
            if map.insert(id, info).is_some() {
                return Err(ServiceError::invalid(format!("node {id} listed twice")));
            }
        }
        let me = self.node.id();
        if !map.contains_key(&me) {
            return Err(ServiceError::invalid(format!(
                "init must list this node ({me}) among the members"
            )));
        }
        Ok(self.node.init(map).await?)
    }

    pub async fn add_learner(
        &self,
        caller: &Caller,
        id: NodeId,
        info: NodeInfo,
        blocking: bool,
    ) -> Result<Membership, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        check_member(id, &info)?;
        let index = self.node.add_learner(id, info, blocking).await?;
        Ok(self.membership(index))
    }

    pub async fn change_membership(
        &self,
        caller: &Caller,
        voters: BTreeSet<NodeId>,
        retain: bool,
    ) -> Result<Membership, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        if voters.is_empty() {
            return Err(ServiceError::invalid("the voter set cannot be empty"));
        }
        let index = self
            .node
            .change_membership(MembershipChange::ReplaceVoters(voters), retain)
            .await?;
        Ok(self.membership(index))
    }

    /// Removes a voter (never the last one) or a learner.
    pub async fn remove_node(
        &self,
        caller: &Caller,
        id: NodeId,
    ) -> Result<Membership, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        let (voters, learners) = self.node.members();
        let change = if voters.iter().any(|(v, _)| *v == id) {
            if voters.len() == 1 {
                return Err(ServiceError::FailedPrecondition(
                    "cannot remove the last voter".into(),
                ));
            }
            MembershipChange::RemoveVoters(BTreeSet::from([id]))
        } else if learners.iter().any(|(l, _)| *l == id) {
            MembershipChange::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(ServiceError::NotFound(format!("node {id} is not a member")));
        };
        let index = self.node.change_membership(change, false).await?;
        Ok(self.membership(index))
    }

    fn membership(&self, log_index: u64) -> Membership {
        let (voters, learners) = self.node.members();
        Membership {
            log_index,
            voters,
            learners,
        }
    }

    /// The leader's read index (leader only: it confirms its leadership with a quorum).
    pub async fn read_index(&self, caller: &Caller) -> Result<Option<u64>, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        Ok(self.node.read_index().await?)
    }

    /// Sets the cluster's idempotency window; the window now in force.
    pub async fn set_dedupe_window(
        &self,
        caller: &Caller,
        window: Duration,
    ) -> Result<Duration, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        let node = &self.node;
        self.on_leader(|left| node.set_dedupe_window(window, caller.token.clone(), left))
            .await
    }

    /// Builds a snapshot of everything applied so far; the snapshot's index.
    pub async fn trigger_snapshot(&self, caller: &Caller) -> Result<Option<u64>, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        Ok(self.node.snapshot_now(Duration::from_secs(60)).await?)
    }

    /// The chained digest and a digest of a full scan of the state machine.
    pub async fn state_digest(&self, caller: &Caller) -> Result<ScanDigest, ServiceError> {
        self.admit(caller, Method::Admin, Resource::Cluster, 1)?;
        Ok(self.node.scan_digest().await?)
    }

    /// Prometheus text exposition of the node's metrics.
    /// The Prometheus text: for any caller when `/metrics` is open, else for a caller that
    /// may read.
    pub fn metrics_text(&self, caller: &Caller) -> Result<String, ServiceError> {
        if self.metrics_verifier().is_some() {
            self.authorize_view(caller)?;
        }
        let (factor, utilization) = self.guards.factor();
        let policies: Vec<LimitGauges> = self
            .guards
            .counts(guard::wall_now_ns(), std::time::Instant::now())
            .into_iter()
            .map(|c| LimitGauges {
                policy: c.name,
                share: f64::from(c.share_ppm) / 1e6,
                tokens_left: c.tokens_left,
                demand: c.demand_per_sec,
                refused: c.refused,
                shadow_refused: c.shadow_refused,
            })
            .collect();
        self.node
            .metrics()
            .set_limits(factor.as_f64(), utilization, &policies);
        Ok(self.node.render_metrics())
    }
}

fn check_member(id: NodeId, info: &NodeInfo) -> Result<(), ServiceError> {
    if id == 0 {
        return Err(ServiceError::invalid("node_id must be at least 1"));
    }
    if info.grpc_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ServiceError::invalid(format!(
            "grpc_addr {:?} is not HOST:PORT with an IP host",
            info.grpc_addr
        )));
    }
    Ok(())
}
