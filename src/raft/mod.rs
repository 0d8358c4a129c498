//! Consensus: openraft's type configuration, the RocksDB log store and state machine, the
//! snapshot format, and the gRPC transport between nodes.
//!
//! openraft's types stay inside this module (and the node wiring that drives `Raft`): the
//! rest of the crate speaks in [`Request`], [`Command`] and [`CommandOutcome`], so that a
//! later move to openraft 0.10 touches this module only. The state machine applies commands
//! by calling the domain modules (`eventstore`); it holds no business rule of its own.

pub mod breakers;
pub mod carry;
pub mod clock;
pub mod forwarded;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod read_index;
pub mod service;
pub mod snapshot;
pub mod state_machine;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::{Access, Resource};
use crate::eventstore::{check_dedupe_window, AppendCommand, AppendOutcome, APPLY_RULES_VERSION};
use crate::limits::{LimitPolicy, PolicyOutcome};
use crate::model::{check_plain_append_target, Limits};
use crate::telemetry::command::{TelemetryCommand, TelemetryOutcome};
use crate::workflow::store::{WorkflowCommand, WorkflowOutcome};

pub type NodeId = u64;

/// Telemetry series the nodes write themselves: a breaker's transitions, one series per peer.
pub const BREAKER_SERIES_PREFIX: &str = "aether/breaker/";

/// What the cluster knows of a node: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// gRPC address: public API, admin and Raft RPCs.
    pub grpc_addr: String,
    /// HTTP address: health and metrics.
    pub http_addr: String,
    /// Random id of the node's data directory, made when the directory is created. A node
    /// whose data was wiped comes back with another one, and its peers refuse to treat it
    /// as the member they knew (it may have lost votes and log entries it acknowledged).
    pub incarnation: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grpc={} http={} incarnation={}",
            self.grpc_addr, self.http_addr, self.incarnation
        )
    }
}

/// One Raft log entry's application payload: a batch of commands proposed together, with
/// the leader's clock and settings stamped in so that applying it is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Leader wall clock at proposal, ns since the Unix epoch. The state machine never
    /// lets commit time go backwards.
    pub commit_time_ns: i64,
    /// The proposing leader's configured idempotency window: in force only until the
    /// replicated window is set ([`Command::AdoptRules`] seeds it, [`Command::SetDedupeWindow`]
    /// changes it), as older versions used each entry's own.
    pub dedupe_window_ns: i64,
    pub commands: Vec<Command>,
}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Append(AppendCommand),
    Workflow(WorkflowCommand),
    Telemetry(TelemetryCommand),
    /// Sets the replicated idempotency window (ns), from this entry on.
    SetDedupeWindow {
        window_ns: i64,
    },
    /// Adopts apply-rules `version` from this entry on (never goes back), and seeds the
    /// replicated idempotency window with `dedupe_window_ns` if none is set yet. A leader
    /// proposes it once every voter runs code that knows the version.
    AdoptRules {
        version: u32,
        dedupe_window_ns: i64,
    },
    /// Sets (or replaces) a rate-limit policy (rules version 3 on).
    SetLimit(LimitPolicy),
    /// Deletes a rate-limit policy (rules version 3 on).
    DeleteLimit {
        name: String,
    },
}

impl Command {
    /// The checks a command must pass wherever it enters the cluster — a client API on any
    /// node, or a peer's `Propose` — against this node's configured limits. (Apply checks
    /// the structural rules again, as the last line: configured limits may differ by node.)
    pub fn validate(&self, limits: &Limits) -> Result<(), String> {
        match self {
            Command::Append(a) => {
                limits
                    .validate_append(&a.stream, &a.events)
                    .map_err(|e| e.to_string())?;
                check_plain_append_target(&a.stream).map_err(|e| e.to_string())
            }
            Command::Workflow(w) => {
                let a = w.as_append();
                limits
                    .validate_append(&a.stream, &a.events)
                    .map_err(|e| e.to_string())
            }
            Command::Telemetry(t) => t.validate(limits),
            Command::SetDedupeWindow { window_ns } => check_dedupe_window(*window_ns),
            Command::AdoptRules {
                version,
                dedupe_window_ns,
            } => {
                if *version > APPLY_RULES_VERSION {
                    return Err(format!(
                        "apply rules {version} are newer than this node's ({APPLY_RULES_VERSION})"
                    ));
                }
                check_dedupe_window(*dedupe_window_ns)
            }
            Command::SetLimit(p) => p.validate(),
            Command::DeleteLimit { name } => crate::limits::check_name(name),
        }
    }

    /// What this command asks of whoever proposes it: the one map from replicated commands
    /// to the action and resources `auth::Identity::authorize` checks (the same the service
    /// layer checks a client's request against). It sits here, not in `auth`, because `auth`
    /// knows nothing of the log's commands (ARCHITECTURE.md's must-nots).
    pub fn access(&self) -> Access<'_> {
        use crate::limits::Method;
        match self {
            Command::Append(a) => Access::Client(Method::Append, vec![Resource::Stream(&a.stream)]),
            Command::Workflow(w) => Access::Client(
                Method::WorkflowWrite,
                vec![Resource::Workflow(&w.workflow_id)],
            ),
            Command::Telemetry(TelemetryCommand::Ingest(segments)) => {
                let mut series: Vec<&str> = segments.iter().map(|s| s.series.as_str()).collect();
                series.sort_unstable();
                series.dedup();
                Access::Client(
                    Method::Ingest,
                    series.into_iter().map(Resource::Series).collect(),
                )
            }
            Command::Telemetry(TelemetryCommand::SetRetention(p)) => {
                Access::Client(Method::Admin, vec![Resource::SeriesWithPrefix(&p.prefix)])
            }
            Command::SetDedupeWindow { .. }
            | Command::SetLimit(_)
            | Command::DeleteLimit { .. } => Access::Client(Method::Admin, vec![Resource::Cluster]),
            Command::AdoptRules { .. } => Access::NodeOnly,
        }
    }

    /// Whether a command without a caller's credential is one a node proposes on its own:
    /// rule adoption, and the points of its breaker series (`aether/breaker/<peer>`).
    pub fn is_node_own(&self) -> bool {
        match self {
            Command::AdoptRules { .. } => true,
            Command::Telemetry(TelemetryCommand::Ingest(segments)) => {
                !segments.is_empty()
                    && segments
                        .iter()
                        .all(|s| s.series.starts_with(BREAKER_SERIES_PREFIX))
            }
            _ => false,
        }
    }

    /// The outcome that refuses this command without writing anything.
    pub fn rejected(&self, reason: String) -> CommandOutcome {
        match self {
            Command::Append(_) => CommandOutcome::Append(AppendOutcome::Rejected { reason }),
            Command::Workflow(_) => {
                CommandOutcome::Workflow(WorkflowOutcome::Rejected { index: 0, reason })
            }
            Command::Telemetry(_) => {
                CommandOutcome::Telemetry(TelemetryOutcome::Rejected { reason })
            }
            Command::SetDedupeWindow { .. } | Command::AdoptRules { .. } => {
                CommandOutcome::Refused { reason }
            }
            Command::SetLimit(_) | Command::DeleteLimit { .. } => {
                CommandOutcome::Limit(PolicyOutcome::Refused { reason })
            }
        }
    }
}

/// Why commands were not applied — their outcome is known: not written — or why their
/// outcome is unknown (`Timeout`, `Unknown`: they may have been written; only a retry with the
/// same ids settles it). Travels between nodes, hence serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// Not written: this node does not lead (the leader, when known).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// Not written: the proposal queue is full.
    #[error("proposal queue is full ({0} waiting)")]
    Overloaded(usize),
    /// Outcome unknown: no answer within the write deadline.
    #[error("write outcome unknown after {0:?}: retry with the same event ids")]
    Timeout(Duration),
    /// Not written: Raft is not running here.
    #[error("raft is not running: {0}")]
    Stopped(String),
    /// Not written: a membership change is in progress.
    #[error("membership change in progress: {0}")]
    Busy(String),
    /// Not written: the batch could not be handed to the leader, or the leader refused it
    /// before proposing it.
    #[error("forwarding to the leader failed: {0}; nothing was written")]
    Forward(String),
    /// Outcome unknown: the batch may have reached the log (e.g. the connection to the
    /// leader broke after the batch was sent). Last: variants travel by index (postcard).
    #[error("write outcome unknown: {0}; retry with the same event ids")]
    Unknown(String),
    /// Not written: the breaker to the leader is open, so nothing was sent to it. Made by
    /// a follower for its own clients and never carried by a reply (a leader does not
    /// forward), it comes after `Unknown` so that the older variants keep their indices.
    #[error("{reason}; the leader is node {} at {}", .leader.0, .leader.1.grpc_addr)]
    BreakerOpen {
        leader: (NodeId, NodeInfo),
        reason: String,
    },
}

/// The result of one command, in the order of [`Request::commands`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    Append(AppendOutcome),
    Workflow(WorkflowOutcome),
    Telemetry(TelemetryOutcome),
    DedupeWindowSet {
        window_ns: i64,
    },
    RulesAdopted {
        version: u32,
    },
    /// A command without a kind-specific refusal was refused; nothing was written.
    Refused {
        reason: String,
    },
    Limit(PolicyOutcome),
    /// A forwarded command its caller's credential does not allow (the leader verifies it on
    /// the client plane and authorizes the command again); nothing was written. Only in
    /// answers to `raft.v1.ProposeAs` (never replicated), so a follower on older code never
    /// meets it. Last: variants travel by index.
    Denied(Denial),
}

/// Why a leader refused a forwarded command's caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Denial {
    /// No credential, or one that does not verify.
    Unauthenticated(String),
    /// A valid credential without the role or the scope.
    Forbidden(String),
}

impl From<crate::auth::AuthError> for Denial {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Unauthenticated(_) => Denial::Unauthenticated(e.to_string()),
            crate::auth::AuthError::Forbidden(_) => Denial::Forbidden(e.to_string()),
        }
    }
}

/// What applying one entry returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcomes: Vec<CommandOutcome>,
}

openraft::declare_raft_types!(
    /// openraft's view of AetherOps.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;

/// Converts our storage errors into openraft's, naming what was being done.
pub(crate) fn sto_err(
    verb: openraft::ErrorVerb,
    subject: openraft::ErrorSubject<NodeId>,
    e: impl std::error::Error + 'static,
) -> RaftStorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}
