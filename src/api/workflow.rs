//! gRPC `aetherops.v1.Workflows`.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::convert::{consistency, expected_version, status};
use crate::node::Node;
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::workflows_client::WorkflowsClient;
use crate::proto::aetherops::v1::workflows_server::Workflows;
use crate::time::parse_timestamp;
use crate::workflow::events::{
    CompletionStatus, StepCompleted, StepDef, StepFailed, StepStarted, WorkflowCompleted,
    WorkflowCreated, WorkflowEvent,
};
use crate::workflow::state::WorkflowState;
use crate::workflow::store::{self, QueryError, WorkflowCommand, WorkflowEventIn, WorkflowOutcome};

pub struct WorkflowService {
    node: Arc<Node>,
}

impl WorkflowService {
    pub fn new(node: Arc<Node>) -> Self {
        WorkflowService { node }
    }

    /// Proposes a workflow command where the leader is, forwarding the original request.
    /// Empty event ids are filled in once, first, so retries and forwards reuse them.
    async fn write<Req, Fut>(
        &self,
        req: Request<Req>,
        command: impl Fn(&Req) -> Result<WorkflowCommand, Status>,
        forward: impl Fn(WorkflowsClient<tonic::transport::Channel>, Request<Req>) -> Fut,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status>
    where
        Req: Clone + WithEventIds,
        Fut: std::future::Future<Output = Result<Response<pb::WorkflowWriteResponse>, Status>>,
    {
        let forwarded = super::is_forwarded(&req);
        let mut req = req.into_inner();
        req.fill_event_ids();
        let node = &self.node;
        super::on_leader(
            node,
            forwarded,
            || async {
                let cmd = match command(&req) {
                    Ok(c) => c,
                    Err(s) => return Ok(Err(s)),
                };
                let id = cmd.workflow_id.clone();
                Ok(write_outcome(&id, node.workflow(cmd).await?))
            },
            |channel, timeout| {
                let fwd = super::forwarded_request(node, req.clone(), timeout);
                let client = WorkflowsClient::new(channel).max_decoding_message_size(usize::MAX);
                let f = forward(client, fwd);
                async move { f.await.map(Response::into_inner) }
            },
        )
        .await
        .map(Response::new)
    }
}

fn write_outcome(
    workflow_id: &str,
    o: WorkflowOutcome,
) -> Result<pb::WorkflowWriteResponse, Status> {
    match o {
        WorkflowOutcome::Applied {
            positions,
            duplicate,
            version,
            status,
        } => Ok(pb::WorkflowWriteResponse {
            workflow_id: workflow_id.to_owned(),
            version,
            status,
            first_global_position: positions.first_global_position,
            last_global_position: positions.last_global_position,
            commit_time_ns: positions.commit_time_ns,
            duplicate,
        }),
        WorkflowOutcome::WrongExpectedVersion { expected, current } => {
            Err(Status::failed_precondition(format!(
                "wrong expected version for workflow {workflow_id:?}: expected {expected}, but {}",
                match current {
                    Some(v) => format!("its current version is {v}"),
                    None => "the workflow does not exist".to_owned(),
                }
            )))
        }
        WorkflowOutcome::EventIdConflict { event_id, detail } => Err(Status::already_exists(
            format!("event id {event_id}: {detail}"),
        )),
        WorkflowOutcome::Rejected { index, reason } => Err(Status::failed_precondition(format!(
            "workflow {workflow_id:?}: event {index} refused: {reason}"
        ))),
    }
}

fn header(w: &Option<pb::WorkflowWrite>) -> Result<&pb::WorkflowWrite, Status> {
    let w = w.as_ref().ok_or_else(|| {
        Status::invalid_argument("write (workflow_id, expected_version, event_id) is required")
    })?;
    if w.workflow_id.is_empty() {
        return Err(Status::invalid_argument("workflow_id is empty"));
    }
    Ok(w)
}

/// One typed event as a command on the workflow named in `w`.
fn single(w: &pb::WorkflowWrite, event: WorkflowEvent) -> Result<WorkflowCommand, Status> {
    let encoded = event
        .encode()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(WorkflowCommand {
        workflow_id: w.workflow_id.clone(),
        expected: expected_version(w.expected_version)?,
        events: vec![WorkflowEventIn {
            event_id: crate::model::parse_event_id(0, &w.event_id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
            event_type: encoded.event_type.to_owned(),
            schema_version: encoded.schema_version,
            payload: Bytes::from(encoded.payload),
        }],
        snapshot_every: 0,
    })
}

/// Which state `GetState` asks for.
enum At {
    Now,
    Version(u64),
    Time(i64),
}

fn query_status(e: QueryError) -> Status {
    match e {
        QueryError::NotFound(_) | QueryError::BeforeCreation { .. } => {
            Status::not_found(e.to_string())
        }
        QueryError::NoSuchVersion { .. } => Status::out_of_range(e.to_string()),
        QueryError::Replay { .. } => Status::internal(e.to_string()),
        QueryError::Storage(s) => status(s.into()),
    }
}

fn state_response(s: &WorkflowState) -> Result<pb::WorkflowStateResponse, Status> {
    Ok(pb::WorkflowStateResponse {
        workflow_id: s.workflow_id.clone(),
        version: s.version,
        status: s.status.to_string(),
        state_json: serde_json::to_string(s).map_err(|e| Status::internal(e.to_string()))?,
    })
}

#[tonic::async_trait]
impl Workflows for WorkflowService {
    async fn create(
        &self,
        req: Request<pb::CreateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.write(
            req,
            |r| {
                let w = header(&r.write)?;
                let created = WorkflowCreated {
                    workflow_id: w.workflow_id.clone(),
                    name: r.name.clone(),
                    steps: r
                        .steps
                        .iter()
                        .map(|s| {
                            StepDef::new(&s.id, &s.name).with_max_attempts(s.max_attempts.max(1))
                        })
                        .collect(),
                    metadata: r
                        .metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                created
                    .validate()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                single(w, WorkflowEvent::WorkflowCreated(created))
            },
            |mut c, r| async move { c.create(r).await },
        )
        .await
    }

    async fn start_step(
        &self,
        req: Request<pb::StartStepRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.write(
            req,
            |r| {
                let w = header(&r.write)?;
                single(
                    w,
                    WorkflowEvent::StepStarted(StepStarted {
                        step_id: r.step_id.clone(),
                        attempt: r.attempt,
                        worker: (!r.worker.is_empty()).then(|| r.worker.clone()),
                    }),
                )
            },
            |mut c, r| async move { c.start_step(r).await },
        )
        .await
    }

    async fn complete_step(
        &self,
        req: Request<pb::CompleteStepRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.write(
            req,
            |r| {
                let w = header(&r.write)?;
                let output = if r.output_json.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&r.output_json).map_err(|e| {
                        Status::invalid_argument(format!("output_json is not JSON: {e}"))
                    })?
                };
                single(
                    w,
                    WorkflowEvent::StepCompleted(StepCompleted {
                        step_id: r.step_id.clone(),
                        output,
                    }),
                )
            },
            |mut c, r| async move { c.complete_step(r).await },
        )
        .await
    }

    async fn fail_step(
        &self,
        req: Request<pb::FailStepRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.write(
            req,
            |r| {
                let w = header(&r.write)?;
                single(
                    w,
                    WorkflowEvent::StepFailed(StepFailed {
                        step_id: r.step_id.clone(),
                        error: r.error.clone(),
                        attempt: r.attempt,
                        retryable: r.retryable,
                    }),
                )
            },
            |mut c, r| async move { c.fail_step(r).await },
        )
        .await
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.write(
            req,
            |r| {
                let w = header(&r.write)?;
                let status = match r.status.as_str() {
                    "succeeded" => CompletionStatus::Succeeded,
                    "failed" => CompletionStatus::Failed,
                    "cancelled" => CompletionStatus::Cancelled,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "status must be succeeded, failed or cancelled, not {other:?}"
                        )))
                    }
                };
                single(
                    w,
                    WorkflowEvent::WorkflowCompleted(WorkflowCompleted {
                        status,
                        reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
                    }),
                )
            },
            |mut c, r| async move { c.complete(r).await },
        )
        .await
    }

    async fn append_events(
        &self,
        req: Request<pb::AppendWorkflowEventsRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.write(
            req,
            |r| {
                if r.workflow_id.is_empty() {
                    return Err(Status::invalid_argument("workflow_id is empty"));
                }
                let mut events = Vec::with_capacity(r.events.len());
                for (i, e) in r.events.iter().enumerate() {
                    events.push(WorkflowEventIn {
                        event_id: crate::model::parse_event_id(i, &e.event_id)
                            .map_err(|e| Status::invalid_argument(e.to_string()))?,
                        event_type: e.event_type.clone(),
                        schema_version: e.schema_version,
                        payload: e.payload.clone(),
                    });
                }
                Ok(WorkflowCommand {
                    workflow_id: r.workflow_id.clone(),
                    expected: expected_version(r.expected_version)?,
                    events,
                    snapshot_every: 0,
                })
            },
            |mut c, r| async move { c.append_events(r).await },
        )
        .await
    }

    async fn get_state(
        &self,
        req: Request<pb::GetWorkflowStateRequest>,
    ) -> Result<Response<pb::WorkflowStateResponse>, Status> {
        let r = req.into_inner();
        self.node
            .read_barrier(consistency(r.consistency)?)
            .await
            .map_err(status)?;
        let id = r.workflow_id;
        let at = match r.at {
            None => At::Now,
            Some(pb::get_workflow_state_request::At::AtVersion(v)) => At::Version(v),
            Some(pb::get_workflow_state_request::At::AtTime(t)) => At::Time(
                parse_timestamp(&t)
                    .map_err(|e| Status::invalid_argument(format!("at_time {t:?}: {e}")))?,
            ),
        };
        // A temporal query replays up to `workflow_snapshot_every` events: off the runtime.
        let state = self
            .node
            .read_store(move |db| {
                Ok(match at {
                    At::Now => store::load_state(db, &id)
                        .map_err(|e| status(e.into()))
                        .and_then(|s| {
                            s.ok_or_else(|| {
                                Status::not_found(format!("workflow {id:?} does not exist"))
                            })
                        }),
                    At::Version(v) => store::state_at_version(db, &id, v).map_err(query_status),
                    At::Time(t_ns) => store::state_at_time(db, &id, t_ns).map_err(query_status),
                })
            })
            .await
            .map_err(status)??;
        Ok(Response::new(state_response(&state)?))
    }

    async fn list(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let r = req.into_inner();
        self.node
            .read_barrier(consistency(r.consistency)?)
            .await
            .map_err(status)?;
        let limit = self
            .node
            .config
            .limits
            .read_limit(r.limit)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let after = r.after;
        let states = self
            .node
            .read_store(move |db| {
                let after = (!after.is_empty()).then_some(after.as_str());
                Ok(store::list(db, after, limit as usize)?)
            })
            .await
            .map_err(status)?;
        let next_after = if states.len() == limit as usize {
            states
                .last()
                .map(|s| s.workflow_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: states
                .into_iter()
                .map(|s| pb::WorkflowSummary {
                    workflow_id: s.workflow_id,
                    name: s.name,
                    status: s.status.to_string(),
                    version: s.version,
                    current_step: s.current_step.unwrap_or_default(),
                    updated_at_ns: s.updated_at_ns,
                })
                .collect(),
            next_after,
        }))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyWorkflowRequest>,
    ) -> Result<Response<pb::VerifyWorkflowResponse>, Status> {
        let id = req.into_inner().workflow_id;
        let applied_index = self.node.applied_status().applied.map(|l| l.index);
        let db = self.node.store.db();
        let report = tokio::task::spawn_blocking(move || store::verify(&db, &id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(query_status)?;
        Ok(Response::new(pb::VerifyWorkflowResponse {
            workflow_id: report.workflow_id,
            events: report.events,
            version: report.version,
            fingerprint: report
                .fingerprint
                .map(|f| format!("{f:016x}"))
                .unwrap_or_default(),
            stored_snapshots_checked: report.stored_snapshots_checked,
            converged: report.divergence.is_none(),
            divergence: report.divergence.unwrap_or_default(),
            applied_index,
        }))
    }

    async fn events(
        &self,
        req: Request<pb::WorkflowEventsRequest>,
    ) -> Result<Response<pb::WorkflowEventsResponse>, Status> {
        use crate::workflow::store::WorkflowEventStore;
        let r = req.into_inner();
        self.node
            .read_barrier(consistency(r.consistency)?)
            .await
            .map_err(status)?;
        let limit = self.node.page_limit(r.limit).map_err(status)?;
        let store = crate::node::ReplicatedWorkflows { node: &self.node };
        let page = match r.select {
            Some(pb::workflow_events_request::Select::WorkflowId(id)) => {
                store.get_events(&id, r.from.unwrap_or(0), limit).await
            }
            Some(pb::workflow_events_request::Select::Since(t)) => {
                let t_ns = parse_timestamp(&t)
                    .map_err(|e| Status::invalid_argument(format!("since {t:?}: {e}")))?;
                store.get_events_since(t_ns, r.from, limit).await
            }
            None => return Err(Status::invalid_argument("give workflow_id or since")),
        }
        .map_err(status)?;
        let mut out = Vec::with_capacity(page.events.len());
        for e in page.events {
            let encoded = e
                .event
                .encode()
                .map_err(|err| Status::internal(err.to_string()))?;
            out.push(pb::WorkflowEventOutput {
                workflow_id: e.workflow_id,
                stream_version: e.stream_version,
                global_position: e.global_position,
                commit_time_ns: e.commit_time_ns,
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                stored_schema_version: e.stored_schema_version,
                payload: encoded.payload.into(),
            });
        }
        Ok(Response::new(pb::WorkflowEventsResponse {
            events: out,
            next: page.next,
        }))
    }
}

/// Requests whose event ids the server fills in when the client left them empty.
trait WithEventIds {
    fn fill_event_ids(&mut self);
}

fn fill(id: &mut String) {
    if id.is_empty() {
        *id = crate::model::new_event_id().to_string();
    }
}

macro_rules! with_write_header {
    ($($t:ty),*) => {$(
        impl WithEventIds for $t {
            fn fill_event_ids(&mut self) {
                if let Some(w) = self.write.as_mut() {
                    fill(&mut w.event_id);
                }
            }
        }
    )*};
}

with_write_header!(
    pb::CreateWorkflowRequest,
    pb::StartStepRequest,
    pb::CompleteStepRequest,
    pb::FailStepRequest,
    pb::CompleteWorkflowRequest
);

impl WithEventIds for pb::AppendWorkflowEventsRequest {
    fn fill_event_ids(&mut self) {
        for e in &mut self.events {
            fill(&mut e.event_id);
        }
    }
}
