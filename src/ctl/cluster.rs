//! `aetherctl cluster …`: initialize a cluster, change its membership, report and verify.
//!
//! Nodes are named by their gRPC addresses; each node tells its own id and addresses
//! (`Status`), so operators never type ids and addresses twice.

use super::output::outln;
use std::time::Duration;

use tonic::transport::Channel;

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;

use super::failover::Failover;
use super::output::{status_json, Output, Printer};
use super::{admin, authed, first_addr, status_err, status_err_at, CallKind};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::admin_client::AdminClient;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Initialize a new cluster whose voters are the nodes at --addr (comma-separated).
    Init,
    /// Add the node at NODE_ADDR as a learner (it catches up from the leader).
    AddLearner {
        node_addr: String,
        /// Return at once instead of waiting for the learner to catch up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make these node ids voters (in addition to the current voters).
    Promote { node_ids: Vec<u64> },
    /// Remove a node (voter or learner) from the cluster.
    Remove { node_id: u64 },
    /// Status of every member, as each reports it.
    Status,
    /// Compare every member's state digest at the same applied index; fail on difference.
    Verify {
        /// How long to wait for all members to reach the same applied index.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        /// Also scan every member's whole state machine and compare those digests (catches
        /// records changed or lost at rest, not only divergent writes).
        #[arg(long)]
        deep: bool,
    },
    /// Build a snapshot now on the node at --addr (the first of them that answers).
    Snapshot,
    /// Set the cluster's idempotency window (how long an event id is remembered), e.g. 24h.
    /// One replicated value for every node; without it, a new cluster takes the
    /// `dedupe_window_secs` of the node that leads its first write.
    SetDedupeWindow { window: String },
}

async fn status_of(addr: &str, timeout: Duration) -> anyhow::Result<pb::StatusResponse> {
    let mut c = admin(addr, timeout).await?;
    Ok(c.status(pb::StatusRequest {})
        .await
        .map_err(status_err_at(addr))?
        .into_inner())
}

fn member(s: &pb::StatusResponse) -> pb::Member {
    pb::Member {
        node_id: s.node_id,
        grpc_addr: s.grpc_addr.clone(),
        http_addr: s.http_addr.clone(),
        incarnation: s.incarnation.clone(),
    }
}

/// The leader's gRPC address, as the first of the `--addr` nodes that answers knows it.
async fn leader_addr(nodes: &Failover<Channel>, timeout: Duration) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (addr, s) = super::status_via(nodes).await?;
        if s.role == "leader" {
            return Ok(s.grpc_addr);
        }
        if !s.leader_grpc_addr.is_empty() {
            return Ok(s.leader_grpc_addr);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no leader known to {addr}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(
    addrs: &str,
    timeout: Duration,
    cmd: ClusterCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    let first = first_addr(addrs);
    let nodes = &Failover::connect_lazy(addrs, timeout)?;
    match cmd {
        ClusterCmd::Init => {
            let mut members = Vec::new();
            for a in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                members.push(member(&status_of(a, timeout).await?));
            }
            let mut c = admin(first, timeout).await?;
            c.init(pb::InitRequest {
                members: members.clone(),
            })
            .await
            .map_err(status_err)?;
            let ids: Vec<u64> = members.iter().map(|m| m.node_id).collect();
            match printer.format {
                Output::Json => printer.json(&json!({"initialized": ids})),
                Output::Text => outln!("initialized cluster with voters {ids:?}"),
            }
        }
        ClusterCmd::AddLearner { node_addr, no_wait } => {
            let m = member(&status_of(&node_addr, timeout).await?);
            let leader = leader_addr(nodes, timeout).await?;
            let mut c = admin(&leader, timeout).await?;
            let r = c
                .add_learner(pb::AddLearnerRequest {
                    member: Some(m.clone()),
                    blocking: !no_wait,
                })
                .await
                .map_err(status_err_at(&leader))?
                .into_inner();
            print_membership(printer, &format!("added learner {}", m.node_id), &r);
        }
        ClusterCmd::Promote { node_ids } => {
            let leader = leader_addr(nodes, timeout).await?;
            let s = status_of(&leader, timeout).await?;
            let mut voters: Vec<u64> = s.voters.iter().map(|m| m.node_id).collect();
            for id in &node_ids {
                if !s.learners.iter().any(|m| m.node_id == *id) && !voters.contains(id) {
                    bail!("node {id} is not a learner of this cluster: add it first");
                }
                if !voters.contains(id) {
                    voters.push(*id);
                }
            }
            let mut c = admin(&leader, timeout).await?;
            let r = c
                .change_membership(pb::ChangeMembershipRequest {
                    voters,
                    retain: false,
                })
                .await
                .map_err(status_err_at(&leader))?
                .into_inner();
            print_membership(printer, &format!("promoted {node_ids:?}"), &r);
        }
        ClusterCmd::Remove { node_id } => {
            let leader = leader_addr(nodes, timeout).await?;
            let mut c = admin(&leader, timeout).await?;
            let r = c
                .remove_node(pb::RemoveNodeRequest { node_id })
                .await
                .map_err(status_err_at(&leader))?
                .into_inner();
            print_membership(printer, &format!("removed {node_id}"), &r);
        }
        ClusterCmd::Status => {
            for s in member_statuses(nodes, timeout).await? {
                match s {
                    Ok(s) => printer.status(&s),
                    Err((addr, e)) => match printer.format {
                        Output::Json => {
                            printer.json(&json!({"grpc_addr": addr, "error": e.to_string()}))
                        }
                        Output::Text => outln!("{e}"),
                    },
                }
            }
        }
        ClusterCmd::Verify { wait_secs, deep } => {
            verify(
                nodes,
                timeout,
                Duration::from_secs(wait_secs),
                deep,
                printer,
            )
            .await?
        }
        ClusterCmd::Snapshot => {
            let nodes = Failover::connect_lazy(addrs, Duration::from_secs(120))?;
            let (at, r) = nodes
                .call_from(0, CallKind::Unknown, |ch| async move {
                    Ok(AdminClient::new(authed(ch))
                        .trigger_snapshot(pb::TriggerSnapshotRequest {})
                        .await?
                        .into_inner())
                })
                .await?;
            let node = nodes.addr(at);
            match printer.format {
                Output::Json => {
                    printer.json(&json!({"snapshot_index": r.snapshot_index, "grpc_addr": node}))
                }
                Output::Text => outln!("snapshot at index {:?} on {node}", r.snapshot_index),
            }
        }
        ClusterCmd::SetDedupeWindow { window } => {
            let ms = crate::time::parse_duration_ms(&window)?;
            let req = pb::SetDedupeWindowRequest {
                window_secs: ms / 1000,
            };
            let r = nodes
                .call(CallKind::Unknown, |ch| async move {
                    Ok(AdminClient::new(authed(ch))
                        .set_dedupe_window(req)
                        .await?
                        .into_inner())
                })
                .await?;
            match printer.format {
                Output::Json => printer.json(&json!({"dedupe_window_secs": r.window_secs})),
                Output::Text => outln!("idempotency window: {} s", r.window_secs),
            }
        }
    }
    Ok(())
}

type MemberStatus = Result<pb::StatusResponse, (String, anyhow::Error)>;

/// Every member's own status, found through the first `--addr` node that answers.
async fn member_statuses(
    nodes: &Failover<Channel>,
    timeout: Duration,
) -> anyhow::Result<Vec<MemberStatus>> {
    let (_, s) = super::status_via(nodes).await?;
    let mut out = Vec::new();
    for m in s.voters.iter().chain(s.learners.iter()) {
        out.push(
            status_of(&m.grpc_addr, timeout)
                .await
                .map_err(|e| (m.grpc_addr.clone(), e)),
        );
    }
    if out.is_empty() {
        out.push(Ok(s));
    }
    Ok(out)
}

async fn verify(
    nodes: &Failover<Channel>,
    timeout: Duration,
    wait: Duration,
    deep: bool,
    printer: &Printer,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut ok = Vec::new();
        for s in member_statuses(nodes, timeout).await? {
            ok.push(s.map_err(|(_, e)| e.context("cannot read every member's status"))?);
        }
        // Digests are comparable only at the same applied index.
        let mut views: Vec<(u64, Option<u64>, String)> = ok
            .iter()
            .map(|s| (s.node_id, s.applied_index, s.state_digest.clone()))
            .collect();
        if deep && same_index(&views) {
            views.clear();
            for s in &ok {
                let mut c = admin(&s.grpc_addr, timeout).await?;
                let d = c
                    .state_digest(pb::StateDigestRequest {})
                    .await
                    .map_err(status_err_at(&s.grpc_addr))?
                    .into_inner();
                views.push((
                    s.node_id,
                    d.applied_index,
                    format!("{} scan {}", d.chained_digest, d.scan_digest),
                ));
            }
        }
        if same_index(&views) {
            let digests: std::collections::BTreeSet<&str> =
                views.iter().map(|v| v.2.as_str()).collect();
            if digests.len() == 1 {
                let report: Vec<_> = ok.iter().map(status_json).collect();
                match printer.format {
                    Output::Json => printer.json(&json!({"verified": true, "deep": deep,
                        "applied_index": views[0].1, "digest": views[0].2, "nodes": report})),
                    Output::Text => outln!(
                        "verified{}: {} nodes agree at applied index {}, digest {}",
                        if deep { " (deep)" } else { "" },
                        views.len(),
                        views[0].1.map_or("-".into(), |i| i.to_string()),
                        views[0].2
                    ),
                }
                return Ok(());
            }
            let lines: Vec<String> = views
                .iter()
                .map(|(id, idx, d)| format!("node {id} applied {idx:?} digest {d}"))
                .collect();
            bail!(
                "REPLICAS DIVERGE at the same applied index:\n  {}",
                lines.join("\n  ")
            );
        }
        if tokio::time::Instant::now() >= deadline {
            let lines: Vec<String> = views
                .iter()
                .map(|(id, idx, _)| format!("node {id} applied {idx:?}"))
                .collect();
            bail!(
                "members did not reach the same applied index within {wait:?} (writes still running?):\n  {}",
                lines.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn same_index(views: &[(u64, Option<u64>, String)]) -> bool {
    views.windows(2).all(|w| w[0].1 == w[1].1)
}

fn print_membership(printer: &Printer, what: &str, r: &pb::MembershipResponse) {
    let voters: Vec<u64> = r.voters.iter().map(|m| m.node_id).collect();
    let learners: Vec<u64> = r.learners.iter().map(|m| m.node_id).collect();
    match printer.format {
        Output::Json => {
            printer.json(&json!({"log_index": r.log_index, "voters": voters, "learners": learners}))
        }
        Output::Text => outln!(
            "{what}: voters {voters:?}, learners {learners:?} (log index {})",
            r.log_index
        ),
    }
}
