//! `aetherctl workflow …`: drive workflows, query their state now / at a time / at a version,
//! import workflows from an older system, and run the replay check on every member.

use super::output::outln;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::transport::Channel;

use super::failover::Failover;
use super::output::{Output, Printer};
use super::{authed, channel, parse_expected, status_err_at, CallError, CallKind, Conn};
use crate::node::call::CallFailure;
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::workflows_client::WorkflowsClient;
use crate::workflow::import::{parse_import, snapshot_event};
use crate::workflow::store::import_event_id;

#[derive(Subcommand, Debug)]
pub enum WorkflowCmd {
    /// Create a workflow with an ordered list of steps.
    Create {
        id: String,
        #[arg(long)]
        name: String,
        /// Step ids, comma-separated (each step's name is its id).
        #[arg(long, value_delimiter = ',')]
        steps: Vec<String>,
        /// Starts allowed per step.
        #[arg(long, default_value_t = 1)]
        max_attempts: u32,
        #[command(flatten)]
        w: WriteArgs,
    },
    /// Start a step (the next attempt).
    StartStep {
        id: String,
        step: String,
        #[arg(long, default_value = "")]
        worker: String,
        #[command(flatten)]
        w: WriteArgs,
    },
    /// Complete the running step, with its result.
    CompleteStep {
        id: String,
        step: String,
        /// The step's output, as JSON (named `--result`: `--output` is the output format).
        #[arg(long, default_value = "null")]
        result: String,
        #[command(flatten)]
        w: WriteArgs,
    },
    /// Fail the running step.
    FailStep {
        id: String,
        step: String,
        #[arg(long)]
        error: String,
        /// The step may be started again (attempts permitting).
        #[arg(long)]
        retryable: bool,
        #[command(flatten)]
        w: WriteArgs,
    },
    /// Complete the workflow: succeeded, failed or cancelled.
    Complete {
        id: String,
        #[arg(long)]
        status: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        w: WriteArgs,
    },
    /// The state now, at a time (--at, ISO 8601 with a zone) or after a version.
    Get {
        id: String,
        #[arg(long, conflicts_with = "version")]
        at: Option<String>,
        #[arg(long)]
        version: Option<u64>,
    },
    /// List workflows.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Import workflows exported by an older system (JSON document or JSON Lines): one
    /// WorkflowSnapshot event per workflow; re-running an import changes nothing.
    Import {
        file: std::path::PathBuf,
        /// Imports in flight at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Rebuild projections from their streams on every member and compare (replay check).
    Verify {
        /// One workflow; default: all.
        id: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct WriteArgs {
    /// any | no-stream | exists | N (the workflow's version you read).
    #[arg(long, default_value = "any")]
    expected_version: String,
    /// Event id (UUID) for idempotent retries.
    #[arg(long, default_value = "")]
    event_id: String,
}

/// The write's header. The event id is chosen here when not given, so that a failure with
/// an unknown outcome can name it in `retry`: a retry with the same id never writes twice.
fn write(id: &str, w: &WriteArgs, retry: &mut String) -> anyhow::Result<Option<pb::WorkflowWrite>> {
    let event_id = if w.event_id.is_empty() {
        crate::model::new_event_id().to_string()
    } else {
        w.event_id.clone()
    };
    *retry = format!("retry with --event-id {event_id}");
    Ok(Some(pb::WorkflowWrite {
        workflow_id: id.to_owned(),
        expected_version: Some(parse_expected(&w.expected_version)?),
        event_id,
    }))
}

async fn client(addr: &str, timeout: Duration) -> anyhow::Result<WorkflowsClient<Conn>> {
    Ok(WorkflowsClient::new(authed(channel(addr, timeout).await?))
        .max_decoding_message_size(usize::MAX))
}

fn print_write(printer: &Printer, r: &pb::WorkflowWriteResponse) {
    match printer.format {
        Output::Json => printer.json(&json!({
            "workflow_id": r.workflow_id, "version": r.version, "status": r.status,
            "first_global_position": r.first_global_position, "last_global_position": r.last_global_position,
            "commit_time_ns": r.commit_time_ns, "duplicate": r.duplicate,
        })),
        Output::Text => outln!(
            "{}workflow {} at version {} ({})",
            if r.duplicate { "already applied: " } else { "" },
            r.workflow_id,
            r.version,
            r.status
        ),
    }
}

pub async fn run(
    addrs: &str,
    timeout: Duration,
    cmd: WorkflowCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    let nodes = Failover::connect_lazy(addrs, timeout)?;
    let mut retry = String::new();
    let resp = match cmd {
        WorkflowCmd::Create {
            id,
            name,
            steps,
            max_attempts,
            w,
        } => {
            let req = pb::CreateWorkflowRequest {
                write: write(&id, &w, &mut retry)?,
                name,
                steps: steps
                    .iter()
                    .map(|s| pb::StepDefinition {
                        id: s.clone(),
                        name: s.clone(),
                        max_attempts,
                    })
                    .collect(),
                metadata: Default::default(),
            };
            nodes
                .call(CallKind::Write { retry }, |ch| {
                    let req = req.clone();
                    async move { Ok(wrap(ch).create(req).await?.into_inner()) }
                })
                .await
        }
        WorkflowCmd::StartStep {
            id,
            step,
            worker,
            w,
        } => {
            let req = pb::StartStepRequest {
                write: write(&id, &w, &mut retry)?,
                step_id: step,
                attempt: 0,
                worker,
            };
            nodes
                .call(CallKind::Write { retry }, |ch| {
                    let req = req.clone();
                    async move { Ok(wrap(ch).start_step(req).await?.into_inner()) }
                })
                .await
        }
        WorkflowCmd::CompleteStep {
            id,
            step,
            result,
            w,
        } => {
            let req = pb::CompleteStepRequest {
                write: write(&id, &w, &mut retry)?,
                step_id: step,
                output_json: result,
            };
            nodes
                .call(CallKind::Write { retry }, |ch| {
                    let req = req.clone();
                    async move { Ok(wrap(ch).complete_step(req).await?.into_inner()) }
                })
                .await
        }
        WorkflowCmd::FailStep {
            id,
            step,
            error,
            retryable,
            w,
        } => {
            let req = pb::FailStepRequest {
                write: write(&id, &w, &mut retry)?,
                step_id: step,
                error,
                attempt: 0,
                retryable,
            };
            nodes
                .call(CallKind::Write { retry }, |ch| {
                    let req = req.clone();
                    async move { Ok(wrap(ch).fail_step(req).await?.into_inner()) }
                })
                .await
        }
        WorkflowCmd::Complete {
            id,
            status,
            reason,
            w,
        } => {
            let req = pb::CompleteWorkflowRequest {
                write: write(&id, &w, &mut retry)?,
                status,
                reason,
            };
            nodes
                .call(CallKind::Write { retry }, |ch| {
                    let req = req.clone();
                    async move { Ok(wrap(ch).complete(req).await?.into_inner()) }
                })
                .await
        }
        WorkflowCmd::Get { id, at, version } => {
            let at = match (at, version) {
                (Some(t), _) => Some(pb::get_workflow_state_request::At::AtTime(t)),
                (None, Some(v)) => Some(pb::get_workflow_state_request::At::AtVersion(v)),
                (None, None) => None,
            };
            let req = pb::GetWorkflowStateRequest {
                workflow_id: id,
                at,
                consistency: pb::Consistency::Linearizable as i32,
            };
            let s = nodes
                .call(CallKind::Read, |ch| {
                    let req = req.clone();
                    async move { Ok(wrap(ch).get_state(req).await?.into_inner()) }
                })
                .await?;
            let state: serde_json::Value =
                serde_json::from_str(&s.state_json).context("state JSON")?;
            match printer.format {
                Output::Json => printer.json(&state),
                Output::Text => outln!("{}", serde_json::to_string_pretty(&state)?),
            }
            return Ok(());
        }
        WorkflowCmd::List { limit } => {
            let mut after = String::new();
            loop {
                let r = list_page(&nodes, &after, limit).await?;
                for w in &r.workflows {
                    match printer.format {
                        Output::Json => printer.json(&json!({
                            "workflow_id": w.workflow_id, "name": w.name, "status": w.status,
                            "version": w.version, "current_step": w.current_step, "updated_at_ns": w.updated_at_ns,
                        })),
                        Output::Text => outln!(
                            "{}  {}  {}  v{}  {}",
                            w.workflow_id, w.name, w.status, w.version, w.current_step
                        ),
                    }
                }
                if r.next_after.is_empty() {
                    return Ok(());
                }
                after = r.next_after;
            }
        }
        WorkflowCmd::Import { file, parallel } => {
            return import(&nodes, &file, parallel, printer).await
        }
        WorkflowCmd::Verify { id } => return verify(&nodes, timeout, id, printer).await,
    };
    print_write(printer, &resp?);
    Ok(())
}

fn wrap(ch: Channel) -> WorkflowsClient<Conn> {
    WorkflowsClient::new(authed(ch)).max_decoding_message_size(usize::MAX)
}

/// One page of the workflow list, from the first node that answers.
async fn list_page(
    nodes: &Failover<Channel>,
    after: &str,
    limit: u32,
) -> anyhow::Result<pb::ListWorkflowsResponse> {
    let req = pb::ListWorkflowsRequest {
        after: after.to_owned(),
        limit,
        consistency: pb::Consistency::Linearizable as i32,
    };
    nodes
        .call(CallKind::Read, |ch| {
            let req = req.clone();
            async move { Ok(wrap(ch).list(req).await?.into_inner()) }
        })
        .await
}

async fn import(
    nodes: &Failover<Channel>,
    file: &std::path::Path,
    parallel: usize,
    printer: &Printer,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let states = parse_import(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let bar = if printer.format == Output::Text {
        let b = ProgressBar::new(states.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} workflows {msg}",
            )?
            .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let results = futures::stream::iter(states.into_iter().map(|state| {
        let bar = bar.clone();
        async move {
            let id = state.workflow_id.clone();
            let encoded = snapshot_event(state).encode()?;
            let req = pb::AppendWorkflowEventsRequest {
                workflow_id: id.clone(),
                expected_version: None,
                events: vec![pb::WorkflowEventInput {
                    event_id: import_event_id(&id).to_string(),
                    event_type: encoded.event_type.to_owned(),
                    schema_version: encoded.schema_version,
                    payload: encoded.payload.into(),
                }],
            };
            let retry = "run the import again (it is idempotent)".to_owned();
            let r = nodes
                .call(CallKind::Write { retry }, |ch| {
                    let req = req.clone();
                    async move { Ok(wrap(ch).append_events(req).await?.into_inner()) }
                })
                .await;
            bar.inc(1);
            let outcome = match r {
                Ok(r) if r.duplicate => "unchanged",
                Ok(_) => "imported",
                // Imported before, and the idempotency window has passed since: the
                // transition rules refuse a second snapshot; nothing is written.
                Err(e) if already_imported(&e) => "unchanged",
                Err(e) => return Err(anyhow::anyhow!("workflow {id}: {e}")),
            };
            anyhow::Ok((id, outcome))
        }
    }))
    .buffer_unordered(parallel.max(1))
    .collect::<Vec<_>>()
    .await;
    bar.finish_and_clear();
    let (mut imported, mut unchanged, mut failed) = (0, 0, Vec::new());
    for r in results {
        match r {
            Ok((_, "imported")) => imported += 1,
            Ok(_) => unchanged += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    match printer.format {
        Output::Json => {
            printer.json(&json!({"imported": imported, "unchanged": unchanged, "failed": failed}))
        }
        Output::Text => {
            outln!("imported {imported} workflows, {unchanged} already present");
            for f in &failed {
                outln!("  failed: {f}");
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} workflows failed to import", failed.len());
    }
    Ok(())
}

/// The node's refusal of a second snapshot of a workflow imported before.
fn already_imported(e: &anyhow::Error) -> bool {
    e.downcast_ref::<CallError>().is_some_and(|c| {
        c.failure == CallFailure::Answered
            && c.code == tonic::Code::FailedPrecondition
            && c.detail.contains("already exists")
    })
}

async fn verify(
    nodes: &Failover<Channel>,
    timeout: Duration,
    id: Option<String>,
    printer: &Printer,
) -> anyhow::Result<()> {
    let ids = match id {
        Some(id) => vec![id],
        None => {
            let mut ids = Vec::new();
            let mut after = String::new();
            loop {
                let r = list_page(nodes, &after, 1000).await?;
                ids.extend(r.workflows.into_iter().map(|w| w.workflow_id));
                if r.next_after.is_empty() {
                    break;
                }
                after = r.next_after;
            }
            ids
        }
    };
    // Every member of the cluster (or just the node that answers when it is alone).
    let (at, status) = super::status_via(nodes).await?;
    let mut members: Vec<String> = status
        .voters
        .iter()
        .chain(status.learners.iter())
        .map(|m| m.grpc_addr.clone())
        .collect();
    if members.is_empty() {
        members.push(at);
    }
    let mut clients = Vec::new();
    for m in &members {
        clients.push((m.clone(), client(m, timeout).await?));
    }
    let mut problems = Vec::new();
    for id in &ids {
        let mut reports = Vec::new();
        for (m, c) in clients.iter_mut() {
            let r = c
                .verify(pb::VerifyWorkflowRequest {
                    workflow_id: id.clone(),
                })
                .await
                .map_err(status_err_at(m))?
                .into_inner();
            reports.push((m.clone(), r));
        }
        for (m, r) in &reports {
            if !r.converged {
                problems.push(format!("workflow {id} on {m}: {}", r.divergence));
            }
        }
        let prints: std::collections::BTreeSet<(&str, Option<u64>)> = reports
            .iter()
            .map(|(_, r)| (r.fingerprint.as_str(), r.version))
            .collect();
        if prints.len() > 1 {
            problems.push(format!(
                "workflow {id}: replicas disagree: {}",
                reports
                    .iter()
                    .map(|(m, r)| format!("{m} v{:?} {}", r.version, r.fingerprint))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if printer.format == Output::Json {
            let (_, r) = &reports[0];
            printer.json(
                &json!({"workflow_id": id, "events": r.events, "version": r.version,
                "fingerprint": r.fingerprint, "members": reports.len(),
                "converged": prints.len() == 1 && reports.iter().all(|(_, r)| r.converged)}),
            );
        }
    }
    if !problems.is_empty() {
        bail!("replay check FAILED:\n  {}", problems.join("\n  "));
    }
    if printer.format == Output::Text {
        outln!(
            "replay check passed: {} workflows rebuilt from scratch equal their projections on {} members",
            ids.len(),
            clients.len()
        );
    }
    Ok(())
}
