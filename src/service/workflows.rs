//! Workflows: commands (checked by the state machine against the replicated projection)
//! and temporal queries (state at a version or a time, history, verification).

use bytes::Bytes;

use super::{Caller, Consistency, Service, ServiceError};
use crate::auth::Resource;
use crate::eventstore::read::PageLimit;
use crate::eventstore::AppendPositions;
use crate::limits::Method;
use crate::model::ExpectedVersion;
use crate::node::Node;
use crate::workflow::events::WorkflowEvent;
use crate::workflow::state::{WorkflowState, WorkflowStatus};
use crate::workflow::store::{
    self, QueryError, VerifyReport, WorkflowCommand, WorkflowEventIn, WorkflowEventStore,
    WorkflowEventsPage, WorkflowOutcome,
};

/// Which workflow a typed command is for, and its concurrency and idempotency keys.
#[derive(Debug, Clone)]
pub struct WorkflowTarget {
    pub workflow_id: String,
    pub expected: ExpectedVersion,
    pub event_id: uuid::Uuid,
}

/// A command the state machine applied (or recognised as a retry: `duplicate`).
#[derive(Debug, Clone)]
pub struct WorkflowWritten {
    pub workflow_id: String,
    pub version: u64,
    /// The workflow's status after the command (none if the leader named none this code
    /// knows).
    pub status: Option<WorkflowStatus>,
    pub positions: AppendPositions,
    pub duplicate: bool,
}

/// Which state a query asks for.
#[derive(Debug, Clone, Copy)]
pub enum At {
    Now,
    Version(u64),
    /// The state as of this commit time (ns since the epoch).
    Time(i64),
}

/// Which workflow events a history read returns.
#[derive(Debug, Clone)]
pub enum EventsOf {
    /// One workflow's events from a stream version.
    Workflow { id: String, from: u64 },
    /// Every workflow's events committed at or after a time, from a global position.
    Since { t_ns: i64, from: Option<u64> },
}

/// A page of workflows, in id order.
#[derive(Debug, Clone)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowState>,
    /// Where the next page starts, if there may be one.
    pub next_after: Option<String>,
}

/// Every workflow (a list, events since a position): a token confined to streams must
/// reach the whole `workflow-` prefix.
const ALL_WORKFLOWS: Resource<'static> =
    Resource::StreamsWithPrefix(crate::model::WORKFLOW_STREAM_PREFIX);

impl Service {
    /// One typed workflow event (create, start a step, …) as a command.
    pub async fn workflow_event(
        &self,
        caller: &Caller,
        target: WorkflowTarget,
        event: WorkflowEvent,
    ) -> Result<WorkflowWritten, ServiceError> {
        if target.workflow_id.is_empty() {
            return Err(ServiceError::invalid("workflow_id is empty"));
        }
        if let WorkflowEvent::WorkflowCreated(created) = &event {
            created
                .validate()
                .map_err(|e| ServiceError::invalid(e.to_string()))?;
        }
        let encoded = event
            .encode()
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        let cmd = WorkflowCommand {
            workflow_id: target.workflow_id,
            expected: target.expected,
            events: vec![WorkflowEventIn {
                event_id: target.event_id,
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                payload: Bytes::from(encoded.payload),
            }],
            snapshot_every: 0,
        };
        self.workflow_command(caller, cmd).await
    }

    /// Raw workflow events (any schema version the upcasters know), checked like typed ones.
    pub async fn workflow_command(
        &self,
        caller: &Caller,
        cmd: WorkflowCommand,
    ) -> Result<WorkflowWritten, ServiceError> {
        self.admit(
            caller,
            Method::WorkflowWrite,
            Resource::Workflow(&cmd.workflow_id),
            1,
        )?;
        if cmd.workflow_id.is_empty() {
            return Err(ServiceError::invalid("workflow_id is empty"));
        }
        let id = cmd.workflow_id.clone();
        let node = &self.node;
        let outcome = self
            .on_leader(|left| node.workflow(cmd.clone(), caller.token.clone(), left))
            .await?;
        written(&id, outcome)
    }

    pub async fn workflow_state(
        &self,
        caller: &Caller,
        id: &str,
        at: At,
        consistency: Consistency,
    ) -> Result<WorkflowState, ServiceError> {
        self.admit(caller, Method::WorkflowRead, Resource::Workflow(id), 1)?;
        self.node.read_barrier(consistency).await?;
        let id = id.to_owned();
        // A temporal query replays up to `workflow_snapshot_every` events: off the runtime.
        self.node
            .read_store(move |db| {
                Ok(match at {
                    At::Now => match store::load_state(db, &id) {
                        Ok(Some(s)) => Ok(s),
                        Ok(None) => Err(QueryError::NotFound(id)),
                        Err(e) => Err(e.into()),
                    },
                    At::Version(v) => store::state_at_version(db, &id, v),
                    At::Time(t_ns) => store::state_at_time(db, &id, t_ns),
                })
            })
            .await?
            .map_err(query_error)
    }

    pub async fn list_workflows(
        &self,
        caller: &Caller,
        after: Option<String>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<WorkflowList, ServiceError> {
        self.admit(caller, Method::WorkflowRead, ALL_WORKFLOWS, 1)?;
        self.node.read_barrier(consistency).await?;
        let limit = self.node.config().limits.read_limit(limit)? as usize;
        let workflows = self
            .node
            .read_store(move |db| Ok(store::list(db, after.as_deref(), limit)?))
            .await?;
        let next_after = if workflows.len() == limit {
            workflows.last().map(|s| s.workflow_id.clone())
        } else {
            None
        };
        Ok(WorkflowList {
            workflows,
            next_after,
        })
    }

    /// Replays a workflow from its events and checks the stored projection and snapshots
    /// against the replay; with the index this node had applied when it began.
    pub async fn verify_workflow(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(VerifyReport, Option<u64>), ServiceError> {
        self.admit(caller, Method::WorkflowRead, Resource::Workflow(id), 1)?;
        let applied_index = self.node.applied_status().applied.map(|l| l.index);
        let id = id.to_owned();
        let report = self
            .node
            .read_store(move |db| Ok(store::verify(db, &id)))
            .await?
            .map_err(query_error)?;
        Ok((report, applied_index))
    }

    /// Workflow events, upcast to the current schema, in pages.
    pub async fn workflow_events(
        &self,
        caller: &Caller,
        select: EventsOf,
        limit: u32,
        consistency: Consistency,
    ) -> Result<WorkflowEventsPage, ServiceError> {
        let resource = match &select {
            EventsOf::Workflow { id, .. } => Resource::Workflow(id),
            EventsOf::Since { .. } => ALL_WORKFLOWS,
        };
        self.admit(caller, Method::WorkflowRead, resource, 1)?;
        self.node.read_barrier(consistency).await?;
        let limit = self.node.page_limit(limit)?;
        let store = ReplicatedWorkflows {
            node: &self.node,
            caller: caller.token.clone(),
        };
        match select {
            EventsOf::Workflow { id, from } => store.get_events(&id, from, limit).await,
            EventsOf::Since { t_ns, from } => store.get_events_since(t_ns, from, limit).await,
        }
    }
}

fn written(workflow_id: &str, o: WorkflowOutcome) -> Result<WorkflowWritten, ServiceError> {
    match o {
        WorkflowOutcome::Applied {
            positions,
            duplicate,
            version,
            status,
        } => Ok(WorkflowWritten {
            workflow_id: workflow_id.to_owned(),
            version,
            // The outcome carries the status as text (it travels between nodes, and its
            // encoding must stay readable by every version in a rolling upgrade).
            status: WorkflowStatus::parse(&status),
            positions,
            duplicate,
        }),
        WorkflowOutcome::WrongExpectedVersion { expected, current } => {
            Err(ServiceError::WrongExpectedVersion {
                message: format!(
                    "wrong expected version for workflow {workflow_id:?}: expected {expected}, \
                     but {}",
                    match current {
                        Some(v) => format!("its current version is {v}"),
                        None => "the workflow does not exist".to_owned(),
                    }
                ),
                current,
            })
        }
        WorkflowOutcome::EventIdConflict { event_id, detail } => Err(ServiceError::AlreadyExists(
            format!("event id {event_id}: {detail}"),
        )),
        WorkflowOutcome::Rejected { index, reason } => Err(ServiceError::FailedPrecondition(
            format!("workflow {workflow_id:?}: event {index} refused: {reason}"),
        )),
    }
}

fn query_error(e: QueryError) -> ServiceError {
    match e {
        QueryError::NotFound(_) | QueryError::BeforeCreation { .. } => {
            ServiceError::NotFound(e.to_string())
        }
        QueryError::NoSuchVersion { .. } => ServiceError::OutOfRange(e.to_string()),
        QueryError::Replay { .. } => ServiceError::Internal(e.to_string()),
        QueryError::Storage(s) => s.into(),
    }
}

/// The workflow code's view of the event store on this node ([`WorkflowEventStore`]):
/// appends go through Raft (and the transition rules), reads come from the replicated state.
struct ReplicatedWorkflows<'a> {
    node: &'a Node,
    /// The caller's token, for the leader to authorize each write again.
    caller: Option<std::sync::Arc<str>>,
}

impl WorkflowEventStore for ReplicatedWorkflows<'_> {
    type Error = ServiceError;

    async fn append(
        &self,
        workflow_id: &str,
        expected: ExpectedVersion,
        event_id: uuid::Uuid,
        event: &WorkflowEvent,
    ) -> Result<WorkflowOutcome, ServiceError> {
        let encoded = event
            .encode()
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        Ok(self
            .node
            .workflow(
                WorkflowCommand {
                    workflow_id: workflow_id.to_owned(),
                    expected,
                    events: vec![WorkflowEventIn {
                        event_id,
                        event_type: encoded.event_type.to_owned(),
                        schema_version: encoded.schema_version,
                        payload: Bytes::from(encoded.payload),
                    }],
                    snapshot_every: 0,
                },
                self.caller.clone(),
                std::time::Duration::from_millis(self.node.config().write_timeout_ms),
            )
            .await?)
    }

    async fn get_events(
        &self,
        workflow_id: &str,
        from: u64,
        limit: PageLimit,
    ) -> Result<WorkflowEventsPage, ServiceError> {
        let id = workflow_id.to_owned();
        self.node
            .read_store(move |db| Ok(store::events_of(db, &id, from, limit)))
            .await?
            .map_err(query_error)
    }

    async fn get_events_since(
        &self,
        t_ns: i64,
        from: Option<u64>,
        limit: PageLimit,
    ) -> Result<WorkflowEventsPage, ServiceError> {
        self.node
            .read_store(move |db| Ok(store::events_since(db, t_ns, from, limit)))
            .await?
            .map_err(query_error)
    }
}
