//! gRPC `aetherops.v1.Workflows`.

use tonic::{Request, Response, Status};

use super::convert::{consistency, expected_version};
use super::{caller, status};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::workflows_server::Workflows;
use crate::service::workflows::{At, EventsOf, WorkflowTarget, WorkflowWritten};
use crate::service::Service;
use crate::time::parse_timestamp;
use crate::workflow::events::{
    CompletionStatus, StepCompleted, StepDef, StepFailed, StepStarted, WorkflowCompleted,
    WorkflowCreated, WorkflowEvent,
};
use crate::workflow::state::WorkflowState;
use crate::workflow::store::WorkflowEventIn;

pub struct WorkflowService {
    service: Service,
}

impl WorkflowService {
    pub fn new(service: Service) -> Self {
        WorkflowService { service }
    }

    /// The shape every typed write shares: which workflow (from the request's `write`
    /// header), one event, one call.
    async fn typed<R>(
        &self,
        req: Request<R>,
        write: impl FnOnce(&R) -> &Option<pb::WorkflowWrite>,
        event: impl FnOnce(&R) -> Result<WorkflowEvent, Status>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let target = target(write(&r))?;
        let event = event(&r)?;
        let w = self
            .service
            .workflow_event(&caller, target, event)
            .await
            .map_err(status)?;
        Ok(Response::new(write_response(w)))
    }
}

fn write_response(w: WorkflowWritten) -> pb::WorkflowWriteResponse {
    pb::WorkflowWriteResponse {
        workflow_id: w.workflow_id,
        version: w.version,
        status: w.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        first_global_position: w.positions.first_global_position,
        last_global_position: w.positions.last_global_position,
        commit_time_ns: w.positions.commit_time_ns,
        duplicate: w.duplicate,
    }
}

/// The workflow, expected version and event id of a typed write (an empty event id is
/// chosen here, once, so that the service's retries reuse it).
fn target(w: &Option<pb::WorkflowWrite>) -> Result<WorkflowTarget, Status> {
    let w = w.as_ref().ok_or_else(|| {
        Status::invalid_argument("write (workflow_id, expected_version, event_id) is required")
    })?;
    Ok(WorkflowTarget {
        workflow_id: w.workflow_id.clone(),
        expected: expected_version(w.expected_version)?,
        event_id: crate::model::parse_event_id(0, &w.event_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
    })
}

fn state_response(s: &WorkflowState) -> Result<pb::WorkflowStateResponse, Status> {
    Ok(pb::WorkflowStateResponse {
        workflow_id: s.workflow_id.clone(),
        version: s.version,
        status: s.status.to_string(),
        state_json: serde_json::to_string(s).map_err(|e| Status::internal(e.to_string()))?,
    })
}

fn time_arg(name: &str, t: &str) -> Result<i64, Status> {
    parse_timestamp(t).map_err(|e| Status::invalid_argument(format!("{name} {t:?}: {e}")))
}

#[tonic::async_trait]
impl Workflows for WorkflowService {
    async fn create(
        &self,
        req: Request<pb::CreateWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.typed(
            req,
            |r| &r.write,
            |r| {
                let workflow_id = r.write.as_ref().map(|w| w.workflow_id.clone());
                Ok(WorkflowEvent::WorkflowCreated(WorkflowCreated {
                    workflow_id: workflow_id.unwrap_or_default(),
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
                }))
            },
        )
        .await
    }

    async fn start_step(
        &self,
        req: Request<pb::StartStepRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.typed(
            req,
            |r| &r.write,
            |r| {
                Ok(WorkflowEvent::StepStarted(StepStarted {
                    step_id: r.step_id.clone(),
                    attempt: r.attempt,
                    worker: (!r.worker.is_empty()).then(|| r.worker.clone()),
                }))
            },
        )
        .await
    }

    async fn complete_step(
        &self,
        req: Request<pb::CompleteStepRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.typed(
            req,
            |r| &r.write,
            |r| {
                let output = if r.output_json.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&r.output_json).map_err(|e| {
                        Status::invalid_argument(format!("output_json is not JSON: {e}"))
                    })?
                };
                Ok(WorkflowEvent::StepCompleted(StepCompleted {
                    step_id: r.step_id.clone(),
                    output,
                }))
            },
        )
        .await
    }

    async fn fail_step(
        &self,
        req: Request<pb::FailStepRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.typed(
            req,
            |r| &r.write,
            |r| {
                Ok(WorkflowEvent::StepFailed(StepFailed {
                    step_id: r.step_id.clone(),
                    error: r.error.clone(),
                    attempt: r.attempt,
                    retryable: r.retryable,
                }))
            },
        )
        .await
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteWorkflowRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        self.typed(
            req,
            |r| &r.write,
            |r| {
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
                Ok(WorkflowEvent::WorkflowCompleted(WorkflowCompleted {
                    status,
                    reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
                }))
            },
        )
        .await
    }

    async fn append_events(
        &self,
        req: Request<pb::AppendWorkflowEventsRequest>,
    ) -> Result<Response<pb::WorkflowWriteResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let mut events = Vec::with_capacity(r.events.len());
        for (i, e) in r.events.into_iter().enumerate() {
            events.push(WorkflowEventIn {
                event_id: crate::model::parse_event_id(i, &e.event_id)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
            });
        }
        let cmd = crate::workflow::store::WorkflowCommand {
            workflow_id: r.workflow_id,
            expected: expected_version(r.expected_version)?,
            events,
            snapshot_every: 0,
        };
        let w = self
            .service
            .workflow_command(&caller, cmd)
            .await
            .map_err(status)?;
        Ok(Response::new(write_response(w)))
    }

    async fn get_state(
        &self,
        req: Request<pb::GetWorkflowStateRequest>,
    ) -> Result<Response<pb::WorkflowStateResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let at = match &r.at {
            None => At::Now,
            Some(pb::get_workflow_state_request::At::AtVersion(v)) => At::Version(*v),
            Some(pb::get_workflow_state_request::At::AtTime(t)) => {
                At::Time(time_arg("at_time", t)?)
            }
        };
        let state = self
            .service
            .workflow_state(&caller, &r.workflow_id, at, consistency(r.consistency)?)
            .await
            .map_err(status)?;
        Ok(Response::new(state_response(&state)?))
    }

    async fn list(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let after = (!r.after.is_empty()).then_some(r.after);
        let list = self
            .service
            .list_workflows(&caller, after, r.limit, consistency(r.consistency)?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: list
                .workflows
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
            next_after: list.next_after.unwrap_or_default(),
        }))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyWorkflowRequest>,
    ) -> Result<Response<pb::VerifyWorkflowResponse>, Status> {
        let caller = caller(&req);
        let id = req.into_inner().workflow_id;
        let (report, applied_index) = self
            .service
            .verify_workflow(&caller, &id)
            .await
            .map_err(status)?;
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
        let caller = caller(&req);
        let r = req.into_inner();
        let select = match r.select {
            Some(pb::workflow_events_request::Select::WorkflowId(id)) => EventsOf::Workflow {
                id,
                from: r.from.unwrap_or(0),
            },
            Some(pb::workflow_events_request::Select::Since(t)) => EventsOf::Since {
                t_ns: time_arg("since", &t)?,
                from: r.from,
            },
            None => return Err(Status::invalid_argument("give workflow_id or since")),
        };
        let page = self
            .service
            .workflow_events(&caller, select, r.limit, consistency(r.consistency)?)
            .await
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
