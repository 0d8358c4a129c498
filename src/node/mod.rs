//! Wiring: opens the stores, starts Raft, the proposer and the servers, and offers the core
//! operations (append, reads with a consistency level, subscriptions, admin) that the API
//! layer converts to and from protobuf.

pub mod call;
pub mod metrics;
pub mod proposer;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::eventstore::read::{read_all, read_stream, Page, PageLimit, ReadDirection};
use crate::eventstore::read_pool::ReadPool;
use crate::eventstore::subscribe::{self, Item, Target};
use crate::eventstore::{AppendCommand, AppendOutcome};
use crate::model::ValidationError;
use crate::proto::aetherops::v1::admin_client::AdminClient;
use crate::raft::clock::ClusterClock;
use crate::raft::log_store::LogStore;
use crate::raft::network::NetworkFactory;
use crate::raft::state_machine::{AppliedStatus, StateMachine};
use crate::raft::{Command, CommandOutcome, NodeId, NodeInfo, Raft, RaftMetrics};
use crate::storage::{LogDb, SmStore, StorageError};
use crate::telemetry::command::{TelemetryCommand, TelemetryOutcome};
use crate::workflow::store::{WorkflowCommand, WorkflowOutcome};

pub use metrics::Metrics;
pub use proposer::{ProposeError, Proposer};

/// Metadata header marking a request one node forwarded to another, so it is never
/// forwarded twice.
pub const FORWARDED_HEADER: &str = "x-aether-forwarded";

/// Errors of the core operations; the API layer maps each to one status code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    BadRequest(String),
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Internal(String),
}

impl From<ProposeError> for NodeError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader } => NodeError::NotLeader { leader },
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
    pub id: NodeId,
    pub info: NodeInfo,
    pub config: Arc<Config>,
    pub raft: Raft,
    pub store: Arc<SmStore>,
    pub applied: watch::Receiver<AppliedStatus>,
    pub proposer: Proposer,
    pub network: NetworkFactory,
    pub metrics: Metrics,
    /// The time this node stamps into entries when it leads.
    pub clock: Arc<ClusterClock>,
    pub log_db: Arc<LogDb>,
    log_store: LogStore,
    /// Open subscriptions' buffers, for queue health (a slow subscriber fills its own).
    subscribers: std::sync::Mutex<Vec<mpsc::WeakSender<Item>>>,
    /// One permit per open subscription (`max_subscriptions`).
    subscription_slots: Arc<tokio::sync::Semaphore>,
    /// Where reads of the store run: off the runtime's workers, `max_concurrent_reads` at
    /// a time.
    pub reads: ReadPool,
}

/// Listeners bound before anything else starts, so their real ports are known.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let grpc = TcpListener::bind(&config.grpc_addr).await?;
        let http = TcpListener::bind(&config.http_addr).await?;
        Ok(Listeners {
            grpc_addr: grpc.local_addr()?,
            http_addr: http.local_addr()?,
            grpc,
            http,
        })
    }
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
        // Outgoing connections leave from the IP this node listens on.
        let source_ip = config
            .grpc_addr
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let network = NetworkFactory::new(source_ip, config.raft.max_payload_bytes);
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
            proposer,
            network,
            metrics: Metrics::default(),
            clock,
            log_db,
            log_store,
            subscribers: std::sync::Mutex::new(Vec::new()),
            subscription_slots,
            reads,
        });
        tokio::spawn(node.clone().adopt_rules_when_ready());
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

    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub fn applied_status(&self) -> AppliedStatus {
        self.applied.borrow().clone()
    }

    /// Validates, proposes and waits for an append's outcome.
    pub async fn append(&self, cmd: AppendCommand) -> Result<AppendOutcome, NodeError> {
        match self.propose_checked(Command::Append(cmd)).await? {
            CommandOutcome::Append(o) => Ok(o),
            other => Err(NodeError::Internal(format!(
                "append answered with {other:?}"
            ))),
        }
    }

    /// Validates, proposes and waits for a workflow command's outcome. The transition rules
    /// are checked by the state machine, against the replicated projection, atomically with
    /// the append.
    pub async fn workflow(&self, mut cmd: WorkflowCommand) -> Result<WorkflowOutcome, NodeError> {
        cmd.snapshot_every = self.config.workflow_snapshot_every;
        match self.propose_checked(Command::Workflow(cmd)).await? {
            CommandOutcome::Workflow(o) => Ok(o),
            other => Err(NodeError::Internal(format!(
                "workflow command answered with {other:?}"
            ))),
        }
    }

    /// Proposes a telemetry command (ingest or retention) and waits for its outcome.
    pub async fn telemetry(&self, cmd: TelemetryCommand) -> Result<TelemetryOutcome, NodeError> {
        match self.propose_checked(Command::Telemetry(cmd)).await? {
            CommandOutcome::Telemetry(o) => Ok(o),
            other => Err(NodeError::Internal(format!(
                "telemetry command answered with {other:?}"
            ))),
        }
    }

    /// A client's command: checked by the same rules as a peer's `Propose`
    /// (`Command::validate`), weighed, proposed, and its outcome awaited.
    async fn propose_checked(&self, cmd: Command) -> Result<CommandOutcome, NodeError> {
        cmd.validate(&self.config.limits)
            .map_err(NodeError::BadRequest)?;
        let weight = self.entry_weight(&cmd)?;
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        Ok(self.proposer.propose(cmd, weight, timeout).await?)
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
                || !self.clock.all_voters_current(&voters)
            {
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
            match self.proposer.propose(cmd, 0, timeout).await {
                Ok(CommandOutcome::RulesAdopted { version }) => {
                    tracing::info!("the cluster applies rules version {version} from now on")
                }
                Ok(other) => tracing::warn!("adopting apply rules answered {other:?}"),
                Err(e) => tracing::debug!("adopting apply rules: {e}"),
            }
        }
    }

    /// Sets the cluster's idempotency window (replicated, from the entry that carries it on).
    pub async fn set_dedupe_window(&self, window: Duration) -> Result<Duration, NodeError> {
        let window_ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        crate::eventstore::check_dedupe_window(window_ns).map_err(NodeError::BadRequest)?;
        if crate::eventstore::load_rules_version(&self.store.db())? < 2 {
            return Err(NodeError::FailedPrecondition(
                "the cluster has not adopted this version's rules yet (every voter must run it, \
                 and a leader adopts them within seconds): try again shortly"
                    .into(),
            ));
        }
        match self
            .propose_checked(Command::SetDedupeWindow { window_ns })
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
        let index = match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => read_log_id.map(|l| l.index),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let leader = f.leader_node.ok_or_else(|| {
                    NodeError::Unavailable("no leader known: election in progress, retry".into())
                })?;
                self.leader_read_index(&leader).await?
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                return Err(self.no_quorum(&e.got));
            }
            Err(RaftError::Fatal(e)) => {
                return Err(NodeError::Unavailable(format!(
                    "raft is not running on node {}: {e}",
                    self.id
                )))
            }
        };
        if let Some(index) = index {
            self.wait_applied(index, Duration::from_millis(self.config.write_timeout_ms))
                .await?;
        }
        Ok(())
    }

    /// Asks the leader for its read index (it confirms its leadership with a quorum).
    async fn leader_read_index(&self, leader: &NodeInfo) -> Result<Option<u64>, NodeError> {
        let channel = self
            .network
            .channel(&leader.grpc_addr)
            .map_err(|e| NodeError::Unavailable(format!("leader address: {e}")))?;
        let mut req = tonic::Request::new(crate::proto::aetherops::v1::ReadIndexRequest {});
        req.set_timeout(Duration::from_millis(self.config.write_timeout_ms));
        req.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from(self.id),
        );
        AdminClient::new(channel)
            .read_index(req)
            .await
            .map(|r| r.into_inner().read_index)
            .map_err(|s| {
                NodeError::Unavailable(format!(
                    "no read index from the leader at {}: {}",
                    leader.grpc_addr,
                    call::status_detail(&s)
                ))
            })
    }

    /// A leader that could not confirm its leadership: which voters did not answer, in words
    /// (openraft's error would print its whole membership).
    fn no_quorum(&self, answered: &BTreeSet<NodeId>) -> NodeError {
        let (voters, _) = self.members();
        let silent: Vec<String> = voters
            .iter()
            .filter(|(id, _)| !answered.contains(id))
            .map(|(id, info)| format!("node {id} at {}", info.grpc_addr))
            .collect();
        NodeError::Unavailable(format!(
            "node {} leads but could not confirm it with a quorum of voters: no answer from {} \
             (down or partitioned); nothing was read, retry later",
            self.id,
            silent.join(", ")
        ))
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
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map(|l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(NodeError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(self.no_quorum(&e.got))
            }
            Err(RaftError::Fatal(e)) => Err(NodeError::Unavailable(format!(
                "raft is not running on node {}: {e}",
                self.id
            ))),
        }
    }

    /// A read page: `requested` events (0: the default), bounded by `max_read_bytes`.
    pub fn page_limit(&self, requested: u32) -> Result<PageLimit, NodeError> {
        let limits = &self.config.limits;
        let events = limits.read_limit(requested)?;
        Ok(PageLimit::new(events as usize, limits.max_read_bytes))
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
        let slot = self
            .subscription_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                NodeError::Overloaded(format!(
                    "this node serves {} subscriptions, its limit (max_subscriptions): \
                     subscribe elsewhere or retry later",
                    self.config.max_subscriptions
                ))
            })?;
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

/// Runs a node until SIGINT or SIGTERM: binds, opens, serves, shuts down cleanly.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let listeners = Listeners::bind(&config)
        .await
        .with_context(|| format!("binding {} and {}", config.grpc_addr, config.http_addr))?;
    let grpc_addr = config
        .advertise_grpc_addr
        .clone()
        .unwrap_or_else(|| listeners.grpc_addr.to_string());
    let http_addr = config
        .advertise_http_addr
        .clone()
        .unwrap_or_else(|| listeners.http_addr.to_string());
    let data_dir = config.data_dir.clone();
    let node = Node::open(config, grpc_addr, http_addr).await?;
    let info = node.info.clone();
    // Tools and tests that started us with port 0 learn the real ports here.
    let listen = serde_json::json!({
        "node_id": node.id,
        "grpc_addr": listeners.grpc_addr.to_string(),
        "http_addr": listeners.http_addr.to_string(),
        "pid": std::process::id(),
    });
    let tmp = data_dir.join("listen.json.tmp");
    std::fs::write(&tmp, listen.to_string())?;
    std::fs::rename(&tmp, data_dir.join("listen.json"))?;
    tracing::info!(node_id = node.id, grpc = %info.grpc_addr, http = %info.http_addr, "aetherd serving");
    println!(
        "aetherd node {} serving gRPC on {} and HTTP on {} (data in {})",
        node.id,
        listeners.grpc_addr,
        listeners.http_addr,
        data_dir.display()
    );
    crate::api::serve(node.clone(), listeners, shutdown_signal()).await?;
    tracing::info!("shutting down raft");
    node.raft
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}

/// The workflow code's view of the event store on this node ([`WorkflowEventStore`]):
/// appends go through Raft (and the transition rules), reads come from the replicated state.
pub struct ReplicatedWorkflows<'a> {
    pub node: &'a Node,
}

impl crate::workflow::store::WorkflowEventStore for ReplicatedWorkflows<'_> {
    type Error = NodeError;

    async fn append(
        &self,
        workflow_id: &str,
        expected: crate::model::ExpectedVersion,
        event_id: uuid::Uuid,
        event: &crate::workflow::events::WorkflowEvent,
    ) -> Result<WorkflowOutcome, NodeError> {
        let encoded = event
            .encode()
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        self.node
            .workflow(WorkflowCommand {
                workflow_id: workflow_id.to_owned(),
                expected,
                events: vec![crate::workflow::store::WorkflowEventIn {
                    event_id,
                    event_type: encoded.event_type.to_owned(),
                    schema_version: encoded.schema_version,
                    payload: bytes::Bytes::from(encoded.payload),
                }],
                snapshot_every: 0,
            })
            .await
    }

    async fn get_events(
        &self,
        workflow_id: &str,
        from: u64,
        limit: PageLimit,
    ) -> Result<crate::workflow::store::WorkflowEventsPage, NodeError> {
        let id = workflow_id.to_owned();
        self.node
            .read_store(move |db| {
                crate::workflow::store::events_of(db, &id, from, limit).map_err(query_error)
            })
            .await
    }

    async fn get_events_since(
        &self,
        t_ns: i64,
        from: Option<u64>,
        limit: PageLimit,
    ) -> Result<crate::workflow::store::WorkflowEventsPage, NodeError> {
        self.node
            .read_store(move |db| {
                crate::workflow::store::events_since(db, t_ns, from, limit).map_err(query_error)
            })
            .await
    }
}

fn query_error(e: crate::workflow::store::QueryError) -> NodeError {
    match e {
        crate::workflow::store::QueryError::Storage(s) => NodeError::Storage(s),
        other => NodeError::FailedPrecondition(other.to_string()),
    }
}
