//! Wiring: opens the stores, starts Raft, the proposer and the servers, and offers the core
//! operations (append, reads with a consistency level, subscriptions, admin) that the API
//! layer converts to and from protobuf.

pub mod breakers;
pub mod call;
pub mod metrics;
pub mod proposer;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::ServerState;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::eventstore::read::{
    read_all, read_small_in_memory, read_stream, Page, PageLimit, ReadDirection,
};
use crate::eventstore::read_pool::ReadPool;
use crate::eventstore::subscribe::{self, Item, Target};
use crate::eventstore::{AppendCommand, AppendOutcome};
use crate::limits::{LimitPolicy, PolicyOutcome};
use crate::model::ValidationError;
use crate::raft::clock::ClusterClock;
use crate::raft::lease::{LeaseAsk, LeaseDesk, LeaseGrant};
use crate::raft::log_store::LogStore;
use crate::raft::network::{NetworkFactory, PeerRpc};
use crate::raft::read_index::{self, ReadIndexError};
use crate::raft::state_machine::{AppliedStatus, StateMachine};
use crate::raft::{Command, CommandOutcome, Denial, NodeId, NodeInfo, Raft, RaftMetrics};
use crate::storage::{LogDb, SmStore, StorageError};
use crate::telemetry::command::{TelemetryCommand, TelemetryOutcome};
use crate::telemetry::stream::{Applied, View};
use crate::workflow::store::{WorkflowCommand, WorkflowOutcome};

pub use metrics::Metrics;
pub use proposer::{CallerToken, ProposeError, Proposer};

/// Errors of the core operations; the API layer maps each to one status code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    BadRequest(String),
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// Not sent: the breaker to the leader is open. The leader is named for the client's
    /// hint; the message says which breaker and why.
    #[error("{message}")]
    BreakerOpen {
        leader: (NodeId, NodeInfo),
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A wait (not a write) ran past its deadline.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The leader did not accept the caller's credential for a forwarded command.
    #[error("{0}")]
    Unauthenticated(String),
    /// The leader found the caller's credential without the role or scope the command needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Internal(String),
}

impl From<ProposeError> for NodeError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader } => NodeError::NotLeader { leader },
            ProposeError::BreakerOpen { ref leader, .. } => NodeError::BreakerOpen {
                leader: leader.clone(),
                message: e.to_string(),
            },
            ProposeError::Overloaded(_) => NodeError::Overloaded(e.to_string()),
            ProposeError::Timeout(_) | ProposeError::Unknown(_) => {
                NodeError::OutcomeUnknown(e.to_string())
            }
            ProposeError::Stopped(_) | ProposeError::Busy(_) | ProposeError::Forward(_) => {
                NodeError::Unavailable(e.to_string())
            }
        }
    }
}

/// A membership change refused: by a node that does not lead, while another change is in
/// progress, or by the change's own rules.
fn membership_error(
    e: RaftError<NodeId, openraft::error::ClientWriteError<NodeId, NodeInfo>>,
) -> NodeError {
    use openraft::error::{ChangeMembershipError, ClientWriteError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => NodeError::Unavailable(c.to_string()),
            _ => NodeError::FailedPrecondition(c.to_string()),
        },
        RaftError::Fatal(f) => NodeError::Unavailable(f.to_string()),
    }
}

/// A change of the cluster's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// These voters, and only these (learners among them are promoted).
    ReplaceVoters(BTreeSet<NodeId>),
    /// Voters to demote (to learners, or out with `retain: false`).
    RemoveVoters(BTreeSet<NodeId>),
    /// Members to remove.
    RemoveNodes(BTreeSet<NodeId>),
}

/// Members of the cluster with their addresses.
pub type Members = Vec<(NodeId, NodeInfo)>;

/// Read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began (read index via the leader).
    Linearizable,
    /// This node's applied state, possibly stale on a follower.
    Local,
}

/// A running node's core.
pub struct Node {
    id: NodeId,
    info: NodeInfo,
    config: Arc<Config>,
    raft: Raft,
    store: Arc<SmStore>,
    applied: watch::Receiver<AppliedStatus>,
    /// Raw segments stored by applied entries, for telemetry subscriptions.
    telemetry_feed: crate::telemetry::stream::Feed,
    proposer: Proposer,
    network: NetworkFactory,
    metrics: Metrics,
    /// The time this node stamps into entries when it leads.
    clock: Arc<ClusterClock>,
    log_db: Arc<LogDb>,
    log_store: LogStore,
    /// Open subscriptions' buffers, for queue health (a slow subscriber fills its own).
    subscribers: std::sync::Mutex<Vec<mpsc::WeakSender<Item>>>,
    /// One permit per open subscription (`max_subscriptions`).
    subscription_slots: Arc<tokio::sync::Semaphore>,
    /// Where reads of the store run: off the runtime's workers, `max_concurrent_reads` at
    /// a time.
    reads: ReadPool,
    /// The leases of the cluster-wide rate limits this node grants while it leads.
    leases: Arc<LeaseDesk>,
    /// Verifies bearer tokens on both planes (`None`: authentication is off). One per node,
    /// shared by every adapter; SIGHUP reloads its keys.
    auth: Option<Arc<crate::auth::Verifier>>,
    /// The TLS material of every listener and peer call (`None`: plaintext); SIGHUP
    /// reloads it.
    tls: Option<crate::tls::LiveTls>,
}

/// Who owns a data directory: the node id, and the directory's incarnation.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Identity {
    node_id: NodeId,
    incarnation: String,
}

/// Checks (or, on first start, records) which node owns `data_dir`, and returns the
/// directory's incarnation. A data directory never silently changes identity.
fn check_identity(data_dir: &Path, node_id: NodeId) -> Result<String, NodeError> {
    let path = data_dir.join("identity.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                NodeError::Internal(format!("{} is unreadable: {e}", path.display()))
            })?;
            if stored.node_id != node_id {
                return Err(NodeError::FailedPrecondition(format!(
                    "data directory {} belongs to node {}, not node {node_id}",
                    data_dir.display(),
                    stored.node_id
                )));
            }
            Ok(stored.incarnation)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity {
                node_id,
                incarnation: uuid::Uuid::new_v4().simple().to_string(),
            };
            let tmp = data_dir.join("identity.json.tmp");
            let bytes =
                serde_json::to_vec(&identity).map_err(|e| NodeError::Internal(e.to_string()))?;
            (|| {
                std::fs::write(&tmp, &bytes)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                crate::storage::fsync_dir(data_dir)
            })()
            .map_err(StorageError::from)?;
            Ok(identity.incarnation)
        }
        Err(e) => Err(StorageError::from(e).into()),
    }
}

impl Node {
    /// Opens the stores and starts Raft and the proposer. Servers are started by the caller;
    /// `grpc_addr` and `http_addr` are the addresses peers and clients reach it at.
    pub async fn open(
        config: Config,
        grpc_addr: String,
        http_addr: String,
    ) -> Result<Arc<Node>, NodeError> {
        config
            .validate()
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        // Every key is read and checked before anything starts: a bad key refuses to start.
        let (auth, node_tokens) = if config.auth.enabled {
            let verifier = config
                .auth
                .verifier()
                .map_err(|e| NodeError::BadRequest(e.to_string()))?;
            // One node token signed and verified now: a signing key the key set does not
            // verify refuses to start, rather than every peer refusing this node later.
            let tokens = config
                .auth
                .node_tokens(config.node_id, &verifier)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?;
            (Some(Arc::new(verifier)), Some(Arc::new(tokens)))
        } else {
            (None, None)
        };
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(StorageError::from)?;
        let incarnation = check_identity(&data_dir, config.node_id)?;
        let info = NodeInfo {
            grpc_addr,
            http_addr,
            incarnation,
        };
        let log_db = Arc::new(LogDb::open(&data_dir.join("raft"))?);
        let log_store =
            LogStore::new(log_db.clone()).with_read_bytes(config.raft.max_payload_bytes);
        let sm = StateMachine::open(&data_dir)?;
        let store = sm.store();
        let applied = sm.status();
        let telemetry_feed = sm.telemetry_feed();
        // Outgoing connections leave from the IP this node listens on.
        let source_ip = config
            .grpc_addr
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let metrics = Metrics::default();
        let breaker_log = Arc::new(breakers::BreakerLog::new(
            &metrics,
            config.breakers.max_pending_points,
        ));
        let peer_breakers = crate::raft::breakers::PeerBreakers::new(
            config.breakers.policy(),
            Duration::from_millis(config.breakers.slow_call_ms),
            breaker_log.clone(),
        )
        .map_err(|e| NodeError::BadRequest(format!("breakers: {e}")))?;
        let network = NetworkFactory::new(
            source_ip,
            config.raft.max_payload_bytes,
            peer_breakers,
            node_tokens,
        );
        let tls = config
            .tls
            .as_ref()
            .map(|t| t.load())
            .transpose()
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        if let Some(t) = &tls {
            metrics.tls_certificate_expiry.set(t.current().not_after());
        }
        let network = network.with_tls(tls.clone()).with_carrying(
            log_store.clone(),
            Duration::from_millis(config.raft.carry_wait_ms),
            config.raft.max_payload_entries,
        );
        let raft_config = Arc::new(
            config
                .openraft_config()
                .validate()
                .map_err(|e| NodeError::BadRequest(format!("raft config: {e}")))?,
        );
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network.clone(),
            log_store.clone(),
            sm,
        )
        .await
        .map_err(|e| NodeError::Internal(format!("starting raft: {e}")))?;
        let clock = Arc::new(ClusterClock::new(
            config.node_id,
            config.clock_offset_ms.saturating_mul(1_000_000),
        ));
        tokio::spawn(crate::raft::clock::run_probes(
            raft.clone(),
            clock.clone(),
            network.clone(),
        ));
        let proposer = Proposer::start(
            raft.clone(),
            config.proposer.clone(),
            Duration::from_secs(config.dedupe_window_secs),
            proposer::Route {
                id: config.node_id,
                network: network.clone(),
                // Leave the caller time to hear back before its own deadline.
                forward_timeout: Duration::from_millis(config.write_timeout_ms * 9 / 10),
                clock: clock.clone(),
                applied: applied.clone(),
                forwarded: metrics.forwarded_appends.clone(),
            },
        );
        let subscription_slots = Arc::new(tokio::sync::Semaphore::new(config.max_subscriptions));
        let reads = ReadPool::new(config.max_concurrent_reads);
        let node = Arc::new(Node {
            id: config.node_id,
            info,
            config: Arc::new(config),
            raft,
            store,
            applied,
            telemetry_feed,
            proposer,
            network,
            metrics,
            clock,
            log_db,
            log_store,
            subscribers: std::sync::Mutex::new(Vec::new()),
            subscription_slots,
            reads,
            leases: Arc::default(),
            auth,
            tls,
        });
        tokio::spawn(node.clone().adopt_rules_when_ready());
        tokio::spawn(breakers::write_points(Arc::downgrade(&node), breaker_log));
        if node.config.dev && !node.is_initialized().await? {
            tracing::info!(
                node_id = node.id,
                "dev mode: initializing a one-node cluster"
            );
            node.init(BTreeMap::from([(node.id, node.info.clone())]))
                .await?;
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// What the cluster knows of this node (its addresses and incarnation).
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The token verifier, when authentication is on.
    pub fn auth(&self) -> Option<&Arc<crate::auth::Verifier>> {
        self.auth.as_ref()
    }

    /// The TLS material in force (`None`: this node speaks plaintext).
    pub fn tls(&self) -> Option<&crate::tls::LiveTls> {
        self.tls.as_ref()
    }

    /// The node-to-node service this node answers (Raft, proposals forwarded by followers,
    /// clock probes, read index), for the server to mount.
    pub fn raft_service(&self) -> crate::raft::service::RaftService {
        crate::raft::service::RaftService::new(
            self.raft.clone(),
            self.id,
            &self.info.incarnation,
            Arc::new(self.proposer.clone()),
            crate::raft::service::ProposeRules {
                timeout: Duration::from_millis(self.config.write_timeout_ms),
                limits: self.config.limits.clone(),
                max_entry_bytes: self.config.proposer.max_batch_bytes
                    + crate::config::ENTRY_OVERHEAD_BYTES,
            },
            self.clock.clone(),
            self.leases.clone(),
        )
        .with_auth(self.auth.clone())
    }

    /// The rate-limit policies this node applied (their names): the only ones its lease desk
    /// grants shares of while it leads.
    pub fn set_lease_policies(&self, names: Vec<String>) {
        self.leases.set_policies(names);
    }

    /// This node's shares of the cluster-wide rate limits and the cluster's adaptive
    /// factor: granted here while this node leads, else asked of the leader (one
    /// `raft.v1.Lease`, within `timeout`).
    pub async fn lease(&self, ask: &LeaseAsk, timeout: Duration) -> Result<LeaseGrant, NodeError> {
        use crate::raft::lease::LeaseError;
        let m = self.raft_metrics();
        let leader = match m.current_leader {
            Some(id) if id == self.id => {
                return self
                    .leases
                    .grant_as_leader(
                        &self.raft,
                        self.id,
                        ask,
                        self.proposer.load().queue_utilization,
                    )
                    .await
                    .map_err(|e| match e {
                        LeaseError::NotLeader(_) => NodeError::NotLeader { leader: None },
                        LeaseError::Invalid(m) => NodeError::BadRequest(m),
                    });
            }
            Some(id) => m
                .membership_config
                .membership()
                .get_node(&id)
                .map(|info| (id, info.clone())),
            None => None,
        };
        let Some((id, info)) = leader else {
            return Err(NodeError::NotLeader { leader: None });
        };
        let body = postcard::to_allocvec(ask)
            .map_err(|e| NodeError::Internal(format!("encoding a lease request: {e}")))?;
        let reply = self
            .network
            .peer(id, &info)
            .call(PeerRpc::Lease, body.into(), timeout)
            .await
            .map_err(|s| {
                NodeError::Unavailable(format!(
                    "no lease from the leader at {}: {}",
                    info.grpc_addr,
                    call::status_detail(&s)
                ))
            })?;
        postcard::from_bytes(&reply)
            .map_err(|e| NodeError::Unavailable(format!("undecodable lease from node {id}: {e}")))
    }

    /// Stops Raft (on shutdown, after the servers stopped).
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| NodeError::Internal(format!("raft shutdown: {e}")))
    }

    /// Adds a learner; the log index of the membership change. A node whose code cannot
    /// apply the rules the cluster adopted is refused (it would stop, or fork, at the first
    /// entry it cannot apply).
    pub async fn add_learner(
        &self,
        id: NodeId,
        info: NodeInfo,
        blocking: bool,
    ) -> Result<u64, NodeError> {
        let adopted = crate::eventstore::load_rules_version(&self.store.db())?;
        let known = crate::raft::clock::rules_known_by(&self.network, id, &info)
            .await
            .map_err(|e| {
                NodeError::FailedPrecondition(format!(
                    "{e}: a node joins only once it answers (start it first)"
                ))
            })?;
        if known < adopted {
            return Err(NodeError::FailedPrecondition(format!(
                "node {id} runs code that knows apply rules up to {known}, but the cluster \
                 applies rules {adopted}: upgrade it before it joins"
            )));
        }
        let resp = self
            .raft
            .add_learner(id, info, blocking)
            .await
            .map_err(membership_error)?;
        Ok(resp.log_id.index)
    }

    /// Changes the voters or removes nodes; the log index of the membership change.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        retain: bool,
    ) -> Result<u64, NodeError> {
        let change = match change {
            MembershipChange::ReplaceVoters(v) => openraft::ChangeMembers::ReplaceAllVoters(v),
            MembershipChange::RemoveVoters(v) => openraft::ChangeMembers::RemoveVoters(v),
            MembershipChange::RemoveNodes(v) => openraft::ChangeMembers::RemoveNodes(v),
        };
        let resp = self
            .raft
            .change_membership(change, retain)
            .await
            .map_err(membership_error)?;
        Ok(resp.log_id.index)
    }

    /// Builds a snapshot of everything applied so far and waits (up to `timeout`) until it
    /// is in place; its index.
    pub async fn snapshot_now(&self, timeout: Duration) -> Result<Option<u64>, NodeError> {
        let target = self.applied_status().applied.map_or(0, |l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= target),
                "snapshot built",
            )
            .await
            .map_err(|e| NodeError::Timeout(e.to_string()))?;
        Ok(m.snapshot.map(|l| l.index))
    }

    /// Scans the whole state machine: its chained digest and a digest of what is stored.
    pub async fn scan_digest(&self) -> Result<crate::raft::state_machine::ScanDigest, NodeError> {
        let store = self.store.clone();
        Ok(
            tokio::task::spawn_blocking(move || crate::raft::state_machine::scan_digest(&store))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))??,
        )
    }

    pub async fn is_initialized(&self) -> Result<bool, NodeError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))
    }

    /// Initializes a new cluster with these voters.
    pub async fn init(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<(), NodeError> {
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => NodeError::FailedPrecondition(e.to_string()),
            RaftError::Fatal(e) => NodeError::Unavailable(e.to_string()),
        })
    }

    /// The leader this node knows of (itself included).
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub fn applied_status(&self) -> AppliedStatus {
        self.applied.borrow().clone()
    }

    /// Validates, proposes and waits for an append's outcome.
    pub async fn append(
        &self,
        cmd: AppendCommand,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<AppendOutcome, NodeError> {
        match self
            .propose_checked(Command::Append(cmd), caller, timeout)
            .await?
        {
            CommandOutcome::Append(o) => Ok(o),
            other => Err(NodeError::Internal(format!(
                "append answered with {other:?}"
            ))),
        }
    }

    /// Validates, proposes and waits for a workflow command's outcome. The transition rules
    /// are checked by the state machine, against the replicated projection, atomically with
    /// the append.
    pub async fn workflow(
        &self,
        mut cmd: WorkflowCommand,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<WorkflowOutcome, NodeError> {
        cmd.snapshot_every = self.config.workflow_snapshot_every;
        match self
            .propose_checked(Command::Workflow(cmd), caller, timeout)
            .await?
        {
            CommandOutcome::Workflow(o) => Ok(o),
            other => Err(NodeError::Internal(format!(
                "workflow command answered with {other:?}"
            ))),
        }
    }

    /// Proposes a telemetry command (ingest or retention) and waits for its outcome.
    pub async fn telemetry(
        &self,
        cmd: TelemetryCommand,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<TelemetryOutcome, NodeError> {
        match self
            .propose_checked(Command::Telemetry(cmd), caller, timeout)
            .await?
        {
            CommandOutcome::Telemetry(o) => Ok(o),
            other => Err(NodeError::Internal(format!(
                "telemetry command answered with {other:?}"
            ))),
        }
    }

    /// A client's command: checked by the same rules as a peer's `Propose`
    /// (`Command::validate`), weighed, proposed (with its caller's token, which the leader
    /// checks again if this node forwards it), and its outcome awaited. A leader's refusal
    /// of the caller is this command's error.
    async fn propose_checked(
        &self,
        cmd: Command,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<CommandOutcome, NodeError> {
        cmd.validate(&self.config.limits)
            .map_err(NodeError::BadRequest)?;
        let weight = self.entry_weight(&cmd)?;
        match self.proposer.propose(cmd, caller, weight, timeout).await? {
            CommandOutcome::Denied(Denial::Unauthenticated(m)) => {
                Err(NodeError::Unauthenticated(m))
            }
            CommandOutcome::Denied(Denial::Forbidden(m)) => Err(NodeError::Forbidden(m)),
            outcome => Ok(outcome),
        }
    }

    /// While this node leads a cluster that applies older rules than this code knows, and
    /// every voter runs code that knows them, proposes adopting them (which also seeds the
    /// replicated idempotency window from this node's setting). Runs until shutdown.
    pub async fn adopt_rules_when_ready(self: Arc<Self>) {
        let mut tick = tokio::time::interval(crate::raft::clock::PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (leads, voters, running) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (
                    m.state == openraft::ServerState::Leader && m.current_leader == Some(self.id),
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .collect::<Vec<_>>(),
                    m.running_state.is_ok(),
                )
            };
            if !running {
                return;
            }
            let current = match crate::eventstore::load_rules_version(&self.store.db()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!("reading the apply rules version: {e}");
                    continue;
                }
            };
            if !leads
                || current >= crate::eventstore::APPLY_RULES_VERSION
                || !self
                    .clock
                    .all_voters_know(&voters, crate::eventstore::APPLY_RULES_VERSION)
            {
                continue;
            }
            // The voters' last readings say they know the rules; a fresh round of every
            // member, learners included, makes sure (a member rolled back since, or a learner
            // on an older binary, would fork at the adopting entry).
            let (voters_now, learners_now) = self.members();
            let members: Vec<_> = voters_now.into_iter().chain(learners_now).collect();
            if let Err(e) = crate::raft::clock::all_members_know(
                &self.network,
                self.id,
                &members,
                crate::eventstore::APPLY_RULES_VERSION,
            )
            .await
            {
                tracing::debug!("not adopting apply rules yet: {e}");
                continue;
            }
            let cmd = Command::AdoptRules {
                version: crate::eventstore::APPLY_RULES_VERSION,
                dedupe_window_ns: i64::try_from(
                    Duration::from_secs(self.config.dedupe_window_secs).as_nanos(),
                )
                .unwrap_or(i64::MAX),
            };
            let timeout = Duration::from_millis(self.config.write_timeout_ms);
            match self.proposer.propose(cmd, None, 0, timeout).await {
                Ok(CommandOutcome::RulesAdopted { version }) => {
                    tracing::info!("the cluster applies rules version {version} from now on")
                }
                Ok(other) => tracing::warn!("adopting apply rules answered {other:?}"),
                Err(e) => tracing::debug!("adopting apply rules: {e}"),
            }
        }
    }

    /// Sets the cluster's idempotency window (replicated, from the entry that carries it on).
    pub async fn set_dedupe_window(
        &self,
        window: Duration,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<Duration, NodeError> {
        let window_ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        crate::eventstore::check_dedupe_window(window_ns).map_err(NodeError::BadRequest)?;
        self.require_rules(
            crate::eventstore::DEDUPE_WINDOW_RULES_VERSION,
            "a replicated idempotency window",
        )?;
        match self
            .propose_checked(Command::SetDedupeWindow { window_ns }, caller, timeout)
            .await?
        {
            CommandOutcome::DedupeWindowSet { window_ns } => {
                Ok(Duration::from_nanos(window_ns.max(0) as u64))
            }
            CommandOutcome::Refused { reason } => Err(NodeError::BadRequest(reason)),
            other => Err(NodeError::Internal(format!(
                "dedupe window answered with {other:?}"
            ))),
        }
    }

    /// Sets (or replaces) a rate-limit policy, once the cluster applies the rules that know
    /// policies.
    pub async fn set_limit(
        &self,
        policy: LimitPolicy,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<PolicyOutcome, NodeError> {
        self.policy_command(Command::SetLimit(policy), caller, timeout)
            .await
    }

    pub async fn delete_limit(
        &self,
        name: String,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<PolicyOutcome, NodeError> {
        self.policy_command(Command::DeleteLimit { name }, caller, timeout)
            .await
    }

    /// Refuses a command that needs apply rules `version` before the cluster adopted them.
    fn require_rules(&self, version: u32, what: &str) -> Result<(), NodeError> {
        let rules = crate::eventstore::load_rules_version(&self.store.db())?;
        if rules < version {
            return Err(NodeError::FailedPrecondition(format!(
                "the cluster applies rules {rules} and {what} need rules {version}: every member \
                 must run this version, then a leader adopts them within seconds; try again \
                 shortly"
            )));
        }
        Ok(())
    }

    async fn policy_command(
        &self,
        cmd: Command,
        caller: CallerToken,
        timeout: Duration,
    ) -> Result<PolicyOutcome, NodeError> {
        self.require_rules(crate::limits::POLICY_RULES_VERSION, "rate-limit policies")?;
        match self.propose_checked(cmd, caller, timeout).await? {
            CommandOutcome::Limit(o) => Ok(o),
            other => Err(NodeError::Internal(format!(
                "a policy change answered with {other:?}"
            ))),
        }
    }

    /// The rate-limit policies as applied here.
    pub async fn limit_policies(&self) -> Result<Vec<LimitPolicy>, NodeError> {
        self.read_store(|db| Ok(crate::limits::load_all(db)?)).await
    }

    /// The cluster's idempotency window as applied here.
    pub fn dedupe_window(&self) -> Result<Option<Duration>, NodeError> {
        Ok(crate::eventstore::load_dedupe_window(&self.store.db())?
            .map(|ns| Duration::from_nanos(ns.max(0) as u64)))
    }

    /// The bytes a command takes in a Raft entry (its encoding), which the proposer batches
    /// by. A command that cannot fit one entry is refused here: every entry must stay
    /// shippable to a follower in one AppendEntries message (see `Config::validate`).
    fn entry_weight(&self, cmd: &Command) -> Result<usize, NodeError> {
        let len = postcard::serialize_with_flavor(cmd, postcard::ser_flavors::Size::default())
            .map_err(|e| NodeError::Internal(format!("sizing a command: {e}")))?;
        let max = self.config.proposer.max_batch_bytes;
        if len > max {
            return Err(NodeError::BadRequest(format!(
                "the request takes {len} bytes in the replicated log, more than one entry \
                 carries (proposer.max_batch_bytes = {max}): send it in smaller parts"
            )));
        }
        Ok(len)
    }

    /// Waits until this node's state reflects every write acknowledged before the call.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), NodeError> {
        if consistency == Consistency::Local {
            return Ok(());
        }
        let index = match read_index::confirmed(&self.raft, self.id).await {
            Ok(index) => index,
            Err(ReadIndexError::NotLeader {
                leader: Some((id, Some(leader))),
            }) => self.leader_read_index(id, &leader).await?,
            Err(ReadIndexError::NotLeader { .. }) => {
                return Err(NodeError::Unavailable(
                    "no leader known: election in progress, retry".into(),
                ))
            }
            Err(e) => return Err(NodeError::Unavailable(e.to_string())),
        };
        if let Some(index) = index {
            self.wait_applied(index, Duration::from_millis(self.config.write_timeout_ms))
                .await?;
        }
        Ok(())
    }

    /// Asks the leader for its read index (it confirms its leadership with a quorum).
    async fn leader_read_index(
        &self,
        id: NodeId,
        leader: &NodeInfo,
    ) -> Result<Option<u64>, NodeError> {
        let failed = |s: tonic::Status| match crate::raft::breakers::refusal(&s) {
            // Nothing was sent: say so at once, with the leader for the client's hint.
            Some(open) => NodeError::BreakerOpen {
                leader: (id, leader.clone()),
                message: format!(
                    "no read index from the leader at {}: {open}",
                    leader.grpc_addr
                ),
            },
            None => NodeError::Unavailable(format!(
                "no read index from the leader at {}: {}",
                leader.grpc_addr,
                call::status_detail(&s)
            )),
        };
        self.network
            .peer(id, leader)
            .read_index(Duration::from_millis(self.config.write_timeout_ms))
            .await
            .map_err(failed)
    }

    /// Waits until the state machine has applied `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), NodeError> {
        let mut rx = self.applied.clone();
        let reached = |s: &AppliedStatus| s.applied.is_some_and(|l| l.index >= index);
        tokio::time::timeout(timeout, rx.wait_for(reached))
            .await
            .map_err(|_| {
                NodeError::Unavailable(format!("index {index} not applied within {timeout:?}"))
            })?
            .map_err(|_| NodeError::Unavailable("node is shutting down".into()))?;
        Ok(())
    }

    /// Leader only: the read index, after confirming leadership with a quorum.
    pub async fn read_index(&self) -> Result<Option<u64>, NodeError> {
        read_index::confirmed(&self.raft, self.id)
            .await
            .map_err(|e| match e {
                ReadIndexError::NotLeader { leader } => NodeError::NotLeader {
                    leader: leader.and_then(|(id, info)| info.map(|i| (id, i))),
                },
                other => NodeError::Unavailable(other.to_string()),
            })
    }

    /// A read page: `requested` events (0: the default), bounded by `max_read_bytes`.
    pub fn page_limit(&self, requested: u32) -> Result<PageLimit, NodeError> {
        let limits = &self.config.limits;
        let events = limits.read_limit(requested)?;
        Ok(PageLimit::new(events as usize, limits.max_read_bytes))
    }

    /// Runs long maintenance of the store (compaction, a full scan) on the blocking pool,
    /// not in a read slot: reads keep their slots, and the read queue's utilization (which
    /// adaptive limits follow) measures reads.
    pub async fn maintain_store<R, F>(&self, work: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&crate::storage::SmDb) -> Result<R, NodeError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store.db()))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    /// Runs a read of the store on the read pool (off the runtime's workers).
    pub async fn read_store<R, F>(&self, read: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&crate::storage::SmDb) -> Result<R, NodeError> + Send + 'static,
    {
        let store = self.store.clone();
        self.reads
            .run(move || read(&store.db()))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    pub async fn read_stream(
        &self,
        stream: &str,
        from: Option<u64>,
        dir: ReadDirection,
        limit: u32,
    ) -> Result<Page, NodeError> {
        self.config.limits.validate_stream(stream)?;
        let limit = self.page_limit(limit)?;
        self.metrics.reads.inc();
        // A small read that memory holds is answered here, on the async worker: the
        // blocking pool's two thread hand-offs cost more than such a read (issue 14's read
        // floor). Anything else goes to the pool.
        if let Some(page) = read_small_in_memory(&self.store.db(), stream, from, dir, limit)? {
            self.metrics.reads_in_memory.inc();
            return Ok(page);
        }
        let stream = stream.to_owned();
        self.read_store(move |db| Ok(read_stream(db, &stream, from, dir, limit)?))
            .await
    }

    pub async fn read_all(
        &self,
        from: Option<u64>,
        dir: ReadDirection,
        limit: u32,
    ) -> Result<Page, NodeError> {
        let limit = self.page_limit(limit)?;
        self.metrics.reads.inc();
        self.read_store(move |db| {
            let end = crate::eventstore::StoreState::load(db)?.next_global_position;
            Ok(read_all(db, from, dir, limit, end)?)
        })
        .await
    }

    /// One of the node's `max_subscriptions` slots, held for as long as a subscription
    /// runs (event and telemetry subscriptions share them); none free: `Overloaded`.
    pub fn subscription_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, NodeError> {
        self.subscription_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                NodeError::Overloaded(format!(
                    "this node serves {} subscriptions, its limit (max_subscriptions): \
                     subscribe elsewhere or retry later",
                    self.config.max_subscriptions
                ))
            })
    }

    /// Follows the raw telemetry segments applied entries store (subscribe before reading
    /// the state a subscription starts from, so nothing applied in between is missed).
    pub fn telemetry_feed(&self) -> tokio::sync::broadcast::Receiver<Arc<Applied>> {
        self.telemetry_feed.subscribe()
    }

    /// Follows what has been applied (any change wakes the receiver).
    pub fn applied_watch(&self) -> watch::Receiver<AppliedStatus> {
        self.applied.clone()
    }

    /// Runs a telemetry read on the read pool over one point-in-time view, with the index
    /// of the last entry applied in that same view.
    pub async fn read_telemetry<R, F>(&self, read: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&View<'_>, u64) -> Result<R, NodeError> + Send + 'static,
    {
        self.read_store(move |db| {
            let view = View::new(db);
            let applied = crate::raft::state_machine::applied_index(db, view.snapshot())?;
            read(&view, applied)
        })
        .await
    }

    /// Starts a subscription; events arrive on the returned channel (bounded in events and
    /// bytes: a slow subscriber holds back only its own reader). At most
    /// `max_subscriptions` are open at once; beyond, `Overloaded`.
    pub fn subscribe(
        &self,
        target: Target,
        from: Option<u64>,
    ) -> Result<mpsc::Receiver<Item>, NodeError> {
        if let Target::Stream(s) = &target {
            self.config.limits.validate_stream(s)?;
        }
        let slot = self.subscription_slot()?;
        let (tx, rx) = mpsc::channel(self.config.subscriber_buffer);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx.downgrade());
        let store = self.store.clone();
        let reads = self.reads.clone();
        let applied = self.applied.clone();
        let gauge = self.metrics.subscribers.clone();
        let bounds = subscribe::Bounds {
            page: PageLimit::new(
                self.config.subscriber_buffer.clamp(16, 1024),
                self.config.limits.max_read_bytes,
            ),
            buffer_bytes: self.config.subscriber_buffer_bytes,
        };
        gauge.inc();
        tokio::spawn(async move {
            let res = subscribe::run(store, reads, applied, target, from, bounds, tx).await;
            gauge.dec();
            drop(slot);
            match res {
                Err(subscribe::SubscriptionEnd::Storage(e)) => {
                    tracing::error!(error = %e, "subscription stopped by a storage error");
                }
                Err(subscribe::SubscriptionEnd::Read(e)) => {
                    tracing::error!(error = %e, "subscription stopped: its read failed");
                }
                _ => {}
            }
        });
        Ok(rx)
    }

    /// The members as this node knows them: (voters, learners).
    pub fn members(&self) -> (Members, Members) {
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut v = Vec::new();
        let mut l = Vec::new();
        for (id, node) in membership.nodes() {
            if voters.contains(id) {
                v.push((*id, node.clone()));
            } else {
                l.push((*id, node.clone()));
            }
        }
        (v, l)
    }

    /// Where this node stands, as a word.
    pub fn role(&self) -> &'static str {
        match self.raft_metrics().state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
    }

    pub fn purged_index(&self) -> Option<u64> {
        self.raft_metrics().purged.map(|l| l.index)
    }

    /// The commit index this node has recorded (it trails the leader's by up to one
    /// heartbeat on followers).
    pub fn committed_index(&self) -> Option<u64> {
        self.log_store.committed().ok().flatten().map(|l| l.index)
    }

    /// Refreshes the gauges that mirror Raft and queue state, then renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let r = self.raft_metrics();
        m.raft_term.set(r.current_term as i64);
        m.raft_is_leader
            .set(i64::from(r.state == ServerState::Leader));
        m.raft_last_log_index
            .set(r.last_log_index.unwrap_or(0) as i64);
        m.raft_applied_index
            .set(r.last_applied.map_or(0, |l| l.index) as i64);
        m.raft_commit_index
            .set(self.committed_index().unwrap_or(0) as i64);
        m.events_stored
            .set(self.applied_status().next_global_position as i64);
        let stats = self.log_db.stats();
        m.log_syncs
            .set(stats.syncs.load(std::sync::atomic::Ordering::Relaxed) as i64);
        m.log_sync_callbacks
            .set(stats.callbacks.load(std::sync::atomic::Ordering::Relaxed) as i64);
        m.log_sync_seconds
            .set(stats.sync_micros.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6);
        let carry = self.network.carry_stats();
        m.raft_heartbeats_carrying.set(
            carry
                .heartbeats_carrying
                .load(std::sync::atomic::Ordering::Relaxed) as i64,
        );
        m.raft_answered_from_carried.set(
            carry
                .answered_from_carried
                .load(std::sync::atomic::Ordering::Relaxed) as i64,
        );
        m.clock_skew_seconds.set(self.clock.skew_ns() as f64 / 1e9);
        let last_commit = self.applied.borrow().last_commit_time_ns;
        if last_commit > 0 {
            m.commit_time_lag_seconds
                .set(self.clock.local_now_ns().saturating_sub(last_commit) as f64 / 1e9);
        }
        let (batches, commands, _forwarded) = self.proposer.batch_counts();
        m.proposer_batches.set(batches as i64);
        m.proposer_commands.set(commands as i64);
        for (queue, u) in self.queue_health() {
            m.set_queue(queue, u);
        }
        for (peer, state) in self.network.breakers().states() {
            m.set_breaker_state(peer, crate::raft::breakers::state_code(state));
        }
        m.render()
    }

    /// Utilization (0..1) of each bounded queue on the write path: the signal that adaptive
    /// rate limits follow.
    pub fn queue_health(&self) -> Vec<(&'static str, f64)> {
        let load = self.proposer.load();
        let r = self.raft_metrics();
        let backlog = r
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(r.last_applied.map_or(0, |l| l.index));
        let backlog_limit = self.config.raft.max_payload_entries.max(1) * 16;
        // The fullest subscriber buffer (forgetting closed subscriptions on the way).
        let mut subscribers = 0.0f64;
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| match w.upgrade() {
                Some(tx) => {
                    let used = tx.max_capacity() - tx.capacity();
                    subscribers = subscribers.max(used as f64 / tx.max_capacity() as f64);
                    true
                }
                None => false,
            });
        vec![
            ("proposals", load.queue_utilization),
            ("inflight_entries", load.inflight_utilization),
            (
                "apply_backlog",
                (backlog as f64 / backlog_limit as f64).min(1.0),
            ),
            ("subscribers", subscribers),
            ("reads", self.reads.utilization()),
        ]
    }
}
