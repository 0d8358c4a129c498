//! `aetherctl limits`: the cluster's rate-limit policies (replicated).

use super::output::outln;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::failover::Failover;
use super::output::{Output, Printer};
use super::{admin, status_err_at, CallKind};
use crate::limits::{Algorithm, KeyBy, LimitPolicy, Method};
use crate::proto::aetherops::v1 as pb;
use crate::proto::aetherops::v1::admin_client::AdminClient;

#[derive(Subcommand, Debug)]
pub enum LimitsCmd {
    /// Set (or replace) a policy: the same on every node, kept across restarts.
    Set {
        name: String,
        /// Methods it covers, comma-separated (Append, Read, Subscribe, WorkflowWrite,
        /// WorkflowRead, Ingest, TelemetryQuery, Admin); all by default.
        #[arg(long, value_delimiter = ',')]
        methods: Vec<Method>,
        /// What it counts separately: shared (one count), caller, stream-prefix, method.
        #[arg(long, default_value = "shared")]
        key: KeyBy,
        /// BURST,RATE: a burst of BURST, refilled at RATE per second (e.g. 100,0.27).
        #[arg(
            long,
            conflicts_with = "sliding_window",
            required_unless_present = "sliding_window"
        )]
        token_bucket: Option<String>,
        /// LIMIT,WINDOW,COUNT: LIMIT per WINDOW (10s, 1m, …) over COUNT sub-windows.
        #[arg(long)]
        sliding_window: Option<String>,
        /// Count and report what it would refuse, without refusing.
        #[arg(long)]
        shadow: bool,
    },
    /// The policies in force.
    List,
    /// Delete a policy.
    Delete { name: String },
    /// Per node: each policy's share, the cluster's adaptive factor, the rate the node
    /// admits, tokens left, demand and refusals (every member, found through `--addr`).
    Status,
}

pub async fn run(
    addrs: &str,
    timeout: Duration,
    cmd: LimitsCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    let nodes = Failover::connect_lazy(addrs, timeout)?;
    if let LimitsCmd::Status = cmd {
        return status(&nodes, timeout, printer).await;
    }
    match cmd {
        LimitsCmd::Status => unreachable!("answered above"),
        LimitsCmd::Set {
            name,
            methods,
            key,
            token_bucket,
            sliding_window,
            shadow,
        } => {
            let algorithm = match (token_bucket, sliding_window) {
                (Some(tb), _) => Algorithm::token_bucket(&tb),
                (None, Some(sw)) => Algorithm::sliding_window(&sw),
                (None, None) => Err("give --token-bucket or --sliding-window".to_owned()),
            }
            .map_err(anyhow::Error::msg)?;
            let policy = LimitPolicy {
                name,
                methods,
                key,
                algorithm,
                shadow,
            };
            policy.validate().map_err(anyhow::Error::msg)?;
            let req = pb::SetLimitRequest {
                policy: Some(crate::api::admin::limit_policy_out(policy.clone())),
            };
            let r = nodes
                .call(CallKind::Unknown, |ch| {
                    let req = req.clone();
                    async move {
                        Ok(AdminClient::new(super::authed(ch))
                            .set_limit(req)
                            .await?
                            .into_inner())
                    }
                })
                .await?;
            match printer.format {
                Output::Json => printer.json(&json!({"name": policy.name, "replaced": r.replaced})),
                Output::Text => outln!(
                    "{} policy {}: {}",
                    if r.replaced { "replaced" } else { "set" },
                    policy.name,
                    policy.algorithm
                ),
            }
        }
        LimitsCmd::List => {
            let r = nodes
                .call(CallKind::Read, |ch| async move {
                    Ok(AdminClient::new(super::authed(ch))
                        .list_limits(pb::ListLimitsRequest::default())
                        .await?
                        .into_inner())
                })
                .await?;
            for p in r.policies {
                print_policy(printer, &p);
            }
        }
        LimitsCmd::Delete { name } => {
            let req = pb::DeleteLimitRequest { name: name.clone() };
            nodes
                .call(CallKind::Unknown, |ch| {
                    let req = req.clone();
                    async move { AdminClient::new(super::authed(ch)).delete_limit(req).await }
                })
                .await?;
            match printer.format {
                Output::Json => printer.json(&json!({"name": name, "deleted": true})),
                Output::Text => outln!("deleted policy {name}"),
            }
        }
    }
    Ok(())
}

/// Every member's view of the limits: members come from the status of the first node that
/// answers.
async fn status(
    nodes: &Failover<tonic::transport::Channel>,
    timeout: Duration,
    printer: &Printer,
) -> anyhow::Result<()> {
    let (_, s) = super::status_via(nodes).await?;
    let mut addrs: Vec<String> = s
        .voters
        .iter()
        .chain(s.learners.iter())
        .map(|m| m.grpc_addr.clone())
        .collect();
    if addrs.is_empty() {
        addrs.push(s.grpc_addr.clone());
    }
    let mut nodes = Vec::new();
    for a in &addrs {
        let r = match admin(a, timeout).await {
            Ok(mut c) => c
                .limit_status(pb::LimitStatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(status_err_at(a)),
            Err(e) => Err(e),
        };
        match r {
            Ok(r) => nodes.push((a.clone(), Ok(r))),
            Err(e) => nodes.push((a.clone(), Err(e))),
        }
    }
    match printer.format {
        Output::Json => {
            let out: Vec<serde_json::Value> = nodes
                .iter()
                .map(|(a, r)| match r {
                    Ok(r) => json!({
                        "addr": a,
                        "node_id": r.node_id,
                        "factor": r.factor,
                        "utilization": r.utilization,
                        "policies": r.policies.iter().map(|p| json!({
                            "name": p.name,
                            "share": p.share,
                            "leased": p.leased,
                            "admits_per_sec": p.admits_per_sec,
                            "tokens_left": p.tokens_left,
                            "keys": p.keys,
                            "demand_per_sec": p.demand_per_sec,
                            "refused": p.refused,
                            "shadow_refused": p.shadow_refused,
                        })).collect::<Vec<_>>(),
                    }),
                    Err(e) => json!({"addr": a, "error": format!("{e:#}")}),
                })
                .collect();
            printer.json(&json!({ "nodes": out }));
        }
        Output::Text => {
            outln!("node\tpolicy\tshare\tfactor\tadmits/s\ttokens left\tdemand/s\trefused");
            for (a, r) in &nodes {
                match r {
                    Ok(r) if r.policies.is_empty() => {
                        outln!("{}\t-\t-\t{:.3}\t-\t-\t-\t-", r.node_id, r.factor)
                    }
                    Ok(r) => {
                        for p in &r.policies {
                            outln!(
                                "{}\t{}\t{:.3}{}\t{:.3}\t{:.2}\t{}\t{:.1}\t{}",
                                r.node_id,
                                p.name,
                                p.share,
                                if p.leased { "" } else { " (fallback)" },
                                r.factor,
                                p.admits_per_sec,
                                p.tokens_left,
                                p.demand_per_sec,
                                p.refused
                            );
                        }
                    }
                    Err(e) => outln!("{a}\tunreachable: {e:#}"),
                }
            }
        }
    }
    Ok(())
}

fn print_policy(printer: &Printer, p: &pb::LimitPolicy) {
    let algorithm = match &p.algorithm {
        Some(pb::limit_policy::Algorithm::TokenBucket(t)) => json!({
            "token_bucket": {"burst": t.burst, "rate_per_sec": t.refill_millis as f64 / 1000.0}
        }),
        Some(pb::limit_policy::Algorithm::SlidingWindow(w)) => json!({
            "sliding_window": {"limit": w.limit, "window_ms": w.window_ms, "window_count": w.window_count}
        }),
        None => json!(null),
    };
    match printer.format {
        Output::Json => printer.json(&json!({
            "name": p.name,
            "methods": p.methods,
            "key": p.key,
            "algorithm": algorithm,
            "shadow": p.shadow,
        })),
        Output::Text => {
            let methods = if p.methods.is_empty() {
                "all methods".to_owned()
            } else {
                p.methods.join(",")
            };
            outln!(
                "{}\t{}\tkey={}\t{}{}",
                p.name,
                methods,
                p.key,
                algorithm,
                if p.shadow { "\tshadow" } else { "" }
            );
        }
    }
}
